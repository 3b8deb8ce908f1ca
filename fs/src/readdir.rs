//! The merged directory listing, with stable offsets.
//!
//! Opening a directory takes a snapshot of its merged entries (names from
//! higher layers win; whiteouts, opaque directories and `.wh.*` names hide).
//! Entry `i` of the snapshot has offset `i + 1`, so a listing read in several
//! calls never repeats or skips an entry however the directory changes
//! meanwhile. Reading from offset 0 again (rewinddir) takes a fresh snapshot.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::errno::Errno;

use crate::layers::LayerIdx;
use crate::nodes::{Kind, Node};
use crate::overlay::{Overlay, Res};
use crate::path::RelPath;
use crate::sys;
use crate::whiteout::{self, OPAQUE_MARKER, WH_PREFIX};

/// A visible entry of one layer's directory: name, layer, real inode
/// number, kind.
pub type LayerEntry = (Vec<u8>, LayerIdx, u64, Kind);

/// One entry of a merged listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Its name.
    pub name: OsString,
    /// Its inode number as users see it.
    pub ino: u64,
    /// Its kind.
    pub kind: Kind,
}

impl Overlay {
    /// Lists the merged directory `node`, including `.` and `..`.
    pub fn list_dir(&self, node: &Node) -> Res<Vec<DirEntry>> {
        let s = node.state();
        if s.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let path = self.nodes.path(node)?;
        let parent_ino = match self.parent_of(node) {
            Ok(p) => p.ino,
            Err(_) => node.ino,
        };
        let mut out = vec![
            DirEntry {
                name: ".".into(),
                ino: node.ino,
                kind: Kind::Dir,
            },
            DirEntry {
                name: "..".into(),
                ino: parent_ino,
                kind: Kind::Dir,
            },
        ];
        let entries = self.merged_entries(&path, &s.layers)?;
        let children = node.children.lock().clone();
        let merged = s.layers.len() > 1;
        for (name, layer, d_ino, kind) in entries {
            let name = OsString::from_vec(name);
            let ino = match children.get(&name).and_then(|id| self.nodes.get(*id).ok()) {
                Some(child) => child.ino,
                // An upper entry of a merged directory may be a copied-up
                // file (it keeps its origin's number) or a merged directory
                // (it shows its lower one's): number it as lookup would.
                None if merged && self.stack.is_upper(layer) => {
                    match self.resolve(&path, &s.layers, name.as_bytes()) {
                        Ok(Some(r)) => {
                            let p = path.join(name.as_bytes());
                            self.ino_for(r.layers[0], &p, &r.stat, r.kind, &r.layers)
                        }
                        _ => self.stack.ino(layer, d_ino),
                    }
                }
                None => self.stack.ino(layer, d_ino),
            };
            out.push(DirEntry { name, ino, kind });
        }
        Ok(out)
    }

    /// The visible entries of the directory `path` merged from `layers`:
    /// (name, layer it comes from, real inode number, kind), upper first.
    pub fn merged_entries(&self, path: &RelPath, layers: &[LayerIdx]) -> Res<Vec<LayerEntry>> {
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut out = Vec::new();
        for &l in layers {
            if !self.stack.is_upper(l) {
                let dir = self.dircache.get(&self.stack, l, path)?;
                for (name, e) in dir.entries.iter() {
                    if seen.contains(&name[..]) {
                        continue;
                    }
                    seen.insert(name.to_vec());
                    if !e.whiteout {
                        out.push((name.to_vec(), l, e.ino, e.kind));
                    }
                }
                seen.extend(dir.wh.iter().map(|n| n.to_vec()));
                continue;
            }
            let fd = self.stack.fd(l);
            let dir = match sys::open_beneath(fd, path.c(), libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                Ok(d) => d,
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => continue,
                Err(e) => return Err(e),
            };
            let entries = sys::read_dir_fd(dir)?;
            let mut hidden_here: Vec<Vec<u8>> = Vec::new();
            for (name, d_ino, d_type) in entries {
                if name == OPAQUE_MARKER {
                    continue;
                }
                if let Some(target) = name.strip_prefix(WH_PREFIX) {
                    hidden_here.push(target.to_vec());
                    continue;
                }
                if seen.contains(&name) {
                    continue;
                }
                let mut kind = Kind::from_dtype(d_type);
                let needs_stat = match kind {
                    None => true,
                    Some(Kind::CharDev) => true,
                    Some(Kind::File) => self.layer_has_xattr_whiteouts(l, path),
                    _ => false,
                };
                if needs_stat {
                    let p = path.join(&name);
                    match sys::stat_at(fd, p.c()) {
                        Ok(st) => {
                            if whiteout::is_whiteout(fd, &p, &st) {
                                seen.insert(name);
                                continue;
                            }
                            kind = Some(Kind::from_mode(st.st_mode));
                        }
                        Err(Errno::ENOENT) => continue,
                        Err(e) => return Err(e),
                    }
                }
                seen.insert(name.clone());
                out.push((name, l, d_ino, kind.unwrap_or(Kind::File)));
            }
            // `.wh.NAME` hides NAME in the layers below, not beside it.
            seen.extend(hidden_here);
        }
        Ok(out)
    }

    /// Whether the directory `path` of layer `l` may hold xattr-form
    /// whiteouts (the kernel marks such a directory with
    /// `trusted.overlay.whiteouts`).
    fn layer_has_xattr_whiteouts(&self, l: LayerIdx, path: &RelPath) -> bool {
        if self.stack.is_upper(l) {
            return false;
        }
        sys::getxattr_at(
            self.stack.fd(l),
            path.c(),
            c"trusted.overlay.whiteouts",
            &mut [],
        )
        .is_ok()
    }

    /// Whether the merged directory is empty (only whiteouts below it).
    pub fn dir_is_empty(&self, path: &RelPath, layers: &[LayerIdx]) -> Res<bool> {
        Ok(self.merged_entries(path, layers)?.is_empty())
    }
}
