//! Credentials and challenges.
//!
//! Credentials live in the files users already have, read in podman's
//! order: `$REGISTRY_AUTH_FILE`, `${XDG_RUNTIME_DIR}/containers/auth.json`
//! (`/run/containers/UID/auth.json` without it), `~/.config/containers/auth.json`,
//! then docker's `~/.docker/config.json` (`$DOCKER_CONFIG/config.json`).
//! Entries are `{"auths": {"REGISTRY": {"auth": base64("USER:PASSWORD")}}}`;
//! other keys of those files are kept untouched when Strata writes them.
//! Files are written whole to a fresh temporary name (mode 0600, created
//! `O_EXCL|O_NOFOLLOW`) and renamed.
//! Credential helpers (`credHelpers`, `credsStore`) are not run.
//!
//! A registry's `WWW-Authenticate` challenge says how to use them: `Basic`
//! (send them with every request) or `Bearer` (trade them for a token at
//! the realm, scoped to the repositories and actions needed).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::error::{Error, IoContext, Result};

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

impl Credentials {
    /// The `Authorization: Basic ...` value.
    pub(crate) fn basic(&self) -> String {
        format!("Basic {}", self.encoded())
    }

    fn encoded(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password))
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// podman's auth file: `$REGISTRY_AUTH_FILE`, else
/// `${XDG_RUNTIME_DIR}/containers/auth.json`, else
/// `/run/containers/UID/auth.json`. `login` writes here.
pub fn default_auth_file() -> PathBuf {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(d) => Path::new(&d).join("containers/auth.json"),
        None => PathBuf::from(format!(
            "/run/containers/{}/auth.json",
            nix::unistd::geteuid()
        )),
    }
}

/// Every file credentials are read from, in lookup order.
pub fn auth_files() -> Vec<PathBuf> {
    let mut out = vec![default_auth_file()];
    if let Some(h) = home() {
        out.push(h.join(".config/containers/auth.json"));
    }
    match std::env::var_os("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
        Some(d) => out.push(Path::new(&d).join("config.json")),
        None => out.extend(home().map(|h| h.join(".docker/config.json"))),
    }
    out.dedup();
    out
}

/// The keys an `auths` entry for `registry` may have.
fn keys_for(registry: &str) -> Vec<String> {
    let mut v = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == "docker.io" {
        v.push("https://index.docker.io/v1/".into());
        v.push("index.docker.io".into());
        v.push("registry-1.docker.io".into());
    }
    v
}

fn read_file(path: &Path) -> Result<Option<Value>> {
    match fs::read(path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(Some(json!({}))),
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| Error::Json {
                what: format!("auth file {}", path.display()),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

fn decode(path: &Path, entry: &Value) -> Result<Option<Credentials>> {
    let Some(a) = entry.get("auth").and_then(Value::as_str) else {
        return Ok(None);
    };
    let bad = |why: &str| Error::Corrupt {
        path: path.to_path_buf(),
        reason: format!("an auth entry {why}"),
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(a.trim())
        .map_err(|_| bad("is not base64"))?;
    let s = String::from_utf8(raw).map_err(|_| bad("is not UTF-8"))?;
    let (u, p) = s.split_once(':').ok_or_else(|| bad("has no ':'"))?;
    Ok(Some(Credentials {
        username: u.to_string(),
        password: p.to_string(),
    }))
}

/// The credentials stored for `registry`, from the first file that has
/// them.
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    for f in auth_files() {
        let Some(v) = read_file(&f)? else { continue };
        for k in keys_for(registry) {
            if let Some(e) = v.get("auths").and_then(|a| a.get(&k)) {
                if let Some(c) = decode(&f, e)? {
                    return Ok(Some(c));
                }
            }
        }
    }
    Ok(None)
}

fn write_file(path: &Path, v: &Value) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .ctx("mkdir", dir)?;
    // A fresh name, created with O_EXCL|O_NOFOLLOW: a file or symlink
    // planted at the name (in a shared directory) is never written
    // through; the next name is tried instead.
    let base = path.file_name().and_then(|n| n.to_str()).unwrap_or("auth");
    let mut n = 0u32;
    let (tmp, mut f) = loop {
        let tmp = dir.join(format!(".{base}.tmp-{}-{n}", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(e).ctx("create", &tmp),
        }
    };
    let mut bytes = serde_json::to_vec_pretty(v).expect("serialisable");
    bytes.push(b'\n');
    let res = f
        .write_all(&bytes)
        .ctx("write", &tmp)
        .and_then(|()| f.sync_all().ctx("fsync", &tmp))
        .and_then(|()| fs::rename(&tmp, path).ctx("rename", path));
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Stores credentials for `registry` in `file` (mode 0600), keeping the
/// file's other entries.
pub fn store(file: &Path, registry: &str, creds: &Credentials) -> Result<()> {
    let mut v = read_file(file)?.unwrap_or_else(|| json!({}));
    if !v.is_object() {
        v = json!({});
    }
    let auths = v
        .as_object_mut()
        .expect("an object")
        .entry("auths")
        .or_insert_with(|| json!({}));
    if !auths.is_object() {
        *auths = json!({});
    }
    auths
        .as_object_mut()
        .expect("an object")
        .insert(registry.to_string(), json!({ "auth": creds.encoded() }));
    write_file(file, &v)
}

/// Removes the credentials of `registry` from every auth file; returns the
/// files changed.
pub fn remove(registry: &str) -> Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    for f in auth_files() {
        let Some(mut v) = read_file(&f)? else {
            continue;
        };
        let mut hit = false;
        if let Some(a) = v.get_mut("auths").and_then(Value::as_object_mut) {
            for k in keys_for(registry) {
                hit |= a.remove(&k).is_some();
            }
        }
        if hit {
            write_file(&f, &v)?;
            changed.push(f);
        }
    }
    Ok(changed)
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// Send the credentials with each request.
    Basic,
    /// Get a token from `realm` for `service`.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses `Bearer realm="...",service="...",scope="..."` or `Basic
/// realm="..."`.
pub(crate) fn parse_challenge(h: &str) -> Option<Challenge> {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (v, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        params.push((k.trim().to_ascii_lowercase(), v.to_string()));
        s = tail.trim_start_matches([',', ' ']);
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn stores_and_reads_back_keeping_other_keys() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("sub/auth.json");
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(
            &f,
            r#"{"auths":{"other.io":{"auth":"eDp5"}},"credHelpers":{}}"#,
        )
        .unwrap();
        let c = Credentials {
            username: "u".into(),
            password: "p:w".into(),
        };
        store(&f, "localhost:5000", &c).unwrap();
        let v = read_file(&f).unwrap().unwrap();
        assert!(v.get("credHelpers").is_some());
        assert_eq!(v["auths"]["other.io"]["auth"], "eDp5");
        let e = &v["auths"]["localhost:5000"];
        assert_eq!(decode(&f, e).unwrap(), Some(c));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
