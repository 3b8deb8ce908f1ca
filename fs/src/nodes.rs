//! The inode table: one [`Node`] per name the kernel holds, with lookup
//! counts and FORGET.
//!
//! A node is a name in a directory of the merged tree (hard links are
//! separate nodes with the same `st_ino`). It records where the name
//! resolved: the layers that hold it, top first. Lower layers never change
//! while mounted and every change to the upper layer goes through this
//! server, which updates the nodes it touches, so a live node's record is a
//! cache that is always valid: this is the positive half of the lookup cache.
//!
//! Invariants: node ids are never reused within a mount; the root is id 1 and
//! is never forgotten; a node's `parent` is 0 once its name is gone
//! (unlinked, or replaced by a rename).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use fuser::BackingId;
use nix::errno::Errno;
use parking_lot::{Mutex, RwLock};

use crate::layers::LayerIdx;
use crate::path::RelPath;

/// A FUSE node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The root directory.
    pub const ROOT: NodeId = NodeId(1);
    /// "No node" (a detached node's parent).
    pub const NONE: NodeId = NodeId(0);
}

/// The type of a file, from `st_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    /// The kind of a `st_mode`.
    pub fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => Kind::File,
        }
    }

    /// The FUSE file type.
    pub fn fuse(self) -> fuser::FileType {
        match self {
            Kind::Dir => fuser::FileType::Directory,
            Kind::File => fuser::FileType::RegularFile,
            Kind::Symlink => fuser::FileType::Symlink,
            Kind::Fifo => fuser::FileType::NamedPipe,
            Kind::Socket => fuser::FileType::Socket,
            Kind::CharDev => fuser::FileType::CharDevice,
            Kind::BlockDev => fuser::FileType::BlockDevice,
        }
    }

    /// The kind of a `d_type` from getdents (`None` for DT_UNKNOWN).
    pub fn from_dtype(t: u8) -> Option<Kind> {
        Some(match t {
            libc::DT_DIR => Kind::Dir,
            libc::DT_REG => Kind::File,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_FIFO => Kind::Fifo,
            libc::DT_SOCK => Kind::Socket,
            libc::DT_CHR => Kind::CharDev,
            libc::DT_BLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// Where a name resolved and what it is.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// Parent directory (`NodeId::NONE` once the name is gone).
    pub parent: NodeId,
    /// Name in the parent.
    pub name: OsString,
    /// What it is.
    pub kind: Kind,
    /// Layers holding it, top first. One layer for a non-directory; for a
    /// directory every layer merged into it (down to an opaque one).
    pub layers: crate::layers::Layers,
    /// The name was removed while the kernel still holds the node.
    pub unlinked: bool,
}

/// How the kernel does I/O on a node's open files (see `crate::io`).
#[derive(Debug, Default)]
pub struct IoState {
    /// Open files served through FUSE without page cache.
    pub direct_opens: u32,
    /// Open files passed through to a backing file.
    pub passthrough_opens: u32,
    /// The backing file registered for passthrough; one per node while any
    /// passthrough open exists (the kernel binds it to the inode).
    pub backing: Option<Arc<BackingId>>,
    /// An open fd of the file, for fstat of an unlinked file.
    pub any_fd: Option<Arc<std::os::fd::OwnedFd>>,
}

/// One node of the merged tree.
#[derive(Debug)]
pub struct Node {
    /// Its FUSE node id.
    pub id: NodeId,
    /// The inode number users see; fixed for the node's life, kept across
    /// copy-up.
    pub ino: u64,
    lookups: AtomicU64,
    /// Where it resolved.
    pub state: RwLock<NodeState>,
    /// Its open files' I/O mode (allocated at the first open: most nodes
    /// are never opened).
    io: Mutex<Option<Box<IoState>>>,
    /// Serialises copy-up and other changes of this node's layers.
    pub change: Mutex<()>,
    /// Live child nodes by name (directories only).
    // Boxed on purpose: `None` (every file) costs 8 bytes, an empty
    // HashMap 48.
    #[allow(clippy::box_collection)]
    children: Mutex<Option<Box<HashMap<OsString, NodeId>>>>,
    /// A listing of this directory left out file attributes.
    pub listed: std::sync::atomic::AtomicBool,
    /// The pruning epoch of its last use (see `crate::prune`).
    used: AtomicU32,
    /// Known to have no `security.capability` xattr (see `crate::xattr`).
    pub no_caps: std::sync::atomic::AtomicBool,
    /// Known to have no `security.selinux` xattr (see `crate::xattr`).
    pub no_selinux: std::sync::atomic::AtomicBool,
}

impl Node {
    /// A snapshot of the node's state.
    pub fn state(&self) -> NodeState {
        self.state.read().clone()
    }

    /// The topmost layer holding the node.
    pub fn top(&self) -> LayerIdx {
        self.state.read().layers[0]
    }

    /// The layer holding the node's data: the top one, except for a
    /// metacopy file (metadata in the upper layer, data below).
    pub fn data_layer(&self) -> LayerIdx {
        let s = self.state.read();
        match s.kind {
            Kind::File => *s.layers.last().expect("a node has a layer"),
            _ => s.layers[0],
        }
    }

    /// Its open files' I/O state.
    pub fn io(&self) -> parking_lot::MappedMutexGuard<'_, IoState> {
        parking_lot::MutexGuard::map(self.io.lock(), |o| {
            &mut **o.get_or_insert_with(Default::default)
        })
    }

    /// Its live children by name (directories only).
    pub fn children(&self) -> parking_lot::MappedMutexGuard<'_, HashMap<OsString, NodeId>> {
        parking_lot::MutexGuard::map(self.children.lock(), |o| {
            &mut **o.get_or_insert_with(Default::default)
        })
    }

    /// A copy of its live children.
    pub fn children_snapshot(&self) -> HashMap<OsString, NodeId> {
        self.children.lock().as_deref().cloned().unwrap_or_default()
    }

    /// The node's kind.
    pub fn kind(&self) -> Kind {
        self.state.read().kind
    }
}

/// All live nodes of a mount.
#[derive(Debug)]
pub struct NodeTable {
    nodes: DashMap<NodeId, Arc<Node>>,
    /// Directory listings being read (see `crate::readdir`).
    pub listings: DashMap<NodeId, Arc<crate::readdir::Listing>>,
    next: AtomicU64,
    epoch: AtomicU32,
    /// Live nodes: checked on every lookup, where counting the map's
    /// shards would take each shard's lock.
    live: std::sync::atomic::AtomicUsize,
}

impl NodeTable {
    /// A table holding only the root, which resolves to `root_layers`.
    pub fn new(root_ino: u64, root_layers: crate::layers::Layers) -> NodeTable {
        let t = NodeTable {
            nodes: crate::new_map(),
            listings: crate::new_map(),
            next: AtomicU64::new(2),
            epoch: AtomicU32::new(0),
            live: std::sync::atomic::AtomicUsize::new(1),
        };
        let root = Node {
            id: NodeId::ROOT,
            ino: root_ino,
            lookups: AtomicU64::new(1),
            state: RwLock::new(NodeState {
                parent: NodeId::NONE,
                name: OsString::new(),
                kind: Kind::Dir,
                layers: root_layers,
                unlinked: false,
            }),
            io: Mutex::new(None),
            change: Mutex::new(()),
            children: Mutex::new(None),
            listed: Default::default(),
            used: AtomicU32::new(0),
            no_caps: Default::default(),
            no_selinux: Default::default(),
        };
        t.nodes.insert(NodeId::ROOT, Arc::new(root));
        t
    }

    /// The node with id `id`, or `ESTALE` if the kernel sent a forgotten id.
    pub fn get(&self, id: NodeId) -> Result<Arc<Node>, Errno> {
        self.nodes.get(&id).map(|n| n.clone()).ok_or(Errno::ESTALE)
    }

    /// As [`NodeTable::get`], for a request of the kernel: marks the node
    /// used in this pruning epoch.
    pub fn get_used(&self, id: NodeId) -> Result<Arc<Node>, Errno> {
        let n = self.get(id)?;
        n.used
            .store(self.epoch.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(n)
    }

    /// Forgets, on every node, that it has no capabilities and no
    /// SELinux label.
    pub fn forget_no_caps(&self) {
        for e in self.nodes.iter() {
            e.value().no_caps.store(false, Ordering::Relaxed);
            e.value().no_selinux.store(false, Ordering::Relaxed);
        }
    }

    /// Starts a new pruning epoch; returns the one that ended.
    pub fn next_epoch(&self) -> u32 {
        self.epoch.fetch_add(1, Ordering::Relaxed)
    }

    /// Nodes the kernel could drop: not the root, no open file.
    pub fn prune_candidates(&self) -> Vec<crate::prune::Candidate> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for e in self.nodes.iter() {
            let n = e.value();
            if n.id == NodeId::ROOT {
                continue;
            }
            let open = match n.io.try_lock() {
                Some(io) => io
                    .as_ref()
                    .is_some_and(|io| io.direct_opens + io.passthrough_opens > 0),
                None => true,
            };
            if open {
                continue;
            }
            let dir = n.state.try_read().is_none_or(|s| s.kind == Kind::Dir);
            out.push((dir, n.used.load(Ordering::Relaxed), n.id));
        }
        out
    }

    /// Number of live nodes.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The path of a node relative to the layer roots, or `ENOENT` if its
    /// name is gone.
    pub fn path(&self, node: &Node) -> Result<RelPath, Errno> {
        let mut names: Vec<OsString> = Vec::new();
        let mut cur = {
            let s = node.state.read();
            if node.id == NodeId::ROOT {
                return Ok(RelPath::root());
            }
            if s.parent == NodeId::NONE {
                return Err(Errno::ENOENT);
            }
            names.push(s.name.clone());
            s.parent
        };
        while cur != NodeId::ROOT {
            let n = self.get(cur).map_err(|_| Errno::ENOENT)?;
            let s = n.state.read();
            if s.parent == NodeId::NONE {
                return Err(Errno::ENOENT);
            }
            names.push(s.name.clone());
            cur = s.parent;
        }
        let mut p = RelPath::root();
        for n in names.iter().rev() {
            p = p.join_os(n);
        }
        Ok(p)
    }

    /// The live child `name` of `parent`, if the kernel holds one.
    pub fn child(&self, parent: &Node, name: &OsStr) -> Option<Arc<Node>> {
        let id = *parent.children().get(name)?;
        self.nodes.get(&id).map(|n| n.clone())
    }

    /// Records a lookup of `name` in `parent` that resolved to `state`: the
    /// existing child node if it is of the same kind (its state refreshed),
    /// else a new node with inode number `ino`. Adds one lookup count.
    pub fn lookup_child(
        &self,
        parent: &Node,
        name: &OsStr,
        state: NodeState,
        ino: u64,
    ) -> Arc<Node> {
        let mut children = parent.children();
        if let Some(id) = children.get(name) {
            if let Some(n) = self.nodes.get(id).map(|n| n.clone()) {
                let same = n.state.read().kind == state.kind;
                // A node whose last count a FORGET is taking away right now
                // is not reused: the kernel is dropping it, and its id would
                // be gone from the table after the reply.
                if same && self.try_add_lookup(&n) {
                    *n.state.write() = state;
                    return n;
                }
                if !same {
                    n.state.write().parent = NodeId::NONE;
                }
            }
        }
        let node = self.insert_new(state, ino);
        let id = node.id;
        children.insert(name.to_os_string(), id);
        node
    }

    /// A new node with no name (an `O_TMPFILE` file), one lookup count.
    pub fn insert_detached(&self, state: NodeState, ino: u64) -> Arc<Node> {
        self.insert_new(state, ino)
    }

    /// A new live node with a fresh id and one lookup count.
    fn insert_new(&self, state: NodeState, ino: u64) -> Arc<Node> {
        let id = NodeId(self.next.fetch_add(1, Ordering::Relaxed));
        let node = Arc::new(Node {
            id,
            ino,
            lookups: AtomicU64::new(1),
            state: RwLock::new(state),
            io: Mutex::new(None),
            change: Mutex::new(()),
            children: Mutex::new(None),
            listed: Default::default(),
            used: AtomicU32::new(self.epoch.load(Ordering::Relaxed)),
            no_caps: Default::default(),
            no_selinux: Default::default(),
        });
        self.nodes.insert(id, node.clone());
        self.live.fetch_add(1, Ordering::Relaxed);
        node
    }

    /// Gives a nameless node the name `name` in `parent` (linking an
    /// `O_TMPFILE` file); adds one lookup count.
    pub fn attach(&self, node: &Node, parent: &Node, name: &OsStr) -> Arc<Node> {
        {
            let mut s = node.state.write();
            s.parent = parent.id;
            s.name = name.to_os_string();
            s.unlinked = false;
        }
        parent.children().insert(name.to_os_string(), node.id);
        node.lookups.fetch_add(1, Ordering::Relaxed);
        self.nodes
            .get(&node.id)
            .map(|n| n.clone())
            .expect("a live node")
    }

    /// Adds one lookup count to a node the kernel still holds; false, and
    /// nothing added, when its count is already zero (a FORGET is removing
    /// it): the caller must then make a new node.
    pub fn try_add_lookup(&self, node: &Node) -> bool {
        let mut cur = node.lookups.load(Ordering::Acquire);
        loop {
            if cur == 0 {
                return false;
            }
            match node.lookups.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        node.used
            .store(self.epoch.load(Ordering::Relaxed), Ordering::Relaxed);
        true
    }

    /// Drops `n` lookup counts; a node with none left is removed.
    pub fn forget(&self, id: NodeId, n: u64) {
        if id == NodeId::ROOT {
            return;
        }
        let Some(node) = self.nodes.get(&id).map(|n| n.clone()) else {
            return;
        };
        // Down to zero at most, atomically: once zero, no lookup takes the
        // node again (`try_add_lookup`), so removing it below is safe.
        let mut cur = node.lookups.load(Ordering::Acquire);
        loop {
            let left = cur.saturating_sub(n);
            match node
                .lookups
                .compare_exchange_weak(cur, left, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) if left > 0 => return,
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        let (parent, name) = {
            let s = node.state.read();
            (s.parent, s.name.clone())
        };
        if parent != NodeId::NONE {
            if let Ok(p) = self.get(parent) {
                let mut ch = p.children();
                if ch.get(&name) == Some(&id) {
                    ch.remove(&name);
                }
            }
        }
        if self.nodes.remove(&id).is_some() {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        self.listings.remove(&id);
    }

    /// Detaches the child `name` of `parent` (its name is gone): the node, if
    /// live, keeps working through open files but has no path any more.
    pub fn detach_child(&self, parent: &Node, name: &OsStr) -> Option<Arc<Node>> {
        let id = parent.children().remove(name)?;
        let node = self.nodes.get(&id).map(|n| n.clone())?;
        let mut s = node.state.write();
        s.parent = NodeId::NONE;
        s.unlinked = true;
        drop(s);
        Some(node)
    }

    /// Moves the live child `name` of `from` to `to_name` in `to` (rename).
    pub fn move_child(&self, from: &Node, name: &OsStr, to: &Node, to_name: &OsStr) {
        let id = from.children().remove(name);
        if let Some(id) = id {
            if let Some(node) = self.nodes.get(&id).map(|n| n.clone()) {
                {
                    let mut s = node.state.write();
                    s.parent = to.id;
                    s.name = to_name.to_os_string();
                }
                to.children().insert(to_name.to_os_string(), id);
            }
        }
    }

    /// Every live descendant of `dir` (depth first), for changes that apply
    /// to a whole subtree.
    pub fn descendants(&self, dir: &Node) -> Vec<Arc<Node>> {
        let mut out = Vec::new();
        let mut stack: Vec<NodeId> = dir.children().values().copied().collect();
        while let Some(id) = stack.pop() {
            if let Some(n) = self.nodes.get(&id).map(|n| n.clone()) {
                stack.extend(n.children().values().copied());
                out.push(n);
            }
        }
        out
    }
}
