//! Hard links of lower files survive copy-up.
//!
//! The kernel's overlayfs (without `index=on`) breaks a lower hard link on
//! copy-up: the written name gets a private copy and the other names keep
//! the old data. Strata copies the file up once and links every other name
//! of the same lower inode that the merged view shows to the copy, so all
//! names keep seeing one file, and the upper directory holds plain hard
//! links that any overlay reader understands.
//!
//! The names of a lower inode are found by scanning that layer once for
//! multiply-linked files; the result is kept for the mount's life (lower
//! layers never change).

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use dashmap::DashMap;
use nix::errno::Errno;
use tracing::warn;

use crate::layers::LayerIdx;
use crate::nodes::{Kind, NodeId};
use crate::overlay::{Overlay, Res};
use crate::path::RelPath;
use crate::sys;

/// For each lower layer scanned so far: inode number -> its names.
#[derive(Debug)]
pub struct LinkMaps {
    maps: DashMap<LayerIdx, Arc<HashMap<u64, Vec<RelPath>>>>,
}

impl Default for LinkMaps {
    fn default() -> Self {
        LinkMaps {
            maps: crate::new_map(),
        }
    }
}

impl Overlay {
    /// The names of every multiply-linked file in lower layer `l`.
    fn link_map(&self, l: LayerIdx) -> Res<Arc<HashMap<u64, Vec<RelPath>>>> {
        if let Some(m) = self.links.maps.get(&l) {
            return Ok(m.clone());
        }
        let mut map: HashMap<u64, Vec<RelPath>> = HashMap::new();
        let fd = self.stack.fd(l);
        let mut stack = vec![RelPath::root()];
        while let Some(dir) = stack.pop() {
            let d = match sys::open_beneath(fd, dir.c(), libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                Ok(d) => d,
                Err(_) => continue,
            };
            for (name, _, dtype) in sys::read_dir_fd(d)? {
                let p = dir.join(&name);
                match dtype {
                    libc::DT_DIR => stack.push(p),
                    libc::DT_REG
                    | libc::DT_UNKNOWN
                    | libc::DT_LNK
                    | libc::DT_CHR
                    | libc::DT_BLK
                    | libc::DT_FIFO
                    | libc::DT_SOCK => {
                        if let Ok(st) = sys::stat_at(fd, p.c()) {
                            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                                stack.push(p);
                            } else if st.st_nlink > 1 {
                                map.entry(st.st_ino).or_default().push(p);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        let map = Arc::new(map);
        self.links.maps.insert(l, map.clone());
        Ok(map)
    }

    /// After `path` (a name of inode `real_ino` of lower layer `from`) was
    /// copied up, links every other visible name of that inode to the copy.
    pub(crate) fn link_up_siblings(
        &self,
        from: LayerIdx,
        path: &RelPath,
        real_ino: u64,
    ) -> Res<()> {
        let upper = self.upper()?;
        let map = self.link_map(from)?;
        let Some(names) = map.get(&real_ino) else {
            return Ok(());
        };
        let ufd = self.stack.fd(upper);
        for other in names.iter().filter(|p| *p != path) {
            // Only names the merged view shows as this very lower file.
            match self.resolve_path(other)? {
                Some((layers, st)) if layers[0] == from && st.st_ino == real_ino => {}
                _ => continue,
            }
            let (parent, _) = other.split();
            self.ensure_upper_dirs(&parent)?;
            if let Err(e) = sys::link_at(ufd, path.c(), ufd, other.c()) {
                warn!(?e, %other, "cannot link a hard link's other name to its copy");
                continue;
            }
            if let Some(node) = self.live_node(other) {
                node.state.write().layers = smallvec::smallvec![upper];
            }
        }
        Ok(())
    }

    /// Resolves a whole path through the merged view: the layers holding
    /// it and the stat of its top entry.
    pub(crate) fn resolve_path(
        &self,
        path: &RelPath,
    ) -> Res<Option<(crate::layers::Layers, libc::stat)>> {
        let root = self.nodes.get(NodeId::ROOT)?;
        let mut layers = root.state().layers;
        let mut cur = RelPath::root();
        let mut last = None;
        for comp in path.bytes().split(|b| *b == b'/') {
            match self.resolve(&cur, &layers, comp)? {
                Some(r) => {
                    cur = cur.join(comp);
                    layers = r.layers.clone();
                    last = Some(r);
                }
                None => return Ok(None),
            }
        }
        Ok(last.map(|r| (r.layers, r.stat)))
    }

    /// Copies up every directory on `dir` (a path in the merged view) that
    /// the upper layer lacks, and updates their live nodes.
    pub(crate) fn ensure_upper_dirs(&self, dir: &RelPath) -> Res<()> {
        let upper = self.upper()?;
        let ufd = self.stack.fd(upper);
        if dir.is_root() {
            return Ok(());
        }
        let mut cur = RelPath::root();
        for comp in dir.bytes().split(|b| *b == b'/') {
            let next = cur.join(comp);
            if sys::stat_at(ufd, next.c()).is_err() {
                let Some((layers, st)) = self.resolve_path(&next)? else {
                    return Err(Errno::ENOENT);
                };
                if Kind::from_mode(st.st_mode) != Kind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                self.copy_up_entry(
                    layers[0],
                    &next,
                    crate::copyup::CopyData::All,
                    self.stack.ino(layers[0], st.st_ino),
                )?;
                if let Some(node) = self.live_node(&next) {
                    let mut s = node.state.write();
                    if !s.layers.contains(&upper) {
                        s.layers.insert(0, upper);
                    }
                }
            }
            cur = next;
        }
        Ok(())
    }

    /// The live node at `path`, if the kernel holds one.
    fn live_node(&self, path: &RelPath) -> Option<Arc<crate::nodes::Node>> {
        let mut node = self.nodes.get(NodeId::ROOT).ok()?;
        for comp in path.bytes().split(|b| *b == b'/') {
            node = self.nodes.child(&node, std::ffi::OsStr::from_bytes(comp))?;
        }
        Some(node)
    }
}
