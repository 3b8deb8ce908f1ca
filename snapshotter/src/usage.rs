//! Disk use of a directory tree, as containerd's `fs.DiskUsage` counts it:
//! every inode once (hard links are not counted twice), its allocated
//! blocks × 512 bytes (so sparse files count what they hold, not their
//! length), the directory itself included. Symlinks are not followed and
//! other filesystems mounted inside are not entered.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::store::Usage;

/// Measures the tree at `dir`.
pub fn disk_usage(dir: &Path) -> Result<Usage> {
    let top = std::fs::symlink_metadata(dir).ctx("stat", dir)?;
    let dev = top.dev();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut usage = Usage::default();
    let mut count = |md: &std::fs::Metadata, usage: &mut Usage| {
        if seen.insert(md.ino()) {
            usage.inodes += 1;
            usage.size += (md.blocks() * 512) as i64;
        }
    };
    count(&top, &mut usage);
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // Removed while being measured (an active snapshot changes).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).ctx("read directory", d),
        };
        for entry in entries {
            let entry = entry.ctx("read directory", &d)?;
            let path = entry.path();
            let md = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).ctx("stat", path),
            };
            if md.dev() != dev {
                continue;
            }
            count(&md, &mut usage);
            if md.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn counts_blocks_and_inodes_once_per_inode() {
        let dir = tempfile::tempdir().unwrap();
        let empty = disk_usage(dir.path()).unwrap();
        assert_eq!(empty.inodes, 1);
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a"), vec![7u8; 64 * 1024]).unwrap();
        std::fs::hard_link(dir.path().join("d/a"), dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        // A sparse file: 1 GiB long, one 4 KiB block written.
        let mut f = std::fs::File::create(dir.path().join("sparse")).unwrap();
        f.seek(SeekFrom::Start(1 << 30)).unwrap();
        f.write_all(&[1u8; 4096]).unwrap();
        drop(f);
        let u = disk_usage(dir.path()).unwrap();
        // root, d, a (= b), link, sparse
        assert_eq!(u.inodes, 5);
        assert!(u.size >= 64 * 1024 + 4096, "{u:?}");
        assert!(
            u.size < 1 << 20,
            "the sparse file counted its length: {u:?}"
        );
    }
}
