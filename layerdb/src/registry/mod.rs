//! Registries: pull, push, login and logout over the OCI distribution API
//! (Docker Registry HTTP API v2), with the manifests podman, skopeo and
//! docker read and write (OCI manifest and index, Docker schema 2 manifest
//! and manifest list).
//!
//! - [`Store::pull`] ([`pull`]): manifest → config → layers streamed into
//!   the store, every byte verified on the way; resumed downloads.
//! - [`Store::push`] ([`push`]): missing blobs only (HEAD, cross-repository
//!   mount, chunked upload), then the manifest.
//! - [`login`], [`logout`] ([`auth`]): podman's and docker's auth files.
//! - [`client`]: the HTTP requests, scheme choice, retries, challenges.
//!
//! Two small records beside the store's tags, written under the store's
//! exclusive lock like `tags.json`:
//! - `repo-digests.json`: `REGISTRY/REPO@sha256:...` → image ID, so
//!   `images --digests` shows them and `NAME@sha256:...` resolves;
//! - `blobs.json`: for each diffID, the compressed blobs known to hold it
//!   (digest, media type, size, where seen), so push can skip or mount
//!   blobs without compressing first.

pub mod auth;
pub(crate) mod client;
pub mod pull;
pub mod push;
pub mod reference;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use auth::Credentials;
pub(crate) use client::error_text as client_error_text;
pub use pull::{BlobDeadline, PullOptions, Pulled};
pub use push::{LayerCompression, ManifestFormat, PushOptions, Pushed};
pub use reference::Reference;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::ids::{DiffId, Digest, ImageId};
use crate::store::{Lock, Store};

pub(crate) const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What a pull or push tells its user as blobs move. Every method has a
/// do-nothing default; [`NoProgress`] is the silent one.
pub trait Progress: Sync {
    /// A blob will be transferred (`size` bytes).
    fn queued(&self, _digest: &Digest, _size: u64) {}
    /// Its transfer starts.
    fn started(&self, _digest: &Digest, _size: u64) {}
    /// `bytes` more were transferred.
    fn advanced(&self, _digest: &Digest, _bytes: u64) {}
    /// It is done (`status`: "Pull complete", "Pushed"...).
    fn finished(&self, _digest: &Digest, _status: &str) {}
    /// It needs no transfer (`status`: "Already exists", "Mounted from ...").
    fn skipped(&self, _digest: &Digest, _status: &str) {}
}

/// A [`Progress`] that says nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// `OS/ARCH[/VARIANT]`, as `--platform` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`...
    pub architecture: String,
    /// `v7`, `v8`...
    pub variant: Option<String>,
}

impl Platform {
    /// The host's platform.
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: crate::config::host_arch().into(),
            variant: None,
        }
    }
}

impl FromStr for Platform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Platform> {
        let p: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&p.len()) || p.iter().any(|c| c.is_empty()) {
            return Err(Error::Unsupported(format!(
                "platform {s:?}: write OS/ARCH[/VARIANT], e.g. linux/arm64"
            )));
        }
        Ok(Platform {
            os: p[0].into(),
            architecture: p[1].into(),
            variant: p.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A compressed blob known to hold a layer (`blobs.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlobRecord {
    pub diff_id: DiffId,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub registry: String,
    pub repository: String,
}

/// Most records kept per diffID (the newest win).
const RECORDS_PER_LAYER: usize = 16;

fn read_json_or_default<T: for<'de> Deserialize<'de> + Default>(p: &std::path::Path) -> Result<T> {
    match fs::read(p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
            path: p.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(Error::io("read", p, e)),
    }
}

impl Store {
    pub(crate) fn read_repo_digests(&self) -> Result<BTreeMap<String, ImageId>> {
        read_json_or_default(&self.root().join("repo-digests.json"))
    }

    pub(crate) fn add_repo_digest_locked(
        &self,
        _l: &Lock,
        repo: &str,
        digest: &Digest,
        id: &ImageId,
    ) -> Result<()> {
        let mut m = self.read_repo_digests()?;
        let images: Vec<ImageId> = self.image_ids()?;
        m.retain(|_, i| images.contains(i));
        m.insert(format!("{repo}@{digest}"), *id);
        let bytes = serde_json::to_vec_pretty(&m).expect("serialisable");
        fsutil::write_atomic(self.root(), "repo-digests.json", &bytes)
    }

    /// The repo digests (`REGISTRY/REPO@sha256:...`) recorded for an image
    /// by pull and push.
    pub fn repo_digests(&self, id: &ImageId) -> Result<Vec<String>> {
        Ok(self
            .read_repo_digests()?
            .into_iter()
            .filter(|(_, i)| i == id)
            .map(|(k, _)| k)
            .collect())
    }

    pub(crate) fn read_blob_records(&self) -> Result<BTreeMap<DiffId, Vec<BlobRecord>>> {
        read_json_or_default(&self.root().join("blobs.json"))
    }

    pub(crate) fn record_blobs_locked(&self, _l: &Lock, recs: &[BlobRecord]) -> Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        let mut m = self.read_blob_records()?;
        for r in recs {
            let v = m.entry(r.diff_id).or_default();
            v.retain(|x| x != r);
            v.insert(0, r.clone());
            v.truncate(RECORDS_PER_LAYER);
        }
        let bytes = serde_json::to_vec(&m).expect("serialisable");
        fsutil::write_atomic(self.root(), "blobs.json", &bytes)
    }
}

/// Checks `creds` against `registry` (a `/v2/` request answering its
/// challenge) and stores them in `file` (default: [`auth::default_auth_file`]).
/// Returns the file written.
pub fn login(
    registry: &str,
    creds: &Credentials,
    tls_verify: bool,
    file: Option<&std::path::Path>,
) -> Result<std::path::PathBuf> {
    let registry = normalize_registry(registry);
    client::Client::connect(&registry, &[], tls_verify, Some(creds.clone()))?;
    let f = file
        .map(|p| p.to_path_buf())
        .unwrap_or_else(auth::default_auth_file);
    auth::store(&f, &registry, creds)?;
    Ok(f)
}

/// Removes the stored credentials of `registry` from every auth file.
/// An error if there were none.
pub fn logout(registry: &str) -> Result<Vec<std::path::PathBuf>> {
    let registry = normalize_registry(registry);
    let changed = auth::remove(&registry)?;
    if changed.is_empty() {
        return Err(Error::Registry {
            registry,
            message: "not logged in".into(),
        });
    }
    Ok(changed)
}

/// `https://quay.io/` → `quay.io`; `index.docker.io` → `docker.io`.
fn normalize_registry(r: &str) -> String {
    let r = r
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_start_matches("docker://");
    let r = r.split('/').next().unwrap_or(r);
    match r {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".into(),
        r => r.to_string(),
    }
}

/// Runs `work(i, cancel)` for every `i` in `0..n` on at most `threads`
/// threads, results in index order. The first error cancels the rest
/// (`cancel` turns true, for work in flight to notice) and is returned.
pub(crate) fn in_parallel<T: Send>(
    n: usize,
    threads: usize,
    work: impl Fn(usize, &std::sync::atomic::AtomicBool) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let cancel = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let done: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n || cancel.load(Ordering::SeqCst) {
                    break;
                }
                match work(i, &cancel) {
                    Ok(t) => done.lock().expect("not poisoned").push((i, t)),
                    Err(e) => {
                        if !cancel.swap(true, Ordering::SeqCst) {
                            *first_error.lock().expect("not poisoned") = Some(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("not poisoned") {
        return Err(e);
    }
    let mut done = done.into_inner().expect("not poisoned");
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, t)| t).collect())
}
