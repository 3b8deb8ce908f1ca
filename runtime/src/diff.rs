//! `strata diff`: what a container changed, read from its upper layer, in
//! docker's form: `A` added, `C` changed, `D` deleted, sorted by path.
//!
//! A whiteout (character device 0/0, or `.wh.NAME`) is a deletion; a
//! directory in the upper that exists below is a change (an opaque one
//! too: it replaced the lower directory); everything under an opaque
//! directory, and anything not below, is an addition.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// The path inside the container (`/etc/passwd`).
    pub path: String,
    /// What happened.
    pub kind: ChangeKind,
}

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// Changed.
    Changed,
    /// Added.
    Added,
    /// Deleted.
    Deleted,
}

impl ChangeKind {
    /// The letter docker prints.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        if let Ok(Some(v)) = xattr_get(p, name) {
            if v == b"y" {
                return true;
            }
        }
    }
    p.join(".wh..wh..opq").exists()
}

fn xattr_get(p: &Path, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    crate::sys::lgetxattr(p, name)
}

/// Does `rel` exist in the stack `lowers` (top first)?
fn exists_below(lowers: &[PathBuf], rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or("");
    let parent = rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    for l in lowers {
        if let Ok(m) = fs::symlink_metadata(crate::rootfs::in_root(l, rel)) {
            return !is_whiteout(&m);
        }
        let wh = crate::rootfs::in_root(l, &format!("{parent}/.wh.{name}"));
        if fs::symlink_metadata(wh).is_ok() {
            return false;
        }
        let pdir = crate::rootfs::in_root(l, parent);
        if !parent.is_empty() && pdir.is_dir() && is_opaque(&pdir) {
            return false;
        }
    }
    false
}

fn walk(dir: &Path, rel: &str, lowers: &[PathBuf], under_opaque: bool, out: &mut Vec<Change>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == ".wh..wh..opq" {
            continue;
        }
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if let Some(hidden) = name.strip_prefix(".wh.") {
            out.push(Change {
                path: format!("{rel}/{hidden}"),
                kind: ChangeKind::Deleted,
            });
            continue;
        }
        let path = format!("{rel}/{name}");
        if is_whiteout(&m) {
            out.push(Change {
                path,
                kind: ChangeKind::Deleted,
            });
            continue;
        }
        let below = !under_opaque && exists_below(lowers, &path);
        out.push(Change {
            path: path.clone(),
            kind: if below {
                ChangeKind::Changed
            } else {
                ChangeKind::Added
            },
        });
        if m.is_dir() {
            let opaque = under_opaque || is_opaque(&p);
            walk(&p, &path, lowers, opaque, out);
        }
    }
}

/// The changes recorded in `upper` over the image layers `lowers` (top
/// first), sorted by path.
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> Vec<Change> {
    let mut out = Vec::new();
    walk(upper, "", lowers, false, &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_changed_deleted() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("l");
        let upper = t.path().join("u");
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::write(lower.join("etc/passwd"), "x").unwrap();
        fs::write(lower.join("etc/gone"), "x").unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::write(upper.join("etc/passwd"), "y").unwrap();
        fs::write(upper.join("etc/.wh.gone"), "").unwrap();
        fs::write(upper.join("new"), "n").unwrap();
        let got: Vec<String> = changes(&upper, &[lower])
            .iter()
            .map(|c| format!("{} {}", c.kind.letter(), c.path))
            .collect();
        assert_eq!(
            got,
            vec!["C /etc", "D /etc/gone", "C /etc/passwd", "A /new"]
        );
    }
}
