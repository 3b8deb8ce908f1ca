//! The layer cache of `strata build`: a table from a step's cache key to
//! the image that step made.
//!
//! ```text
//! ROOT/build-cache/KEYHEX      the image ID a step made (one line)
//! ROOT/build-cache/results/ID  an empty file: ID was a build's result
//! ```
//!
//! The key is computed by the builder: the SHA-256 of the parent image ID
//! (which covers its config and so its chain of diffIDs) and the step's
//! own key. An entry whose image is gone (removed with `rmi` or `system
//! prune`) is a miss, never an error. Entries are written atomically
//! (write-to-temp + rename), so a crash leaves an entry whole or absent.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::PathBuf;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::ids::{Digest, ImageId};
use crate::store::Store;

impl Store {
    fn cache_dir(&self) -> PathBuf {
        self.root().join("build-cache")
    }

    fn results_dir(&self) -> PathBuf {
        self.cache_dir().join("results")
    }

    /// The image a build step with cache key `key` made, if it is still in
    /// the store.
    pub fn cache_lookup(&self, key: &Digest) -> Option<ImageId> {
        let s = fs::read_to_string(self.cache_dir().join(key.hex())).ok()?;
        let id: ImageId = s.trim().parse().ok()?;
        self.image_exists(&id).then_some(id)
    }

    /// Records that the step with cache key `key` made image `id`.
    pub fn cache_record(&self, key: &Digest, id: &ImageId) -> Result<()> {
        let dir = self.cache_dir();
        fs::create_dir_all(&dir).ctx("mkdir", &dir)?;
        fsutil::write_atomic(&dir, &key.hex(), id.to_string().as_bytes())
    }

    /// Marks `id` as the result of a build (as opposed to an intermediate
    /// image of one step), so listings can hide only the intermediate ones.
    pub fn cache_mark_result(&self, id: &ImageId) -> Result<()> {
        let dir = self.results_dir();
        fs::create_dir_all(&dir).ctx("mkdir", &dir)?;
        fsutil::write_atomic(&dir, &id.hex(), b"")
    }

    /// The images that only exist as intermediate steps of builds: named in
    /// the cache and never a build's result.
    pub fn cache_intermediate_images(&self) -> Result<BTreeSet<ImageId>> {
        let mut out = BTreeSet::new();
        let dir = self.cache_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("list", dir, e)),
        };
        for e in rd {
            let e = e.ctx("list", &dir)?;
            if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                if let Some(id) = fs::read_to_string(e.path())
                    .ok()
                    .and_then(|s| s.trim().parse::<ImageId>().ok())
                {
                    if !self.results_dir().join(id.hex()).exists() {
                        out.insert(id);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Drops the whole build cache (the images stay); returns how many
    /// entries there were.
    pub fn cache_clear(&self) -> Result<usize> {
        let dir = self.cache_dir();
        let n = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .count(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io("list", dir, e)),
        };
        let grave = self
            .root()
            .join("tmp")
            .join(fsutil::unique_name("rm-cache-"));
        fs::rename(&dir, &grave).ctx("rename", &dir)?;
        fsutil::remove_tree(&grave)?;
        Ok(n)
    }

    fn image_exists(&self, id: &ImageId) -> bool {
        self.root()
            .join("images")
            .join(id.hex())
            .join("image.json")
            .exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_missing_images_are_misses_and_clear_drops_all() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let key = Digest::of(b"step");
        assert_eq!(store.cache_lookup(&key), None);
        let id = store
            .amend(None, &crate::CommitMeta::default())
            .expect("scratch image");
        store.cache_record(&key, &id).unwrap();
        assert_eq!(store.cache_lookup(&key), Some(id));
        assert!(store.cache_intermediate_images().unwrap().contains(&id));
        store.cache_mark_result(&id).unwrap();
        assert!(store.cache_intermediate_images().unwrap().is_empty());
        store
            .cache_record(&Digest::of(b"other"), &ImageId::of_config(b"{}"))
            .unwrap();
        assert_eq!(store.cache_lookup(&Digest::of(b"other")), None);
        assert_eq!(store.cache_clear().unwrap(), 2);
        assert_eq!(store.cache_lookup(&key), None);
    }
}
