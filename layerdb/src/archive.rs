//! Image archives in and out: docker-archive (`docker save` / `podman save`
//! tarballs, both the layout with `<diffID>.tar` files and legacy `<id>/`
//! directories and docker 25's `blobs/sha256/` paths) and the OCI image
//! layout (a directory or a tar of one).
//!
//! Loading checks everything before anything enters the store: each blob
//! hashes to its name, each layer's uncompressed tar to its diffID in the
//! config, the config to the image ID. Layers are extracted into `tmp/`
//! without the store lock; they and the images move in under the lock in
//! one step, so a failed or killed load leaves the store as it was.
//!
//! Saving writes each layer's original tar (rebuilt from tar-split, hashed
//! again on the way out), each config's exact bytes, and a layer shared by
//! several images once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{host_arch, ImageConfig};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, TempFile};
use crate::ids::{ChainId, DiffId, Digest, ImageId};
use crate::reference::{DefaultDomain, ImageName, ToImageRef};
use crate::store::{HashingReader, PendingLayer, Store};
use crate::tarfmt::{
    append_simple_dir, append_simple_file, padding, ExtBudget, RawHeader, TarWriter, BLOCK,
};

/// Largest JSON document (manifest, index, config) we read.
const JSON_LIMIT: u64 = 32 << 20;
/// Most members an image archive tar may have.
const MEMBERS_LIMIT: usize = 1 << 20;

const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Options of [`Store::load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The repository to give images whose OCI annotation holds only a tag
    /// (`latest`), as skopeo and umoci write when the layout itself is the
    /// name. Without it, such images load untagged.
    pub default_name: Option<String>,
}

/// An image that was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// Its ID.
    pub id: ImageId,
    /// The tags it was given.
    pub names: Vec<String>,
}

/// Layer compression for OCI output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed tar (`...layer.v1.tar`): the blob digest is the diffID.
    #[default]
    None,
    /// gzip (`...layer.v1.tar+gzip`), as podman writes by default.
    Gzip,
}

/// The on-disk formats [`Store::save`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    /// A `docker save` tarball (`manifest.json`, `<diffID>.tar`, `<ID>.json`).
    DockerArchive,
    /// A tar of an OCI image layout.
    OciArchive(Compression),
}

// ---- reading archives ------------------------------------------------------

#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Link(String),
}

/// Random access to the members of an archive: a directory or a tar file.
enum Archive {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        members: HashMap<String, Member>,
    },
}

fn clean_member(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

impl Archive {
    fn name(&self) -> String {
        match self {
            Archive::Dir(p) => p.display().to_string(),
            Archive::Tar { path, .. } => path.display().to_string(),
        }
    }

    /// Lists the members of a tar file with our own header reader (the
    /// `tar` crate reads PAX and GNU long-name data whole, whatever its
    /// size): extension headers are bounded by [`ExtBudget`], the member
    /// count by [`MEMBERS_LIMIT`].
    fn index_tar(path: &Path, label: &str) -> Result<Archive> {
        let f = File::open(path).ctx("open", path)?;
        let mut r = BufReader::new(f);
        let mut members = HashMap::new();
        let bad = |why: String| Error::bad_archive(label, why);
        let io_bad = |e: io::Error| Error::bad_archive(label, format!("not a readable tar: {e}"));
        let mut budget = ExtBudget::default();
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let (mut long_name, mut long_link) = (None, None);
        let mut pos: u64 = 0;
        let mut block = [0u8; BLOCK];
        loop {
            match r.read_exact(&mut block) {
                Ok(()) => {}
                // A tar without its end marker, as the tar crate accepts.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(io_bad(e)),
            }
            pos += BLOCK as u64;
            let h = RawHeader(&block);
            if h.is_zero() {
                break;
            }
            if !h.checksum_ok() {
                return Err(bad(format!(
                    "not a readable tar: bad header checksum at byte {}",
                    pos - BLOCK as u64
                )));
            }
            let hname = h.name();
            let mut size = h.size().ok_or_else(|| {
                bad(format!(
                    "member {}: bad size field",
                    String::from_utf8_lossy(&hname)
                ))
            })?;
            let t = h.typeflag();
            if matches!(t, b'x' | b'g' | b'L' | b'K') {
                budget.header(t, size).map_err(|why| {
                    bad(format!("member {}: {why}", String::from_utf8_lossy(&hname)))
                })?;
                let mut data = vec![0u8; size as usize + padding(size)];
                r.read_exact(&mut data).map_err(io_bad)?;
                pos += data.len() as u64;
                data.truncate(size as usize);
                let cut = |mut d: Vec<u8>| {
                    if let Some(n) = d.iter().position(|b| *b == 0) {
                        d.truncate(n);
                    }
                    d
                };
                match t {
                    b'x' => pax.extend(budget.pax(&data).map_err(|why| {
                        bad(format!("member {}: {why}", String::from_utf8_lossy(&hname)))
                    })?),
                    b'L' => long_name = Some(cut(data)),
                    b'K' => long_link = Some(cut(data)),
                    _ => {}
                }
                continue;
            }
            budget.reset();
            let mut name = long_name.take().unwrap_or(hname);
            let mut link = long_link.take().unwrap_or_else(|| h.linkname());
            for (k, v) in pax.drain(..) {
                match &k[..] {
                    b"path" => name = v,
                    b"linkpath" => link = v,
                    b"size" => {
                        size = std::str::from_utf8(&v)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| {
                                bad(format!(
                                    "member {}: bad PAX size",
                                    String::from_utf8_lossy(&name)
                                ))
                            })?
                    }
                    _ => {}
                }
            }
            if t == b'S' {
                return Err(bad(format!(
                    "member {} is a GNU sparse file, which image archives never hold",
                    String::from_utf8_lossy(&name)
                )));
            }
            let name = clean_member(&String::from_utf8_lossy(&name));
            let m = match t {
                b'0' | b'\0' | b'7' => Some(Member::File { offset: pos, size }),
                b'1' | b'2' => {
                    let target = String::from_utf8_lossy(&link).into_owned();
                    let resolved = if t == b'1' {
                        clean_member(&target)
                    } else {
                        let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                        clean_member(&format!("{dir}/{target}"))
                    };
                    Some(Member::Link(resolved))
                }
                _ => None,
            };
            if let Some(m) = m {
                if members.len() == MEMBERS_LIMIT {
                    return Err(bad(format!(
                        "more than {MEMBERS_LIMIT} members; not an image archive"
                    )));
                }
                members.insert(name, m);
            }
            let skip = size + padding(size) as u64;
            r.seek_relative(i64::try_from(skip).map_err(|_| bad("member too large".into()))?)
                .map_err(io_bad)?;
            pos += skip;
        }
        Ok(Archive::Tar {
            path: path.to_path_buf(),
            members,
        })
    }

    fn exists(&self, member: &str) -> bool {
        match self {
            Archive::Dir(d) => d.join(member).is_file(),
            Archive::Tar { members, .. } => members.contains_key(&clean_member(member)),
        }
    }

    /// Opens a member for reading; returns it and its size.
    fn open(&self, member: &str) -> Result<(Box<dyn Read>, u64)> {
        let missing = || Error::bad_archive(self.name(), format!("{member} is missing"));
        match self {
            Archive::Dir(d) => {
                let clean = clean_member(member);
                if clean.starts_with("..") {
                    return Err(missing());
                }
                let p = d.join(&clean);
                let f = File::open(&p).map_err(|_| missing())?;
                let size = f.metadata().ctx("stat", &p)?.len();
                Ok((Box::new(BufReader::new(f)), size))
            }
            Archive::Tar { path, members } => {
                let mut name = clean_member(member);
                for _ in 0..40 {
                    match members.get(&name) {
                        Some(Member::File { offset, size }) => {
                            let mut f = File::open(path).ctx("open", path)?;
                            f.seek(SeekFrom::Start(*offset)).ctx("seek", path)?;
                            return Ok((Box::new(BufReader::new(f).take(*size)), *size));
                        }
                        Some(Member::Link(t)) => name = t.clone(),
                        None => return Err(missing()),
                    }
                }
                Err(missing())
            }
        }
    }

    /// Reads a small member whole.
    fn read(&self, member: &str) -> Result<Vec<u8>> {
        let (mut r, size) = self.open(member)?;
        if size > JSON_LIMIT {
            return Err(Error::bad_archive(
                self.name(),
                format!("{member} is too large ({size} bytes)"),
            ));
        }
        let mut v = Vec::with_capacity(size as usize);
        r.read_to_end(&mut v)
            .map_err(|e| Error::stream(format!("{} member {member}", self.name()), e))?;
        Ok(v)
    }

    /// Reads a blob by digest and checks it.
    fn read_blob(&self, d: &Digest, size: Option<u64>) -> Result<Vec<u8>> {
        let member = format!("blobs/sha256/{}", d.hex());
        let bytes = self.read(&member)?;
        check_blob(&self.name(), &member, d, size, &bytes)?;
        Ok(bytes)
    }
}

fn check_blob(
    archive: &str,
    member: &str,
    d: &Digest,
    size: Option<u64>,
    bytes: &[u8],
) -> Result<()> {
    let actual = Digest::of(bytes);
    if actual != *d {
        return Err(Error::DigestMismatch {
            what: format!("{archive}: blob {member}"),
            expected: *d,
            actual,
        });
    }
    if let Some(s) = size {
        if s != bytes.len() as u64 {
            return Err(Error::bad_archive(
                archive,
                format!(
                    "blob {member} has {} bytes, its descriptor says {s}",
                    bytes.len()
                ),
            ));
        }
    }
    Ok(())
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: String) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json { what, source })
}

/// One layer to read from an archive.
struct LayerSrc {
    member: String,
    /// The blob digest to verify (OCI, docker 25), if the archive names one.
    digest: Option<Digest>,
    size: Option<u64>,
}

/// One image found in an archive.
struct ImagePlan {
    config: Vec<u8>,
    config_name: String,
    layers: Vec<LayerSrc>,
    names: Vec<ImageName>,
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn digest_in_name(member: &str) -> Option<Digest> {
    let base = member.rsplit('/').next()?;
    let hex = base
        .strip_suffix(".json")
        .or_else(|| base.strip_suffix(".tar"))
        .unwrap_or(base);
    hex.parse().ok()
}

fn plan_docker(ar: &Archive) -> Result<Vec<ImagePlan>> {
    let bytes = ar.read("manifest.json")?;
    let entries: Vec<DockerManifestEntry> =
        parse_json(&bytes, format!("{}: manifest.json", ar.name()))?;
    let mut out = Vec::new();
    for e in entries {
        let config = ar.read(&e.config)?;
        // Configs are named by their digest in every layout we know.
        if let Some(d) = digest_in_name(&e.config) {
            check_blob(&ar.name(), &e.config, &d, None, &config)?;
        }
        let mut names = Vec::new();
        for t in e.repo_tags.unwrap_or_default() {
            names.push(ImageName::parse(&t, DefaultDomain::DockerHub)?);
        }
        let layers = e
            .layers
            .iter()
            .map(|l| LayerSrc {
                member: l.clone(),
                digest: if l.starts_with("blobs/") {
                    digest_in_name(l)
                } else {
                    None
                },
                size: None,
            })
            .collect();
        out.push(ImagePlan {
            config,
            config_name: e.config,
            layers,
            names,
        });
    }
    Ok(out)
}

#[derive(Deserialize, Serialize, Clone, Debug)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Serialize, Clone, Debug)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

fn desc_digest(ar: &Archive, d: &Descriptor) -> Result<Digest> {
    d.digest.parse().map_err(|_| {
        Error::bad_archive(
            ar.name(),
            format!("unsupported or invalid digest {:?}", d.digest),
        )
    })
}

fn oci_names(d: &Descriptor, opts: &LoadOptions) -> Result<Vec<ImageName>> {
    let Some(ann) = &d.annotations else {
        return Ok(Vec::new());
    };
    if let Some(n) = ann.get(ANN_CONTAINERD_NAME) {
        return Ok(vec![ImageName::parse(n, DefaultDomain::DockerHub)?]);
    }
    match ann.get(ANN_REF_NAME) {
        Some(r) if r.contains('/') || r.contains(':') => {
            Ok(vec![ImageName::parse(r, DefaultDomain::DockerHub)?])
        }
        Some(tag) => match &opts.default_name {
            Some(repo) => {
                let base = ImageName::parse(repo, DefaultDomain::Localhost)?;
                Ok(vec![ImageName::parse(
                    &format!("{}:{tag}", base.repo()),
                    DefaultDomain::Localhost,
                )?])
            }
            None => Ok(Vec::new()),
        },
        None => Ok(Vec::new()),
    }
}

fn plan_oci_desc(
    ar: &Archive,
    d: &Descriptor,
    names: Vec<ImageName>,
    depth: usize,
    out: &mut Vec<ImagePlan>,
) -> Result<()> {
    if depth > 4 {
        return Err(Error::bad_archive(
            ar.name(),
            "image indexes nested too deep",
        ));
    }
    let digest = desc_digest(ar, d)?;
    let bytes = ar.read_blob(&digest, Some(d.size))?;
    let what = format!("{}: blob {}", ar.name(), d.digest);
    let is_index = d.media_type == MT_OCI_INDEX
        || d.media_type == MT_DOCKER_LIST
        || (d.media_type.is_empty()
            && serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("manifests").cloned())
                .is_some());
    if is_index {
        let idx: OciIndex = parse_json(&bytes, what)?;
        let pick = idx.manifests.iter().find(|m| {
            m.platform
                .as_ref()
                .is_none_or(|p| p.os == "linux" && p.architecture == host_arch())
        });
        let Some(m) = pick else {
            return Err(Error::bad_archive(
                ar.name(),
                format!("index {} has no image for linux/{}", d.digest, host_arch()),
            ));
        };
        return plan_oci_desc(ar, m, names, depth + 1, out);
    }
    let m: OciManifest = parse_json(&bytes, what)?;
    if let Some(mt) = &m.media_type {
        if mt != MT_OCI_MANIFEST && mt != MT_DOCKER_MANIFEST {
            return Err(Error::bad_archive(
                ar.name(),
                format!("manifest {} has unsupported media type {mt}", d.digest),
            ));
        }
    }
    let cd = desc_digest(ar, &m.config)?;
    let config = ar.read_blob(&cd, Some(m.config.size))?;
    let mut layers = Vec::new();
    for l in &m.layers {
        let ld = desc_digest(ar, l)?;
        let member = format!("blobs/sha256/{}", ld.hex());
        if !ar.exists(&member) {
            return Err(Error::bad_archive(
                ar.name(),
                format!(
                    "manifest {} references a missing blob {}",
                    d.digest, l.digest
                ),
            ));
        }
        layers.push(LayerSrc {
            member,
            digest: Some(ld),
            size: Some(l.size),
        });
    }
    out.push(ImagePlan {
        config,
        config_name: m.config.digest.clone(),
        layers,
        names,
    });
    Ok(())
}

fn plan_oci(ar: &Archive, opts: &LoadOptions) -> Result<Vec<ImagePlan>> {
    let bytes = ar.read("index.json")?;
    let idx: OciIndex = parse_json(&bytes, format!("{}: index.json", ar.name()))?;
    let mut out = Vec::new();
    for d in &idx.manifests {
        let names = oci_names(d, opts)?;
        plan_oci_desc(ar, d, names, 0, &mut out)?;
    }
    Ok(out)
}

impl Store {
    /// Loads every image of an archive: a docker-archive or OCI-archive tar
    /// file (plain, gzip or zstd), or an OCI layout directory. Returns the
    /// images with the tags they got. On any error nothing is stored.
    pub fn load(&self, path: &Path, opts: &LoadOptions) -> Result<Vec<LoadedImage>> {
        let md = fs::metadata(path).ctx("stat", path)?;
        if md.is_dir() {
            return self.load_archive(&Archive::Dir(path.to_path_buf()), opts);
        }
        let mut f = File::open(path).ctx("open", path)?;
        let mut magic = [0u8; 4];
        let n = f.read(&mut magic).ctx("read", path)?;
        let compressed =
            n >= 2 && magic[..2] == [0x1f, 0x8b] || n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd];
        if compressed {
            f.seek(SeekFrom::Start(0)).ctx("seek", path)?;
            return self.load_reader(&mut f, opts);
        }
        let ar = Archive::index_tar(path, &path.display().to_string())?;
        self.load_archive(&ar, opts)
    }

    /// Loads from a stream (stdin): it is spooled to the store's `tmp/`
    /// (decompressed if gzip or zstd) and loaded from there.
    pub fn load_reader(
        &self,
        reader: &mut dyn Read,
        opts: &LoadOptions,
    ) -> Result<Vec<LoadedImage>> {
        let (tmp, mut f) = TempFile::new(&self.tmp_dir())?;
        let mut input = crate::extract::decompress(reader, "image archive")?;
        io::copy(&mut input, &mut f).map_err(|e| Error::stream("image archive", e))?;
        drop(f);
        let ar = Archive::index_tar(tmp.path(), "image archive")?;
        self.load_archive(&ar, opts)
    }

    fn load_archive(&self, ar: &Archive, opts: &LoadOptions) -> Result<Vec<LoadedImage>> {
        // A layer we found stored may be deleted by another process before
        // we take the lock; then extract it too, on a second pass.
        let mut tries = 0;
        loop {
            match self.load_archive_once(ar, opts) {
                Err(Error::LayerMissing { .. }) if tries < 3 => tries += 1,
                r => return r,
            }
        }
    }

    fn load_archive_once(&self, ar: &Archive, opts: &LoadOptions) -> Result<Vec<LoadedImage>> {
        let plans = if ar.exists("manifest.json") {
            plan_docker(ar)?
        } else if ar.exists("index.json") {
            plan_oci(ar, opts)?
        } else {
            return Err(Error::bad_archive(
                ar.name(),
                "neither manifest.json (docker-archive) nor index.json (OCI layout) found",
            ));
        };
        if plans.is_empty() {
            return Err(Error::bad_archive(ar.name(), "it holds no image"));
        }
        let mut pending: Vec<PendingLayer> = Vec::new();
        let mut seen: HashSet<ChainId> = HashSet::new();
        let mut chains = Vec::new();
        for plan in &plans {
            let cfg = ImageConfig::parse(
                &plan.config,
                &format!("{}: config {}", ar.name(), plan.config_name),
            )?;
            let diffs: Vec<DiffId> = cfg.rootfs.diff_ids.clone();
            if diffs.len() != plan.layers.len() {
                return Err(Error::bad_archive(
                    ar.name(),
                    format!(
                        "config {} lists {} layers, the manifest {}",
                        plan.config_name,
                        diffs.len(),
                        plan.layers.len()
                    ),
                ));
            }
            let chain = ChainId::chain(&diffs);
            for (i, src) in plan.layers.iter().enumerate() {
                if seen.contains(&chain[i]) || self.has_layer(&chain[i]) {
                    continue;
                }
                let what = format!("{}: layer {}", ar.name(), src.member);
                let (r, size) = ar.open(&src.member)?;
                if let Some(s) = src.size {
                    if s != size {
                        return Err(Error::bad_archive(
                            ar.name(),
                            format!(
                                "blob {} has {size} bytes, its descriptor says {s}",
                                src.member
                            ),
                        ));
                    }
                }
                let mut hr = HashingReader::new(r);
                let parent = if i == 0 { None } else { Some(chain[i - 1]) };
                let layer = self.extract_layer(&mut hr, parent, Some(diffs[i]), &what)?;
                let (digest, _) = hr.finish().map_err(|e| Error::stream(what.clone(), e))?;
                if let Some(d) = src.digest {
                    if d != digest {
                        return Err(Error::DigestMismatch {
                            what: format!("{}: blob {}", ar.name(), src.member),
                            expected: d,
                            actual: digest,
                        });
                    }
                }
                seen.insert(chain[i]);
                pending.push(layer);
            }
            chains.push(chain);
        }
        let l = self.lock(true)?;
        let mut out = Vec::new();
        for (plan, chain) in plans.iter().zip(&chains) {
            let id = self.store_image_locked(&l, &mut pending, chain, &plan.config, &plan.names)?;
            out.push(LoadedImage {
                id,
                names: plan.names.iter().map(|n| n.to_string()).collect(),
            });
        }
        Ok(out)
    }

    // ---- saving ------------------------------------------------------------

    /// Resolves references for saving: each image once, with the tags the
    /// references named (a reference by ID adds no tag, as in docker).
    fn save_set<R: ToImageRef>(&self, refs: &[R]) -> Result<Vec<(ImageId, Vec<String>)>> {
        let mut out: Vec<(ImageId, Vec<String>)> = Vec::new();
        let tags = self.read_tags()?;
        for r in refs {
            let r = r.to_image_ref();
            let id = self.resolve_locked(&r)?;
            let name = ImageName::candidates(&r.text())
                .into_iter()
                .map(|c| c.to_string())
                .find(|c| tags.get(c) == Some(&id));
            match out.iter_mut().find(|(i, _)| *i == id) {
                Some((_, names)) => names.extend(name),
                None => out.push((id, name.into_iter().collect())),
            }
        }
        Ok(out)
    }

    /// Copies a stored layer's tar into `out`, checking its diffID on the way.
    fn copy_layer(&self, chain: &ChainId, diff: &DiffId, out: &mut dyn Write) -> Result<u64> {
        let mut hr = HashingReader::new(self.layer_tar(chain)?);
        let n = io::copy(&mut hr, out).map_err(|e| Error::LayerMissing {
            chain: *chain,
            reason: e.to_string(),
        })?;
        let (d, _) = hr.finish().map_err(|e| Error::stream("layer", e))?;
        if d != diff.0 {
            return Err(Error::LayerMissing {
                chain: *chain,
                reason: format!("its content no longer hashes to {diff}"),
            });
        }
        Ok(n)
    }

    /// Writes images as a tar archive to `out`.
    ///
    /// References are resolved as [`Store::resolve`] does; an image named
    /// by tag carries that tag in the archive.
    pub fn save<R: ToImageRef>(
        &self,
        refs: &[R],
        format: SaveFormat,
        out: &mut dyn Write,
    ) -> Result<()> {
        let _l = self.lock(false)?;
        let set = self.save_set(refs)?;
        match format {
            SaveFormat::DockerArchive => self.write_docker_archive(&set, out),
            SaveFormat::OciArchive(c) => {
                let mut w = TarWriter::new(out);
                self.write_oci(&set, c, &mut OciSink::Tar(&mut w))?;
                w.finish().map_err(|e| Error::stream("output", e))?;
                Ok(())
            }
        }
    }

    /// Writes images as an OCI image layout into `dir`, which must not exist
    /// or be empty.
    pub fn save_oci_dir<R: ToImageRef>(
        &self,
        refs: &[R],
        dir: &Path,
        compression: Compression,
    ) -> Result<()> {
        if dir.exists() && fs::read_dir(dir).ctx("list", dir)?.next().is_some() {
            return Err(Error::Unsupported(format!(
                "{} is not empty; save an OCI layout into a new directory",
                dir.display()
            )));
        }
        fs::create_dir_all(dir.join("blobs/sha256")).ctx("mkdir", dir)?;
        let _l = self.lock(false)?;
        let set = self.save_set(refs)?;
        self.write_oci(&set, compression, &mut OciSink::<io::Sink>::Dir(dir))
    }

    fn write_docker_archive(
        &self,
        set: &[(ImageId, Vec<String>)],
        out: &mut dyn Write,
    ) -> Result<()> {
        let oerr = |e: io::Error| Error::stream("output archive", e);
        let mut w = TarWriter::new(out);
        let mut written: HashSet<DiffId> = HashSet::new();
        let mut manifest = Vec::new();
        for (id, names) in set {
            let info = self.inspect_locked(id)?;
            let mut layer_names = Vec::new();
            for l in &info.layers {
                let name = format!("{}.tar", l.diff_id.hex());
                if written.insert(l.diff_id) {
                    let mut r = HashingReader::new(self.layer_tar(&l.chain_id)?);
                    append_simple_file(&mut w, &name, l.tar_size, &mut r).map_err(|e| {
                        Error::LayerMissing {
                            chain: l.chain_id,
                            reason: e.to_string(),
                        }
                    })?;
                    let (d, _) = r.finish().map_err(oerr)?;
                    if d != l.diff_id.0 {
                        return Err(Error::LayerMissing {
                            chain: l.chain_id,
                            reason: format!("its content no longer hashes to {}", l.diff_id),
                        });
                    }
                }
                layer_names.push(name);
            }
            let cname = format!("{}.json", id.hex());
            append_simple_file(
                &mut w,
                &cname,
                info.config_bytes.len() as u64,
                &mut &info.config_bytes[..],
            )
            .map_err(oerr)?;
            manifest.push(serde_json::json!({
                "Config": cname,
                "RepoTags": names,
                "Layers": layer_names,
            }));
        }
        let mbytes = serde_json::to_vec(&manifest).expect("serialisable");
        append_simple_file(
            &mut w,
            "manifest.json",
            mbytes.len() as u64,
            &mut &mbytes[..],
        )
        .map_err(oerr)?;
        w.finish().map_err(oerr)?;
        Ok(())
    }

    fn write_oci<W: Write>(
        &self,
        set: &[(ImageId, Vec<String>)],
        c: Compression,
        sink: &mut OciSink<'_, W>,
    ) -> Result<()> {
        sink.dir("blobs/")?;
        sink.dir("blobs/sha256/")?;
        let mut written: HashMap<DiffId, Descriptor> = HashMap::new();
        let mut written_blobs: HashSet<Digest> = HashSet::new();
        let mut index = Vec::new();
        for (id, names) in set {
            let info = self.inspect_locked(id)?;
            let mut layers = Vec::new();
            for l in &info.layers {
                if let Some(d) = written.get(&l.diff_id) {
                    layers.push(d.clone());
                    continue;
                }
                let desc = match c {
                    Compression::None => {
                        let mut r = HashingReader::new(self.layer_tar(&l.chain_id)?);
                        sink.blob_stream(&l.diff_id.0, l.tar_size, &mut r, self)?;
                        let (d, _) = r.finish().map_err(|e| Error::stream("layer", e))?;
                        if d != l.diff_id.0 {
                            return Err(Error::LayerMissing {
                                chain: l.chain_id,
                                reason: format!("its content no longer hashes to {}", l.diff_id),
                            });
                        }
                        Descriptor {
                            media_type: MT_OCI_LAYER.into(),
                            digest: l.diff_id.to_string(),
                            size: l.tar_size,
                            platform: None,
                            annotations: None,
                        }
                    }
                    Compression::Gzip => {
                        let (tmp, f) = TempFile::new(&self.tmp_dir())?;
                        let hw = HashingWriter::new(f);
                        let mut gz = flate2::write::GzEncoder::new(hw, flate2::Compression::fast());
                        self.copy_layer(&l.chain_id, &l.diff_id, &mut gz)?;
                        let hw = gz.finish().map_err(|e| Error::io("write", tmp.path(), e))?;
                        let (digest, size) = (hw.hasher.finish(), hw.count);
                        let mut f = File::open(tmp.path()).ctx("open", tmp.path())?;
                        sink.blob_stream(&digest, size, &mut f, self)?;
                        Descriptor {
                            media_type: MT_OCI_LAYER_GZIP.into(),
                            digest: digest.to_string(),
                            size,
                            platform: None,
                            annotations: None,
                        }
                    }
                };
                written.insert(l.diff_id, desc.clone());
                layers.push(desc);
            }
            let cd = Digest::of(&info.config_bytes);
            if written_blobs.insert(cd) {
                sink.blob_bytes(&cd, &info.config_bytes, self)?;
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": MT_OCI_MANIFEST,
                "config": {
                    "mediaType": MT_OCI_CONFIG,
                    "digest": cd.to_string(),
                    "size": info.config_bytes.len(),
                },
                "layers": layers,
            });
            let mbytes = serde_json::to_vec(&manifest).expect("serialisable");
            let md = Digest::of(&mbytes);
            if written_blobs.insert(md) {
                sink.blob_bytes(&md, &mbytes, self)?;
            }
            let mk = |ann: Option<BTreeMap<String, String>>| Descriptor {
                media_type: MT_OCI_MANIFEST.into(),
                digest: md.to_string(),
                size: mbytes.len() as u64,
                platform: None,
                annotations: ann,
            };
            if names.is_empty() {
                index.push(mk(None));
            }
            for n in names {
                let mut a = BTreeMap::new();
                a.insert(ANN_REF_NAME.to_string(), n.clone());
                index.push(mk(Some(a)));
            }
        }
        let ibytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": index,
        }))
        .expect("serialisable");
        sink.file("index.json", &ibytes)?;
        sink.file("oci-layout", br#"{"imageLayoutVersion": "1.0.0"}"#)?;
        Ok(())
    }
}

/// Where OCI layout files go: a directory or a tar stream.
enum OciSink<'a, W: Write> {
    Dir(&'a Path),
    Tar(&'a mut TarWriter<W>),
}

impl<W: Write> OciSink<'_, W> {
    fn dir(&mut self, name: &str) -> Result<()> {
        match self {
            OciSink::Dir(_) => Ok(()),
            OciSink::Tar(w) => append_simple_dir(w, name).map_err(|e| Error::stream("output", e)),
        }
    }

    fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        match self {
            OciSink::Dir(d) => fsutil::write_atomic(d, name, bytes),
            OciSink::Tar(w) => append_simple_file(w, name, bytes.len() as u64, &mut &bytes[..])
                .map_err(|e| Error::stream("output", e)),
        }
    }

    fn blob_bytes(&mut self, d: &Digest, bytes: &[u8], _s: &Store) -> Result<()> {
        match self {
            OciSink::Dir(dir) => fsutil::write_atomic(&dir.join("blobs/sha256"), &d.hex(), bytes),
            OciSink::Tar(_) => self.file(&format!("blobs/sha256/{}", d.hex()), bytes),
        }
    }

    fn blob_stream(&mut self, d: &Digest, size: u64, r: &mut dyn Read, _s: &Store) -> Result<()> {
        match self {
            OciSink::Dir(dir) => {
                let bdir = dir.join("blobs/sha256");
                let tmp = bdir.join(format!(".{}", fsutil::unique_name("blob-")));
                let mut f = File::create(&tmp).ctx("create", &tmp)?;
                io::copy(r, &mut f).map_err(|e| Error::io("write", &tmp, e))?;
                f.sync_all().ctx("fsync", &tmp)?;
                let dest = bdir.join(d.hex());
                fs::rename(&tmp, &dest).ctx("rename", &dest)?;
                Ok(())
            }
            OciSink::Tar(w) => append_simple_file(w, &format!("blobs/sha256/{}", d.hex()), size, r)
                .map_err(|e| Error::stream("output", e)),
        }
    }
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: crate::ids::Hasher,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: crate::ids::Hasher::new(),
            count: 0,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
