//! Image configs (OCI image config / docker image JSON): a typed read-only
//! view for inspection, and builders for the configs Strata writes (import,
//! commit).
//!
//! Invariant: a config is stored as the exact bytes it arrived in (its
//! SHA-256 is the image ID). The typed [`ImageConfig`] is parsed from those
//! bytes and never serialised back in their place; configs Strata makes are
//! built as JSON values that keep every field of a parent config.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::ids::DiffId;

/// The parts of an image config that Strata reads. Unknown fields are
/// ignored here (they stay in the stored bytes).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ImageConfig {
    /// When the image was created (RFC 3339).
    #[serde(default)]
    pub created: Option<String>,
    /// Who made it.
    #[serde(default)]
    pub author: Option<String>,
    /// CPU architecture (`amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// How to run a container of it.
    #[serde(default)]
    pub config: Option<RuntimeConfig>,
    /// Its layers.
    pub rootfs: RootFs,
    /// How it was made, oldest first.
    #[serde(default)]
    pub history: Option<Vec<History>>,
}

/// The `config` object: defaults for containers.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct RuntimeConfig {
    /// `USER`.
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `EXPOSE`.
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    /// `ENV`, as `KEY=VALUE`.
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// `ENTRYPOINT`.
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `VOLUME`.
    #[serde(rename = "Volumes", default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    /// `WORKDIR`.
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    /// `LABEL`.
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `STOPSIGNAL`.
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
}

/// `rootfs`: the diffIDs, bottom layer first.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The layers' diffIDs.
    #[serde(default)]
    pub diff_ids: Vec<DiffId>,
}

/// One step of an image's history.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct History {
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The command that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// A message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step made no layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl ImageConfig {
    /// Parses config bytes; `what` names them in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<ImageConfig> {
        serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: what.to_string(),
            source,
        })
    }
}

/// One `--change` instruction, as `docker import --change` takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// `CMD ["a","b"]` or `CMD a b` (shell form: `/bin/sh -c "a b"`).
    Cmd(Vec<String>),
    /// `ENTRYPOINT`, same forms.
    Entrypoint(Vec<String>),
    /// `ENV KEY=VALUE` (or `ENV KEY VALUE`); replaces an earlier KEY.
    Env(String, String),
    /// `WORKDIR /path`.
    WorkingDir(String),
    /// `USER name[:group]`.
    User(String),
    /// `LABEL key=value`.
    Label(String, String),
    /// `EXPOSE 80[/tcp]`.
    Expose(String),
    /// `VOLUME /path`.
    Volume(String),
    /// `STOPSIGNAL SIGTERM`.
    StopSignal(String),
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        serde_json::from_str::<String>(s).unwrap_or_else(|_| s[1..s.len() - 1].to_string())
    } else {
        s.to_string()
    }
}

fn command_form(args: &str) -> Vec<String> {
    let a = args.trim();
    if a.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(a) {
            return v;
        }
    }
    vec!["/bin/sh".into(), "-c".into(), a.to_string()]
}

impl FromStr for ConfigChange {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::InvalidChange {
            change: s.to_string(),
            reason: why.to_string(),
        };
        let s2 = s.trim();
        let (kw, rest) = s2
            .split_once(|c: char| c.is_whitespace() || c == '=')
            .map(|(k, r)| (k, r.trim()))
            .ok_or_else(|| bad("expected INSTRUCTION ARGUMENTS"))?;
        if rest.is_empty() {
            return Err(bad("missing arguments"));
        }
        let kv = |rest: &str| -> Result<(String, String)> {
            match rest.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() && !k.contains(char::is_whitespace) => {
                    Ok((unquote(k), unquote(v)))
                }
                _ => match rest.split_once(char::is_whitespace) {
                    Some((k, v)) => Ok((k.to_string(), unquote(v))),
                    None => Err(bad("expected KEY=VALUE")),
                },
            }
        };
        Ok(match kw.to_ascii_uppercase().as_str() {
            "CMD" => ConfigChange::Cmd(command_form(rest)),
            "ENTRYPOINT" => ConfigChange::Entrypoint(command_form(rest)),
            "ENV" => {
                let (k, v) = kv(rest)?;
                ConfigChange::Env(k, v)
            }
            "LABEL" => {
                let (k, v) = kv(rest)?;
                ConfigChange::Label(k, v)
            }
            "WORKDIR" => ConfigChange::WorkingDir(unquote(rest)),
            "USER" => ConfigChange::User(unquote(rest)),
            "EXPOSE" => {
                let p = unquote(rest);
                let p = if p.contains('/') { p } else { format!("{p}/tcp") };
                ConfigChange::Expose(p)
            }
            "VOLUME" => ConfigChange::Volume(unquote(rest)),
            "STOPSIGNAL" => ConfigChange::StopSignal(unquote(rest)),
            _ => {
                return Err(bad(
                    "unknown instruction; use CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME or WORKDIR",
                ))
            }
        })
    }
}

fn obj<'a>(v: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let e = v
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !e.is_object() {
        *e = Value::Object(Map::new());
    }
    e.as_object_mut().expect("just made an object")
}

impl ConfigChange {
    /// Applies this change to the `config` object of a config JSON value.
    pub(crate) fn apply(&self, cfg: &mut Map<String, Value>) {
        let strings = |v: &[String]| Value::from(v.to_vec());
        match self {
            ConfigChange::Cmd(v) => {
                cfg.insert("Cmd".into(), strings(v));
            }
            ConfigChange::Entrypoint(v) => {
                cfg.insert("Entrypoint".into(), strings(v));
            }
            ConfigChange::Env(k, val) => {
                let env = cfg.entry("Env").or_insert_with(|| Value::Array(Vec::new()));
                if !env.is_array() {
                    *env = Value::Array(Vec::new());
                }
                let arr = env.as_array_mut().expect("array");
                let prefix = format!("{k}=");
                arr.retain(|e| !e.as_str().is_some_and(|s| s.starts_with(&prefix)));
                arr.push(Value::from(format!("{k}={val}")));
            }
            ConfigChange::WorkingDir(w) => {
                cfg.insert("WorkingDir".into(), Value::from(w.clone()));
            }
            ConfigChange::User(u) => {
                cfg.insert("User".into(), Value::from(u.clone()));
            }
            ConfigChange::Label(k, v) => {
                obj(cfg, "Labels").insert(k.clone(), Value::from(v.clone()));
            }
            ConfigChange::Expose(p) => {
                obj(cfg, "ExposedPorts").insert(p.clone(), json!({}));
            }
            ConfigChange::Volume(p) => {
                obj(cfg, "Volumes").insert(p.clone(), json!({}));
            }
            ConfigChange::StopSignal(s) => {
                cfg.insert("StopSignal".into(), Value::from(s.clone()));
            }
        }
    }
}

/// The current time as RFC 3339 (UTC, nanoseconds), as docker writes it.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Formats seconds since the epoch as RFC 3339 UTC.
pub(crate) fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if nanos == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{nanos:09}Z")
    }
}

/// The architecture name OCI uses for this machine.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Serialises a config value compactly (the bytes that get stored).
pub(crate) fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value always serialises")
}

/// The config of a fresh one-layer image (import).
pub(crate) fn import_config(
    diff: DiffId,
    created: &str,
    changes: &[ConfigChange],
    comment: Option<&str>,
) -> Value {
    let mut cfg = Map::new();
    for c in changes {
        c.apply(&mut cfg);
    }
    let mut hist = json!({"created": created, "created_by": "strata import"});
    if let Some(c) = comment {
        hist["comment"] = Value::from(c);
    }
    json!({
        "created": created,
        "architecture": host_arch(),
        "os": "linux",
        "config": Value::Object(cfg),
        "rootfs": {"type": "layers", "diff_ids": [diff.to_string()]},
        "history": [hist],
    })
}

/// What describes a committed layer in the child's history.
#[derive(Debug, Clone, Default)]
pub struct CommitMeta {
    /// `created_by` of the history entry (the container's command).
    pub created_by: Option<String>,
    /// The commit message.
    pub comment: Option<String>,
    /// The author (also set as the image's `author`).
    pub author: Option<String>,
    /// Config changes applied on top of the parent's config.
    pub changes: Vec<ConfigChange>,
    /// Creation time; now when `None`.
    pub created: Option<String>,
    /// A whole runtime `config` object (what `strata build` computed) that
    /// replaces the parent's before `changes` apply; `None` keeps the
    /// parent's.
    pub config: Option<Value>,
}

/// The config of an image with no layers and no history (`FROM scratch`).
pub(crate) fn scratch_config() -> Value {
    json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    })
}

/// The config of `parent` with one more layer (commit), or with only one
/// more history entry marked `empty_layer` when `diff` is `None` (a
/// metadata step of `strata build`). Every field of the parent is kept.
pub(crate) fn child_config(
    parent: &[u8],
    diff: Option<DiffId>,
    meta: &CommitMeta,
) -> Result<Value> {
    let mut v: Value = serde_json::from_slice(parent).map_err(|source| Error::Json {
        what: "parent image config".into(),
        source,
    })?;
    let root = v.as_object_mut().ok_or_else(|| Error::Corrupt {
        path: "parent config".into(),
        reason: "not a JSON object".into(),
    })?;
    let created = meta.created.clone().unwrap_or_else(now_rfc3339);
    root.insert("created".into(), Value::from(created.clone()));
    if let Some(a) = &meta.author {
        root.insert("author".into(), Value::from(a.clone()));
    }
    if let Some(c) = &meta.config {
        root.insert("config".into(), c.clone());
    }
    {
        let cfg = obj(root, "config");
        for c in &meta.changes {
            c.apply(cfg);
        }
    }
    {
        let rootfs = obj(root, "rootfs");
        rootfs.insert("type".into(), Value::from("layers"));
        let ids = rootfs
            .entry("diff_ids")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !ids.is_array() {
            *ids = Value::Array(Vec::new());
        }
        if let Some(diff) = diff {
            ids.as_array_mut()
                .expect("array")
                .push(Value::from(diff.to_string()));
        }
    }
    let mut h = Map::new();
    h.insert("created".into(), Value::from(created));
    if let Some(c) = &meta.created_by {
        h.insert("created_by".into(), Value::from(c.clone()));
    }
    if let Some(a) = &meta.author {
        h.insert("author".into(), Value::from(a.clone()));
    }
    if let Some(c) = &meta.comment {
        h.insert("comment".into(), Value::from(c.clone()));
    }
    if diff.is_none() {
        h.insert("empty_layer".into(), Value::from(true));
    }
    let hist = root
        .entry("history")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !hist.is_array() {
        *hist = Value::Array(Vec::new());
    }
    hist.as_array_mut().expect("array").push(Value::Object(h));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse() {
        let c: ConfigChange = "CMD [\"/bin/sh\",\"-c\",\"x\"]".parse().unwrap();
        assert_eq!(
            c,
            ConfigChange::Cmd(vec!["/bin/sh".into(), "-c".into(), "x".into()])
        );
        let c: ConfigChange = "CMD echo hi".parse().unwrap();
        assert_eq!(
            c,
            ConfigChange::Cmd(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        let c: ConfigChange = "ENV A=b c".parse().unwrap();
        assert_eq!(c, ConfigChange::Env("A".into(), "b c".into()));
        let c: ConfigChange = "ENV A b".parse().unwrap();
        assert_eq!(c, ConfigChange::Env("A".into(), "b".into()));
        let c: ConfigChange = "expose 80".parse().unwrap();
        assert_eq!(c, ConfigChange::Expose("80/tcp".into()));
        assert!("FROB x".parse::<ConfigChange>().is_err());
        assert!("CMD".parse::<ConfigChange>().is_err());
    }

    #[test]
    fn time_formats() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000, 5), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
    }
}
