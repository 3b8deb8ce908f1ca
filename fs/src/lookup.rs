//! Resolving a name through the layers: whiteouts, opacity, merging.
//!
//! The rules are overlayfs's: the first layer (top down) holding the name
//! wins; a whiteout there hides it; a non-directory stops the search; a
//! directory merges with the directories of the same name below it, down to
//! an opaque one, a whiteout, or a non-directory.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::FileAttr;
use nix::errno::Errno;

use crate::layers::LayerIdx;
use crate::nodes::{Kind, Node, NodeId, NodeState};
use crate::overlay::{Overlay, Res};
use crate::path::RelPath;
use crate::sys;
use crate::whiteout;

/// Longest name a layer filesystem accepts.
pub const NAME_MAX: usize = 255;

/// What a name resolved to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Its kind.
    pub kind: Kind,
    /// Layers holding it, top first (see [`NodeState::layers`]).
    pub layers: Vec<LayerIdx>,
    /// Stat of the top entry.
    pub stat: libc::stat,
}

impl Overlay {
    /// Resolves `name` inside the directory at `dir_path` merged from
    /// `dir_layers`. `Ok(None)` when the name does not exist (or is hidden).
    pub fn resolve(
        &self,
        dir_path: &RelPath,
        dir_layers: &[LayerIdx],
        name: &[u8],
    ) -> Res<Option<Resolved>> {
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if whiteout::is_reserved_name(name) {
            return Ok(None);
        }
        let path = dir_path.join(name);
        let mut found: Option<Resolved> = None;
        for &l in dir_layers {
            let fd = self.stack.fd(l);
            match sys::stat_at(fd, path.c()) {
                Ok(st) => {
                    if whiteout::is_whiteout(fd, &path, &st) {
                        break;
                    }
                    let kind = Kind::from_mode(st.st_mode);
                    match &mut found {
                        None => {
                            found = Some(Resolved {
                                kind,
                                layers: vec![l],
                                stat: st,
                            });
                            if kind != Kind::Dir || whiteout::is_opaque(fd, &path) {
                                break;
                            }
                        }
                        Some(r) => {
                            if kind != Kind::Dir {
                                break;
                            }
                            r.layers.push(l);
                            if whiteout::is_opaque(fd, &path) {
                                break;
                            }
                        }
                    }
                }
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => {
                    if whiteout::has_wh_file(fd, dir_path, name) {
                        break;
                    }
                }
                Err(Errno::ENAMETOOLONG) => return Err(Errno::ENAMETOOLONG),
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    /// Whether `name` in the directory `dir_path` is visible in the layers
    /// below the upper one, i.e. whether removing it from the upper layer
    /// needs a whiteout.
    pub fn exists_below(
        &self,
        dir_path: &RelPath,
        dir_layers: &[LayerIdx],
        name: &[u8],
    ) -> Res<bool> {
        let lowers: Vec<LayerIdx> = dir_layers
            .iter()
            .copied()
            .filter(|l| !self.stack.is_upper(*l))
            .collect();
        Ok(self.resolve(dir_path, &lowers, name)?.is_some())
    }

    /// Looks up `name` in `parent` for the kernel: resolves it (or takes the
    /// live node's record), adds a lookup count and returns the node and its
    /// attributes.
    pub fn lookup(&self, parent: &Node, name: &OsStr) -> Res<(Arc<Node>, FileAttr)> {
        let pstate = parent.state();
        if pstate.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let ppath = self.nodes.path(parent)?;
        // The positive lookup cache: a live child's record is kept valid by
        // every change made through the mount.
        if let Some(child) = self.nodes.child(parent, name) {
            if let Ok(st) = self.stat_node(&child) {
                self.nodes.add_lookup(&child);
                let attr = self.attr_from_stat(&child, &st);
                return Ok((child, attr));
            }
        }
        let r = self
            .resolve(&ppath, &pstate.layers, name.as_bytes())?
            .ok_or(Errno::ENOENT)?;
        let path = ppath.join(name.as_bytes());
        let ino = self.ino_for(r.layers[0], &path, &r.stat, r.kind, &r.layers);
        let state = NodeState {
            parent: parent.id,
            name: name.to_os_string(),
            kind: r.kind,
            layers: r.layers,
            unlinked: false,
        };
        let node = self.nodes.lookup_child(parent, name, state, ino);
        let attr = self.attr_from_stat(&node, &r.stat);
        Ok((node, attr))
    }

    /// The parent node of a live node.
    pub fn parent_of(&self, node: &Node) -> Res<Arc<Node>> {
        let p = node.state.read().parent;
        if p == NodeId::NONE {
            return Err(Errno::ENOENT);
        }
        self.nodes.get(p)
    }
}
