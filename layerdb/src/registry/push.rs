//! Push: the blobs the registry lacks, then the manifest.
//!
//! For each layer, a blob already known to hold it (from an earlier pull or
//! push, `blobs.json`) is looked for first: `HEAD` in the destination
//! repository, then a cross-repository mount from a repository of the same
//! registry that has it. Otherwise the layer's tar is rebuilt from the
//! store (its diffID checked on the way), compressed, and uploaded in
//! chunks of [`PushOptions::chunk_size`] (`PATCH` with `Content-Range`,
//! then `PUT ?digest=`) by a second thread while the next chunk is
//! compressed: memory stays at three chunks per layer in flight, whatever
//! the layer's size. The config and the manifest go last, so a
//! failed push leaves no tag pointing at missing blobs.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use oci_spec::image::{DescriptorBuilder, ImageManifestBuilder, MediaType};

use super::client::{Client, Failure, Req};
use super::reference::Reference;
use super::{BlobRecord, Progress, MT_DOCKER_MANIFEST};
use crate::error::{Error, Result};
use crate::ids::{Digest, Hasher};
use crate::reference::{DefaultDomain, ImageName, ToImageRef};
use crate::store::{HashingReader, LayerInfo, Store};

/// The manifest format pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ManifestFormat {
    /// OCI image manifest (podman's default).
    #[default]
    Oci,
    /// Docker image manifest, schema 2 (docker's format).
    V2s2,
}

/// How layers are compressed for the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerCompression {
    /// gzip (every client reads it).
    #[default]
    Gzip,
    /// zstd (OCI format only; podman 4+, containerd 1.5+ read it).
    Zstd,
}

/// Options of [`Store::push`].
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Check TLS certificates (podman's `--tls-verify`).
    pub tls_verify: bool,
    /// The manifest format.
    pub format: ManifestFormat,
    /// The layer compression.
    pub compression: LayerCompression,
    /// Layers compressed and uploaded at once.
    pub jobs: usize,
    /// Bytes per `PATCH` of a chunked upload.
    pub chunk_size: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            tls_verify: true,
            format: ManifestFormat::Oci,
            compression: LayerCompression::Gzip,
            jobs: 3,
            chunk_size: 4 << 20,
        }
    }
}

/// What [`Store::push`] did.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// Where the image went (`REGISTRY/REPO:TAG`).
    pub destination: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// The manifest's size in bytes.
    pub size: u64,
    /// Layers uploaded.
    pub uploaded: usize,
    /// Layers the registry had (or mounted from another repository).
    pub skipped: usize,
}

impl LayerCompression {
    fn media_type(self, f: ManifestFormat) -> &'static str {
        match (f, self) {
            (ManifestFormat::Oci, LayerCompression::Gzip) => {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            }
            (ManifestFormat::Oci, LayerCompression::Zstd) => {
                "application/vnd.oci.image.layer.v1.tar+zstd"
            }
            (ManifestFormat::V2s2, _) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        }
    }

    fn matches(self, media_type: &str) -> bool {
        match self {
            LayerCompression::Gzip => media_type.ends_with("gzip"),
            LayerCompression::Zstd => media_type.ends_with("zstd"),
        }
    }
}

/// How one layer got to the registry.
struct LayerDone {
    digest: Digest,
    size: u64,
    uploaded: bool,
}

/// The compressor's side of a chunked upload: a `Write` that hashes what
/// it is given and hands each full chunk to the uploader thread
/// ([`send_chunks`]), so compression and the network overlap.
struct Chunker {
    tx: Option<SyncSender<Vec<u8>>>,
    buf: Vec<u8>,
    chunk: usize,
    hasher: Hasher,
    size: u64,
}

impl Chunker {
    fn pass(&mut self) -> io::Result<()> {
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        let tx = self.tx.as_ref().expect("not finished");
        tx.send(full)
            .map_err(|_| io::Error::other("the upload stopped"))
    }

    /// Hands over the last chunk and ends the stream; returns the blob's
    /// digest and size.
    fn finish(mut self) -> io::Result<(Digest, u64)> {
        if !self.buf.is_empty() {
            self.pass()?;
        }
        self.tx = None;
        Ok((self.hasher.finish(), self.size))
    }
}

impl Write for Chunker {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.chunk {
            self.pass()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The uploader thread: one `PATCH` with `Content-Range` per chunk
/// received. Returns the upload's last location.
fn send_chunks(
    client: &Client,
    mut location: String,
    rx: Receiver<Vec<u8>>,
    key: &Digest,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<String> {
    let mut offset = 0u64;
    for buf in rx {
        if cancel.load(Ordering::SeqCst) {
            return Err(client.err("cancelled: another blob failed"));
        }
        let end = offset + buf.len() as u64 - 1;
        let resp = client
            .send(
                Req::new("PATCH", location.clone())
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Range", format!("{offset}-{end}")),
                Some(&buf),
            )
            .map_err(|f| client.failure("blob upload (PATCH)", f))?;
        if let Some(l) = resp.header("Location") {
            location = client.resolve_location(l);
        }
        progress.advanced(key, buf.len() as u64);
        offset += buf.len() as u64;
    }
    Ok(location)
}

fn with_query(loc: &str, q: &str) -> String {
    if loc.contains('?') {
        format!("{loc}&{q}")
    } else {
        format!("{loc}?{q}")
    }
}

fn blob_exists(client: &Client, repo: &str, d: &Digest) -> Result<bool> {
    match client.send(Req::new("HEAD", format!("/v2/{repo}/blobs/{d}")), None) {
        Ok(_) => Ok(true),
        Err(Failure::Status(404, _)) => Ok(false),
        Err(f) => Err(client.failure(&format!("blob {d} (HEAD)"), f)),
    }
}

/// Starts an upload, or mounts `mount` from another repository. Returns
/// `None` when the mount happened, else the upload's location.
fn start_upload(
    client: &Client,
    repo: &str,
    mount: Option<(&Digest, &str)>,
) -> Result<Option<String>> {
    let url = match mount {
        Some((d, from)) => format!("/v2/{repo}/blobs/uploads/?mount={d}&from={from}"),
        None => format!("/v2/{repo}/blobs/uploads/"),
    };
    let resp = client
        .send(Req::new("POST", url), Some(&[]))
        .map_err(|f| client.failure("blob upload (POST)", f))?;
    if resp.status() == 201 && mount.is_some() {
        return Ok(None);
    }
    let loc = resp
        .header("Location")
        .ok_or_else(|| client.err("blob upload: the registry gave no Location"))?;
    Ok(Some(client.resolve_location(loc)))
}

fn spec_err(e: impl std::fmt::Display) -> Error {
    Error::Unsupported(format!("building the manifest: {e}"))
}

impl Store {
    /// Pushes an image to `destination` (`REGISTRY/NAME[:TAG]`; default:
    /// the image's own name if it names a registry). Uploads only the blobs
    /// the registry lacks, then the manifest.
    pub fn push(
        &self,
        image: &(impl ToImageRef + ?Sized),
        destination: Option<&str>,
        opts: &PushOptions,
        progress: &dyn Progress,
    ) -> Result<Pushed> {
        let image = image.to_image_ref();
        let image = image.text();
        let image = image.as_ref();
        if opts.format == ManifestFormat::V2s2 && opts.compression == LayerCompression::Zstd {
            return Err(Error::Unsupported(
                "zstd layers need the OCI format (--format oci)".into(),
            ));
        }
        let info = self.inspect(image)?;
        // Without a destination: the name the user typed if it names a
        // registry, else the image's first such name.
        let typed = ImageName::parse(image, DefaultDomain::Localhost)
            .ok()
            .map(|n| n.to_string())
            .filter(|n| info.names.contains(n));
        let dest = match destination {
            Some(d) => d.to_string(),
            None => typed
                .into_iter()
                .chain(info.names.iter().cloned())
                .find(|n| !n.starts_with("localhost/"))
                .ok_or_else(|| Error::InvalidReference {
                    reference: image.to_string(),
                    reason: "its name names no registry; give a destination: \
                             strata push IMAGE REGISTRY/NAME[:TAG]"
                        .into(),
                })?,
        };
        let dest = Reference::parse(&dest)?;
        if dest.digest.is_some() {
            return Err(Error::InvalidReference {
                reference: dest.to_string(),
                reason: "push to a tag, not a digest".into(),
            });
        }
        let repo = dest.repository.clone();
        let lmt = opts.compression.media_type(opts.format);
        let records = self.read_blob_records()?;
        // For each layer: a blob known to hold it, and a repository of this
        // registry to mount it from.
        let mut known = Vec::new();
        let mut sources = BTreeSet::new();
        for l in &info.layers {
            let cands: Vec<&BlobRecord> = records
                .get(&l.diff_id)
                .map(|v| {
                    v.iter()
                        .filter(|r| opts.compression.matches(&r.media_type))
                        .collect()
                })
                .unwrap_or_default();
            let same_registry = cands.iter().find(|r| r.registry == dest.registry);
            let pick = same_registry.or(cands.first()).map(|r| (*r).clone());
            let from = same_registry
                .filter(|r| r.repository != repo)
                .map(|r| r.repository.clone());
            if let Some(f) = &from {
                sources.insert(f.clone());
            }
            known.push((pick, from));
        }
        let mut scopes: Vec<(&str, &str)> = vec![(repo.as_str(), "pull,push")];
        scopes.extend(sources.iter().map(|s| (s.as_str(), "pull")));
        let client = Client::connect(&dest.registry, &scopes, opts.tls_verify, None)?;

        for l in &info.layers {
            progress.queued(&l.diff_id.0, l.tar_size);
        }
        let done = super::in_parallel(info.layers.len(), opts.jobs, |i, cancel| {
            let (k, from) = &known[i];
            self.push_layer(
                &client,
                &repo,
                &info.layers[i],
                k.as_ref(),
                from.as_deref(),
                opts,
                cancel,
                progress,
            )
        })?;

        // The config.
        let cd = Digest::of(&info.config_bytes);
        if !blob_exists(&client, &repo, &cd)? {
            let loc = start_upload(&client, &repo, None)?.expect("no mount asked");
            client
                .send(
                    Req::new("PUT", with_query(&loc, &format!("digest={cd}")))
                        .header("Content-Type", "application/octet-stream"),
                    Some(&info.config_bytes),
                )
                .map_err(|f| client.failure(&format!("config {cd} (PUT)"), f))?;
        }

        // The manifest.
        let (cmt, mmt) = match opts.format {
            ManifestFormat::Oci => (MediaType::ImageConfig, MediaType::ImageManifest),
            ManifestFormat::V2s2 => (
                MediaType::Other("application/vnd.docker.container.image.v1+json".into()),
                MediaType::Other(MT_DOCKER_MANIFEST.into()),
            ),
        };
        let oci_digest =
            |d: &Digest| oci_spec::image::Digest::from_str(&d.to_string()).map_err(spec_err);
        let config_desc = DescriptorBuilder::default()
            .media_type(cmt)
            .digest(oci_digest(&cd)?)
            .size(info.config_bytes.len() as u64)
            .build()
            .map_err(spec_err)?;
        let mut layers = Vec::new();
        for d in &done {
            layers.push(
                DescriptorBuilder::default()
                    .media_type(MediaType::from(lmt))
                    .digest(oci_digest(&d.digest)?)
                    .size(d.size)
                    .build()
                    .map_err(spec_err)?,
            );
        }
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(mmt.clone())
            .config(config_desc)
            .layers(layers)
            .build()
            .map_err(spec_err)?;
        let bytes = serde_json::to_vec(&manifest).map_err(spec_err)?;
        let digest = Digest::of(&bytes);
        let tag = dest.tag.clone().unwrap_or_else(|| "latest".into());
        client
            .send(
                Req::new("PUT", format!("/v2/{repo}/manifests/{tag}"))
                    .header("Content-Type", mmt.to_string()),
                Some(&bytes),
            )
            .map_err(|f| client.failure(&format!("manifest {}", dest), f))?;

        let recs: Vec<BlobRecord> = info
            .layers
            .iter()
            .zip(&done)
            .map(|(l, d)| BlobRecord {
                diff_id: l.diff_id,
                digest: d.digest,
                media_type: lmt.to_string(),
                size: d.size,
                registry: dest.registry.clone(),
                repository: repo.clone(),
            })
            .collect();
        let lock = self.lock(true)?;
        if self.image_ids()?.contains(&info.id) {
            self.add_repo_digest_locked(&lock, &dest.repo(), &digest, &info.id)?;
        }
        self.record_blobs_locked(&lock, &recs)?;
        let uploaded = done.iter().filter(|d| d.uploaded).count();
        Ok(Pushed {
            destination: dest.to_string(),
            digest,
            size: bytes.len() as u64,
            uploaded,
            skipped: done.len() - uploaded,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn push_layer(
        &self,
        client: &Client,
        repo: &str,
        layer: &LayerInfo,
        known: Option<&BlobRecord>,
        mount_from: Option<&str>,
        opts: &PushOptions,
        cancel: &AtomicBool,
        progress: &dyn Progress,
    ) -> Result<LayerDone> {
        let key = layer.diff_id.0;
        let mut location = None;
        if let Some(k) = known {
            if blob_exists(client, repo, &k.digest)? {
                progress.skipped(&key, "Layer already exists");
                return Ok(LayerDone {
                    digest: k.digest,
                    size: k.size,
                    uploaded: false,
                });
            }
            if let Some(from) = mount_from {
                match start_upload(client, repo, Some((&k.digest, from)))? {
                    None => {
                        progress.skipped(&key, &format!("Mounted from {from}"));
                        return Ok(LayerDone {
                            digest: k.digest,
                            size: k.size,
                            uploaded: false,
                        });
                    }
                    Some(loc) => location = Some(loc),
                }
            }
        }
        let location = match location {
            Some(l) => l,
            None => start_upload(client, repo, None)?.expect("no mount asked"),
        };
        progress.started(&key, layer.tar_size);
        let what = format!("layer {}", layer.diff_id);
        let mut tar = HashingReader::new(self.layer_tar(&layer.chain_id)?);
        let chunk = opts.chunk_size.max(1);
        // One chunk being filled, one queued, one on the wire.
        let (tx, rx) = sync_channel::<Vec<u8>>(1);
        let (compressed, sent) = std::thread::scope(|s| {
            let uploader = s.spawn(|| send_chunks(client, location, rx, &key, progress, cancel));
            let mut up = Chunker {
                tx: Some(tx),
                buf: Vec::with_capacity(chunk),
                chunk,
                hasher: Hasher::new(),
                size: 0,
            };
            let compressed = match opts.compression {
                LayerCompression::Gzip => {
                    let mut gz =
                        flate2::write::GzEncoder::new(&mut up, flate2::Compression::fast());
                    io::copy(&mut tar, &mut gz).and_then(|_| gz.finish().map(|_| ()))
                }
                LayerCompression::Zstd => {
                    zstd::stream::write::Encoder::new(&mut up, 3).and_then(|mut z| {
                        io::copy(&mut tar, &mut z).and_then(|_| z.finish().map(|_| ()))
                    })
                }
            }
            .and_then(|()| up.finish());
            // On an error `up` is dropped here, which ends the uploader.
            (
                compressed,
                uploader.join().expect("the uploader does not panic"),
            )
        });
        // The uploader's error is the cause when both failed.
        let location = sent?;
        let (digest, size) = compressed.map_err(|e| Error::stream(what.clone(), e))?;
        let (d, _) = tar.finish().map_err(|e| Error::stream(what.clone(), e))?;
        if d != layer.diff_id.0 {
            return Err(Error::LayerMissing {
                chain: layer.chain_id,
                reason: format!("its content no longer hashes to {}", layer.diff_id),
            });
        }
        client
            .send(
                Req::new("PUT", with_query(&location, &format!("digest={digest}"))),
                Some(&[]),
            )
            .map_err(|f| client.failure(&format!("blob {digest} (PUT)"), f))?;
        progress.finished(&key, "Pushed");
        Ok(LayerDone {
            digest,
            size,
            uploaded: true,
        })
    }
}
