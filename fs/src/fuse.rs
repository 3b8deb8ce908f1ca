//! The `fuser::Filesystem` implementation: a switchboard.
//!
//! Each handler decodes the request, calls the module that owns the area,
//! and replies; every error becomes `reply.error` in one place. A handler
//! never takes the daemon down: a panic is caught, logged, and answered with
//! `EIO` (fuser replies `EIO` for a dropped reply).

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno as FErrno, FileHandle, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nix::errno::Errno;
use tracing::{error, info};

use crate::namespace::NewEntry;
use crate::nodes::{Node, NodeId};
use crate::options::Uring;
use crate::overlay::{Caller, Overlay, Res};
use crate::setattr::AttrChange;
use crate::stats::Op;
use crate::sys::{self, Time};

/// The FUSE server of one mount.
#[derive(Debug)]
pub struct StrataFs {
    ov: Arc<Overlay>,
}

impl StrataFs {
    /// Serves `ov`.
    pub fn new(ov: Arc<Overlay>) -> Self {
        StrataFs { ov }
    }

    /// Accepts `FUSE_OVER_IO_URING` at INIT as `uring=` says: with `auto`
    /// when the kernel offers it and this process can create the ring
    /// (otherwise one log line, and the classic loop serves); with `on` the
    /// same, or the handshake fails with the reason.
    fn negotiate_uring(&self, caps: InitFlags, config: &mut KernelConfig) -> std::io::Result<()> {
        let mode = self.ov.opts.uring;
        if mode == Uring::Off {
            return Ok(());
        }
        let why_not = if !caps.contains(InitFlags::FUSE_OVER_IO_URING) {
            "the kernel does not offer FUSE over io_uring (as root: echo Y > /sys/module/fuse/parameters/enable_uring)".to_string()
        } else {
            match fuser::io_uring_probe() {
                Ok(()) => {
                    let _ = config.add_capabilities(InitFlags::FUSE_OVER_IO_URING);
                    return Ok(());
                }
                Err(e) => format!("this process cannot use io_uring: {e}"),
            }
        };
        if mode == Uring::On {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("uring=on: {why_not}"),
            ));
        }
        info!("serving /dev/fuse without io_uring: {why_not}");
        Ok(())
    }

    /// Runs one request's handler: counted when `-o stats=` is on, and a
    /// panic answered rather than taking the daemon down.
    fn guarded(&self, op: Op, f: impl FnOnce()) {
        let _t = self.ov.stats.start(op);
        // Once per request, before any other lock (see `Overlay::namespace`).
        if op.moves_names() {
            let _names = self.ov.namespace.write();
            guarded(op, f);
        } else {
            let _names = self.ov.namespace.read();
            guarded(op, f);
        }
    }

    fn node(&self, ino: INodeNo) -> Res<Arc<Node>> {
        self.ov.nodes.get_used(NodeId(ino.0))
    }

    /// Opens a file just made by CREATE or TMPFILE and replies with its
    /// entry and open handle.
    fn reply_created(
        &self,
        made: Res<(Arc<Node>, fuser::FileAttr, std::os::fd::OwnedFd)>,
        reply: ReplyCreate,
    ) {
        let res = made.and_then(|(node, attr, fd)| {
            let o = self
                .ov
                .add_open(&node, fd, true, &|fd| reply.open_backing(fd))?;
            Ok((node, attr, o))
        });
        match res {
            Ok((node, attr, o)) => {
                let flags = if o.direct_io {
                    FopenFlags::FOPEN_DIRECT_IO
                } else {
                    FopenFlags::empty()
                };
                reply.created_node(
                    INodeNo(node.id.0),
                    &self.ov.ttl_for(&attr),
                    &attr,
                    Generation(0),
                    FileHandle(o.fh),
                    flags,
                    o.backing.as_deref(),
                )
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

fn errno(e: Errno) -> FErrno {
    FErrno::from_i32(e as i32)
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn time(t: Option<TimeOrNow>) -> Option<Time> {
    t.map(|t| match t {
        TimeOrNow::Now => Time::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => Time::Set(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (s, n) = (d.as_secs() as i64, d.subsec_nanos() as i64);
                if n == 0 {
                    Time::Set(-s, 0)
                } else {
                    Time::Set(-s - 1, 1_000_000_000 - n)
                }
            }
        },
    })
}

/// Runs a handler, turning a panic into a logged error (the dropped reply
/// answers `EIO`).
fn guarded(op: Op, f: impl FnOnce()) {
    sys::thread_umask_zero();
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        error!(op = op.name(), "request handler panicked; answered EIO");
    }
}

macro_rules! reply_or_err {
    ($reply:ident, $res:expr, |$v:pat_param| $ok:expr) => {
        match $res {
            Ok($v) => $ok,
            Err(e) => $reply.error(errno(e)),
        }
    };
}

impl Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let caps = config.capabilities();
        let want = [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_EXPORT_SUPPORT,
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
            // The kernel enforces POSIX ACLs in its permission checks (as
            // overlayfs does; without this, default_permissions looks at
            // the mode bits only and an ACL that grants access is ignored)
            // and caches them per inode, so `ls -l` asks once, not per
            // call. The ACLs themselves are the layers' xattrs.
            InitFlags::FUSE_POSIX_ACL,
            // The umask comes with each create for us to apply: not where
            // the directory has a default ACL, which then rules instead.
            InitFlags::FUSE_DONT_MASK,
        ];
        for f in want {
            if caps.contains(f) {
                let _ = config.add_capabilities(f);
            }
        }
        if self.ov.opts.readdirplus {
            for f in [
                InitFlags::FUSE_DO_READDIRPLUS,
                InitFlags::FUSE_READDIRPLUS_AUTO,
            ] {
                if caps.contains(f) {
                    let _ = config.add_capabilities(f);
                }
            }
        }
        self.negotiate_uring(caps, config)?;
        if crate::overlay::passthrough_on(&self.ov) {
            if caps.contains(InitFlags::FUSE_PASSTHROUGH) && config.set_max_stack_depth(1).is_ok() {
                let _ = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH);
                info!("FUSE passthrough enabled for upper files");
            } else {
                self.ov
                    .passthrough
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.guarded(Op::Lookup, || {
            match self.node(parent).and_then(|p| self.ov.lookup(&p, name)) {
                Ok((n, attr)) => reply.entry_node(
                    INodeNo(n.id.0),
                    &self.ov.ttl_for(&attr),
                    &attr,
                    Generation(0),
                ),
                // A negative entry the kernel may cache: names appear only
                // through this mount, and the kernel drops its negative
                // dentry itself when one is created.
                Err(Errno::ENOENT) => reply.entry_node(
                    INodeNo(0),
                    &self.ov.ttl(),
                    &crate::overlay::attr_of(&crate::overlay::zero_stat(), 0),
                    Generation(0),
                ),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _t = self.ov.stats.start(Op::Forget);
        self.ov.nodes.forget(NodeId(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.guarded(Op::Getattr, || {
            let res =
                self.node(ino)
                    .and_then(|n| match fh.and_then(|fh| self.ov.file_fd(fh.0).ok()) {
                        Some(fd) => {
                            sys::fstat(fd.as_fd()).map(|st| self.ov.attr_from_stat(&n, &st))
                        }
                        None => self.ov.getattr(&n),
                    });
            reply_or_err!(reply, res, |attr| reply
                .attr(&self.ov.ttl_for(&attr), &attr))
        })
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.guarded(Op::Setattr, || {
            let ch = AttrChange {
                mode,
                uid,
                gid,
                size,
                atime: time(atime),
                mtime: time(mtime),
                fh: fh.map(|f| f.0),
            };
            reply_or_err!(
                reply,
                self.node(ino).and_then(|n| self.ov.setattr(&n, ch)),
                |attr| reply.attr(&self.ov.ttl_for(&attr), &attr)
            )
        })
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.guarded(Op::Readlink, || {
            let res = self.node(ino).and_then(|n| {
                let path = self.ov.nodes.path(&n)?;
                sys::readlink_at(self.ov.stack.fd(n.top()), path.c())
            });
            reply_or_err!(reply, res, |t| reply.data(&t))
        })
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.guarded(Op::Mknod, || {
            let entry = NewEntry::Node {
                rdev: rdev as u64,
                file_type: mode & libc::S_IFMT,
            };
            let res = self.node(parent).and_then(|p| {
                let mode = self.ov.creation_mode(&p, mode, umask);
                self.ov.create_entry(&p, name, mode, entry, &caller(req))
            });
            reply_or_err!(reply, res, |(n, attr, _)| reply.entry_node(
                INodeNo(n.id.0),
                &self.ov.ttl_for(&attr),
                &attr,
                Generation(0)
            ))
        })
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.guarded(Op::Mkdir, || {
            let res = self.node(parent).and_then(|p| {
                let mode = self.ov.creation_mode(&p, mode, umask);
                self.ov
                    .create_entry(&p, name, mode, NewEntry::Dir, &caller(req))
            });
            reply_or_err!(reply, res, |(n, attr, _)| reply.entry_node(
                INodeNo(n.id.0),
                &self.ov.ttl_for(&attr),
                &attr,
                Generation(0)
            ))
        })
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.guarded(Op::Unlink, || {
            reply_or_err!(
                reply,
                self.node(parent).and_then(|p| self.ov.unlink(&p, name)),
                |()| reply.ok()
            )
        })
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.guarded(Op::Rmdir, || {
            reply_or_err!(
                reply,
                self.node(parent).and_then(|p| self.ov.rmdir(&p, name)),
                |()| reply.ok()
            )
        })
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.guarded(Op::Symlink, || {
            use std::os::unix::ffi::OsStrExt;
            let entry = NewEntry::Symlink {
                target: target.as_os_str().as_bytes(),
            };
            let res = self.node(parent).and_then(|p| {
                self.ov
                    .create_entry(&p, link_name, 0o777, entry, &caller(req))
            });
            reply_or_err!(reply, res, |(n, attr, _)| reply.entry_node(
                INodeNo(n.id.0),
                &self.ov.ttl_for(&attr),
                &attr,
                Generation(0)
            ))
        })
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.guarded(Op::Rename, || {
            let res = self.node(parent).and_then(|p| {
                let np = self.node(newparent)?;
                self.ov.rename(&p, name, &np, newname, flags)
            });
            reply_or_err!(reply, res, |()| reply.ok())
        })
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.guarded(Op::Link, || {
            let res = self.node(ino).and_then(|n| {
                let np = self.node(newparent)?;
                self.ov.link(&n, &np, newname)
            });
            reply_or_err!(reply, res, |(n, attr)| reply.entry_node(
                INodeNo(n.id.0),
                &self.ov.ttl_for(&attr),
                &attr,
                Generation(0)
            ))
        })
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.guarded(Op::Open, || {
            let res = self
                .node(ino)
                .and_then(|n| self.ov.open(&n, flags.0, &|fd| reply.open_backing(fd)));
            match res {
                Ok(o) => {
                    let mut f = FopenFlags::empty();
                    if o.keep_cache {
                        f |= FopenFlags::FOPEN_KEEP_CACHE;
                    }
                    if o.direct_io {
                        f |= FopenFlags::FOPEN_DIRECT_IO;
                    }
                    match &o.backing {
                        Some(b) => reply.opened_passthrough(FileHandle(o.fh), f, b),
                        None => reply.opened(FileHandle(o.fh), f),
                    }
                }
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.guarded(Op::Read, || {
            // The data goes out from the reading thread's buffer.
            let mut reply = Some(reply);
            let res = self.ov.read_with(fh.0, offset, size, |d| {
                if let Some(r) = reply.take() {
                    r.data(d)
                }
            });
            if let (Err(e), Some(r)) = (res, reply.take()) {
                r.error(errno(e));
            }
        })
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.guarded(Op::Write, || {
            let writer = write_flags
                .contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
                .then(|| crate::io::Writer {
                    gid: req.gid(),
                    pid: req.pid(),
                });
            reply_or_err!(reply, self.ov.write(fh.0, offset, data, writer), |n| reply
                .written(n as u32))
        })
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do on close(2) (data is written through; there are no
        // server-side locks): ENOSYS tells the kernel to stop sending FLUSH,
        // one round trip less per close.
        drop(self.ov.stats.start(Op::Flush));
        reply.error(FErrno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _t = self.ov.stats.start(Op::Release);
        self.ov.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.guarded(Op::Fsync, || {
            reply_or_err!(reply, self.ov.fsync(fh.0, datasync), |()| reply.ok())
        })
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Listings need no per-open state (offsets are hashes of names, see
        // `crate::readdir`): ENOSYS tells the kernel to stop sending
        // OPENDIR and RELEASEDIR, two round trips less per directory read.
        // It then opens directories with FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE,
        // keeping listings: every change to a directory goes through this
        // mount, and the kernel drops the cache then.
        drop(self.ov.stats.start(Op::Opendir));
        reply.error(FErrno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.guarded(Op::Readdir, || {
            let res = self.node(ino).and_then(|dir| {
                let listing = self.ov.listing(&dir, offset)?;
                let entries = listing.after(offset);
                if entries.is_empty() {
                    self.ov.listing_done(&dir);
                }
                for (off, e) in entries {
                    let ino = self.ov.entry_ino(&dir, e);
                    if reply.add(INodeNo(ino), *off, e.kind.fuse(), &e.name) {
                        break;
                    }
                }
                Ok(())
            });
            reply_or_err!(reply, res, |()| reply.ok())
        })
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.guarded(Op::Readdirplus, || {
            let res = self.node(ino).and_then(|dir| {
                self.ov.readdirplus(&dir, offset, |e| {
                    reply.add(
                        INodeNo(e.node.map_or(0, |n| n.0)),
                        e.offset,
                        e.name,
                        &e.ttl,
                        &e.attr,
                        Generation(0),
                    )
                })
            });
            reply_or_err!(reply, res, |()| reply.ok())
        })
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        // Not sent: OPENDIR answers ENOSYS.
        drop(self.ov.stats.start(Op::Releasedir));
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.guarded(Op::Fsyncdir, || {
            let res = self.node(ino).and_then(|n| self.ov.fsync_dir(&n, datasync));
            reply_or_err!(reply, res, |()| reply.ok())
        })
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.guarded(Op::Statfs, || {
            let top = self.ov.stack.all().next().expect("a stack has a layer");
            reply_or_err!(reply, sys::fstatvfs(self.ov.stack.fd(top)), |s| reply
                .statfs(
                    s.f_blocks,
                    s.f_bfree,
                    s.f_bavail,
                    s.f_files,
                    s.f_ffree,
                    s.f_bsize as u32,
                    s.f_namemax as u32,
                    s.f_frsize as u32,
                ))
        })
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.guarded(Op::Setxattr, || {
            reply_or_err!(
                reply,
                self.node(ino)
                    .and_then(|n| self.ov.setxattr(&n, name, value, flags)),
                |()| reply.ok()
            )
        })
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.guarded(Op::Getxattr, || {
            reply_or_err!(
                reply,
                self.node(ino)
                    .and_then(|n| self.ov.getxattr(&n, name, size)),
                |v| {
                    if size == 0 {
                        reply.size(v.len() as u32)
                    } else {
                        reply.data(&v)
                    }
                }
            )
        })
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.guarded(Op::Listxattr, || {
            reply_or_err!(
                reply,
                self.node(ino).and_then(|n| self.ov.listxattr(&n)),
                |v| {
                    if size == 0 {
                        reply.size(v.len() as u32)
                    } else if (v.len() as u32) > size {
                        reply.error(FErrno::from_i32(libc::ERANGE))
                    } else {
                        reply.data(&v)
                    }
                }
            )
        })
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.guarded(Op::Removexattr, || {
            reply_or_err!(
                reply,
                self.node(ino).and_then(|n| self.ov.removexattr(&n, name)),
                |()| reply.ok()
            )
        })
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (default_permissions).
        drop(self.ov.stats.start(Op::Access));
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.guarded(Op::Create, || {
            let made = self.node(parent).and_then(|p| {
                let entry = NewEntry::File { flags };
                let mode = self.ov.creation_mode(&p, mode, umask);
                let (node, attr, fd) = self.ov.create_entry(&p, name, mode, entry, &caller(req))?;
                Ok((node, attr, fd.ok_or(Errno::EIO)?))
            });
            self.reply_created(made, reply)
        })
    }

    fn tmpfile(
        &self,
        req: &Request,
        parent: INodeNo,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.guarded(Op::Tmpfile, || {
            let made = self.node(parent).and_then(|p| {
                let mode = self.ov.creation_mode(&p, mode, umask);
                self.ov.create_tmpfile(&p, mode, flags, &caller(req))
            });
            self.reply_created(made, reply)
        })
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.guarded(Op::Fallocate, || {
            let res = self
                .ov
                .file_fd(fh.0)
                .and_then(|fd| sys::fallocate(fd.as_fd(), mode, offset as i64, length as i64));
            reply_or_err!(reply, res, |()| reply.ok())
        })
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.guarded(Op::Lseek, || {
            let res = self
                .ov
                .file_fd(fh.0)
                .and_then(|fd| sys::lseek(fd.as_fd(), offset, whence));
            reply_or_err!(reply, res, |o| reply.offset(o))
        })
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.guarded(Op::CopyFileRange, || {
            let res = self.ov.file_fd(fh_in.0).and_then(|i| {
                let o = self.ov.file_fd(fh_out.0)?;
                sys::copy_range(
                    i.as_fd(),
                    offset_in,
                    o.as_fd(),
                    offset_out,
                    len.min(u32::MAX as u64 / 2),
                )
            });
            reply_or_err!(reply, res, |n| reply.written(n as u32))
        })
    }
}
