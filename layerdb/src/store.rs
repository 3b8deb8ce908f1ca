//! The store: a root directory of layers, images and tags.
//!
//! ```text
//! ROOT/strata.lock                 flock: shared for reads, exclusive for changes
//! ROOT/tmp/NAME/, NAME.lock        scratch space of running operations
//! ROOT/layers/CHAINHEX/diff/       the extracted layer (overlay-form whiteouts)
//! ROOT/layers/CHAINHEX/tar-split.zst   how to rebuild the original tar (see tarsplit)
//! ROOT/layers/CHAINHEX/layer.json  diffID, parent chainID, sizes
//! ROOT/images/IDHEX/config.json    the config, exact bytes (sha256 = image ID)
//! ROOT/images/IDHEX/image.json     the image's chainIDs, when it was stored
//! ROOT/images/IDHEX/users/NAME     one empty file per user (container) of the image
//! ROOT/tags.json                   {"localhost/busybox:latest": "sha256:..."}
//! ```
//!
//! Invariants:
//! - A layer or image directory appears by one `rename` from `tmp/`, after
//!   its content is on disk (`syncfs`), so it is complete or absent.
//! - Layers and images are only added under the exclusive lock, in one
//!   critical section with the image that uses them; so outside a crash no
//!   layer is unreferenced, and `check` may delete unreferenced layers.
//! - Layer refcounts are not stored: a layer is deleted when the last image
//!   whose chain contains it goes (computed under the lock), so a crash can
//!   never leave a wrong count.
//! - Extraction (the slow part) runs without the lock, in `tmp/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::abilities::Abilities;
use crate::config::{self, ConfigChange, ImageConfig};
use crate::error::{Error, IoContext, Result};
use crate::extract;
use crate::fsutil::{self, TempDir};
use crate::ids::{ChainId, DiffId, Digest, Hasher, ImageId};
use crate::reference::{DefaultDomain, ImageName, ImageRef, ToImageRef};
use crate::tarsplit::{Reassembler, SplitWriter};

/// The default store root when neither an explicit path nor `$STRATA_ROOT`
/// is given.
pub const DEFAULT_ROOT: &str = "/var/lib/strata";

/// What `layers/CHAIN/layer.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub chain_id: ChainId,
    pub diff_id: DiffId,
    pub parent: Option<ChainId>,
    /// Bytes of the uncompressed tar (what `save` writes).
    pub tar_size: u64,
    /// Bytes of file content.
    pub content_size: u64,
}

/// What `images/ID/image.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub id: ImageId,
    pub layers: Vec<ChainId>,
    pub stored: String,
}

/// A held store lock (shared or exclusive); released on drop.
pub(crate) struct Lock {
    _f: Flock<File>,
}

/// A layer extracted into `tmp/`, waiting to be moved into the store.
pub(crate) struct PendingLayer {
    pub temp: TempDir,
    pub record: LayerRecord,
}

/// One image, as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSummary {
    /// Its ID.
    pub id: ImageId,
    /// Its tags (`localhost/busybox:latest`), sorted.
    pub names: Vec<String>,
    /// The config's `created`.
    pub created: Option<String>,
    /// Sum of the layers' file content sizes.
    pub size: u64,
    /// Number of layers.
    pub layer_count: usize,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    /// The layer's diffID.
    pub diff_id: DiffId,
    /// Its chainID (the directory name).
    pub chain_id: ChainId,
    /// Bytes of file content.
    pub size: u64,
    /// Bytes of its uncompressed tar.
    pub tar_size: u64,
    /// The extracted directory (a `lowerdir` for the filesystem).
    pub path: PathBuf,
}

/// Everything about one image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Its ID.
    pub id: ImageId,
    /// Its tags, sorted.
    pub names: Vec<String>,
    /// The config as stored (exact bytes).
    pub config_bytes: Vec<u8>,
    /// The config, parsed.
    pub config: ImageConfig,
    /// Its layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// Sum of layer sizes.
    pub size: u64,
    /// Who uses it (containers), sorted.
    pub users: Vec<String>,
}

/// One row of `history`, newest first as docker prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// When.
    pub created: Option<String>,
    /// The command.
    pub created_by: Option<String>,
    /// The message.
    pub comment: Option<String>,
    /// Who.
    pub author: Option<String>,
    /// The layer this step made (`None` for an empty layer).
    pub layer: Option<DiffId>,
    /// Its size (0 for an empty layer).
    pub size: u64,
}

/// What a removal did, in order (as `docker rmi` prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// A tag was removed.
    Untagged(String),
    /// An image was deleted.
    Deleted(ImageId),
    /// A layer was deleted (its last image is gone).
    LayerDeleted(ChainId),
}

/// Options of [`Store::import`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// `NAME[:TAG]` to give the image (`localhost/` is added when no
    /// registry is named).
    pub name: Option<String>,
    /// `--change` instructions.
    pub changes: Vec<ConfigChange>,
    /// The history comment (`--message`).
    pub comment: Option<String>,
    /// The creation time (RFC 3339); now when `None`. Fix it to make
    /// imports reproducible.
    pub created: Option<String>,
}

/// Options of [`Store::open_with`].
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Behave as a rootless store even when running as root: whiteouts as
    /// `.wh.` files, opaque dirs as `user.overlay.opaque`, owners not set,
    /// device nodes refused.
    pub unprivileged: bool,
}

/// The layer database. Cheap to create; every method takes the store lock
/// for as long as it needs it, so several `Store`s (in one or several
/// processes) may use one root at once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Probed at the first extraction, not at open: most commands extract
    /// nothing. Shared by the store's clones.
    abilities: std::sync::Arc<std::sync::OnceLock<Abilities>>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).ctx("read", path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A reader that hashes what passes through it.
pub(crate) struct HashingReader<R> {
    pub inner: R,
    pub hasher: Hasher,
    pub count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
            count: 0,
        }
    }

    /// Reads to the end, then returns (digest, bytes).
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((self.hasher.finish(), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl Store {
    /// Opens (creating it if needed) the store at `root`.
    ///
    /// What the store may do (owners, device nodes, `trusted.*` xattrs,
    /// device whiteouts) is probed in its `tmp` directory at the first
    /// extraction: see [`Abilities`].
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(root, &StoreOptions::default())
    }

    /// Opens (creating it if needed) the store at `root` with options.
    pub fn open_with(root: impl AsRef<Path>, opts: &StoreOptions) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        for d in ["", "tmp", "layers", "images"] {
            let p = root.join(d);
            match fs::DirBuilder::new().recursive(true).mode(0o700).create(&p) {
                Ok(()) => {}
                Err(e) => return Err(Error::io("mkdir", p, e)),
            }
        }
        let lock = root.join("strata.lock");
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&lock)
            .ctx("create", &lock)?;
        let abilities = std::sync::Arc::new(std::sync::OnceLock::new());
        if opts.unprivileged {
            let _ = abilities.set(Abilities::UNPRIVILEGED);
        }
        Ok(Store { root, abilities })
    }

    /// The root a user means: `explicit`, else `$STRATA_ROOT`, else
    /// [`DEFAULT_ROOT`].
    pub fn default_root(explicit: Option<&Path>) -> PathBuf {
        if let Some(p) = explicit {
            return p.to_path_buf();
        }
        match std::env::var_os("STRATA_ROOT") {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => PathBuf::from(DEFAULT_ROOT),
        }
    }

    /// Opens the store at [`Store::default_root`]`(None)`.
    pub fn open_default() -> Result<Store> {
        Store::open(Store::default_root(None))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What extraction may do here (owners, devices, `trusted.*`, the
    /// forms written), probed once per store value.
    pub fn abilities(&self) -> Result<Abilities> {
        if let Some(a) = self.abilities.get() {
            return Ok(*a);
        }
        let a = Abilities::probe(&self.tmp_dir())?;
        Ok(*self.abilities.get_or_init(|| a))
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub(crate) fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub(crate) fn layer_dir(&self, c: &ChainId) -> PathBuf {
        self.layers_dir().join(c.hex())
    }
    pub(crate) fn image_dir(&self, i: &ImageId) -> PathBuf {
        self.images_dir().join(i.hex())
    }

    /// The extracted directory of a layer (its `diff/`), for the
    /// filesystem's `lowerdir`.
    pub fn layer_path(&self, chain: &ChainId) -> PathBuf {
        self.layer_dir(chain).join("diff")
    }

    pub(crate) fn lock(&self, exclusive: bool) -> Result<Lock> {
        let p = self.root.join("strata.lock");
        let f = OpenOptions::new().read(true).open(&p).ctx("open", &p)?;
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        let f = Flock::lock(f, arg).map_err(|(_, e)| Error::io("flock", &p, e.into()))?;
        Ok(Lock { _f: f })
    }

    // ---- layers -------------------------------------------------------

    pub(crate) fn read_layer(&self, c: &ChainId) -> Result<LayerRecord> {
        let p = self.layer_dir(c).join("layer.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::LayerMissing {
                chain: *c,
                reason: format!("layer.json does not parse: {e}"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::LayerMissing {
                chain: *c,
                reason: "not in the store".into(),
            }),
            Err(e) => Err(Error::io("read", p, e)),
        }
    }

    pub(crate) fn has_layer(&self, c: &ChainId) -> bool {
        self.layer_dir(c).join("layer.json").exists()
    }

    /// Extracts one layer stream (plain, gzip or zstd) into `tmp/`, hashing
    /// it. When `expect` is given, a different diffID is an error.
    pub(crate) fn extract_layer(
        &self,
        reader: &mut dyn Read,
        parent: Option<ChainId>,
        expect: Option<DiffId>,
        what: &str,
    ) -> Result<PendingLayer> {
        let temp = TempDir::new(&self.tmp_dir())?;
        let diff = temp.path().join("diff");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&diff)
            .ctx("mkdir", &diff)?;
        let split_path = temp.path().join("tar-split.zst");
        let split_file = File::create(&split_path).ctx("create", &split_path)?;
        let enc = zstd::stream::write::Encoder::new(split_file, 3)
            .map_err(|e| Error::io("zstd", &split_path, e))?;
        let mut split = SplitWriter::new(enc).map_err(|e| Error::io("write", &split_path, e))?;
        let input = extract::decompress(reader, what)?;
        let ex = extract::extract(input, &diff, &mut split, self.abilities()?, what)?;
        let enc = split
            .finish()
            .map_err(|e| Error::io("write", &split_path, e))?;
        enc.finish()
            .map_err(|e| Error::io("write", &split_path, e))?;
        if let Some(exp) = expect {
            if exp != ex.diff_id {
                return Err(Error::DigestMismatch {
                    what: format!("{what} (uncompressed tar vs the config's diffID)"),
                    expected: exp.0,
                    actual: ex.diff_id.0,
                });
            }
        }
        let record = LayerRecord {
            chain_id: ChainId::next(parent.as_ref(), &ex.diff_id),
            diff_id: ex.diff_id,
            parent,
            tar_size: ex.tar_size,
            content_size: ex.content_size,
        };
        let json = serde_json::to_vec(&record).expect("serialisable");
        fs::write(temp.path().join("layer.json"), json).ctx("write", temp.path())?;
        Ok(PendingLayer { temp, record })
    }

    /// Streams the original tar of a stored layer (byte-identical to what
    /// was imported; its SHA-256 is the diffID).
    pub fn layer_tar(&self, chain: &ChainId) -> Result<impl Read + use<>> {
        let dir = self.layer_dir(chain);
        let sp = dir.join("tar-split.zst");
        let f = File::open(&sp).map_err(|e| Error::LayerMissing {
            chain: *chain,
            reason: format!("{}: {e}", sp.display()),
        })?;
        let dec = zstd::stream::read::Decoder::new(f).map_err(|e| Error::io("zstd", &sp, e))?;
        let diff = dir.join("diff");
        let root = nix::fcntl::open(
            &diff,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Error::LayerMissing {
            chain: *chain,
            reason: format!("{}: {e}", diff.display()),
        })?;
        Reassembler::new(dec, root).map_err(|e| Error::LayerMissing {
            chain: *chain,
            reason: format!("{}: {e}", sp.display()),
        })
    }

    // ---- images and tags ---------------------------------------------

    pub(crate) fn read_tags(&self) -> Result<BTreeMap<String, ImageId>> {
        let p = self.root.join("tags.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                path: p,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(Error::io("read", p, e)),
        }
    }

    pub(crate) fn write_tags(&self, _l: &Lock, tags: &BTreeMap<String, ImageId>) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(tags).expect("serialisable");
        fsutil::write_atomic(&self.root, "tags.json", &bytes)
    }

    pub(crate) fn image_ids(&self) -> Result<Vec<ImageId>> {
        let dir = self.images_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).ctx("list", &dir)? {
            let e = e.ctx("list", &dir)?;
            if let Some(name) = e.file_name().to_str() {
                if let Ok(id) = name.parse::<ImageId>() {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub(crate) fn read_image(&self, id: &ImageId) -> Result<ImageRecord> {
        read_json(&self.image_dir(id).join("image.json"))
    }

    pub(crate) fn read_config(&self, id: &ImageId) -> Result<Vec<u8>> {
        let p = self.image_dir(id).join("config.json");
        fs::read(&p).ctx("read", p)
    }

    fn users_of(&self, id: &ImageId) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(self.image_dir(id).join("users"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Resolves a reference while a lock is held.
    pub(crate) fn resolve_locked(&self, reference: &ImageRef) -> Result<ImageId> {
        if let ImageRef::Id(id) = reference {
            if self.image_dir(id).join("image.json").exists() {
                return Ok(*id);
            }
        }
        let reference = reference.text();
        let reference = reference.as_ref();
        let r = reference.trim();
        if let Ok(id) = r.parse::<ImageId>() {
            if self.image_dir(&id).join("image.json").exists() {
                return Ok(id);
            }
        }
        #[cfg(feature = "registry")]
        if let Some((name, digest)) = r.split_once('@') {
            let digests = self.read_repo_digests()?;
            for d in [DefaultDomain::Localhost, DefaultDomain::DockerHub] {
                if let Ok(n) = ImageName::parse(name, d) {
                    if let Some(id) = digests.get(&format!("{}@{digest}", n.repo())) {
                        if self.image_dir(id).join("image.json").exists() {
                            return Ok(*id);
                        }
                    }
                }
            }
        }
        let tags = self.read_tags()?;
        for cand in ImageName::candidates(r) {
            if let Some(id) = tags.get(&cand.to_string()) {
                return Ok(*id);
            }
        }
        let hexpart = r.strip_prefix("sha256:").unwrap_or(r);
        if hexpart.len() >= 4
            && hexpart.len() <= 64
            && hexpart
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            let matches: Vec<ImageId> = self
                .image_ids()?
                .into_iter()
                .filter(|id| id.hex().starts_with(hexpart))
                .collect();
            match matches.len() {
                0 => {}
                1 => return Ok(matches[0]),
                _ => {
                    return Err(Error::AmbiguousReference {
                        reference: reference.to_string(),
                        candidates: matches,
                    })
                }
            }
        }
        Err(Error::ImageNotFound {
            reference: reference.to_string(),
        })
    }

    /// Resolves `NAME[:TAG]` (tag defaults to `latest`; a short name also
    /// matches `localhost/NAME` and `docker.io/library/NAME`), a full image
    /// ID (with or without `sha256:`), or a unique ID prefix of at least 4
    /// hex digits. An ambiguous prefix is [`Error::AmbiguousReference`].
    pub fn resolve(&self, reference: &(impl ToImageRef + ?Sized)) -> Result<ImageId> {
        let _l = self.lock(false)?;
        self.resolve_locked(&reference.to_image_ref())
    }

    fn tags_by_image(&self) -> Result<HashMap<ImageId, Vec<String>>> {
        let mut m: HashMap<ImageId, Vec<String>> = HashMap::new();
        for (t, id) in self.read_tags()? {
            m.entry(id).or_default().push(t);
        }
        Ok(m)
    }

    /// Every image, sorted by ID.
    pub fn images(&self) -> Result<Vec<ImageSummary>> {
        let _l = self.lock(false)?;
        let tags = self.tags_by_image()?;
        let mut out = Vec::new();
        for id in self.image_ids()? {
            let Ok(rec) = self.read_image(&id) else {
                continue; // damaged: reported by check
            };
            let cfg = self
                .read_config(&id)
                .ok()
                .and_then(|b| ImageConfig::parse(&b, "config").ok());
            let size = rec
                .layers
                .iter()
                .filter_map(|c| self.read_layer(c).ok())
                .map(|l| l.content_size)
                .sum();
            out.push(ImageSummary {
                id,
                names: tags.get(&id).cloned().unwrap_or_default(),
                created: cfg.and_then(|c| c.created),
                size,
                layer_count: rec.layers.len(),
            });
        }
        Ok(out)
    }

    pub(crate) fn inspect_locked(&self, id: &ImageId) -> Result<ImageInfo> {
        let rec = self.read_image(id)?;
        let config_bytes = self.read_config(id)?;
        let config = ImageConfig::parse(&config_bytes, &format!("config of image {id}"))?;
        let mut layers = Vec::new();
        for c in &rec.layers {
            let l = self.read_layer(c)?;
            layers.push(LayerInfo {
                diff_id: l.diff_id,
                chain_id: l.chain_id,
                size: l.content_size,
                tar_size: l.tar_size,
                path: self.layer_path(c),
            });
        }
        let mut names = self.tags_by_image()?.remove(id).unwrap_or_default();
        names.sort();
        Ok(ImageInfo {
            id: *id,
            names,
            size: layers.iter().map(|l| l.size).sum(),
            config_bytes,
            config,
            layers,
            users: self.users_of(id),
        })
    }

    /// Everything about the image a reference names.
    pub fn inspect(&self, reference: &(impl ToImageRef + ?Sized)) -> Result<ImageInfo> {
        let _l = self.lock(false)?;
        let id = self.resolve_locked(&reference.to_image_ref())?;
        self.inspect_locked(&id)
    }

    /// The layer directories of an image in `lowerdir` order: the top layer
    /// first, the base last.
    pub fn lower_dirs(&self, reference: &(impl ToImageRef + ?Sized)) -> Result<Vec<PathBuf>> {
        let info = self.inspect(reference)?;
        Ok(info.layers.iter().rev().map(|l| l.path.clone()).collect())
    }

    /// The history of an image, newest first, each step with the layer it
    /// made and that layer's size.
    pub fn history(&self, reference: &(impl ToImageRef + ?Sized)) -> Result<Vec<HistoryEntry>> {
        let info = self.inspect(reference)?;
        let mut layers = info.layers.iter();
        let mut out = Vec::new();
        let hist = info.config.history.clone().unwrap_or_default();
        for h in &hist {
            let layer = if h.empty_layer { None } else { layers.next() };
            out.push(HistoryEntry {
                created: h.created.clone(),
                created_by: h.created_by.clone(),
                comment: h.comment.clone(),
                author: h.author.clone(),
                layer: layer.map(|l| l.diff_id),
                size: layer.map(|l| l.size).unwrap_or(0),
            });
        }
        // Layers the history does not describe.
        for l in layers {
            out.push(HistoryEntry {
                created: None,
                created_by: None,
                comment: None,
                author: None,
                layer: Some(l.diff_id),
                size: l.size,
            });
        }
        out.reverse();
        Ok(out)
    }

    /// Moves pending layers into the store and records an image with its
    /// tags, in one critical section. `chain` lists every layer of the
    /// image, bottom first; those not in `pending` must already be stored.
    pub(crate) fn store_image_locked(
        &self,
        l: &Lock,
        pending: &mut Vec<PendingLayer>,
        chain: &[ChainId],
        config: &[u8],
        names: &[ImageName],
    ) -> Result<ImageId> {
        if !pending.is_empty() {
            fsutil::syncfs(&self.tmp_dir())?;
        }
        let mut moved = false;
        for p in pending.drain(..) {
            let dest = self.layer_dir(&p.record.chain_id);
            if self.has_layer(&p.record.chain_id) {
                continue; // another process stored it meanwhile
            }
            fs::rename(p.temp.path(), &dest).ctx("rename", &dest)?;
            p.temp.disarm();
            moved = true;
        }
        if moved {
            fsutil::fsync_dir(&self.layers_dir())?;
        }
        for c in chain {
            if !self.has_layer(c) {
                return Err(Error::LayerMissing {
                    chain: *c,
                    reason: "it was removed while this image was being stored; retry".into(),
                });
            }
        }
        let id = ImageId::of_config(config);
        let dir = self.image_dir(&id);
        if !dir.join("image.json").exists() {
            let temp = TempDir::new(&self.tmp_dir())?;
            let rec = ImageRecord {
                id,
                layers: chain.to_vec(),
                stored: config::now_rfc3339(),
            };
            fsutil::write_atomic(temp.path(), "config.json", config)?;
            fsutil::write_atomic(
                temp.path(),
                "image.json",
                &serde_json::to_vec(&rec).expect("serialisable"),
            )?;
            if dir.exists() {
                // Debris of an interrupted removal: replace it.
                fsutil::remove_tree(&dir)?;
            }
            fs::rename(temp.path(), &dir).ctx("rename", &dir)?;
            temp.disarm();
            fsutil::fsync_dir(&self.images_dir())?;
        }
        if !names.is_empty() {
            let mut tags = self.read_tags()?;
            for n in names {
                tags.insert(n.to_string(), id);
            }
            self.write_tags(l, &tags)?;
        }
        Ok(id)
    }

    /// Makes a one-layer image from a root filesystem tarball (plain, gzip
    /// or zstd), like `docker import`. Returns the new image's ID.
    pub fn import(&self, reader: &mut dyn Read, opts: &ImportOptions) -> Result<ImageId> {
        let name = opts
            .name
            .as_deref()
            .map(|n| ImageName::parse(n, DefaultDomain::Localhost))
            .transpose()?;
        let layer = self.extract_layer(reader, None, None, "imported tarball")?;
        let created = opts.created.clone().unwrap_or_else(config::now_rfc3339);
        let cfg = config::import_config(
            layer.record.diff_id,
            &created,
            &opts.changes,
            opts.comment.as_deref(),
        );
        let bytes = config::to_bytes(&cfg);
        let chain = [layer.record.chain_id];
        let l = self.lock(true)?;
        let names: Vec<ImageName> = name.into_iter().collect();
        self.store_image_locked(&l, &mut vec![layer], &chain, &bytes, &names)
    }

    /// Adds the tag `new_name` (`localhost/` added when no registry is
    /// named; `:latest` when no tag) to the image `reference` names. A tag
    /// already on another image moves, as in docker.
    pub fn tag(&self, reference: &(impl ToImageRef + ?Sized), new_name: &str) -> Result<ImageName> {
        let reference = reference.to_image_ref();
        let name = ImageName::parse(new_name, DefaultDomain::Localhost)?;
        let l = self.lock(true)?;
        let id = self.resolve_locked(&reference)?;
        let mut tags = self.read_tags()?;
        tags.insert(name.to_string(), id);
        self.write_tags(&l, &tags)?;
        Ok(name)
    }

    /// Removes one tag. The image stays (possibly untagged).
    pub fn untag(&self, name: &str) -> Result<String> {
        let l = self.lock(true)?;
        let mut tags = self.read_tags()?;
        for cand in ImageName::candidates(name) {
            let key = cand.to_string();
            if tags.remove(&key).is_some() {
                self.write_tags(&l, &tags)?;
                return Ok(key);
            }
        }
        Err(Error::ImageNotFound {
            reference: name.to_string(),
        })
    }

    /// Records that `user` (a container ID) uses the image; such an image
    /// is not removed unless forced.
    pub fn add_image_user(&self, image: &ImageId, user: &str) -> Result<()> {
        check_user_name(user)?;
        let _l = self.lock(true)?;
        let dir = self.image_dir(image);
        if !dir.join("image.json").exists() {
            return Err(Error::ImageNotFound {
                reference: image.to_string(),
            });
        }
        let users = dir.join("users");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&users)
            .ctx("mkdir", &users)?;
        fsutil::write_atomic(&users, user, b"")
    }

    /// Forgets a user of the image. If the image was left untagged by a
    /// forced removal and this was its last user, it is deleted now.
    pub fn remove_image_user(&self, image: &ImageId, user: &str) -> Result<Vec<Removed>> {
        check_user_name(user)?;
        let _l = self.lock(true)?;
        let p = self.image_dir(image).join("users").join(user);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", p, e)),
        }
        let tagged = self.read_tags()?.values().any(|i| i == image);
        let orphan = self.image_dir(image).join("removed").exists();
        if !tagged && orphan && self.users_of(image).is_empty() {
            return self.delete_image_locked(image);
        }
        Ok(Vec::new())
    }

    /// Removes an image, as `docker rmi`:
    /// - by name, when the image has other tags: only that tag goes;
    /// - by ID, with several tags: an error unless `force`;
    /// - in use by a container: an error unless `force`; forced, its tags go
    ///   and the image itself is deleted when its last user goes;
    /// - else tags, image, and the layers no other image uses are deleted.
    pub fn remove(
        &self,
        reference: &(impl ToImageRef + ?Sized),
        force: bool,
    ) -> Result<Vec<Removed>> {
        let reference = reference.to_image_ref();
        let l = self.lock(true)?;
        let id = self.resolve_locked(&reference)?;
        let mut tags = self.read_tags()?;
        let my_tags: Vec<String> = tags
            .iter()
            .filter(|(_, i)| **i == id)
            .map(|(t, _)| t.clone())
            .collect();
        let by_name = ImageName::candidates(&reference.text())
            .iter()
            .find(|c| my_tags.contains(&c.to_string()))
            .map(|c| c.to_string());
        let mut out = Vec::new();
        if let Some(name) = &by_name {
            if my_tags.len() > 1 {
                tags.remove(name);
                self.write_tags(&l, &tags)?;
                return Ok(vec![Removed::Untagged(name.clone())]);
            }
        } else if my_tags.len() > 1 && !force {
            return Err(Error::ImageHasTags {
                image: id,
                tags: my_tags,
            });
        }
        let users = self.users_of(&id);
        if !users.is_empty() && !force {
            return Err(Error::ImageInUse { image: id, users });
        }
        for t in &my_tags {
            tags.remove(t);
            out.push(Removed::Untagged(t.clone()));
        }
        if !my_tags.is_empty() {
            self.write_tags(&l, &tags)?;
        }
        if !users.is_empty() {
            // Deleted when the last user goes.
            fsutil::write_atomic(&self.image_dir(&id), "removed", b"")?;
            return Ok(out);
        }
        out.extend(self.delete_image_locked(&id)?);
        Ok(out)
    }

    /// Deletes an image and the layers only it uses. Lock held.
    pub(crate) fn delete_image_locked(&self, id: &ImageId) -> Result<Vec<Removed>> {
        let rec = self.read_image(id).ok();
        let dir = self.image_dir(id);
        let grave = self.tmp_dir().join(fsutil::unique_name("rm-image-"));
        fs::rename(&dir, &grave).ctx("rename", &dir)?;
        fsutil::fsync_dir(&self.images_dir())?;
        fsutil::remove_tree(&grave)?;
        let mut out = vec![Removed::Deleted(*id)];
        if let Some(rec) = rec {
            let used = self.referenced_layers()?;
            for c in rec.layers.iter().rev() {
                if !used.contains(c) && self.layer_dir(c).exists() {
                    self.delete_layer_locked(c)?;
                    out.push(Removed::LayerDeleted(*c));
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn delete_layer_locked(&self, c: &ChainId) -> Result<()> {
        let dir = self.layer_dir(c);
        let grave = self.tmp_dir().join(fsutil::unique_name("rm-layer-"));
        fs::rename(&dir, &grave).ctx("rename", &dir)?;
        fsutil::fsync_dir(&self.layers_dir())?;
        fsutil::remove_tree(&grave)
    }

    /// Every chainID some image uses.
    pub(crate) fn referenced_layers(&self) -> Result<BTreeSet<ChainId>> {
        let mut used = BTreeSet::new();
        for id in self.image_ids()? {
            if let Ok(r) = self.read_image(&id) {
                used.extend(r.layers);
            }
        }
        Ok(used)
    }

    /// Every stored layer's chainID.
    pub(crate) fn layer_ids(&self) -> Result<Vec<ChainId>> {
        let dir = self.layers_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).ctx("list", &dir)? {
            let e = e.ctx("list", &dir)?;
            if let Some(c) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(c);
            }
        }
        out.sort();
        Ok(out)
    }
}

fn check_user_name(user: &str) -> Result<()> {
    if user.is_empty()
        || user.starts_with('.')
        || user.contains('/')
        || user.contains('\0')
        || user.len() > 200
    {
        return Err(Error::Unsupported(format!(
            "image user name {user:?} must be a plain file name"
        )));
    }
    Ok(())
}
