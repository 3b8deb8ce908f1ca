//! Open files: how reads and writes reach the layers, and why.
//!
//! The kernel binds a FUSE inode to one backing file for as long as any
//! passthrough open of it exists. If a lower file were passed through on a
//! read-only open, a later copy-up could not move that open to the upper
//! copy: the old fd would go on reading the lower file, and a write open
//! would be bound to the lower file too (fuse-overlayfs 2.0 writes into the
//! shared lower layer that way). And FUSE's page cache turns a read that
//! races a truncate into zero padding (fuse-overlayfs issue 475). So:
//!
//! - a file that lives only in a lower layer is opened **direct**
//!   (`FOPEN_DIRECT_IO`, mmap allowed): every read asks the server, which
//!   reads whatever layer holds the file now. A read-only fd opened before a
//!   copy-up reads the upper copy from then on (its handle is switched to the
//!   upper file on the next read), and no read ever sees padding. The data
//!   comes from the host's page cache of the lower file, which every
//!   container of the image shares. Mapped pages of lower files are kept
//!   across opens (`FOPEN_KEEP_CACHE`: the lower layer never changes).
//! - a file in the upper layer is opened with **passthrough** when the kernel
//!   allows it and no direct open of it is live (a direct open may be
//!   mmapped, which the kernel will not mix with passthrough): reads, writes
//!   and mmap go straight to the upper file. One backing id per node is
//!   shared by all its passthrough opens and dropped with the last one.
//! - any other open of an upper file is direct, without keeping the cache.
//! - on a read-only mount (no upper layer, or `ro`) nothing can be copied
//!   up, so lower files are passed through like upper ones.
//!
//! No write ever reaches a lower layer: lower files are only ever opened
//! `O_RDONLY`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use fuser::BackingId;
use nix::errno::Errno;
use parking_lot::RwLock;
use tracing::{debug, warn};

use crate::copyup::CopyData;
use crate::nodes::{Kind, Node};
use crate::overlay::{passthrough_on, Overlay, Res};
use crate::sys;

/// How the kernel does I/O on one open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// Through FUSE read/write, bypassing the page cache.
    Direct,
    /// Straight to the backing file.
    Passthrough,
}

/// One open regular file.
#[derive(Debug)]
pub struct FileHandle {
    /// The node it belongs to.
    pub node: Arc<Node>,
    fd: RwLock<Arc<OwnedFd>>,
    /// Opened on a lower layer (read-only); switched to the upper copy once
    /// the node is copied up.
    on_lower: AtomicBool,
    /// Its I/O mode.
    pub mode: IoMode,
}

/// The open files of a mount (directories need no state, see
/// `crate::readdir`).
#[derive(Debug)]
pub struct Handles {
    files: DashMap<u64, Arc<FileHandle>>,
    next: AtomicU64,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            files: crate::new_map(),
            next: AtomicU64::new(0),
        }
    }
}

impl Handles {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The open file `fh`.
    pub fn file(&self, fh: u64) -> Res<Arc<FileHandle>> {
        self.files.get(&fh).map(|h| h.clone()).ok_or(Errno::EBADF)
    }
}

/// What an open tells the kernel.
#[derive(Debug)]
pub struct Opened {
    /// The file handle.
    pub fh: u64,
    /// Keep the page cache from earlier opens.
    pub keep_cache: bool,
    /// Bypass the page cache.
    pub direct_io: bool,
    /// The backing file for passthrough, if passed through.
    pub backing: Option<Arc<BackingId>>,
}

/// Flags of the caller's open that the real open keeps.
fn real_flags(flags: i32, upper: bool) -> i32 {
    if !upper {
        return libc::O_RDONLY;
    }
    flags
        & (libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_TRUNC
            | libc::O_SYNC
            | libc::O_DSYNC
            | libc::O_NOATIME)
}

impl Overlay {
    /// Opens `node` with the caller's `flags`. `register` registers a
    /// backing file with the kernel for passthrough.
    pub fn open(
        &self,
        node: &Arc<Node>,
        flags: i32,
        register: &dyn Fn(BorrowedFd<'_>) -> io::Result<BackingId>,
    ) -> Res<Opened> {
        let acc = flags & libc::O_ACCMODE;
        let trunc = flags & libc::O_TRUNC != 0;
        if node.kind() == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        if acc != libc::O_RDONLY || trunc {
            self.ensure_upper_with(node, if trunc { CopyData::None } else { CopyData::All })?;
            // New data must not land in a copy-up still marked unsynced.
            self.settle_copyup(node)?;
        }
        let path = self.nodes.path(node)?;
        // Where the data is: a metacopy file is read from below.
        let from = node.data_layer();
        let is_upper = self.stack.is_upper(from);
        let fd = sys::open_beneath(
            self.stack.fd(from),
            path.c(),
            real_flags(flags, is_upper),
            0,
        )?;
        self.add_open(node, fd, is_upper, register)
    }

    /// Registers a new open file of `node` on the real `fd`, choosing its
    /// I/O mode.
    pub fn add_open(
        &self,
        node: &Arc<Node>,
        fd: OwnedFd,
        is_upper: bool,
        register: &dyn Fn(BorrowedFd<'_>) -> io::Result<BackingId>,
    ) -> Res<Opened> {
        let fd = Arc::new(fd);
        let mut io = node.io();
        let mut mode = IoMode::Direct;
        let mut backing = None;
        // On a read-only mount nothing is ever copied up, so lower files
        // are passed through too: kernel-speed reads from the page cache
        // every mount of the image shares.
        let stable = is_upper || !self.writable();
        if stable && io.direct_opens == 0 && passthrough_on(self) {
            match &io.backing {
                Some(b) => backing = Some(b.clone()),
                None => match register(fd.as_fd()) {
                    Ok(b) => {
                        let b = Arc::new(b);
                        io.backing = Some(b.clone());
                        backing = Some(b);
                    }
                    Err(e) => {
                        warn!(?e, "the kernel refused FUSE passthrough; serving reads and writes through FUSE");
                        self.passthrough.store(false, Ordering::Relaxed);
                    }
                },
            }
            if backing.is_some() {
                mode = IoMode::Passthrough;
            }
        }
        match mode {
            IoMode::Direct => io.direct_opens += 1,
            IoMode::Passthrough => io.passthrough_opens += 1,
        }
        io.any_fd = Some(fd.clone());
        drop(io);
        let fh = self.handles.next_id();
        let h = FileHandle {
            node: node.clone(),
            fd: RwLock::new(fd),
            on_lower: AtomicBool::new(!is_upper),
            mode,
        };
        self.handles.files.insert(fh, Arc::new(h));
        debug!(fh, ?mode, "open");
        Ok(Opened {
            fh,
            keep_cache: !is_upper && mode == IoMode::Direct,
            direct_io: mode == IoMode::Direct,
            backing,
        })
    }

    /// The fd to use for a handle, switched to the upper copy if the node
    /// was copied up since the handle was opened on a lower layer.
    fn handle_fd(&self, h: &FileHandle) -> Res<Arc<OwnedFd>> {
        if h.on_lower.load(Ordering::Acquire) {
            let top = h.node.data_layer();
            if self.stack.is_upper(top) {
                let mut w = h.fd.write();
                if h.on_lower.load(Ordering::Acquire) {
                    let path = self.nodes.path(&h.node)?;
                    let fd = sys::open_beneath(self.stack.fd(top), path.c(), libc::O_RDONLY, 0)?;
                    *w = Arc::new(fd);
                    h.on_lower.store(false, Ordering::Release);
                }
                return Ok(w.clone());
            }
        }
        Ok(h.fd.read().clone())
    }

    /// Reads up to `size` bytes at `offset` of an open file and hands them
    /// to `reply`, from a buffer each worker thread keeps (a fresh 1 MiB
    /// buffer per read cost a zero fill, or an mmap and its page faults).
    pub fn read_with<T>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(&[u8]) -> T,
    ) -> Res<T> {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let h = self.handles.file(fh)?;
        let fd = self.handle_fd(&h)?;
        BUF.with(|b| {
            let mut buf = b.borrow_mut();
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            let n = sys::pread(fd.as_fd(), &mut buf[..size as usize], offset)?;
            Ok(reply(&buf[..n]))
        })
    }

    /// Writes `data` at `offset` of an open file. `writer`: set when the
    /// writer lacks CAP_FSETID (the kernel's FUSE_WRITE_KILL_SUIDGID); then
    /// setuid goes, and setgid on a group executable file or one whose
    /// group the writer is not in, as the kernel does before a write.
    /// (Writes that come here are direct I/O; for passthrough writes the
    /// kernel does it.)
    pub fn write(&self, fh: u64, offset: u64, data: &[u8], writer: Option<Writer>) -> Res<usize> {
        let h = self.handles.file(fh)?;
        let fd = self.handle_fd(&h)?;
        if let Some(writer) = writer {
            let st = sys::fstat(fd.as_fd())?;
            // The group as the kernel sees it.
            let gid = self
                .opts
                .squash_gid
                .unwrap_or_else(|| self.opts.gid_map.to_user(st.st_gid));
            let mut kill = st.st_mode & libc::S_ISUID;
            if st.st_mode & libc::S_ISGID != 0
                && (st.st_mode & libc::S_IXGRP != 0 || !writer.in_group(gid))
            {
                kill |= libc::S_ISGID;
            }
            if kill != 0 {
                sys::fchmod(fd.as_fd(), st.st_mode & 0o7777 & !kill)?;
                // The kernel keeps the mode it cached: direct writes only
                // make it drop size and times.
                self.invalidate_attrs(&h.node);
            }
        }
        sys::pwrite(fd.as_fd(), data, offset)
    }

    /// Flushes an open file to disk (unless the mount is volatile).
    pub fn fsync(&self, fh: u64, datasync: bool) -> Res<()> {
        let h = self.handles.file(fh)?;
        if !self.do_fsync() {
            return Ok(());
        }
        let fd = self.handle_fd(&h)?;
        sys::fsync(fd.as_fd(), datasync)
    }

    /// Flushes a directory to disk: its upper copy, if it has one (a lower
    /// directory never changes); nothing on a volatile mount.
    pub fn fsync_dir(&self, node: &Node, datasync: bool) -> Res<()> {
        if !self.do_fsync() || !self.stack.is_upper(node.top()) {
            return Ok(());
        }
        let path = self.nodes.path(node)?;
        let fd = sys::open_beneath(
            self.stack.fd(node.top()),
            path.c(),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        sys::fsync(fd.as_fd(), datasync)
    }

    /// The real fd of an open file (fallocate, lseek, copy_file_range,
    /// truncate through an fd).
    pub fn file_fd(&self, fh: u64) -> Res<Arc<OwnedFd>> {
        let h = self.handles.file(fh)?;
        self.handle_fd(&h)
    }

    /// Closes an open file.
    pub fn release(&self, fh: u64) {
        let Some((_, h)) = self.handles.files.remove(&fh) else {
            return;
        };
        let mut io = h.node.io();
        match h.mode {
            IoMode::Direct => io.direct_opens = io.direct_opens.saturating_sub(1),
            IoMode::Passthrough => {
                io.passthrough_opens = io.passthrough_opens.saturating_sub(1);
                if io.passthrough_opens == 0 {
                    io.backing = None;
                }
            }
        }
        if io.passthrough_opens == 0 && io.direct_opens == 0 {
            io.any_fd = None;
        }
    }
}

/// Who writes, for the privilege bits a write drops.
#[derive(Clone, Copy, Debug)]
pub struct Writer {
    /// The writer's (filesystem) gid.
    pub gid: u32,
    /// The writing process, for its supplementary groups.
    pub pid: u32,
}

impl Writer {
    /// Whether `gid` is the writer's gid or one of its supplementary groups
    /// (from /proc; a process that is gone counts as not in the group, so
    /// the bit is dropped, the safe side).
    fn in_group(&self, gid: u32) -> bool {
        if gid == self.gid {
            return true;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) else {
            return false;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
    }
}
