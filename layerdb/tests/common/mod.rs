//! Test helpers: fixtures, a store in a temp dir, tar builders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use strata_layerdb::Store;

/// The podman fixtures (`tests/fixtures` of the repository).
pub fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    assert!(
        p.join("busybox-docker-archive.tar").exists(),
        "podman fixtures missing at {}",
        p.display()
    );
    p
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// A fresh store in a temp dir.
pub fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path().join("root")).unwrap();
    (d, s)
}

pub const BUSYBOX_DIFF: &str =
    "sha256:04a8b625e955f08102a1e56cb355a4855d9fad18fd485ce2f88bcbbd22e72f25";
pub const C1_DIFF: &str = "sha256:054674bdec3cf1cc79c1b77d73620d729a1302e4982324ec3d0c2da27b641d92";
pub const BUSYBOX_ID: &str =
    "sha256:b1ef65e51b22207fe0cd9968c26a84e8b25df40809806acd200f5e9036bfcdc4";
pub const C1_ID: &str = "sha256:60e59dec378b72d67298fbf1d1b60cfa556be3d42f9a90239c46798fc3191d1c";

/// Reads one member of a tar file.
pub fn tar_member(archive: &Path, name: &str) -> Vec<u8> {
    use std::io::Read;
    let mut ar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some(name) {
            let mut v = Vec::new();
            e.read_to_end(&mut v).unwrap();
            return v;
        }
    }
    panic!("{name} not in {}", archive.display());
}

/// Builds a tar in memory with the tar crate (an independent writer).
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    pub fn new() -> Self {
        TarBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(size);
        h
    }

    pub fn file(mut self, path: &str, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn chardev(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Char, 0o600, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// Appends a raw header with an arbitrary name (bypassing the tar
    /// crate's path checks), for hostile archives.
    pub fn raw(mut self, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> Self {
        let mut h = Self::header(kind, 0o644, data.len() as u64);
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name);
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// The busybox base layer tar, as podman saved it.
pub fn busybox_layer() -> Vec<u8> {
    tar_member(
        &fixture("busybox-docker-archive.tar"),
        &format!("{}.tar", &BUSYBOX_DIFF[7..]),
    )
}
