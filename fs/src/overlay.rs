//! The union filesystem's state and the operations shared by every request:
//! attributes, owner translation, and the write gate.
//!
//! Each area lives in its own module as an `impl Overlay` block: lookup,
//! readdir, copy-up, namespace changes, rename, xattrs, open files.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::FileAttr;
use nix::errno::Errno;

use crate::io::Handles;
use crate::layers::{LayerIdx, Stack};
use crate::nodes::{Kind, Node, NodeTable};
use crate::options::MountOptions;
use crate::path::RelPath;
use crate::sys;
use strata_ovl::{Forms, WhiteoutForm, Xattr};

/// Result of a filesystem operation: the errno goes to the caller.
pub type Res<T> = Result<T, Errno>;

/// How many file lookups right after listings (within [`STAT_WINDOW`])
/// make listings include file attributes.
const STAT_HITS: u32 = 16;
/// The window of [`STAT_HITS`], and how long listings then include file
/// attributes after the last such lookup.
const STAT_WINDOW: Duration = Duration::from_secs(2);

/// The state of adaptive readdirplus (see [`Overlay::stat_heavy`]).
#[derive(Debug)]
pub struct StatWindow {
    start: std::time::Instant,
    hits: u32,
    until: Option<std::time::Instant>,
}

impl Default for StatWindow {
    fn default() -> Self {
        StatWindow {
            start: std::time::Instant::now(),
            hits: 0,
            until: None,
        }
    }
}

/// Default entry and attribute timeout (`timeout=` overrides it).
pub const DEFAULT_TTL_SECS: f64 = 86400.0;

/// Name of the shared whiteout inode in the work directory.
const SHARED_WHITEOUT: &std::ffi::CStr = c"#strata-whiteout";

/// Identity of the caller of a request.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A mounted union: the layers, the node table, the open files, the options.
#[derive(Debug)]
pub struct Overlay {
    pub(crate) stack: Stack,
    pub(crate) nodes: NodeTable,
    pub(crate) handles: Handles,
    pub(crate) opts: MountOptions,
    /// The forms written into the upper layer, probed at mount.
    pub(crate) forms: Forms,
    /// Whether passthrough may be tried (cleared when the kernel refuses).
    pub(crate) passthrough: AtomicBool,
    pub(crate) ttl: Duration,
    pub(crate) links: crate::hardlink::LinkMaps,
    pub(crate) dircache: crate::dircache::DirCache,
    /// Adaptive readdirplus: file lookups that followed listings without
    /// attributes, and until when listings include them.
    pub(crate) stat_window: parking_lot::Mutex<StatWindow>,
    /// The channel for telling the kernel to drop cached attributes.
    pub(crate) notifier: std::sync::OnceLock<fuser::Notifier>,
    /// Requests by operation (`-o stats=`).
    pub(crate) stats: crate::stats::OpStats,
    /// Node ids the pruner asked the kernel to drop.
    pub(crate) stats_pruned: std::sync::atomic::AtomicU64,
    /// The most nodes live at once.
    pub(crate) stats_peak_nodes: std::sync::atomic::AtomicUsize,
    /// The key of the hash that numbers listing offsets.
    pub(crate) cookie_keys: std::hash::RandomState,
    /// The doorbell of the node pruning thread, once started.
    pub(crate) pruner: std::sync::OnceLock<crate::prune::Pruner>,
    /// Held exclusively by the requests that move or remove names (rename,
    /// unlink, rmdir) and shared by every other request: those turn nodes
    /// into paths, and a path taken half-way through a rename can name
    /// another file (of another type: the kernel then marks its inode bad
    /// and answers EIO).
    pub(crate) namespace: parking_lot::RwLock<()>,
    /// Inode numbers of files that have had several names. Each name is a
    /// FUSE node of its own, and a write through one (an fd kept open on
    /// a name since unlinked, say) changes the others behind the kernel's
    /// back, so their attributes are never cached.
    pub(crate) shared_inos: dashmap::DashMap<u64, ()>,
    /// Each layer's owner override mode, by [`LayerIdx`] (see
    /// `ownership.rs`).
    pub(crate) overrides: Vec<Option<strata_ovl::OverrideMode>>,
    /// Copy-ups marked instead of synced, until a syncfs (see
    /// `copyup.rs`); `None` when copy-ups are always synced (read-only,
    /// no overlay xattrs in the upper, `fsync=0`).
    pub(crate) pending_sync: Option<Arc<crate::copyup::PendingSync>>,
}

impl Overlay {
    /// Builds the filesystem for an opened stack, writing `forms` into its
    /// upper layer (see [`upper_forms`]).
    pub fn new(stack: Stack, opts: MountOptions, forms: Forms) -> Res<Overlay> {
        // Privilege is what the kernel allows, not the uid: uid 0 in a user
        // namespace may not register passthrough backing files.
        let privileged = sys::has_init_cap_sys_admin();
        let root_layers: crate::layers::Layers = stack.all().collect();
        let top = root_layers[0];
        let st = sys::stat_at(stack.fd(top), c".")?;
        let root_ino = stack.ino(top, st.st_ino);
        // Every change to the layers goes through this mount (lower layers
        // never change), so the kernel may keep what it is told for long;
        // the replies to changes carry the new attributes.
        let ttl = Duration::from_secs_f64(opts.timeout_secs.unwrap_or(DEFAULT_TTL_SECS));
        let passthrough = opts.passthrough && privileged;
        if opts.passthrough && !privileged {
            tracing::info!(
                "FUSE passthrough needs CAP_SYS_ADMIN in the initial user namespace; serving reads and writes through FUSE"
            );
        }
        let overrides = crate::ownership::layer_modes(&stack, &opts);
        let pending_sync = match (stack.upper(), forms.xattrs) {
            (Some(upper), Some(ns)) if !opts.read_only && !opts.no_fsync => {
                let fd = sys::open_beneath(
                    stack.fd(upper),
                    c".",
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                )?;
                // A mark is only as good as the order in which the upper
                // filesystem commits metadata (see copyup.rs).
                let batch = opts
                    .batch_sync
                    .unwrap_or_else(|| sys::orders_metadata(std::os::fd::AsFd::as_fd(&fd)));
                batch.then(|| {
                    Arc::new(crate::copyup::PendingSync::new(
                        fd,
                        Xattr::Metacopy.name(ns),
                    ))
                })
            }
            _ => None,
        };
        let ov = Overlay {
            pending_sync,
            overrides,
            nodes: NodeTable::new(root_ino, crate::layers::Layers::new()),
            stack,
            handles: Handles::default(),
            forms,
            passthrough: AtomicBool::new(passthrough),
            ttl,
            links: Default::default(),
            dircache: Default::default(),
            notifier: std::sync::OnceLock::new(),
            stats: crate::stats::OpStats::new(opts.stats.is_some()),
            stats_pruned: Default::default(),
            stats_peak_nodes: Default::default(),
            pruner: std::sync::OnceLock::new(),
            namespace: Default::default(),
            shared_inos: crate::new_map(),
            cookie_keys: std::hash::RandomState::new(),
            stat_window: Default::default(),
            opts,
        };
        // The root merges every layer, as the kernel's overlayfs does (a
        // layer root is never opaque and never whited out).
        let layers: crate::layers::Layers = ov.stack.all().collect();
        ov.nodes
            .get(crate::nodes::NodeId::ROOT)?
            .state
            .write()
            .layers = layers;
        Ok(ov)
    }

    /// The attribute timeout and entry timeout given to the kernel.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The timeout for one entry's attributes: none for a file with several
    /// names, whose other names are separate nodes the kernel would not
    /// know to refresh when one of them changes the link count.
    pub fn ttl_for(&self, attr: &FileAttr) -> Duration {
        if attr.kind != fuser::FileType::Directory
            && (attr.nlink > 1 || self.shared_inos.contains_key(&attr.ino.0))
        {
            Duration::ZERO
        } else {
            self.ttl
        }
    }

    /// Tells the kernel that the attributes it caches for `node` are stale
    /// (another name of the same file changed them). Attributes only: no
    /// page is touched, so this is safe from within any request.
    pub fn invalidate_attrs(&self, node: &Node) {
        if let Some(n) = self.notifier.get() {
            let _ = n.inval_inode(fuser::INodeNo(node.id.0), -1, 0);
        }
    }

    /// Whether directory listings should carry file attributes now.
    ///
    /// READDIRPLUS makes the server stat every entry, which a cold `find`
    /// or `ls -f` never needs: for files, that is a disk read per entry the
    /// kernel's overlayfs does not make. So listings leave file attributes
    /// out until the files of listed directories get looked up (`ls -l`,
    /// `find -ls`, `git status`): then, for a while, they carry them, and
    /// those stats save a round trip each.
    pub fn stat_heavy(&self) -> bool {
        let w = self.stat_window.lock();
        w.until.is_some_and(|u| std::time::Instant::now() < u)
    }

    /// Notes a lookup of a file in a directory whose listing left file
    /// attributes out.
    pub(crate) fn note_file_lookup(&self) {
        let now = std::time::Instant::now();
        let mut w = self.stat_window.lock();
        if now.duration_since(w.start) > STAT_WINDOW {
            w.start = now;
            w.hits = 0;
        }
        w.hits += 1;
        if w.hits >= STAT_HITS {
            w.until = Some(now + STAT_WINDOW);
        }
    }

    /// Makes a whiteout at `dir/at` in the form this mount writes. The
    /// device form is a hard link to one shared whiteout in the work
    /// directory, as the kernel's overlayfs does: no inode to allocate per
    /// whiteout (a new shared one is made when it runs out of links).
    pub(crate) fn make_whiteout(
        &self,
        dir: std::os::fd::BorrowedFd<'_>,
        at: &std::ffi::CStr,
    ) -> Res<()> {
        if self.forms.whiteout != WhiteoutForm::Device {
            return strata_ovl::layer::make_whiteout(
                dir,
                &RelPath::from_bytes(at.to_bytes()),
                self.forms.whiteout,
            );
        }
        let Some(work) = self.stack.work() else {
            return sys::mknod_at(dir, at, libc::S_IFCHR, 0);
        };
        for _ in 0..2 {
            match sys::link_at(work, SHARED_WHITEOUT, dir, at) {
                Ok(()) => return Ok(()),
                Err(Errno::ENOENT) | Err(Errno::EMLINK) => {
                    let tmp = crate::copyup::temp_name();
                    sys::mknod_at(work, &tmp, libc::S_IFCHR, 0)?;
                    sys::rename_at2(work, &tmp, work, SHARED_WHITEOUT, 0)?;
                }
                Err(_) => break,
            }
        }
        sys::mknod_at(dir, at, libc::S_IFCHR, 0)
    }

    /// Whether the mount accepts changes (an upper layer, not `ro`).
    pub fn writable(&self) -> bool {
        self.stack.upper().is_some() && !self.opts.read_only
    }

    /// The node table's limit (`max_nodes=`; 0: unbounded).
    pub fn max_nodes(&self) -> usize {
        self.opts
            .max_nodes
            .unwrap_or(crate::prune::DEFAULT_MAX_NODES)
    }

    /// Rings the pruner if the node table is over its limit.
    pub fn check_node_limit(&self) {
        let live = self.nodes.len();
        self.stats_peak_nodes.fetch_max(live, Ordering::Relaxed);
        if let Some(p) = self.pruner.get() {
            if live > self.max_nodes() {
                p.ring();
            }
        }
    }

    /// The name of the overlay xattr `x` in the namespace this mount
    /// writes its records in; `None` when the upper takes no overlay xattr
    /// (then no origin, impure or metacopy record is kept).
    pub fn xattr(&self, x: Xattr) -> Option<&'static std::ffi::CStr> {
        self.forms.xattrs.map(|ns| x.name(ns))
    }

    /// Whether metadata-only copy-up is on (it needs overlay xattrs).
    pub fn metacopy_on(&self) -> bool {
        self.opts.metacopy && self.forms.xattrs.is_some()
    }

    /// Whether the upper file at `path` is a metacopy file. Also with
    /// metacopy off: a copy-up marked until its data is synced is one
    /// (see `copyup.rs`), and so is one the kernel's overlayfs made.
    pub fn is_metacopy_at(&self, upper: LayerIdx, path: &RelPath) -> bool {
        self.xattr(Xattr::Metacopy).is_some_and(|name| {
            sys::getxattr_at(self.stack.fd(upper), path.c(), name, &mut []).is_ok()
        })
    }

    /// The upper layer, or `EROFS` for a read-only mount.
    pub fn upper(&self) -> Res<LayerIdx> {
        if self.opts.read_only {
            return Err(Errno::EROFS);
        }
        self.stack.upper().ok_or(Errno::EROFS)
    }

    /// Whether fsync should reach the disk (not `volatile` / `fsync=0`).
    pub fn do_fsync(&self) -> bool {
        !self.opts.no_fsync
    }

    /// The uid stored on disk for a caller's uid.
    pub fn disk_uid(&self, uid: u32) -> u32 {
        self.opts.uid_map.to_disk(uid)
    }

    /// The gid stored on disk for a caller's gid.
    pub fn disk_gid(&self, gid: u32) -> u32 {
        self.opts.gid_map.to_disk(gid)
    }

    /// The attributes users see for a real stat of a node (with its
    /// owner override applied, see `ownership.rs`).
    pub fn attr_from_stat(&self, node: &Node, st: &libc::stat) -> FileAttr {
        let (unlinked, merged, top) = {
            let s = node.state.read();
            (s.unlinked, s.layers.len() > 1, s.layers[0])
        };
        let mut st = *st;
        if !unlinked && self.override_mode(top).is_some() {
            if let Ok(path) = self.nodes.path(node) {
                self.apply_override(top, &path, &mut st);
            }
        }
        let st = &st;
        let mut a = attr_of(st, node.ino);
        if st.st_nlink > 1
            && st.st_mode & libc::S_IFMT != libc::S_IFDIR
            && !self.shared_inos.contains_key(&node.ino)
        {
            self.shared_inos.insert(node.ino, ());
        }
        a.uid = self
            .opts
            .squash_uid
            .unwrap_or_else(|| self.opts.uid_map.to_user(st.st_uid));
        a.gid = self
            .opts
            .squash_gid
            .unwrap_or_else(|| self.opts.gid_map.to_user(st.st_gid));
        // As the kernel's overlayfs: counting subdirectories across layers
        // is not worth it, and nlink 1 tells `find` not to rely on it.
        if merged && a.kind == fuser::FileType::Directory {
            a.nlink = 1;
        }
        if unlinked && a.kind != fuser::FileType::Directory {
            a.nlink = 0;
        }
        if merged && a.kind == fuser::FileType::RegularFile {
            // A metacopy file: the upper copy is sparse; report the blocks
            // of the data, as the kernel does, and its size (the same: a
            // change of size copies the data up first), which a crash may
            // have lost from a marked copy-up (see copyup.rs).
            let data = node.data_layer();
            if let Ok(path) = self.nodes.path(node) {
                if let Ok(d) = sys::stat_at(self.stack.fd(data), path.c()) {
                    a.blocks = d.st_blocks as u64;
                    a.size = d.st_size as u64;
                }
            }
        }
        a
    }

    /// Stats a node in its top layer (or through an open fd once its name is
    /// gone).
    pub fn stat_node(&self, node: &Node) -> Res<libc::stat> {
        let s = node.state();
        if s.unlinked
            || s.parent == crate::nodes::NodeId::NONE && node.id != crate::nodes::NodeId::ROOT
        {
            if let Some(fd) = node.io().any_fd.clone() {
                return sys::fstat(std::os::fd::AsFd::as_fd(&*fd));
            }
            return Err(Errno::ENOENT);
        }
        let path = self.nodes.path(node)?;
        sys::stat_at(self.stack.fd(s.layers[0]), path.c())
    }

    /// The attributes of a node.
    pub fn getattr(&self, node: &Node) -> Res<FileAttr> {
        let st = self.stat_node(node)?;
        Ok(self.attr_from_stat(node, &st))
    }

    /// Records that the upper directory `dir` may hold copied-up entries
    /// ([`Xattr::Impure`]). Mounts whose upper takes no overlay xattr
    /// record no origins at all.
    pub fn mark_impure(&self, dir: &RelPath) {
        let Some(name) = self.xattr(Xattr::Impure) else {
            return;
        };
        if let Ok(upper) = self.upper() {
            let _ = sys::setxattr_at(self.stack.fd(upper), dir.c(), name, b"y", 0);
        }
    }

    /// Marks `dir` impure ([`Overlay::mark_impure`]) if the upper entry
    /// `entry` in it is numbered as its origin.
    pub fn mark_impure_for(&self, dir: &RelPath, entry: &RelPath) {
        if let Ok(upper) = self.upper() {
            if self.origin_at(upper, entry).is_some() {
                self.mark_impure(dir);
            }
        }
    }

    /// The origin's inode number a copied-up entry at `path` in layer
    /// `layer` records ([`Xattr::Origin`]).
    fn origin_at(&self, layer: LayerIdx, path: &RelPath) -> Option<u64> {
        let name = self.xattr(Xattr::Origin)?;
        let mut buf = [0u8; 8];
        match sys::getxattr_at(self.stack.fd(layer), path.c(), name, &mut buf) {
            Ok(8) => Some(u64::from_le_bytes(buf)),
            _ => None,
        }
    }

    /// Whether the upper directory `dir` was marked impure.
    pub fn is_impure(&self, dir: &RelPath) -> bool {
        let (Some(name), Ok(upper)) = (self.xattr(Xattr::Impure), self.upper()) else {
            return false;
        };
        let mut buf = [0u8; 1];
        matches!(sys::getxattr_at(self.stack.fd(upper), dir.c(), name, &mut buf), Ok(n) if n > 0)
    }

    /// The inode number for a freshly resolved entry whose top is `top`.
    pub fn ino_for(
        &self,
        top: LayerIdx,
        path: &RelPath,
        st: &libc::stat,
        kind: Kind,
        layers: &[LayerIdx],
    ) -> u64 {
        if kind == Kind::Dir && self.stack.is_upper(top) && layers.len() > 1 {
            // A merged directory keeps the number of its topmost lower
            // directory, as before it was copied up.
            if let Ok(lst) = sys::stat_at(self.stack.fd(layers[1]), path.c()) {
                return self.stack.ino(layers[1], lst.st_ino);
            }
        }
        // A copied-up entry keeps its origin's number, a directory too
        // once it merges nothing (renamed, so opaque).
        if self.stack.is_upper(top) {
            if let Some(origin) = self.origin_at(top, path) {
                return origin;
            }
        }
        self.stack.ino(top, st.st_ino)
    }
}

/// The FUSE attributes of a real stat, with `ino` as the inode number.
pub fn attr_of(st: &libc::stat, ino: u64) -> FileAttr {
    FileAttr {
        ino: fuser::INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: Kind::from_mode(st.st_mode).fuse(),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new((-sec) as u64, 0) + Duration::from_nanos(nsec as u64)
    }
}

/// Whether passthrough is still enabled.
pub(crate) fn passthrough_on(ov: &Overlay) -> bool {
    ov.passthrough.load(Ordering::Relaxed)
}

/// The attributes of a negative entry (all zero but the type).
pub(crate) fn zero_stat() -> libc::stat {
    let mut st = sys::fstat_placeholder();
    st.st_mode = libc::S_IFREG;
    st
}

/// The forms a mount writes into its upper layer, probed in the work
/// directory: what the upper filesystem and the caller's privileges allow
/// (said once at `-d`, and in the `stats=` report). An upper in which
/// nothing can be created is an error: better refused at mount than failing
/// on the first delete. A read-only mount writes nothing.
pub(crate) fn upper_forms(stack: &Stack, opts: &MountOptions) -> Res<Forms> {
    let work = match stack.work() {
        Some(work) if !opts.read_only => work,
        _ => return Ok(Forms::KERNEL),
    };
    let p = strata_ovl::Probe::run(work)?;
    tracing::info!(probe = %p, forms = %p.forms(), "upper filesystem probed");
    let mut forms = p.forms();
    if forms.whiteout == WhiteoutForm::WhFile && !takes_wh_names(work) {
        // A FUSE overlay as the upper: a strata-mount takes overlay xattrs
        // for a nested overlay (it escapes them), so whiteouts are the
        // kernel's xattr form; fuse-overlayfs takes none, and no whiteout
        // can be written in any form. Said at mount rather than refused:
        // adding and changing files still works.
        if let Some(ns) = forms.xattrs {
            forms.whiteout = WhiteoutForm::Xattr(ns);
            tracing::info!(forms = %forms, "the upper takes no .wh. names: xattr whiteouts");
            return Ok(forms);
        }
        tracing::warn!(
            "the upper filesystem takes neither 0/0 devices nor .wh. names (a FUSE overlay?): \
             removing or replacing a lower entry will fail with EINVAL; \
             put the upper directory on another filesystem (a volume or tmpfs)"
        );
    }
    Ok(forms)
}

/// Whether a `.wh.` file can be made in the work directory (a FUSE
/// overlay refuses such names through its mount).
fn takes_wh_names(work: std::os::fd::BorrowedFd<'_>) -> bool {
    const NAME: &std::ffi::CStr = c".wh.strata-probe";
    let _ = strata_ovl::sys::unlink_at(work, NAME, false);
    let made = strata_ovl::sys::open_beneath(
        work,
        NAME,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0o600,
    )
    .is_ok();
    let _ = strata_ovl::sys::unlink_at(work, NAME, false);
    made
}
