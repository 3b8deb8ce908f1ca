//! `check`: verify the store against its own invariants and repair what can
//! be repaired without losing data.
//!
//! Verified: each layer's tar, rebuilt from its directory and tar-split
//! record, hashes to its diffID; layer and image metadata parse and agree
//! with their names; every image's layers exist; every tag names an image.
//! Repaired (with `repair`): temporary directories and files whose owner is
//! gone (their `flock` is free), dangling tags, layers no image uses (a
//! crash between moving layers in and writing the image), images removed
//! while in use whose last user is gone. Corrupt layers and images are
//! reported, never deleted: the user decides (`rmi`, then load again).

use std::fs::{self, OpenOptions};
use std::io;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

use crate::config::ImageConfig;
use crate::error::Result;
use crate::fsutil;
use crate::ids::{ChainId, Hasher, ImageId};
use crate::store::Store;

/// One finding of [`Store::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Debris of an interrupted operation in `tmp/` (or a stray temporary
    /// file).
    OrphanTemp {
        /// The path.
        path: PathBuf,
    },
    /// A layer whose content or metadata is damaged.
    CorruptLayer {
        /// The layer.
        chain: ChainId,
        /// What is wrong.
        reason: String,
    },
    /// A layer that no image uses.
    UnreferencedLayer {
        /// The layer.
        chain: ChainId,
    },
    /// An image whose config or metadata is damaged.
    CorruptImage {
        /// The image.
        image: ImageId,
        /// What is wrong.
        reason: String,
    },
    /// An image one of whose layers is not in the store.
    MissingLayer {
        /// The image.
        image: ImageId,
        /// The missing layer.
        chain: ChainId,
    },
    /// A tag that names an image not in the store.
    DanglingTag {
        /// The tag.
        tag: String,
        /// The image it names.
        image: ImageId,
    },
    /// An image removed while in use, whose users are all gone.
    RemovedImage {
        /// The image.
        image: ImageId,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::OrphanTemp { path } => {
                write!(f, "leftover temporary data {}", path.display())
            }
            Problem::CorruptLayer { chain, reason } => {
                write!(f, "layer {chain} is corrupt: {reason}")
            }
            Problem::UnreferencedLayer { chain } => write!(f, "layer {chain} is used by no image"),
            Problem::CorruptImage { image, reason } => {
                write!(f, "image {image} is corrupt: {reason}")
            }
            Problem::MissingLayer { image, chain } => {
                write!(f, "image {image} needs layer {chain}, which is missing")
            }
            Problem::DanglingTag { tag, image } => {
                write!(f, "tag {tag} names image {image}, which is missing")
            }
            Problem::RemovedImage { image } => {
                write!(f, "image {image} was removed and has no users left")
            }
        }
    }
}

impl Problem {
    /// Whether `check` with `repair` fixes this kind of problem.
    pub fn is_repairable(&self) -> bool {
        !matches!(
            self,
            Problem::CorruptLayer { .. }
                | Problem::CorruptImage { .. }
                | Problem::MissingLayer { .. }
        )
    }
}

/// What [`Store::check`] found and did.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Every problem found, in the order found.
    pub problems: Vec<Problem>,
    /// Those of `problems` that were repaired.
    pub repaired: Vec<Problem>,
    /// Layers re-hashed.
    pub layers_checked: usize,
    /// Images checked.
    pub images_checked: usize,
}

impl CheckReport {
    /// True when nothing is wrong (or everything found was repaired).
    pub fn is_clean(&self) -> bool {
        self.problems.len() == self.repaired.len()
    }
}

fn lock_is_free(lock: &std::path::Path) -> bool {
    let Ok(f) = OpenOptions::new().read(true).open(lock) else {
        return true;
    };
    Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok()
}

impl Store {
    /// Checks the store (re-hashing every layer) and, with `repair`, fixes
    /// what can be fixed. Takes the store lock for its whole run.
    pub fn check(&self, repair: bool) -> Result<CheckReport> {
        let l = self.lock(true)?;
        let mut rep = CheckReport::default();
        let found = |rep: &mut CheckReport,
                     p: Problem,
                     fix: &mut dyn FnMut() -> Result<()>|
         -> Result<()> {
            if repair && p.is_repairable() {
                fix()?;
                rep.repaired.push(p.clone());
            }
            rep.problems.push(p);
            Ok(())
        };
        // A stray file whose fix is to remove it.
        let orphan_file = |rep: &mut CheckReport, p: std::path::PathBuf| -> Result<()> {
            found(rep, Problem::OrphanTemp { path: p.clone() }, &mut || {
                let _ = fs::remove_file(&p);
                Ok(())
            })
        };

        // tmp/: debris whose owner is gone.
        let tmp = self.tmp_dir();
        let mut entries: Vec<_> = fs::read_dir(&tmp)
            .map_err(|e| crate::Error::io("list", &tmp, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        for name in &entries {
            if name.starts_with('.') {
                // A lock file being set up, or its debris.
                let p = tmp.join(name);
                if lock_is_free(&p) {
                    orphan_file(&mut rep, p)?;
                }
                continue;
            }
            if let Some(base) = name.strip_suffix(".lock") {
                if !entries.iter().any(|n| n == base) && lock_is_free(&tmp.join(name)) {
                    orphan_file(&mut rep, tmp.join(name))?;
                }
                continue;
            }
            let lock = tmp.join(format!("{name}.lock"));
            if lock_is_free(&lock) {
                let p = tmp.join(name);
                found(
                    &mut rep,
                    Problem::OrphanTemp { path: p.clone() },
                    &mut || {
                        fsutil::remove_tree(&p)?;
                        let _ = fs::remove_file(&lock);
                        Ok(())
                    },
                )?;
            }
        }
        // Stray atomic-write temporaries.
        let mut dirs = vec![self.root().to_path_buf()];
        for id in self.image_ids()? {
            dirs.push(self.image_dir(&id));
            dirs.push(self.image_dir(&id).join("users"));
        }
        for d in dirs {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with('.') && n.contains(".tmp-") {
                    orphan_file(&mut rep, e.path())?;
                }
            }
        }

        // Layers: metadata and content.
        let layers = self.layer_ids()?;
        for c in &layers {
            rep.layers_checked += 1;
            let reason = match self.verify_layer(c) {
                Ok(()) => continue,
                Err(r) => r,
            };
            found(
                &mut rep,
                Problem::CorruptLayer { chain: *c, reason },
                &mut || Ok(()),
            )?;
        }

        // Images.
        let tags = self.read_tags()?;
        for id in self.image_ids()? {
            rep.images_checked += 1;
            match self.verify_image(&id) {
                Err(reason) => {
                    found(
                        &mut rep,
                        Problem::CorruptImage { image: id, reason },
                        &mut || Ok(()),
                    )?;
                    continue;
                }
                Ok(missing) => {
                    for chain in missing {
                        found(
                            &mut rep,
                            Problem::MissingLayer { image: id, chain },
                            &mut || Ok(()),
                        )?;
                    }
                }
            }
            let dir = self.image_dir(&id);
            let users = fs::read_dir(dir.join("users"))
                .map(|r| r.count())
                .unwrap_or(0);
            if dir.join("removed").exists() && users == 0 && !tags.values().any(|i| *i == id) {
                found(&mut rep, Problem::RemovedImage { image: id }, &mut || {
                    self.delete_image_locked(&id).map(drop)
                })?;
            }
        }

        // Tags.
        let mut tags = self.read_tags()?;
        let dangling: Vec<(String, ImageId)> = tags
            .iter()
            .filter(|(_, id)| !self.image_dir(id).join("image.json").exists())
            .map(|(t, id)| (t.clone(), *id))
            .collect();
        for (tag, image) in dangling {
            let mut fixed = false;
            found(
                &mut rep,
                Problem::DanglingTag {
                    tag: tag.clone(),
                    image,
                },
                &mut || {
                    fixed = true;
                    Ok(())
                },
            )?;
            if fixed {
                tags.remove(&tag);
                self.write_tags(&l, &tags)?;
            }
        }

        // Layers no image uses.
        let used = self.referenced_layers()?;
        for c in self.layer_ids()?.iter().rev() {
            if !used.contains(c) {
                found(
                    &mut rep,
                    Problem::UnreferencedLayer { chain: *c },
                    &mut || self.delete_layer_locked(c),
                )?;
            }
        }
        Ok(rep)
    }

    /// Re-hashes one layer; `Err` says what is wrong.
    fn verify_layer(&self, c: &ChainId) -> std::result::Result<(), String> {
        let rec = self.read_layer(c).map_err(|e| e.to_string())?;
        if rec.chain_id != *c {
            return Err(format!("layer.json names chainID {}", rec.chain_id));
        }
        let expect = ChainId::next(rec.parent.as_ref(), &rec.diff_id);
        if expect != *c {
            return Err("its chainID does not follow from its parent and diffID".into());
        }
        if let Some(p) = &rec.parent {
            if !self.has_layer(p) {
                return Err(format!("its parent layer {p} is missing"));
            }
        }
        let mut r = self.layer_tar(c).map_err(|e| e.to_string())?;
        let mut h = HashingSink(Hasher::new(), 0);
        io::copy(&mut r, &mut h).map_err(|e| format!("cannot rebuild its tar: {e}"))?;
        let (d, n) = (h.0.finish(), h.1);
        if d != rec.diff_id.0 {
            return Err(format!(
                "content hashes to {d}, not its diffID {}",
                rec.diff_id
            ));
        }
        if n != rec.tar_size {
            return Err(format!("tar has {n} bytes, expected {}", rec.tar_size));
        }
        Ok(())
    }

    /// Checks one image; `Ok` lists its missing layers.
    fn verify_image(&self, id: &ImageId) -> std::result::Result<Vec<ChainId>, String> {
        let bytes = self.read_config(id).map_err(|e| e.to_string())?;
        if ImageId::of_config(&bytes) != *id {
            return Err("config.json does not hash to the image ID".into());
        }
        let cfg = ImageConfig::parse(&bytes, "config.json").map_err(|e| e.to_string())?;
        let rec = self.read_image(id).map_err(|e| e.to_string())?;
        if ChainId::chain(&cfg.rootfs.diff_ids) != rec.layers {
            return Err("image.json's layers do not match the config's diffIDs".into());
        }
        Ok(rec
            .layers
            .into_iter()
            .filter(|c| !self.has_layer(c))
            .collect())
    }
}

struct HashingSink(Hasher, u64);

impl io::Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
