//! Copy-up: bringing a lower entry into the upper layer before its first
//! change.
//!
//! Parents are copied up first. Data and metadata (mode, owner, times,
//! xattrs) are assembled under a temporary name in `WORKDIR/work` and renamed
//! into place, so a crash never leaves a half-copied file visible; leftovers
//! are removed at the next mount. Data moves extent by extent
//! (`SEEK_DATA`/`SEEK_HOLE`, then `copy_file_range`, which reflinks where
//! the filesystem can), so holes stay holes. A copied-up entry records its
//! origin's inode number (`trusted.overlay.strata.origin`) so `st_ino` stays
//! the same, also for a directory once it no longer merges a lower one
//! (renamed, so made opaque). A lower entry's owner override is carried
//! into the upper's form (see `ownership.rs`).
//!
//! ## Durability: synced before the rename, or marked until synced
//!
//! A copy-up must never leave, after a crash, a visible upper file with
//! empty or partial data (a delayed-allocation filesystem persists a
//! rename long before the data it names). Two ways keep that promise:
//!
//! - **Synced**: the data is `fsync`ed under the temporary name before the
//!   rename, as the kernel's overlayfs does. Every copy-up that comes
//!   before a change of the data (an open for writing, a truncate, a
//!   rename, a link) goes this way.
//! - **Marked** (a burst of chmod, chown, utimes or setxattr on lower files
//!   with metacopy off, when the upper takes overlay xattrs): the copy gets
//!   the metacopy xattr under the temporary name, *before* the rename, and
//!   no fsync. A marked upper file is read as a metacopy file: its data
//!   comes from the lower file of the same path, which never changes. The
//!   burst is made durable together ([`PendingSync`]): one `syncfs` of the
//!   upper filesystem, and only once it has succeeded are the marks
//!   removed. A crash before that leaves marked files, which read the
//!   lower data (whatever the upper copy holds); a crash after it leaves
//!   synced data. The order that matters, mark then rename, is the order
//!   of two metadata changes of one filesystem, which a journal or
//!   copy-on-write keeps (ext3/ext4 with a journal, xfs, btrfs commit
//!   metadata in order; data is what they may lose). Elsewhere (ext4
//!   without a journal, which writes metadata blocks back in any order,
//!   or a filesystem not known) the rename could reach the disk before
//!   the mark: `batch_sync=auto` (the default) then syncs each copy-up as
//!   above ([`crate::sys::orders_metadata`] decides); `batch_sync=on` and
//!   `off` override it.
//! - A marked file never receives new data while marked: an open for
//!   writing or a truncate of it, and any rename or link (which would move
//!   a marked file away from the path its data is found by) first settle
//!   the burst (`syncfs`, marks removed, `syncfs` again so the removals
//!   cannot be lost while new data survives).
//! - The marks of a burst are removed by a background thread once 256
//!   files are marked or 20 ms pass without a new one, and at unmount.
//!   The kernel's overlayfs mounted with `metacopy=on` reads a marked file
//!   as Strata does; with `metacopy=off` it refuses it (EPERM) rather than
//!   show torn data.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use parking_lot::{Condvar, Mutex};
use tracing::{error, warn};

use crate::layers::LayerIdx;
use crate::nodes::{Kind, Node, NodeId};
use crate::overlay::{Overlay, Res};
use crate::path::RelPath;
use crate::sys::{self, Time};
use strata_ovl::{is_private_xattr, WhiteoutForm, Xattr};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary name inside the work directory.
pub fn temp_name() -> CString {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    CString::new(format!("#strata-{}-{n}", std::process::id())).expect("no NUL")
}

/// How much of a file to copy up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyData {
    /// The whole content.
    All,
    /// Nothing: the caller truncates it to zero anyway (`O_TRUNC`).
    None,
    /// Metadata only, when `metacopy=on` allows it (a change of mode,
    /// owner, times or xattrs): the upper file is sparse, marked
    /// `trusted.overlay.metacopy`, and its data follows on the first write.
    Meta,
}

impl Overlay {
    /// Makes sure `node` exists in the upper layer, copying it (and its
    /// parents) up if needed.
    pub fn ensure_upper(&self, node: &Node) -> Res<()> {
        self.ensure_upper_with(node, CopyData::All)
    }

    /// As [`Overlay::ensure_upper`], choosing how much data to copy.
    pub fn ensure_upper_with(&self, node: &Node, data: CopyData) -> Res<()> {
        let upper = self.upper()?;
        if node.top() == upper {
            if data != CopyData::Meta && node.data_layer() != upper {
                return self.copy_up_data(node);
            }
            return Ok(());
        }
        if node.id != NodeId::ROOT {
            let parent = self.parent_of(node)?;
            self.ensure_upper(&parent)?;
        }
        let _guard = node.change.lock();
        let s = node.state();
        if s.layers[0] == upper {
            return Ok(());
        }
        let path = self.nodes.path(node)?;
        let from = s.layers[0];
        let (meta, marked) = self.copy_up_entry_with(from, &path, data, node.ino, true)?;
        if let (Some(fd), Some(p)) = (marked, &self.pending_sync) {
            p.push(node.id, fd);
        }
        let mut w = node.state.write();
        if w.kind == Kind::Dir {
            w.layers.insert(0, upper);
        } else if meta {
            w.layers = smallvec::smallvec![upper, from];
        } else {
            w.layers = smallvec::smallvec![upper];
        }
        Ok(())
    }

    /// Brings the data of the metacopy file `node` up: its upper copy
    /// becomes whole.
    pub fn copy_up_data(&self, node: &Node) -> Res<()> {
        let upper = self.upper()?;
        let _guard = node.change.lock();
        let s = node.state();
        if s.kind != Kind::File || s.layers.len() < 2 {
            return Ok(());
        }
        let path = self.nodes.path(node)?;
        self.copy_up_data_at(&path, s.layers[1])?;
        node.state.write().layers = smallvec::smallvec![upper];
        Ok(())
    }

    /// Writes the data of `path` in layer `from` into the sparse upper copy
    /// at `path`, then drops its metacopy mark. A crash before the mark is
    /// gone leaves a metacopy file that still reads the lower data.
    pub fn copy_up_data_at(&self, path: &RelPath, from: LayerIdx) -> Res<()> {
        let ufd = self.stack.fd(self.upper()?);
        let before = sys::stat_at(ufd, path.c())?;
        let inp = sys::open_beneath(self.stack.fd(from), path.c(), libc::O_RDONLY, 0)?;
        let out = sys::open_beneath(ufd, path.c(), libc::O_WRONLY, 0)?;
        // A metacopy file has its data's size (a change of size copies
        // the data up first); a marked copy-up whose size a crash lost
        // gets it back here.
        let len = sys::fstat(inp.as_fd())?.st_size as u64;
        if before.st_size as u64 != len {
            sys::ftruncate(out.as_fd(), len)?;
        }
        if len > 0 {
            copy_data(inp.as_fd(), out.as_fd(), len)?;
        }
        if self.do_fsync() {
            sys::fsync(out.as_fd(), false)?;
        }
        // Writing the data is not a change users made: keep the times.
        sys::utimens_at(
            ufd,
            path.c(),
            Time::Set(before.st_atime, before.st_atime_nsec),
            Time::Set(before.st_mtime, before.st_mtime_nsec),
        )?;
        let Some(metacopy) = self.xattr(Xattr::Metacopy) else {
            return Ok(());
        };
        match sys::removexattr_at(ufd, path.c(), metacopy) {
            Ok(()) | Err(Errno::ENODATA) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Copies the entry `path` of layer `from` to the same path in the upper
    /// layer, whose parent directory must already exist there. `ino` is the
    /// inode number to keep. Returns whether only metadata was copied (a
    /// metacopy file, see [`CopyData::Meta`]).
    pub fn copy_up_entry(
        &self,
        from: LayerIdx,
        path: &RelPath,
        data: CopyData,
        ino: u64,
    ) -> Res<bool> {
        let (meta, marked) = self.copy_up_entry_with(from, path, data, ino, false)?;
        debug_assert!(marked.is_none(), "only marks when asked to");
        Ok(meta)
    }

    /// As [`Overlay::copy_up_entry`]; with `may_mark`, a whole copy asked
    /// for as [`CopyData::Meta`] (metacopy off) may be marked instead of
    /// synced (see the module's header): then its open fd comes back, to
    /// be handed to [`PendingSync::push`].
    fn copy_up_entry_with(
        &self,
        from: LayerIdx,
        path: &RelPath,
        data: CopyData,
        ino: u64,
        may_mark: bool,
    ) -> Res<(bool, Option<OwnedFd>)> {
        let upper = self.upper()?;
        let work = self.stack.work().ok_or(Errno::EROFS)?;
        let src = self.stack.fd(from);
        let st = sys::stat_at(src, path.c())?;
        let kind = Kind::from_mode(st.st_mode);
        // Metadata only for a plain file of a lower layer; hard-linked ones
        // are linked up whole (their other names must share the data).
        let plain_lower = kind == Kind::File && st.st_nlink == 1 && !self.stack.is_upper(from);
        let mark = may_mark
            && data == CopyData::Meta
            && !self.metacopy_on()
            && plain_lower
            && st.st_size > 0
            && self.pending_sync.is_some();
        let data = match data {
            CopyData::Meta
                if kind == Kind::File
                    && self.metacopy_on()
                    && st.st_nlink == 1
                    && !self.stack.is_upper(from) =>
            {
                CopyData::Meta
            }
            CopyData::Meta => CopyData::All,
            d => d,
        };
        let tmp = temp_name();
        let res = self.build_copy(from, path, &st, kind, work, &tmp, data, ino, mark);
        let marked = match res {
            Ok(m) => m,
            Err(e) => {
                error!(?e, %path, "copy-up failed");
                let _ = crate::layers::remove_tree(work, &tmp, kind == Kind::Dir);
                return Err(e);
            }
        };
        crate::faults::point("copyup.rename")?;
        let dst = self.stack.fd(upper);
        // Replace whatever the upper layer has at the name (nothing, or a
        // whiteout of the AUFS form, which is removed after).
        if let Err(e) = sys::rename_at2(work, &tmp, dst, path.c(), 0) {
            error!(?e, %path, "copy-up rename failed");
            let _ = crate::layers::remove_tree(work, &tmp, kind == Kind::Dir);
            return Err(e);
        }
        if self.forms.whiteout == WhiteoutForm::WhFile {
            strata_ovl::layer::remove_wh_file(dst, path)?;
        }
        if kind != Kind::Dir && st.st_nlink > 1 && !self.stack.is_upper(from) {
            self.link_up_siblings(from, path, st.st_ino)?;
        }
        // The data was synced before the rename, as the kernel's overlayfs
        // does, or the file is marked until a syncfs; the directory is not
        // synced: a copy-up lost in a crash leaves the lower file in view,
        // never a torn one.
        Ok((data == CopyData::Meta, marked))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build_copy(
        &self,
        from: LayerIdx,
        path: &RelPath,
        st: &libc::stat,
        kind: Kind,
        work: BorrowedFd<'_>,
        tmp: &std::ffi::CStr,
        data: CopyData,
        ino: u64,
        mark: bool,
    ) -> Res<Option<OwnedFd>> {
        let src = self.stack.fd(from);
        let mut marked = None;
        match kind {
            Kind::Dir => {
                sys::mkdir_at(work, tmp, 0o700)?;
            }
            Kind::File => {
                let out = sys::open_beneath(
                    work,
                    tmp,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    0o600,
                )?;
                match data {
                    CopyData::All if st.st_size > 0 => {
                        let inp = sys::open_beneath(src, path.c(), libc::O_RDONLY, 0)?;
                        // The size first: the holes copy_data skips stay
                        // holes, also one at the end.
                        sys::ftruncate(out.as_fd(), st.st_size as u64)?;
                        copy_data(inp.as_fd(), out.as_fd(), st.st_size as u64)?;
                        let mark_name = self.xattr(Xattr::Metacopy).filter(|_| mark);
                        if let Some(name) = mark_name {
                            // Read as a metacopy file until a syncfs has
                            // made the data durable (see the header).
                            sys::setxattr_at(work, tmp, name, b"", 0)?;
                            marked = Some(out);
                        } else if self.do_fsync() {
                            crate::faults::point("copyup.fsync")?;
                            sys::fsync(out.as_fd(), false)?;
                        }
                    }
                    // The size without the data (a sparse file, no blocks)
                    // so the upper directory shows the right size, as the
                    // kernel's metacopy files do; nothing to sync.
                    CopyData::Meta => {
                        sys::ftruncate(out.as_fd(), st.st_size as u64)?;
                        let metacopy = self.xattr(Xattr::Metacopy).ok_or(Errno::EOPNOTSUPP)?;
                        sys::setxattr_at(work, tmp, metacopy, b"", 0)?;
                    }
                    _ => {}
                }
            }
            Kind::Symlink => {
                let target = sys::readlink_at(src, path.c())?;
                let t = CString::new(target).map_err(|_| Errno::EINVAL)?;
                sys::symlink_at(&t, work, tmp)?;
            }
            Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
                sys::mknod_at(work, tmp, st.st_mode, st.st_rdev)?;
            }
        }
        // Owner first: a chown drops set-id bits and security.capability,
        // which the mode and the xattrs then restore. An owner override
        // is carried here (copy_xattrs skips private names).
        self.copy_up_owner(from, path, st, work, tmp)?;
        let tmp_path = RelPath::from_bytes(tmp.to_bytes());
        copy_xattrs(src, path, work, &tmp_path)?;
        if let Some(origin) = self.xattr(Xattr::Origin) {
            let _ = sys::setxattr_at(work, tmp, origin, &ino.to_le_bytes(), 0);
        }
        sys::utimens_at(
            work,
            tmp,
            Time::Set(st.st_atime, st.st_atime_nsec),
            Time::Set(st.st_mtime, st.st_mtime_nsec),
        )?;
        Ok(marked)
    }

    /// Before new data reaches `node`'s upper file (an open for writing, a
    /// truncate): if its copy-up is marked, the burst is made durable and
    /// unmarked first (see the header).
    pub(crate) fn settle_copyup(&self, node: &Node) -> Res<()> {
        match &self.pending_sync {
            Some(p) => p.settle(node.id),
            None => Ok(()),
        }
    }

    /// Before a rename or a link (which could move a marked file away
    /// from the path its data is found by): every marked copy-up is made
    /// durable and unmarked.
    pub(crate) fn settle_copyups(&self) -> Res<()> {
        match &self.pending_sync {
            Some(p) if p.count() > 0 => p.flush(true),
            _ => Ok(()),
        }
    }
}

/// Copy-ups marked instead of synced, until one `syncfs` makes them
/// durable (see the module's header). A background thread, started with
/// the first mark, flushes a burst once it is [`PendingSync::BURST`] long
/// or [`PendingSync::IDLE`] passes without a new mark.
pub(crate) struct PendingSync {
    /// The upper layer's directory (a real fd: `syncfs` refuses `O_PATH`).
    upper: OwnedFd,
    /// The mark: the metacopy xattr in the mount's namespace.
    mark: &'static CStr,
    state: Mutex<Marked>,
    wake: Condvar,
    /// Held while a burst is synced and unmarked.
    flushing: Mutex<()>,
    /// Marked files not yet unmarked (pending or being flushed).
    count: AtomicUsize,
    thread: OnceLock<()>,
}

#[derive(Default)]
struct Marked {
    files: Vec<(NodeId, OwnedFd)>,
    last: Option<Instant>,
}

impl std::fmt::Debug for PendingSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSync")
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

impl PendingSync {
    /// Files marked before the background thread flushes without waiting
    /// for the burst to end.
    pub const BURST: usize = 256;
    /// How long without a new mark ends a burst.
    pub const IDLE: Duration = Duration::from_millis(20);
    /// Marked files (each an open fd) beyond which a copy-up waits for a
    /// flush itself.
    pub const MAX_PENDING: usize = 4 * Self::BURST;

    pub(crate) fn new(upper: OwnedFd, mark: &'static CStr) -> PendingSync {
        PendingSync {
            upper,
            mark,
            state: Mutex::new(Marked::default()),
            wake: Condvar::new(),
            flushing: Mutex::new(()),
            count: AtomicUsize::new(0),
            thread: OnceLock::new(),
        }
    }

    /// Marked files not yet unmarked.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Whether `id`'s copy-up is marked and waiting for a flush.
    #[cfg(test)]
    pub(crate) fn is_pending(&self, id: NodeId) -> bool {
        self.state.lock().files.iter().any(|(n, _)| *n == id)
    }

    /// Records the marked copy-up of `id`, whose upper file `fd` is open.
    fn push(self: &Arc<Self>, id: NodeId, fd: OwnedFd) {
        self.count.fetch_add(1, Ordering::SeqCst);
        let mut st = self.state.lock();
        st.files.push((id, fd));
        st.last = Some(Instant::now());
        let n = st.files.len();
        drop(st);
        // Unit tests flush by hand, on their own thread (fault points are
        // per thread).
        if cfg!(test) {
            return;
        }
        self.thread.get_or_init(|| {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("strata-sync".into())
                .spawn(move || flusher(weak));
            if let Err(e) = spawned {
                warn!(%e, "cannot start the copy-up sync thread; marks stay until unmount");
            }
        });
        if n == 1 || n >= Self::BURST {
            self.wake.notify_one();
        }
        // The thread cannot keep up (a slow syncfs, or no thread): this
        // request waits for a flush, so the open fds stay bounded.
        if n >= Self::MAX_PENDING {
            let _ = self.flush(false);
        }
    }

    /// Makes every marked copy-up durable and unmarks it: one `syncfs`,
    /// then the marks go; with `durable`, a second `syncfs` makes their
    /// removal durable too. On an error the files stay marked (and
    /// pending): they go on reading the lower data after a crash.
    pub(crate) fn flush(&self, durable: bool) -> Res<()> {
        let _f = self.flushing.lock();
        let files = std::mem::take(&mut self.state.lock().files);
        if files.is_empty() {
            return Ok(());
        }
        let synced =
            crate::faults::point("copyup.syncfs").and_then(|()| sys::syncfs(self.upper.as_fd()));
        if let Err(e) = synced {
            error!(
                ?e,
                "syncfs of the upper layer failed; the copied-up files stay marked"
            );
            let mut st = self.state.lock();
            let newer = std::mem::replace(&mut st.files, files);
            st.files.extend(newer);
            return Err(e);
        }
        for (_, fd) in &files {
            match sys::fremovexattr(fd.as_fd(), self.mark) {
                Ok(()) | Err(Errno::ENODATA) => {}
                // Still marked: it reads the lower data, the same bytes.
                Err(e) => warn!(?e, "cannot remove a copy-up's sync mark"),
            }
        }
        self.count.fetch_sub(files.len(), Ordering::SeqCst);
        drop(files);
        if durable {
            sys::syncfs(self.upper.as_fd())?;
        }
        Ok(())
    }

    /// Before new data reaches `id`'s upper file: flushes if it is marked,
    /// else waits for a flush under way (which may hold it).
    fn settle(&self, id: NodeId) -> Res<()> {
        if self.count() == 0 {
            return Ok(());
        }
        let pending = || self.state.lock().files.iter().any(|(n, _)| *n == id);
        if !pending() {
            // A flush under way may hold it: wait for it to end; one that
            // failed has put its files back.
            drop(self.flushing.lock());
            if !pending() {
                return Ok(());
            }
        }
        self.flush(true)
    }
}

/// The background flusher: ends with the [`PendingSync`] it serves.
fn flusher(weak: Weak<PendingSync>) {
    loop {
        let Some(p) = weak.upgrade() else { return };
        let mut st = p.state.lock();
        let due = match st.last {
            _ if st.files.is_empty() => None,
            _ if st.files.len() >= PendingSync::BURST => Some(Duration::ZERO),
            Some(t) => Some(PendingSync::IDLE.saturating_sub(t.elapsed())),
            None => Some(Duration::ZERO),
        };
        match due {
            Some(d) if d.is_zero() => {
                drop(st);
                if p.flush(false).is_err() {
                    // The files stay marked; try again in a while rather
                    // than spin on a failing disk.
                    p.wake.wait_for(&mut p.state.lock(), Duration::from_secs(1));
                }
            }
            Some(d) => {
                p.wake.wait_for(&mut st, d);
            }
            // Woken by the first mark of a burst, or now and then to see
            // whether the mount is gone.
            None => {
                p.wake.wait_for(&mut st, Duration::from_secs(1));
            }
        }
    }
}

impl Drop for PendingSync {
    fn drop(&mut self) {
        let _ = self.flush(true);
    }
}

/// Copies the first `len` bytes of `inp` into `out` (at the same offsets)
/// extent by extent, as the kernel's overlayfs does: `SEEK_DATA` and
/// `SEEK_HOLE` find the data, `copy_file_range` (a reflink where the
/// filesystem can) or read and write copies it, and holes are skipped, so
/// a sparse file stays sparse and answers `SEEK_DATA`/`SEEK_HOLE` as
/// before. `out` must already be `len` bytes long (or longer): holes are
/// never written, so its size is the caller's.
pub fn copy_data(inp: BorrowedFd<'_>, out: BorrowedFd<'_>, len: u64) -> Res<()> {
    let mut off = 0u64;
    while off < len {
        let data = match sys::lseek(inp, off as i64, libc::SEEK_DATA) {
            Ok(d) => d as u64,
            // Nothing but a hole up to the end.
            Err(Errno::ENXIO) => return Ok(()),
            // A filesystem without SEEK_DATA: all of it is data.
            Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => return copy_extent(inp, out, off, len),
            Err(e) => return Err(e),
        };
        if data >= len {
            return Ok(());
        }
        let hole = match sys::lseek(inp, data as i64, libc::SEEK_HOLE) {
            Ok(h) => (h as u64).min(len),
            Err(Errno::ENXIO) => len,
            Err(e) => return Err(e),
        };
        copy_extent(inp, out, data, hole.max(data + 1))?;
        off = hole.max(data + 1);
    }
    Ok(())
}

/// Copies the bytes `start..end` of `inp` to the same offsets of `out`, by
/// `copy_file_range` where the kernel can, else by read and write.
fn copy_extent(inp: BorrowedFd<'_>, out: BorrowedFd<'_>, start: u64, end: u64) -> Res<()> {
    match sys::copy_range(inp, start, out, start, end - start) {
        Ok(n) if start + n == end => return Ok(()),
        Ok(n) => return copy_loop(inp, out, start + n, end),
        Err(Errno::EXDEV) | Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) | Err(Errno::ENOSYS) => {}
        Err(e) => return Err(e),
    }
    copy_loop(inp, out, start, end)
}

fn copy_loop(inp: BorrowedFd<'_>, out: BorrowedFd<'_>, mut off: u64, end: u64) -> Res<()> {
    let mut buf = vec![0u8; (end - off).min(1 << 20) as usize];
    while off < end {
        let want = (end - off).min(buf.len() as u64) as usize;
        let n = sys::pread(inp, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        sys::pwrite(out, &buf[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Copies the xattrs of `src/path` to `dst/dst_path`, except the overlay's
/// private ones.
pub fn copy_xattrs(
    src: BorrowedFd<'_>,
    path: &RelPath,
    dst: BorrowedFd<'_>,
    dst_path: &RelPath,
) -> Res<()> {
    let names = match sys::listxattr_vec(src, path.c()) {
        Ok(n) => n,
        Err(Errno::EOPNOTSUPP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names {
        if is_private_xattr(&name) {
            continue;
        }
        let cname = CString::new(name).map_err(|_| Errno::EINVAL)?;
        let value = match sys::getxattr_vec(src, path.c(), &cname) {
            Ok(v) => v,
            Err(Errno::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        match sys::setxattr_at(dst, dst_path.c(), &cname, &value, 0) {
            Ok(()) => {}
            // security.* labels the upper filesystem refuses are not data.
            Err(Errno::EOPNOTSUPP) | Err(Errno::EPERM)
                if cname.to_bytes().starts_with(b"security.") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
