//! The metadata instructions (ENV, LABEL, WORKDIR, USER, CMD, ENTRYPOINT,
//! EXPOSE, VOLUME, STOPSIGNAL, SHELL, HEALTHCHECK, ONBUILD, MAINTAINER):
//! each changes the runtime config and gives the history text docker
//! writes (`/bin/sh -c #(nop)  CMD ["sh"]`); none makes a layer.

use serde_json::{json, Map, Value};

use std::collections::BTreeMap;

use strata_layerdb::CommitMeta;

use super::expand::{self, ExpandError};
use super::parse::{CmdForm, Health, Instr, Step};
use super::{ignore, json_list, nop, sha, BuildError, Builder, StageState};

/// What a metadata instruction works on.
pub(super) struct Edit<'a> {
    /// The runtime config, changed in place.
    pub cfg: &'a mut Map<String, Value>,
    /// CMD was set in this stage (then ENTRYPOINT keeps it).
    pub cmd_set: &'a mut bool,
    /// MAINTAINER sets the image's author.
    pub author: &'a mut Option<String>,
    /// The stage's SHELL (for shell-form CMD and ENTRYPOINT).
    pub shell: &'a [String],
    /// Expands one word.
    pub word: &'a dyn Fn(&str) -> Result<String, ExpandError>,
    /// Expands and splits words.
    pub words: &'a dyn Fn(&str) -> Result<Vec<String>, ExpandError>,
}

/// A metadata instruction that cannot be applied; the build prefixes the
/// line and the instruction.
#[derive(Debug, thiserror::Error)]
pub(super) enum MetaError {
    /// A `$VAR` expansion failed.
    #[error(transparent)]
    Expand(#[from] ExpandError),
    /// `ENV KEY` without a value.
    #[error("{0} needs a value (KEY=VALUE or KEY VALUE)")]
    NoValue(String),
    /// A word of `ENV`/`LABEL` without `=`.
    #[error("{0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    /// `ENV`/`LABEL` with nothing.
    #[error("needs at least one KEY=VALUE")]
    NoPairs,
    /// An `EXPOSE` that is not `PORT[-PORT][/tcp|udp|sctp]`.
    #[error("invalid port {0:?}")]
    BadPort(String),
    /// `VOLUME` with an empty path.
    #[error("VOLUME needs a path")]
    NoVolume,
    /// A `STOPSIGNAL` that names no signal.
    #[error("invalid signal {0:?}")]
    BadSignal(String),
    /// `SHELL` not in JSON form.
    #[error("SHELL needs a JSON array: SHELL [\"/bin/sh\", \"-c\"]")]
    BadShell,
    /// `HEALTHCHECK --retries` that is not a number.
    #[error("--retries={0}: not a number")]
    BadRetries(String),
    /// A `HEALTHCHECK` flag docker does not have.
    #[error("unknown flag --{0}")]
    UnknownFlag(String),
    /// A `HEALTHCHECK` duration that does not parse.
    #[error("--{flag}={value}: not a duration")]
    BadDuration {
        /// The flag.
        flag: String,
        /// As written.
        value: String,
    },
}

/// Applies a metadata instruction; returns its history text, or `None`
/// for the instructions that are not metadata (RUN, COPY, ADD, ARG).
pub(super) fn apply(instr: &Instr, e: &mut Edit<'_>) -> Result<Option<String>, MetaError> {
    Ok(Some(match instr {
        Instr::Env(raw) => env_or_label(e, raw, true)?,
        Instr::Label(raw) => env_or_label(e, raw, false)?,
        Instr::Workdir(raw) => workdir(e, raw)?,
        Instr::User(raw) => {
            let u = (e.word)(raw)?;
            e.cfg.insert("User".into(), Value::from(u.clone()));
            nop(&format!("USER {u}"))
        }
        Instr::Cmd(c) => cmd_or_entrypoint(e, c, true)?,
        Instr::Entrypoint(c) => cmd_or_entrypoint(e, c, false)?,
        Instr::Expose(raw) => expose(e, raw)?,
        Instr::Volume(raw) => volume(e, raw)?,
        Instr::StopSignal(raw) => {
            let s = (e.word)(raw)?;
            if crate::signal::parse(&s).is_err() {
                return Err(MetaError::BadSignal(s));
            }
            e.cfg.insert("StopSignal".into(), Value::from(s.clone()));
            nop(&format!("STOPSIGNAL {s}"))
        }
        Instr::Shell(v) => {
            if v.is_empty() {
                return Err(MetaError::BadShell);
            }
            e.cfg.insert("Shell".into(), json!(v));
            nop(&format!("SHELL {}", json_list(v)))
        }
        Instr::Healthcheck(h) => healthcheck(e, h)?,
        Instr::Onbuild(t) => {
            let list = e.cfg.entry("OnBuild").or_insert_with(|| json!([]));
            if let Some(a) = list.as_array_mut() {
                a.push(Value::from(t.clone()));
            }
            nop(&format!("ONBUILD {t}"))
        }
        Instr::Maintainer(m) => {
            *e.author = Some(m.clone());
            nop(&format!("MAINTAINER {m}"))
        }
        Instr::Run(_) | Instr::Copy(_) | Instr::Arg(_) => return Ok(None),
    }))
}

/// ENV and LABEL: `KEY=VALUE...` or `KEY VALUE`.
fn env_or_label(e: &mut Edit<'_>, raw: &str, is_env: bool) -> Result<String, MetaError> {
    let Edit {
        cfg, word, words, ..
    } = e;
    let ws = words(raw)?;
    let pairs: Vec<(String, String)> = match ws.first() {
        Some(w) if !w.contains('=') => {
            let rest = raw
                .trim_start()
                .split_once(char::is_whitespace)
                .map(|(_, r)| r.trim())
                .unwrap_or("");
            if rest.is_empty() {
                return Err(MetaError::NoValue(w.clone()));
            }
            vec![(w.clone(), word(rest)?)]
        }
        _ => ws
            .iter()
            .map(|w| match w.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(MetaError::NotKeyValue(w.clone())),
            })
            .collect::<Result<_, _>>()?,
    };
    if pairs.is_empty() {
        return Err(MetaError::NoPairs);
    }
    for (k, v) in &pairs {
        if is_env {
            let env = cfg.entry("Env").or_insert_with(|| json!([]));
            if let Some(a) = env.as_array_mut() {
                let p = format!("{k}=");
                a.retain(|e| !e.as_str().is_some_and(|s| s.starts_with(&p)));
                a.push(Value::from(format!("{k}={v}")));
            }
        } else {
            let l = cfg.entry("Labels").or_insert_with(|| json!({}));
            if let Some(o) = l.as_object_mut() {
                o.insert(k.clone(), Value::from(v.clone()));
            }
        }
    }
    let shown: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            if is_env {
                format!("{k}={v}")
            } else {
                format!("{k}={}", serde_json::to_string(v).unwrap_or_default())
            }
        })
        .collect();
    Ok(nop(&format!(
        "{} {}",
        if is_env { "ENV" } else { "LABEL" },
        shown.join(" ")
    )))
}

/// WORKDIR: relative paths under the current one.
fn workdir(e: &mut Edit<'_>, raw: &str) -> Result<String, MetaError> {
    let Edit { cfg, word, .. } = e;
    let w = word(raw)?;
    let cur = cfg
        .get("WorkingDir")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("/")
        .to_string();
    let joined = if w.starts_with('/') {
        w
    } else {
        format!("{cur}/{w}")
    };
    let clean = format!("/{}", ignore::clean(&joined));
    cfg.insert("WorkingDir".into(), Value::from(clean.clone()));
    Ok(nop(&format!("WORKDIR {clean}")))
}

/// CMD and ENTRYPOINT; ENTRYPOINT clears a CMD not set in this stage.
fn cmd_or_entrypoint(e: &mut Edit<'_>, c: &CmdForm, is_cmd: bool) -> Result<String, MetaError> {
    let Edit {
        cfg,
        cmd_set,
        shell,
        ..
    } = e;
    let v = match c {
        CmdForm::Exec(v) => v.clone(),
        CmdForm::Shell(s) => {
            let mut v = shell.to_vec();
            v.push(s.clone());
            v
        }
    };
    if is_cmd {
        cfg.insert("Cmd".into(), json!(v));
        **cmd_set = true;
    } else {
        cfg.insert("Entrypoint".into(), json!(v));
        if !**cmd_set {
            cfg.remove("Cmd");
        }
    }
    Ok(nop(&format!(
        "{} {}",
        if is_cmd { "CMD" } else { "ENTRYPOINT" },
        json_list(&v)
    )))
}

/// EXPOSE: `PORT[-PORT][/PROTO]`, tcp by default.
fn expose(e: &mut Edit<'_>, raw: &[String]) -> Result<String, MetaError> {
    let Edit { cfg, words, .. } = e;
    let mut ports = Vec::new();
    for r in raw {
        for p in words(r)? {
            let p = if p.contains('/') {
                p.to_lowercase()
            } else {
                format!("{p}/tcp")
            };
            let (num, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
            let ok = !num.is_empty()
                && num.split('-').all(|n| n.parse::<u16>().is_ok())
                && matches!(proto, "tcp" | "udp" | "sctp");
            if !ok {
                return Err(MetaError::BadPort(p));
            }
            ports.push(p);
        }
    }
    let e = cfg.entry("ExposedPorts").or_insert_with(|| json!({}));
    if let Some(o) = e.as_object_mut() {
        for p in &ports {
            o.insert(p.clone(), json!({}));
        }
    }
    Ok(nop(&format!("EXPOSE {}", ports.join(" "))))
}

/// VOLUME: one or more paths.
fn volume(e: &mut Edit<'_>, raw: &[String]) -> Result<String, MetaError> {
    let Edit { cfg, word, .. } = e;
    let mut vols = Vec::new();
    for r in raw {
        let v = word(r)?;
        if v.is_empty() {
            return Err(MetaError::NoVolume);
        }
        vols.push(v);
    }
    let e = cfg.entry("Volumes").or_insert_with(|| json!({}));
    if let Some(o) = e.as_object_mut() {
        for v in &vols {
            o.insert(v.clone(), json!({}));
        }
    }
    Ok(nop(&format!("VOLUME {}", json_list(&vols))))
}

/// HEALTHCHECK: `NONE` or the command with its durations in nanoseconds.
fn healthcheck(e: &mut Edit<'_>, h: &Health) -> Result<String, MetaError> {
    let Edit { cfg, .. } = e;
    let hc = match h {
        Health::None => json!({"Test": ["NONE"]}),
        Health::Cmd(opts, c) => {
            let test: Vec<String> = match c {
                CmdForm::Exec(v) => std::iter::once("CMD".to_string())
                    .chain(v.iter().cloned())
                    .collect(),
                CmdForm::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
            };
            let mut o = Map::new();
            o.insert("Test".into(), json!(test));
            for (k, v) in opts {
                let key = match k.as_str() {
                    "interval" => "Interval",
                    "timeout" => "Timeout",
                    "start-period" => "StartPeriod",
                    "start-interval" => "StartInterval",
                    "retries" => {
                        let n: u64 = v.parse().map_err(|_| MetaError::BadRetries(v.clone()))?;
                        o.insert("Retries".into(), json!(n));
                        continue;
                    }
                    _ => return Err(MetaError::UnknownFlag(k.clone())),
                };
                let ns = duration_ns(v).ok_or_else(|| MetaError::BadDuration {
                    flag: k.clone(),
                    value: v.clone(),
                })?;
                o.insert(key.into(), json!(ns));
            }
            Value::Object(o)
        }
    };
    cfg.insert("Healthcheck".into(), hc.clone());
    Ok(nop(&format!("HEALTHCHECK {hc}")))
}

/// Parses `30s`, `1m30s`, `500ms`, `1h` into nanoseconds.
fn duration_ns(s: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        let mult = match unit.as_str() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * mult;
        any = true;
    }
    if !num.is_empty() || !any {
        return None;
    }
    Some(total as u64)
}

/// The metadata steps of [`Builder`]: a new config and history text on
/// the parent image, no layer.
impl Builder<'_> {
    /// ARG: declares build args in the stage (defaults from `--build-arg`
    /// and the global ARGs); history `ARG K=V`.
    pub(super) fn arg_step(
        &mut self,
        st: &mut StageState,
        step: &Step,
        raw: &str,
        globals: &BTreeMap<String, Option<String>>,
    ) -> Result<(), BuildError> {
        let decl = self.arg_decl(raw, step.line, &step.text, &|n| st.var(n))?;
        let mut shown = Vec::new();
        for (k, v) in decl {
            let v = v.or_else(|| globals.get(&k).cloned().flatten());
            shown.push(match &v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            });
            st.args.insert(k, v);
        }
        let cfg = st.config.clone();
        self.commit_meta(st, nop(&format!("ARG {}", shown.join(" "))), cfg, None)
    }

    /// ENV, LABEL, CMD... (see [`apply`]).
    pub(super) fn meta_step(
        &mut self,
        st: &mut StageState,
        step: &Step,
        instr: &Instr,
    ) -> Result<(), BuildError> {
        let esc = self.cf.escape;
        let vars = |n: &str| st.var(n);
        let word = |s: &str| expand::word(s, esc, &vars);
        let words = |s: &str| expand::words(s, esc, &vars);
        let shell = st.shell();
        let mut cfg = st.config.clone();
        let mut author = None;
        let mut cmd_set = st.cmd_set;
        let created_by = apply(
            instr,
            &mut Edit {
                cfg: &mut cfg,
                cmd_set: &mut cmd_set,
                author: &mut author,
                shell: &shell,
                word: &word,
                words: &words,
            },
        )
        .map_err(|m| Builder::step_error(step, m.to_string()))?;
        let Some(created_by) = created_by else {
            unreachable!("RUN, COPY and ARG are not metadata steps")
        };
        st.cmd_set = cmd_set;
        self.commit_meta(st, created_by, cfg, author)
    }

    /// The image with config `cfg` and history `created_by` on the stage's
    /// image: from the cache, or amended in the store.
    fn commit_meta(
        &mut self,
        st: &mut StageState,
        created_by: String,
        cfg: Map<String, Value>,
        author: Option<String>,
    ) -> Result<(), BuildError> {
        let (parent, parent_key) = Builder::parent(st);
        let cfg_json = Value::Object(cfg.clone()).to_string();
        let key = sha(&["meta", &parent_key, &created_by, &cfg_json]);
        if let Some(id) = self.cached(st, &key) {
            return self.advance(st, id);
        }
        let id = self.store.amend(
            parent.as_deref(),
            &CommitMeta {
                created_by: Some(created_by),
                author,
                config: Some(Value::Object(cfg)),
                ..Default::default()
            },
        )?;
        self.made(st, &key, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(duration_ns("30s"), Some(30_000_000_000));
        assert_eq!(duration_ns("1m30s"), Some(90_000_000_000));
        assert_eq!(duration_ns("500ms"), Some(500_000_000));
        assert_eq!(duration_ns("5"), None);
        assert_eq!(duration_ns("x"), None);
    }
}
