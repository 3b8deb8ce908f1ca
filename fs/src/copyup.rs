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

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use tracing::error;

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
        let meta = self.copy_up_entry(from, &path, data, node.ino)?;
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
        let len = sys::fstat(inp.as_fd())?.st_size.min(before.st_size) as u64;
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
        let upper = self.upper()?;
        let work = self.stack.work().ok_or(Errno::EROFS)?;
        let src = self.stack.fd(from);
        let st = sys::stat_at(src, path.c())?;
        let kind = Kind::from_mode(st.st_mode);
        // Metadata only for a plain file of a lower layer; hard-linked ones
        // are linked up whole (their other names must share the data).
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
        let res = self.build_copy(from, path, &st, kind, work, &tmp, data, ino);
        if let Err(e) = res {
            error!(?e, %path, "copy-up failed");
            let _ = crate::layers::remove_tree(work, &tmp, kind == Kind::Dir);
            return Err(e);
        }
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
        // does; the directory is not: a copy-up lost in a crash leaves the
        // lower file in view, never a torn one.
        Ok(data == CopyData::Meta)
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
    ) -> Res<()> {
        let src = self.stack.fd(from);
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
                        if self.do_fsync() {
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
        Ok(())
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
