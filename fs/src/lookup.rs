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
use strata_ovl::layer as whiteout;
use strata_ovl::names::is_reserved_name;

/// Longest name a layer filesystem accepts.
pub const NAME_MAX: usize = 255;

/// What a name resolved to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Its kind.
    pub kind: Kind,
    /// Layers holding it, top first (see [`NodeState::layers`]).
    pub layers: crate::layers::Layers,
    /// Stat of the top entry.
    pub stat: libc::stat,
}

/// What one layer says about a name.
enum Probe {
    /// Not there: look further down.
    Absent,
    /// A whiteout: hidden here and below.
    Hidden,
    /// There, of this kind; `opaque` for an opaque directory.
    Found {
        kind: Kind,
        opaque: bool,
        stat: Option<libc::stat>,
    },
}

impl Overlay {
    /// Looks `name` up in the upper layer, with syscalls (it changes).
    fn probe_upper(
        &self,
        l: LayerIdx,
        dir_path: &RelPath,
        path: &RelPath,
        name: &[u8],
    ) -> Res<Probe> {
        let fd = self.stack.fd(l);
        match sys::stat_at(fd, path.c()) {
            Ok(st) => {
                if whiteout::is_whiteout(fd, path, &st) {
                    return Ok(Probe::Hidden);
                }
                let kind = Kind::from_mode(st.st_mode);
                let opaque = kind == Kind::Dir && whiteout::is_opaque(fd, path);
                Ok(Probe::Found {
                    kind,
                    opaque,
                    stat: Some(st),
                })
            }
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => {
                if whiteout::has_wh_file(fd, dir_path, name) {
                    Ok(Probe::Hidden)
                } else {
                    Ok(Probe::Absent)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Looks `name` up in a lower layer, through the directory cache.
    fn probe_lower(
        &self,
        l: LayerIdx,
        dir_path: &RelPath,
        path: &RelPath,
        name: &[u8],
    ) -> Res<Probe> {
        let dir = self.dircache.get(&self.stack, l, dir_path)?;
        if !dir.exists {
            return Ok(Probe::Absent);
        }
        match dir.entries.get(name) {
            Some(e) if e.whiteout => Ok(Probe::Hidden),
            Some(e) => {
                let opaque = e.kind == Kind::Dir && self.dircache.get(&self.stack, l, path)?.opaque;
                Ok(Probe::Found {
                    kind: e.kind,
                    opaque,
                    stat: None,
                })
            }
            None if dir.wh.contains(name) => Ok(Probe::Hidden),
            None => Ok(Probe::Absent),
        }
    }

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
        if is_reserved_name(name) {
            return Ok(None);
        }
        let path = dir_path.join(name);
        let mut found: Option<Resolved> = None;
        for &l in dir_layers {
            let step = if self.stack.is_upper(l) {
                self.probe_upper(l, dir_path, &path, name)?
            } else {
                self.probe_lower(l, dir_path, &path, name)?
            };
            match step {
                Probe::Absent => continue,
                Probe::Hidden => break,
                Probe::Found { kind, opaque, stat } => match &mut found {
                    None => {
                        let stat = match stat {
                            Some(st) => st,
                            None => sys::stat_at(self.stack.fd(l), path.c())?,
                        };
                        found = Some(Resolved {
                            kind,
                            layers: smallvec::smallvec![l],
                            stat,
                        });
                        // A metacopy file: its data is the next lower file.
                        if kind == Kind::File
                            && self.stack.is_upper(l)
                            && self.is_metacopy_at(l, &path)
                        {
                            continue;
                        }
                        if kind != Kind::Dir || opaque {
                            break;
                        }
                    }
                    Some(r) => {
                        if r.kind == Kind::File {
                            if kind == Kind::File {
                                r.layers.push(l);
                            }
                            break;
                        }
                        if kind != Kind::Dir {
                            break;
                        }
                        r.layers.push(l);
                        if opaque {
                            break;
                        }
                    }
                },
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
        self.lookup_for(parent, name, false)
    }

    /// As [`Overlay::lookup`], for an entry of a listing (`listing`: does
    /// not count as a sign that files get stat'ed).
    pub fn lookup_for(
        &self,
        parent: &Node,
        name: &OsStr,
        listing: bool,
    ) -> Res<(Arc<Node>, FileAttr)> {
        let pstate = parent.state();
        if pstate.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        // Changes to this directory's names (create, unlink, rename) hold
        // this lock while they change the disk and the node table together;
        // a lookup must not resolve a name half-way through one, or it could
        // give the kernel a node whose type no longer matches the disk
        // (which the kernel then marks bad: EIO).
        let _names = parent.change.lock();
        let ppath = self.nodes.path(parent)?;
        // The positive lookup cache: a live child's record is kept valid by
        // every change made through the mount.
        if let Some(child) = self.nodes.child(parent, name) {
            let top = self.stack.fd(child.top());
            if let Ok(st) = sys::stat_at(top, ppath.join(name.as_bytes()).c()) {
                if Kind::from_mode(st.st_mode) == child.state.read().kind
                    && self.nodes.try_add_lookup(&child)
                {
                    let attr = self.attr_from_stat(&child, &st);
                    return Ok((child, attr));
                }
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
        if !listing
            && state.kind != Kind::Dir
            && parent.listed.load(std::sync::atomic::Ordering::Relaxed)
        {
            self.note_file_lookup();
        }
        let node = self.nodes.lookup_child(parent, name, state, ino);
        self.check_node_limit();
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
