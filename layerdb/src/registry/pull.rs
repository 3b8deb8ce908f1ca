//! Pull: manifest (or index, then the platform's manifest), config, layers.
//!
//! Nothing unverified enters the store. The manifest is read whole (at most
//! [`MANIFEST_LIMIT`]) and hashed against the digest asked for; the config
//! against the manifest's descriptor; each layer streams from the socket
//! through its digest, decompression, its diffID and tar extraction into a
//! temporary directory in one pass ([`BlobReader`] → [`HashingReader`] →
//! `Store::extract_layer`), and is checked against both digests before the
//! image and its new layers move into the store in one critical section.
//! A refused image leaves the store as it was.
//!
//! A connection that breaks mid-blob is resumed with a `Range` request from
//! the byte where it stopped ([`RESUMES`] times, with backoff). Every
//! manifest and blob has a total deadline scaled by its size
//! ([`BlobDeadline`]), across resumes: a body that trickles forever ends
//! in an error, not only one that stops.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use tracing::debug;

use super::client::{Client, Failure, Req};
use super::reference::Reference;
use super::{BlobRecord, Platform, Progress, MT_DOCKER_LIST, MT_DOCKER_MANIFEST};
use crate::config::ImageConfig;
use crate::error::{Error, Result};
use crate::ids::{ChainId, DiffId, Digest, ImageId};
use crate::reference::ImageName;
use crate::store::{HashingReader, PendingLayer, Store};

/// Largest manifest or index accepted (as containerd).
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// Largest image config accepted.
pub const CONFIG_LIMIT: u64 = 32 << 20;
/// Most layers an image may have (as docker).
pub const MAX_LAYERS: usize = 127;
/// How many times a broken blob download is resumed.
pub const RESUMES: u32 = 5;

const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// How long one manifest or blob may take to download in total, resumes
/// included: `base` plus its size at `min_rate` bytes per second. The
/// default is 5 minutes plus 32 KiB/s (a 1 GiB layer gets 9 h 20 min); the
/// environment variables `STRATA_BLOB_DEADLINE_BASE` (seconds) and
/// `STRATA_BLOB_MIN_RATE` (bytes per second) change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobDeadline {
    /// Time every download gets, whatever its size.
    pub base: Duration,
    /// The slowest average rate tolerated, in bytes per second (at least 1).
    pub min_rate: u64,
}

impl BlobDeadline {
    /// Reads `STRATA_BLOB_DEADLINE_BASE` and `STRATA_BLOB_MIN_RATE`, each
    /// defaulting when unset or unreadable.
    pub fn from_env() -> Self {
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        BlobDeadline {
            base: num("STRATA_BLOB_DEADLINE_BASE")
                .map(Duration::from_secs_f64)
                .unwrap_or(Duration::from_secs(300)),
            min_rate: num("STRATA_BLOB_MIN_RATE")
                .map(|r| (r as u64).max(1))
                .unwrap_or(32 << 10),
        }
    }

    /// The total time a download of `size` bytes may take.
    pub fn for_size(&self, size: u64) -> Duration {
        self.base + Duration::from_secs_f64(size as f64 / self.min_rate.max(1) as f64)
    }
}

impl Default for BlobDeadline {
    fn default() -> Self {
        BlobDeadline::from_env()
    }
}

/// Options of [`Store::pull`].
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Which image of a multi-platform index (default: the host's).
    pub platform: Option<Platform>,
    /// Check TLS certificates (podman's `--tls-verify`).
    pub tls_verify: bool,
    /// Layers downloaded at once.
    pub jobs: usize,
    /// The total time each manifest and blob may take.
    pub deadline: BlobDeadline,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            tls_verify: true,
            jobs: 4,
            deadline: BlobDeadline::default(),
        }
    }
}

/// What [`Store::pull`] stored.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image ID (the config's digest, as podman computes it).
    pub id: ImageId,
    /// The tag it got, if pulled by tag.
    pub name: Option<ImageName>,
    /// The digest of the manifest (or index) the reference named: the
    /// repo digest.
    pub digest: Digest,
    /// Layers downloaded.
    pub fetched: usize,
    /// Layers already in the store.
    pub present: usize,
}

fn parse_digest(client: &Client, d: &oci_spec::image::Digest) -> Result<Digest> {
    d.to_string()
        .parse()
        .map_err(|_| client.err(format!("unsupported digest {d} (only sha256)")))
}

fn blob_err(digest: Digest, e: Error) -> Error {
    match e {
        Error::Blob { .. } | Error::Unauthorized { .. } => e,
        e => Error::Blob {
            digest,
            error: Box::new(e),
        },
    }
}

/// Fetches a manifest by tag or digest; returns its bytes, media type and
/// digest (checked against `expect`).
fn fetch_manifest(
    client: &Client,
    repo: &str,
    reference: &str,
    expect: Option<&Digest>,
    deadline: &BlobDeadline,
) -> Result<(Vec<u8>, String, Digest)> {
    let what = format!("manifest {repo}:{reference}");
    let limit = deadline.for_size(MANIFEST_LIMIT);
    let resp = client
        .send(
            Req::new("GET", format!("/v2/{repo}/manifests/{reference}"))
                .header("Accept", ACCEPT)
                .timeout(limit),
            None,
        )
        .map_err(|f| match f {
            Failure::Status(404, t) => client.err(format!(
                "{what} not found ({}); check the name and tag",
                super::client_error_text(&t)
            )),
            f => client.failure(&what, f),
        })?;
    if let Some(len) = resp
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > MANIFEST_LIMIT {
            return Err(client.err(format!(
                "{what} is {len} bytes, more than the {MANIFEST_LIMIT}-byte limit"
            )));
        }
    }
    let ct = resp
        .header("Content-Type")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let mut body = Vec::new();
    resp.into_reader()
        .take(MANIFEST_LIMIT + 1)
        .read_to_end(&mut body)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                client.err(format!(
                    "{what}: not received within {}s (the deadline for a manifest); \
                     the registry is too slow or stalled",
                    limit.as_secs()
                ))
            } else {
                client.err(format!("{what}: {e}"))
            }
        })?;
    if body.len() as u64 > MANIFEST_LIMIT {
        return Err(client.err(format!(
            "{what} is larger than the {MANIFEST_LIMIT}-byte limit"
        )));
    }
    let digest = Digest::of(&body);
    if let Some(e) = expect {
        if *e != digest {
            return Err(Error::DigestMismatch {
                what: format!("{} {what}", client.registry()),
                expected: *e,
                actual: digest,
            });
        }
    }
    let mt = if ct.is_empty() || ct == "application/json" || ct == "text/plain" {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str().map(String::from))
                    .or_else(|| v.get("manifests").map(|_| MT_OCI_INDEX.to_string()))
            })
            .unwrap_or_else(|| MT_OCI_MANIFEST.to_string())
    } else {
        ct
    };
    Ok((body, mt, digest))
}

/// Chooses the platform's manifest from an index.
fn choose(client: &Client, idx: &ImageIndex, want: &Platform) -> Result<Descriptor> {
    let fits = |d: &&Descriptor| {
        d.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == want.os
                && p.architecture().to_string() == want.architecture
                && match (&want.variant, p.variant()) {
                    (None, _) => true,
                    (Some(w), Some(v)) => w == v,
                    (Some(w), None) => w == "v8" && want.architecture == "arm64",
                }
        })
    };
    let mut found: Vec<&Descriptor> = idx.manifests().iter().filter(fits).collect();
    // Prefer the plainest variant when none was asked for (arm64 over arm64/v8 duplicates).
    found.sort_by_key(|d| d.platform().as_ref().and_then(|p| p.variant().clone()));
    found.first().map(|d| (*d).clone()).ok_or_else(|| {
        let have: Vec<String> = idx
            .manifests()
            .iter()
            .filter_map(|d| d.platform().as_ref())
            .map(|p| {
                let mut s = format!("{}/{}", p.os(), p.architecture());
                if let Some(v) = p.variant() {
                    s.push('/');
                    s.push_str(v);
                }
                s
            })
            .collect();
        client.err(format!(
            "the image has no manifest for {want} (it has: {}); choose one with --platform",
            have.join(", ")
        ))
    })
}

/// Reads a blob from the registry, resuming with `Range` requests when the
/// connection breaks, and stopping when `cancel` is set. Counts what it
/// hands out; the caller hashes it.
pub(crate) struct BlobReader<'a> {
    client: &'a Client,
    url: String,
    digest: Digest,
    size: u64,
    offset: u64,
    body: Option<Box<dyn Read + Send + Sync>>,
    resumes: u32,
    cancel: &'a AtomicBool,
    progress: &'a dyn Progress,
    /// When the whole blob must be in, and how long that was.
    deadline: Instant,
    allowed: Duration,
    /// The error that ended the stream, typed (the `Read` interface can
    /// only carry an `io::Error`).
    pub failure: Option<Error>,
}

impl<'a> BlobReader<'a> {
    pub fn new(
        client: &'a Client,
        repo: &str,
        digest: Digest,
        size: u64,
        cancel: &'a AtomicBool,
        progress: &'a dyn Progress,
        deadline: &BlobDeadline,
    ) -> Self {
        let allowed = deadline.for_size(size);
        BlobReader {
            deadline: Instant::now() + allowed,
            allowed,
            client,
            url: format!("/v2/{repo}/blobs/{digest}"),
            digest,
            size,
            offset: 0,
            body: None,
            resumes: 0,
            cancel,
            progress,
            failure: None,
        }
    }

    fn fail(&mut self, e: Error) -> io::Error {
        let msg = e.to_string();
        self.failure = Some(e);
        io::Error::other(msg)
    }

    /// The error for a blob past its deadline.
    fn overdue(&self) -> Error {
        self.client.err(format!(
            "blob {}: only {} of {} bytes after {}s, the deadline for its size; \
             the registry is too slow or stalled (STRATA_BLOB_MIN_RATE and \
             STRATA_BLOB_DEADLINE_BASE set the deadline)",
            self.digest,
            self.offset,
            self.size,
            self.allowed.as_secs()
        ))
    }

    fn open(&mut self) -> Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.overdue());
        }
        let mut req = Req::new("GET", self.url.clone()).timeout(left);
        if self.offset > 0 {
            req = req.header("Range", format!("bytes={}-", self.offset));
        }
        let what = format!("blob {}", self.digest);
        let resp = self.client.send(req, None).map_err(|f| match f {
            Failure::Status(404, t) => self.client.err(format!(
                "{what} not found in the repository ({})",
                super::client_error_text(&t)
            )),
            f => self.client.failure(&what, f),
        })?;
        let full = resp.status() == 200;
        let mut body = resp.into_reader();
        if self.offset > 0 && full {
            // A registry that ignores Range sends everything again: skip
            // what we already have.
            let skipped = io::copy(&mut (&mut body).take(self.offset), &mut io::sink())
                .map_err(|e| self.client.err(format!("{what}: {e}")))?;
            if skipped < self.offset {
                return Err(self.client.err(format!("{what}: shorter than before")));
            }
        }
        self.body = Some(body);
        Ok(())
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(io::Error::other("cancelled: another blob failed"));
            }
            if self.body.is_none() {
                if let Err(e) = self.open() {
                    return Err(self.fail(e));
                }
            }
            let body = self.body.as_mut().expect("opened");
            let res = match body.read(buf) {
                Ok(0) if self.offset < self.size => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {} of {} bytes",
                        self.offset, self.size
                    ),
                )),
                Ok(n) if self.offset + n as u64 > self.size => {
                    let e = self.client.err(format!(
                        "blob {} is longer than the {} bytes its descriptor says",
                        self.digest, self.size
                    ));
                    return Err(self.fail(e));
                }
                r => r,
            };
            match res {
                Ok(n) => {
                    self.offset += n as u64;
                    self.progress.advanced(&self.digest, n as u64);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if Instant::now() >= self.deadline => {
                    self.body = None;
                    let e = self.overdue();
                    return Err(self.fail(e));
                }
                Err(e) => {
                    self.body = None;
                    self.resumes += 1;
                    if self.resumes > RESUMES {
                        let e = self.client.err(format!(
                            "blob {}: gave up after {RESUMES} resumed downloads: {e}",
                            self.digest
                        ));
                        return Err(self.fail(e));
                    }
                    debug!(digest = %self.digest, offset = self.offset, %e, "resuming download");
                    std::thread::sleep(Duration::from_millis(200) * 2u32.pow(self.resumes - 1));
                }
            }
        }
    }
}

/// One layer to download.
struct LayerJob {
    digest: Digest,
    size: u64,
    media_type: String,
    diff: DiffId,
    parent: Option<ChainId>,
}

fn supported_layer(mt: &str) -> bool {
    matches!(
        mt,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
    )
}

impl Store {
    /// Pulls `reference` (`REGISTRY/NAME[:TAG|@sha256:DIGEST]`) into the
    /// store, with podman's image ID and diffIDs; layers already stored
    /// are not downloaded. The tag (if any) and the repo digest are
    /// recorded. On any error the store is left as it was.
    pub fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<Pulled> {
        let r = Reference::parse(reference)?;
        let client = Client::connect(
            &r.registry,
            &[(&r.repository, "pull")],
            opts.tls_verify,
            None,
        )?;
        // A layer we found stored may be deleted by another process before
        // we take the lock; then fetch it too, on a second pass.
        let mut tries = 0;
        loop {
            match self.pull_once(&client, &r, opts, progress) {
                Err(Error::LayerMissing { .. }) if tries < 3 => tries += 1,
                res => return res,
            }
        }
    }

    fn pull_once(
        &self,
        client: &Client,
        r: &Reference,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<Pulled> {
        let repo = r.repository.as_str();
        let (mut bytes, mut mt, top) = fetch_manifest(
            client,
            repo,
            &r.manifest_ref(),
            r.digest.as_ref(),
            &opts.deadline,
        )?;
        let mut mdigest = top;
        if mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST {
            let idx: ImageIndex = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                what: format!("index {top} of {}", r.repo()),
                source,
            })?;
            let want = opts.platform.clone().unwrap_or_else(Platform::host);
            let d = choose(client, &idx, &want)?;
            let dd = parse_digest(client, d.digest())?;
            let (b, m, _) =
                fetch_manifest(client, repo, &dd.to_string(), Some(&dd), &opts.deadline)?;
            (bytes, mt, mdigest) = (b, m, dd);
        }
        if mt != MT_OCI_MANIFEST && mt != MT_DOCKER_MANIFEST {
            return Err(client.err(format!(
                "manifest {mdigest} has media type {mt}, which Strata cannot pull \
                 (only OCI and Docker schema 2 images)"
            )));
        }
        let m: ImageManifest = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: format!("manifest {mdigest} of {}", r.repo()),
            source,
        })?;
        if m.layers().len() > MAX_LAYERS {
            return Err(client.err(format!(
                "manifest {mdigest} has {} layers, more than the {MAX_LAYERS} an image may have",
                m.layers().len()
            )));
        }
        let cd = parse_digest(client, m.config().digest())?;
        let config = self
            .fetch_config(client, repo, cd, m.config().size(), opts, progress)
            .map_err(|e| blob_err(cd, e))?;
        let cfg = ImageConfig::parse(&config, &format!("config {cd} of {}", r.repo()))
            .map_err(|e| blob_err(cd, e))?;
        let diffs = cfg.rootfs.diff_ids.clone();
        if diffs.len() != m.layers().len() {
            return Err(client.err(format!(
                "config {cd} lists {} layers, manifest {mdigest} {}",
                diffs.len(),
                m.layers().len()
            )));
        }
        let chain = ChainId::chain(&diffs);
        let mut jobs = Vec::new();
        let mut seen = HashSet::new();
        let mut present = 0;
        let mut records = Vec::new();
        for (i, l) in m.layers().iter().enumerate() {
            let d = parse_digest(client, l.digest())?;
            let lmt = l.media_type().to_string();
            if !supported_layer(&lmt) {
                return Err(client.err(format!(
                    "layer {d} has media type {lmt}, which Strata cannot unpack"
                )));
            }
            records.push(BlobRecord {
                diff_id: diffs[i],
                digest: d,
                media_type: lmt.clone(),
                size: l.size(),
                registry: r.registry.clone(),
                repository: r.repository.clone(),
            });
            if self.has_layer(&chain[i]) {
                present += 1;
                progress.skipped(&d, "Already exists");
                continue;
            }
            if !seen.insert(chain[i]) {
                continue;
            }
            jobs.push(LayerJob {
                digest: d,
                size: l.size(),
                media_type: lmt,
                diff: diffs[i],
                parent: if i == 0 { None } else { Some(chain[i - 1]) },
            });
        }
        let mut pending = self.fetch_layers(client, repo, &jobs, opts, progress)?;
        let names: Vec<ImageName> = r.image_name().into_iter().collect();
        let l = self.lock(true)?;
        let id = self.store_image_locked(&l, &mut pending, &chain, &config, &names)?;
        self.add_repo_digest_locked(&l, &r.repo(), &top, &id)?;
        self.record_blobs_locked(&l, &records)?;
        Ok(Pulled {
            id,
            name: names.into_iter().next(),
            digest: top,
            fetched: jobs.len(),
            present,
        })
    }

    fn fetch_config(
        &self,
        client: &Client,
        repo: &str,
        digest: Digest,
        size: u64,
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<u8>> {
        if size > CONFIG_LIMIT {
            return Err(client.err(format!(
                "config {digest} is {size} bytes, more than the {CONFIG_LIMIT}-byte limit"
            )));
        }
        let cancel = AtomicBool::new(false);
        let mut br = BlobReader::new(
            client,
            repo,
            digest,
            size,
            &cancel,
            progress,
            &opts.deadline,
        );
        let mut bytes = Vec::with_capacity(size as usize);
        let res = br.read_to_end(&mut bytes);
        if let Err(e) = res {
            return Err(br
                .failure
                .take()
                .unwrap_or_else(|| Error::stream(format!("config {digest}"), e)));
        }
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("config of {}/{repo}", client.registry()),
                expected: digest,
                actual,
            });
        }
        Ok(bytes)
    }

    fn fetch_layers(
        &self,
        client: &Client,
        repo: &str,
        jobs: &[LayerJob],
        opts: &PullOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<PendingLayer>> {
        for j in jobs {
            progress.queued(&j.digest, j.size);
        }
        super::in_parallel(jobs.len(), opts.jobs, |i, cancel| {
            self.fetch_layer(client, repo, &jobs[i], cancel, &opts.deadline, progress)
        })
    }

    fn fetch_layer(
        &self,
        client: &Client,
        repo: &str,
        job: &LayerJob,
        cancel: &AtomicBool,
        deadline: &BlobDeadline,
        progress: &dyn Progress,
    ) -> Result<PendingLayer> {
        progress.started(&job.digest, job.size);
        let what = format!(
            "layer {} ({}) of {}/{repo}",
            job.digest,
            job.media_type,
            client.registry()
        );
        let mut br = BlobReader::new(
            client, repo, job.digest, job.size, cancel, progress, deadline,
        );
        let res = {
            let mut hr = HashingReader::new(&mut br);
            match self.extract_layer(&mut hr, job.parent, Some(job.diff), &what) {
                Ok(p) => hr
                    .finish()
                    .map(|(d, n)| (p, d, n))
                    .map_err(|e| Error::stream(what.clone(), e)),
                Err(e) => Err(e),
            }
        };
        let (p, d, n) = match res {
            Ok(x) => x,
            Err(e) => return Err(blob_err(job.digest, br.failure.take().unwrap_or(e))),
        };
        if d != job.digest {
            return Err(blob_err(
                job.digest,
                Error::DigestMismatch {
                    what: format!("{what} (downloaded bytes vs the manifest)"),
                    expected: job.digest,
                    actual: d,
                },
            ));
        }
        if n != job.size {
            return Err(blob_err(
                job.digest,
                client.err(format!(
                    "{what} has {n} bytes, the manifest says {}",
                    job.size
                )),
            ));
        }
        progress.finished(&job.digest, "Pull complete");
        Ok(p)
    }
}
