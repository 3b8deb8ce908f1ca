//! `strata diff`: what a container changed, read from its upper layer, in
//! docker's form: `A` added, `C` changed, `D` deleted, sorted by path.
//!
//! A whiteout (in any form: a character device 0/0, `.wh.NAME`, the
//! kernel's xattr form) is a deletion, and so is every lower name an
//! opaque directory hides; a directory in the upper that exists below is a
//! change (an opaque one too: it replaced the lower directory); everything
//! under an opaque directory, and anything not below, is an addition.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use strata_ovl::{layer, sys, RelPath, Stack};

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

/// Reads changes from the upper layer `up` (a one-layer stack) over the
/// image layers `below`.
struct Walk<'a> {
    up: &'a Stack,
    below: &'a Stack,
    out: Vec<Change>,
}

impl Walk<'_> {
    fn dir(&mut self, rel: &RelPath, under_opaque: bool) -> Result<(), Errno> {
        let fd = self.up.fd(0);
        let dir = sys::open_beneath(fd, rel.c(), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        for (name, _, _) in sys::read_dir_fd(dir)? {
            let child = rel.join(&name);
            let st = match sys::stat_at(fd, child.c()) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            let (path, kind) = match layer::classify(fd, rel, &name, &st) {
                layer::Entry::Meta => continue,
                layer::Entry::HidesBelow(hidden) => (rel.join(hidden), ChangeKind::Deleted),
                layer::Entry::Whiteout => (child, ChangeKind::Deleted),
                layer::Entry::Plain => {
                    let below = !under_opaque && self.below.lookup(&child)?.is_some();
                    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                        let opaque = layer::is_opaque(fd, &child);
                        if opaque && below {
                            self.hidden_by_opaque(&child)?;
                        }
                        self.dir(&child, under_opaque || opaque)?;
                    }
                    let kind = if below {
                        ChangeKind::Changed
                    } else {
                        ChangeKind::Added
                    };
                    (child, kind)
                }
            };
            self.out.push(Change {
                path: format!("/{path}"),
                kind,
            });
        }
        Ok(())
    }
}

impl Walk<'_> {
    /// An opaque upper directory over a lower one deletes every lower name
    /// it does not hold itself.
    fn hidden_by_opaque(&mut self, dir: &RelPath) -> Result<(), Errno> {
        let fd = self.up.fd(0);
        for e in self.below.read_dir(dir)?.unwrap_or_default() {
            let p = dir.join(&e.name);
            if sys::stat_at(fd, p.c()) == Err(Errno::ENOENT) {
                self.out.push(Change {
                    path: format!("/{p}"),
                    kind: ChangeKind::Deleted,
                });
            }
        }
        Ok(())
    }
}

/// The changes recorded in `upper` over the image layers `lowers` (top
/// first), sorted by path: every whiteout and opaque form the mount reads
/// is read here the same way ([`strata_ovl`]).
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>, Errno> {
    let up = Stack::open(&[upper])?;
    let below = Stack::open(lowers)?;
    let mut w = Walk {
        up: &up,
        below: &below,
        out: Vec::new(),
    };
    w.dir(&RelPath::root(), false)?;
    let mut out = w.out;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
            .unwrap()
            .iter()
            .map(|c| format!("{} {}", c.kind.letter(), c.path))
            .collect();
        assert_eq!(
            got,
            vec!["C /etc", "D /etc/gone", "C /etc/passwd", "A /new"]
        );
    }
}
