//! The mount and process calls of the filesystem that `nix` does not wrap
//! safely; the layer `*at` calls live in `strata_ovl::sys` and are
//! re-exported here, so the crate has one `sys` to call.
//! This is the only module of the crate allowed to use `unsafe`.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;

pub use strata_ovl::sys::{
    check, chmod_at, chown_at, copy_range, fallocate, fchmod, fchown, fstat, fstat_placeholder,
    fstatvfs, fsync, ftruncate, futimens, getxattr_at, getxattr_vec, link_at, link_fd,
    listxattr_vec, lseek, mkdir_at, mknod_at, open_beneath, open_dir_path, pread, pwrite,
    read_dir_fd, readlink_at, removexattr_at, rename_at2, setxattr_at, stat_at, symlink_at,
    unlink_at, utimens_at, Time,
};

/// Mounts a FUSE filesystem at `target` served through the open `/dev/fuse`
/// fd `dev`, with `data` as the extra mount data (after `fd=`, `rootmode=`).
pub fn mount_fuse(
    dev: BorrowedFd<'_>,
    target: &std::path::Path,
    fsname: &str,
    subtype: &str,
    flags: u64,
    data: &str,
) -> Result<(), Errno> {
    let src = CString::new(fsname).map_err(|_| Errno::EINVAL)?;
    let tgt = CString::new(target.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let fstype = CString::new(format!("fuse.{subtype}")).map_err(|_| Errno::EINVAL)?;
    let mut opts = format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd());
    if !data.is_empty() {
        opts.push(',');
        opts.push_str(data);
    }
    let opts = CString::new(opts).map_err(|_| Errno::EINVAL)?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            flags,
            opts.as_ptr().cast(),
        )
    })
}

/// Detaches the mount at `target` (`umount2(MNT_DETACH)`).
pub fn umount_detach(target: &std::path::Path) -> Result<(), Errno> {
    let tgt = CString::new(target.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) })
}

/// The signals that end a server, unmounting its mount.
pub const END_SIGNALS: [nix::sys::signal::Signal; 3] = [
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGHUP,
];

/// The mount [`unmount_on_signals`] detaches.
static UNMOUNT_ON_SIGNAL: std::sync::OnceLock<CString> = std::sync::OnceLock::new();

extern "C" fn unmount_on_signal(_sig: libc::c_int) {
    if let Some(target) = UNMOUNT_ON_SIGNAL.get() {
        // SAFETY: umount2 is async-signal-safe, and the path was stored
        // before the handler was installed and is never freed.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Detaches the mount at `target` when the process gets SIGTERM, SIGINT or
/// SIGHUP; its FUSE session then ends and the server exits. A handler, not
/// a thread waiting for the signals: a thread costs a mount time (its stack
/// and allocator arena are page faults in a freshly forked server).
pub fn unmount_on_signals(target: &std::path::Path) -> Result<(), Errno> {
    let tgt = CString::new(target.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    if UNMOUNT_ON_SIGNAL.set(tgt).is_err() {
        return Err(Errno::EBUSY);
    }
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(unmount_on_signal),
        nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    for sig in END_SIGNALS {
        // SAFETY: the handler only calls umount2 on a path set above.
        unsafe { nix::sys::signal::sigaction(sig, &action) }?;
    }
    Ok(())
}

/// Mounts FUSE at `target` through the setuid `fusermount3`, for a user
/// who may not open `/dev/fuse` or call mount(2): it mounts with `opts`
/// (fusermount's option string) and hands back the connection's fd over a
/// socket (`_FUSE_COMMFD`). Returns the fd and that socket: with
/// `auto_unmount` in `opts`, fusermount3 waits on the socket and unmounts
/// when it closes, that is when the server ends, however it ends.
pub fn mount_fuse_fusermount(
    target: &std::path::Path,
    opts: &str,
) -> Result<(OwnedFd, OwnedFd), Errno> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use nix::sys::socket::{
        recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    };
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // fusermount3 inherits its end (this process is single-threaded here,
    // so no other child can).
    fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty()))?;
    // Its messages come through a pipe, shown only if the mount fails: an
    // auto_unmount fusermount3 stays alive, and must not keep the caller's
    // stderr open (podman waits for EOF on it).
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let spawned = std::process::Command::new("fusermount3")
        .arg("-o")
        .arg(opts)
        .arg("--")
        .arg(target)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(err_w))
        .spawn();
    drop(theirs);
    let mut child =
        spawned.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)))?;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let fd = loop {
        match recvmsg::<()>(
            ours.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            Err(e) => break Err(e),
            Ok(msg) => {
                let mut got = None;
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for f in fds {
                            // SAFETY: SCM_RIGHTS gave this process a new fd
                            // that nothing else owns.
                            let owned = unsafe { OwnedFd::from_raw_fd(f) };
                            got.get_or_insert(owned);
                        }
                    }
                }
                // No fd: fusermount3 failed (its reason is on stderr).
                break got.ok_or(Errno::EPERM);
            }
        }
    };
    if !opts.split(',').any(|o| o == "auto_unmount") || fd.is_err() {
        let _ = child.wait();
    }
    if fd.is_err() {
        use std::io::{Read, Write};
        let mut msg = Vec::new();
        let _ = std::fs::File::from(err_r).read_to_end(&mut msg);
        let _ = std::io::stderr().write_all(&msg);
    }
    Ok((fd?, ours))
}

/// Whether `/etc/fuse.conf` lets users mount with `allow_other`.
pub fn fuse_conf_allows_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|c| {
        c.lines().any(|l| {
            l.split('#')
                .next()
                .is_some_and(|l| l.trim() == "user_allow_other")
        })
    })
}

/// Opens the directory `dir` again (`O_RDONLY | O_DIRECTORY | O_CLOEXEC`) and
/// takes an exclusive `flock` on it without waiting: `EWOULDBLOCK` while
/// another open file holds it. The lock belongs to the open file, so a
/// forked child that keeps the fd keeps the lock, and it goes when the last
/// fd closes (no explicit unlock that a child could run by mistake).
pub fn lock_dir(dir: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let fd = open_beneath(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    // SAFETY: plain syscall on an fd we own.
    check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) })?;
    Ok(fd)
}

/// Opens `/dev/fuse` for a new connection.
pub fn open_fuse_device() -> Result<OwnedFd, Errno> {
    use nix::fcntl::OFlag;
    nix::fcntl::open(
        c"/dev/fuse",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// `fork(2)`, for a program that has not started any thread yet (the
/// mount program daemonizing before it mounts).
pub fn fork_single_threaded() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: callers fork before any thread exists, so the child cannot
    // inherit a lock held by another thread.
    unsafe { nix::unistd::fork() }
}

/// Sets the process umask.
pub fn set_umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe {
        libc::umask(mask);
    }
}

/// Gives the calling thread a umask of its own, 0, once: the server
/// creates files with the exact modes callers ask for (the kernel sends
/// the caller's umask with each create, applied in `creation_mode`), while
/// the rest of a process that serves a mount in threads (the runtime's
/// supervisor) keeps its umask. The umask lives in the `fs_struct`, which
/// `unshare(CLONE_FS)` makes private to the thread.
pub fn thread_umask_zero() {
    thread_local!(static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if DONE.with(|d| d.replace(true)) {
        return;
    }
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).is_err() {
        tracing::warn!("unshare(CLONE_FS) failed; the process umask is set to 0");
    }
    set_umask(0);
}

/// Raises RLIMIT_NOFILE to its hard limit (the server holds one fd per open file).
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit.
        unsafe {
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A `CString` from an `OsStr`; names from the kernel never contain NUL.
pub fn cstr(s: &OsStr) -> Result<CString, Errno> {
    CString::new(s.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Borrows any fd-like value (kept for symmetry with the callers' types).
pub fn borrow<F: AsFd>(f: &F) -> BorrowedFd<'_> {
    f.as_fd()
}

/// Whether this process runs in a user namespace other than the initial
/// one (whose map is the identity of every id). There a setuid program
/// owned by the host's root (fusermount3) runs without its privilege.
pub fn in_user_namespace() -> bool {
    !std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
        let f: Vec<&str> = m.split_whitespace().collect();
        f == ["0", "0", "4294967295"]
    })
}

/// Whether this process holds `CAP_SYS_ADMIN` in the initial user
/// namespace: what FUSE passthrough (backing files) and `trusted.*` xattrs
/// need. Root in a user namespace does not.
pub fn has_init_cap_sys_admin() -> bool {
    // Asked twice while mounting; the answer does not change.
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(init_cap_sys_admin)
}

fn init_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let initial_ns = !in_user_namespace();
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    initial_ns && cap_eff & (1 << CAP_SYS_ADMIN) != 0
}

/// An `O_PATH` fd of the root of a detached copy of the mount at `path`,
/// rooted at `path` (`open_tree(OPEN_TREE_CLONE)`; with `recursive`, the
/// mounts below it are copied too). The copy belongs to the fd: while it
/// is open the filesystem stays alive, but the mount `path` lies on is not
/// held busy, so it can be unmounted (as the kernel's overlayfs holds its
/// layers). `EPERM` without `CAP_SYS_ADMIN` over the mount namespace.
pub fn clone_tree(path: &std::path::Path, recursive: bool) -> Result<OwnedFd, Errno> {
    use std::os::unix::ffi::OsStrExt;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: `c` is a NUL-terminated string that outlives the call; the
    // kernel returns a new fd or -1, checked before it is owned.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by no one
    // else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `syncfs(2)`: writes out everything dirty of the filesystem that holds
/// `fd` (which must be a real fd, not `O_PATH`).
pub fn syncfs(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    nix::unistd::syncfs(fd)
}

/// `fremovexattr(2)`.
pub fn fremovexattr(fd: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<(), Errno> {
    // SAFETY: `fd` is a live descriptor for the call's duration and `name`
    // a NUL-terminated string; the call reads nothing else.
    let r = unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) };
    Errno::result(r).map(drop)
}

/// Whether the filesystem of `fd` commits metadata changes in the order
/// they were made, so that a crash keeps a prefix of them: a journal or
/// copy-on-write (xfs, btrfs, ext3/ext4 with a journal), or nothing
/// survives a crash anyway (tmpfs). ext4 without a journal, and anything
/// not known, does not count.
pub fn orders_metadata(fd: BorrowedFd<'_>) -> bool {
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683e;
    const TMPFS: i64 = 0x0102_1994;
    const EXT: i64 = 0xef53;
    let Ok(fs) = nix::sys::statfs::fstatfs(fd) else {
        return false;
    };
    // `f_type`'s width varies by architecture.
    #[allow(clippy::unnecessary_cast)]
    let kind = fs.filesystem_type().0 as i64;
    match kind {
        XFS | BTRFS | TMPFS => true,
        // A journaled ext3/ext4 has a jbd2 entry named after its device.
        EXT => fstat(fd).is_ok_and(|st| {
            let (major, minor) = (libc::major(st.st_dev), libc::minor(st.st_dev));
            std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
                .ok()
                .and_then(|u| {
                    u.lines()
                        .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
                })
                .is_some_and(|dev| std::path::Path::new(&format!("/proc/fs/jbd2/{dev}-8")).exists())
        }),
        _ => false,
    }
}
