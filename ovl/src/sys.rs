//! The layer calls: every `*at` syscall on a layer directory fd (and on
//! files opened beneath one) that `nix` does not wrap safely, shared by
//! strata-fs and the format code of this crate.
//!
//! Signatures are I/O-safe: `BorrowedFd`/`AsFd` in, `OwnedFd` out. Paths are
//! always relative to a layer's directory fd; `openat2` is called with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` so nothing a layer holds (a
//! symlink, `..`) can make the caller open a host path outside that layer.
//! This is the only module of the crate allowed to use `unsafe`, and it
//! calls `nix`'s wrappers wherever nix has one. The raw calls left are
//! those nix does not wrap: the xattr calls (`getxattrat` and friends, with
//! `/proc/self/fd` paths on kernels older than 6.13), `getdents64` (one
//! 64 KiB buffer a call, names with their `d_ino` and `d_type`: nix's `Dir`
//! reads through libc's `readdir`, one entry a call and no `d_ino` of
//! ours), and `fstatvfs`, whose raw `statvfs` the FUSE `statfs` reply
//! takes field by field.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;

/// The short-path form of the public function of the same name.
fn open_beneath_short(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::from_bits_retain(
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        ))
        .mode(if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
            Mode::from_bits_retain(mode)
        } else {
            Mode::empty()
        })
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_SYMLINKS,
        );
    loop {
        match nix::fcntl::openat2(dir, path, how) {
            Err(Errno::EAGAIN | Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// Paths up to this many bytes go to the kernel as they are; longer ones
/// are resolved in pieces (a layer path may be deeper than `PATH_MAX`, since
/// the mount itself is deeper than its root).
const SHORT_PATH: usize = 3072;

/// Opens the directory `path` beneath `dir` piece by piece, each piece
/// shorter than [`SHORT_PATH`].
fn open_dir_chunked(dir: BorrowedFd<'_>, path: &[u8]) -> Result<OwnedFd, Errno> {
    let mut cur: Option<OwnedFd> = None;
    let mut rest = path;
    loop {
        let take = if rest.len() <= SHORT_PATH {
            rest.len()
        } else {
            rest[..SHORT_PATH]
                .iter()
                .rposition(|c| *c == b'/')
                .ok_or(Errno::ENAMETOOLONG)?
        };
        let chunk = CString::new(&rest[..take]).map_err(|_| Errno::EINVAL)?;
        let base = cur.as_ref().map(|f| f.as_fd()).unwrap_or(dir);
        cur = Some(open_beneath_short(
            base,
            &chunk,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?);
        if take >= rest.len() {
            break;
        }
        rest = &rest[take + 1..];
    }
    cur.ok_or(Errno::EINVAL)
}

/// Calls `f` with `dir/path` as given when it is short, else with the fd of
/// its parent directory and its last name.
fn with_short<T>(
    dir: BorrowedFd<'_>,
    path: &CStr,
    f: impl FnOnce(BorrowedFd<'_>, &CStr) -> Result<T, Errno>,
) -> Result<T, Errno> {
    let b = path.to_bytes();
    if b.len() <= SHORT_PATH {
        return f(dir, path);
    }
    let split = b
        .iter()
        .rposition(|c| *c == b'/')
        .ok_or(Errno::ENAMETOOLONG)?;
    let parent = open_dir_chunked(dir, &b[..split])?;
    let name = CString::new(&b[split + 1..]).map_err(|_| Errno::EINVAL)?;
    f(parent.as_fd(), &name)
}

/// Opens `path` (relative, no leading `/`) beneath the directory `dir`.
///
/// Symlinks are never followed, in any component: a symlink as the last
/// component opens the link itself only with `O_PATH | O_NOFOLLOW`, and
/// fails with `ELOOP` otherwise, as `O_NOFOLLOW` does.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    with_short(dir, path, |d, p| open_beneath_short(d, p, flags, mode))
}

/// `fstatat(dir, path, AT_SYMLINK_NOFOLLOW)`; the path "." stats `dir` itself.
pub fn stat_at(dir: BorrowedFd<'_>, path: &CStr) -> Result<libc::stat, Errno> {
    with_short(dir, path, stat_at_short)
}

/// `mkdirat(2)`.
pub fn mkdir_at(dir: BorrowedFd<'_>, path: &CStr, mode: u32) -> Result<(), Errno> {
    with_short(dir, path, |d, p| mkdir_at_short(d, p, mode))
}

/// `mknodat(2)`.
pub fn mknod_at(dir: BorrowedFd<'_>, path: &CStr, mode: u32, rdev: u64) -> Result<(), Errno> {
    with_short(dir, path, |d, p| mknod_at_short(d, p, mode, rdev))
}

/// `symlinkat(2)`.
pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, path: &CStr) -> Result<(), Errno> {
    with_short(dir, path, |d, p| symlink_at_short(target, d, p))
}

/// `linkat(2)` without following symlinks.
pub fn link_at(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
) -> Result<(), Errno> {
    with_short(old_dir, old, |od, o| {
        with_short(new_dir, new, |nd, n| link_at_short(od, o, nd, n))
    })
}

/// `linkat(fd, "", dir, path, AT_EMPTY_PATH)`: gives an open file a name.
pub fn link_fd(fd: BorrowedFd<'_>, new_dir: BorrowedFd<'_>, new: &CStr) -> Result<(), Errno> {
    with_short(new_dir, new, |nd, n| link_fd_short(fd, nd, n))
}

/// `unlinkat(2)`; `remove_dir` removes a directory.
pub fn unlink_at(dir: BorrowedFd<'_>, path: &CStr, remove_dir: bool) -> Result<(), Errno> {
    with_short(dir, path, |d, p| unlink_at_short(d, p, remove_dir))
}

/// `renameat2(2)` with raw `RENAME_*` flags.
pub fn rename_at2(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> Result<(), Errno> {
    with_short(old_dir, old, |od, o| {
        with_short(new_dir, new, |nd, n| rename_at2_short(od, o, nd, n, flags))
    })
}

/// `fchownat(dir, path, uid, gid, AT_SYMLINK_NOFOLLOW)`; `u32::MAX` leaves an id alone.
pub fn chown_at(dir: BorrowedFd<'_>, path: &CStr, uid: u32, gid: u32) -> Result<(), Errno> {
    with_short(dir, path, |d, p| chown_at_short(d, p, uid, gid))
}

/// `fchmodat(dir, path, mode)`; symlinks are not changed (Linux cannot).
pub fn chmod_at(dir: BorrowedFd<'_>, path: &CStr, mode: u32) -> Result<(), Errno> {
    with_short(dir, path, |d, p| chmod_at_short(d, p, mode))
}

/// `utimensat(dir, path, [atime, mtime], AT_SYMLINK_NOFOLLOW)`.
pub fn utimens_at(dir: BorrowedFd<'_>, path: &CStr, atime: Time, mtime: Time) -> Result<(), Errno> {
    with_short(dir, path, |d, p| utimens_at_short(d, p, atime, mtime))
}

/// `readlinkat(2)`.
pub fn readlink_at(dir: BorrowedFd<'_>, path: &CStr) -> Result<Vec<u8>, Errno> {
    with_short(dir, path, readlink_at_short)
}

/// `lgetxattr` of an entry beneath `dir`. With an empty buffer, returns the size.
pub fn getxattr_at(
    dir: BorrowedFd<'_>,
    path: &CStr,
    name: &CStr,
    buf: &mut [u8],
) -> Result<usize, Errno> {
    with_short(dir, path, |d, p| getxattr_at_short(d, p, name, buf))
}

/// `llistxattr` of an entry beneath `dir`. With an empty buffer, returns the size.
pub fn listxattr_at(dir: BorrowedFd<'_>, path: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    with_short(dir, path, |d, p| listxattr_at_short(d, p, buf))
}

/// `lsetxattr` of an entry beneath `dir`.
pub fn setxattr_at(
    dir: BorrowedFd<'_>,
    path: &CStr,
    name: &CStr,
    value: &[u8],
    flags: i32,
) -> Result<(), Errno> {
    with_short(dir, path, |d, p| {
        setxattr_at_short(d, p, name, value, flags)
    })
}

/// `lremovexattr` of an entry beneath `dir`.
pub fn removexattr_at(dir: BorrowedFd<'_>, path: &CStr, name: &CStr) -> Result<(), Errno> {
    with_short(dir, path, |d, p| removexattr_at_short(d, p, name))
}

/// Opens an absolute host path as an `O_PATH` directory fd (mount set-up only).
pub fn open_dir_path(path: &std::path::Path) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    nix::fcntl::open(path, flags, Mode::empty())
}

/// The short-path form of the public function of the same name.
fn stat_at_short(dir: BorrowedFd<'_>, path: &CStr) -> Result<libc::stat, Errno> {
    nix::sys::stat::fstatat(dir, path, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// An all-zero `stat` (the attributes of a negative lookup entry).
pub fn fstat_placeholder() -> libc::stat {
    // SAFETY: `stat` is a C struct of integers, for which all-zero bytes
    // are a valid value.
    unsafe { std::mem::zeroed() }
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd<'_>) -> Result<libc::stat, Errno> {
    nix::sys::stat::fstat(fd)
}

/// `fstatvfs(fd)`.
pub fn fstatvfs(fd: BorrowedFd<'_>) -> Result<libc::statvfs, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` is a valid out-pointer.
    let ret = unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fstatvfs succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// A libc return value (0, or -1 with `errno` set) as a `Result`.
pub fn check(ret: libc::c_int) -> Result<(), Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// The short-path form of the public function of the same name.
fn mkdir_at_short(dir: BorrowedFd<'_>, path: &CStr, mode: u32) -> Result<(), Errno> {
    nix::sys::stat::mkdirat(dir, path, Mode::from_bits_retain(mode))
}

/// The short-path form of the public function of the same name.
fn mknod_at_short(dir: BorrowedFd<'_>, path: &CStr, mode: u32, rdev: u64) -> Result<(), Errno> {
    let kind = SFlag::from_bits_retain(mode & libc::S_IFMT);
    let perm = Mode::from_bits_retain(mode & !libc::S_IFMT);
    nix::sys::stat::mknodat(dir, path, kind, perm, rdev)
}

/// The short-path form of the public function of the same name.
fn symlink_at_short(target: &CStr, dir: BorrowedFd<'_>, path: &CStr) -> Result<(), Errno> {
    nix::unistd::symlinkat(target, dir, path)
}

/// The short-path form of the public function of the same name.
fn link_at_short(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
) -> Result<(), Errno> {
    nix::unistd::linkat(old_dir, old, new_dir, new, AtFlags::empty())
}

/// The short-path form of the public function of the same name.
fn link_fd_short(fd: BorrowedFd<'_>, new_dir: BorrowedFd<'_>, new: &CStr) -> Result<(), Errno> {
    nix::unistd::linkat(fd, c"", new_dir, new, AtFlags::AT_EMPTY_PATH)
}

/// The short-path form of the public function of the same name.
fn unlink_at_short(dir: BorrowedFd<'_>, path: &CStr, remove_dir: bool) -> Result<(), Errno> {
    let flag = if remove_dir {
        nix::unistd::UnlinkatFlags::RemoveDir
    } else {
        nix::unistd::UnlinkatFlags::NoRemoveDir
    };
    nix::unistd::unlinkat(dir, path, flag)
}

/// The short-path form of the public function of the same name.
fn rename_at2_short(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> Result<(), Errno> {
    let flags = nix::fcntl::RenameFlags::from_bits_retain(flags);
    nix::fcntl::renameat2(old_dir, old, new_dir, new, flags)
}

/// The short-path form of the public function of the same name.
fn chown_at_short(dir: BorrowedFd<'_>, path: &CStr, uid: u32, gid: u32) -> Result<(), Errno> {
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(uid),
        nix::unistd::Gid::from_raw(gid),
    );
    nix::unistd::fchownat(
        dir,
        path,
        Some(uid),
        Some(gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// The short-path form of the public function of the same name.
fn chmod_at_short(dir: BorrowedFd<'_>, path: &CStr, mode: u32) -> Result<(), Errno> {
    let follow = nix::sys::stat::FchmodatFlags::FollowSymlink;
    nix::sys::stat::fchmodat(dir, path, Mode::from_bits_retain(mode), follow)
}

/// `fchown(fd)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Errno> {
    let (uid, gid) = (
        nix::unistd::Uid::from_raw(uid),
        nix::unistd::Gid::from_raw(gid),
    );
    nix::unistd::fchown(fd, Some(uid), Some(gid))
}

/// `fchmod(fd)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    nix::sys::stat::fchmod(fd, Mode::from_bits_retain(mode))
}

/// A timestamp for [`utimens_at`]: a value, now, or leave alone.
#[derive(Clone, Copy, Debug)]
pub enum Time {
    Set(i64, i64),
    Now,
    Omit,
}

impl Time {
    fn timespec(self) -> libc::timespec {
        match self {
            Time::Set(sec, nsec) => libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            },
            Time::Now => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_NOW,
            },
            Time::Omit => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        }
    }
}

/// The short-path form of the public function of the same name.
fn utimens_at_short(
    dir: BorrowedFd<'_>,
    path: &CStr,
    atime: Time,
    mtime: Time,
) -> Result<(), Errno> {
    let (a, m) = (
        TimeSpec::from(atime.timespec()),
        TimeSpec::from(mtime.timespec()),
    );
    nix::sys::stat::utimensat(
        dir,
        path,
        &a,
        &m,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
}

/// `futimens(fd, [atime, mtime])`.
pub fn futimens(fd: BorrowedFd<'_>, atime: Time, mtime: Time) -> Result<(), Errno> {
    let (a, m) = (
        TimeSpec::from(atime.timespec()),
        TimeSpec::from(mtime.timespec()),
    );
    nix::sys::stat::futimens(fd, &a, &m)
}

/// The short-path form of the public function of the same name.
fn readlink_at_short(dir: BorrowedFd<'_>, path: &CStr) -> Result<Vec<u8>, Errno> {
    use std::os::unix::ffi::OsStringExt;
    nix::fcntl::readlinkat(dir, path).map(OsStringExt::into_vec)
}

/// The path `/proc/self/fd/DIR/PATH`, through which the `l*xattr` calls reach
/// an entry relative to a layer fd (the magic link lands inside the layer; the
/// last component is never followed).
fn proc_path(dir: BorrowedFd<'_>, path: &CStr) -> CString {
    // Always a component after the magic link, "." for the layer's root:
    // the `l*xattr` calls do not follow a final symlink, and the link
    // itself (a procfs symlink) has no xattrs of the directory.
    let mut s = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    s.extend_from_slice(path.to_bytes());
    CString::new(s).expect("no NUL in a CStr")
}

/// The `*xattrat` system calls (Linux 6.13): xattrs of an entry named
/// relative to a directory fd, without a trip through `/proc/self/fd`
/// (a procfs lookup and a path walk per call, the bulk of an xattr's cost).
mod xattrat {
    pub const SETXATTRAT: libc::c_long = 463;
    pub const GETXATTRAT: libc::c_long = 464;
    pub const LISTXATTRAT: libc::c_long = 465;
    pub const REMOVEXATTRAT: libc::c_long = 466;

    /// `struct xattr_args`.
    #[repr(C)]
    pub struct Args {
        pub value: u64,
        pub size: u32,
        pub flags: u32,
    }
}

/// Whether the kernel has the `*xattrat` calls (cleared on the first ENOSYS).
static XATTRAT: AtomicBool = AtomicBool::new(true);

/// Runs an `*xattrat` call, or `None` if the kernel lacks them.
fn xattrat(call: impl FnOnce() -> libc::c_long) -> Option<Result<usize, Errno>> {
    if !XATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    let n = call();
    if n >= 0 {
        return Some(Ok(n as usize));
    }
    match Errno::last() {
        Errno::ENOSYS => {
            XATTRAT.store(false, Ordering::Relaxed);
            None
        }
        e => Some(Err(e)),
    }
}

/// The short-path form of the public function of the same name.
fn getxattr_at_short(
    dir: BorrowedFd<'_>,
    path: &CStr,
    name: &CStr,
    buf: &mut [u8],
) -> Result<usize, Errno> {
    let mut args = xattrat::Args {
        value: buf.as_mut_ptr() as u64,
        size: buf.len() as u32,
        flags: 0,
    };
    // SAFETY: `args` points at `buf`, writable for its length; strings are
    // NUL-terminated; the size passed is that of `args`.
    if let Some(r) = xattrat(|| unsafe {
        libc::syscall(
            xattrat::GETXATTRAT,
            dir.as_raw_fd(),
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            name.as_ptr(),
            &mut args as *mut xattrat::Args,
            std::mem::size_of::<xattrat::Args>(),
        )
    }) {
        return r;
    }
    let p = proc_path(dir, path);
    // SAFETY: `buf` is writable for its length; strings are NUL-terminated.
    let n = unsafe {
        libc::lgetxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        Err(Errno::last())
    } else {
        Ok(n as usize)
    }
}

/// Reads a whole xattr value of an entry beneath `dir`.
pub fn getxattr_vec(dir: BorrowedFd<'_>, path: &CStr, name: &CStr) -> Result<Vec<u8>, Errno> {
    loop {
        let size = getxattr_at(dir, path, name, &mut [])?;
        let mut buf = vec![0u8; size];
        match getxattr_at(dir, path, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The short-path form of the public function of the same name.
fn listxattr_at_short(dir: BorrowedFd<'_>, path: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is writable for its length; the path is NUL-terminated.
    if let Some(r) = xattrat(|| unsafe {
        libc::syscall(
            xattrat::LISTXATTRAT,
            dir.as_raw_fd(),
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            buf.as_mut_ptr(),
            buf.len(),
        )
    }) {
        return r;
    }
    let p = proc_path(dir, path);
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(Errno::last())
    } else {
        Ok(n as usize)
    }
}

/// All xattr names of an entry beneath `dir`.
pub fn listxattr_vec(dir: BorrowedFd<'_>, path: &CStr) -> Result<Vec<Vec<u8>>, Errno> {
    let names = |buf: &[u8]| {
        buf.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    // Most entries have few xattrs: one call into a small buffer first.
    let mut small = [0u8; 512];
    match listxattr_at(dir, path, &mut small) {
        Ok(n) => return Ok(names(&small[..n])),
        Err(Errno::ERANGE) => {}
        Err(e) => return Err(e),
    }
    loop {
        let size = listxattr_at(dir, path, &mut [])?;
        let mut buf = vec![0u8; size];
        match listxattr_at(dir, path, &mut buf) {
            Ok(n) => return Ok(names(&buf[..n])),
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The short-path form of the public function of the same name.
fn setxattr_at_short(
    dir: BorrowedFd<'_>,
    path: &CStr,
    name: &CStr,
    value: &[u8],
    flags: i32,
) -> Result<(), Errno> {
    let args = xattrat::Args {
        value: value.as_ptr() as u64,
        size: value.len() as u32,
        flags: flags as u32,
    };
    // SAFETY: `args` points at `value`, readable for its length; strings
    // are NUL-terminated; the size passed is that of `args`.
    if let Some(r) = xattrat(|| unsafe {
        libc::syscall(
            xattrat::SETXATTRAT,
            dir.as_raw_fd(),
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            name.as_ptr(),
            &args as *const xattrat::Args,
            std::mem::size_of::<xattrat::Args>(),
        )
    }) {
        return r.map(drop);
    }
    let p = proc_path(dir, path);
    // SAFETY: `value` is readable for its length; strings are NUL-terminated.
    check(unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// The short-path form of the public function of the same name.
fn removexattr_at_short(dir: BorrowedFd<'_>, path: &CStr, name: &CStr) -> Result<(), Errno> {
    // SAFETY: strings are NUL-terminated.
    if let Some(r) = xattrat(|| unsafe {
        libc::syscall(
            xattrat::REMOVEXATTRAT,
            dir.as_raw_fd(),
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            name.as_ptr(),
        )
    }) {
        return r.map(drop);
    }
    let p = proc_path(dir, path);
    // SAFETY: strings are NUL-terminated.
    check(unsafe { libc::lremovexattr(p.as_ptr(), name.as_ptr()) })
}

/// `pread(2)`, retried on EINTR; returns the bytes read (short at EOF).
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        match nix::sys::uio::pread(fd, &mut buf[done..], (offset + done as u64) as i64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `pwrite(2)` of the whole buffer, retried on EINTR and short writes.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        match nix::sys::uio::pwrite(fd, &buf[done..], (offset + done as u64) as i64) {
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(_) if done > 0 => return Ok(done),
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `copy_file_range(2)` of `len` bytes between two fds at explicit offsets;
/// returns the bytes copied (short at the source's EOF).
pub fn copy_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: u64,
) -> Result<u64, Errno> {
    let mut off_in = src_off as i64;
    let mut off_out = dst_off as i64;
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(1 << 30) as usize;
        match nix::fcntl::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), chunk) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `lseek(2)` (used for SEEK_DATA / SEEK_HOLE).
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> Result<i64, Errno> {
    use nix::unistd::Whence;
    let whence = match whence {
        libc::SEEK_SET => Whence::SeekSet,
        libc::SEEK_CUR => Whence::SeekCur,
        libc::SEEK_END => Whence::SeekEnd,
        libc::SEEK_DATA => Whence::SeekData,
        libc::SEEK_HOLE => Whence::SeekHole,
        _ => return Err(Errno::EINVAL),
    };
    nix::unistd::lseek(fd, offset, whence)
}

/// `fallocate(2)`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: i64, len: i64) -> Result<(), Errno> {
    let mode = nix::fcntl::FallocateFlags::from_bits_retain(mode);
    nix::fcntl::fallocate(fd, mode, offset, len)
}

/// `fsync(2)` or `fdatasync(2)`.
pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> Result<(), Errno> {
    if datasync {
        nix::unistd::fdatasync(fd)
    } else {
        nix::unistd::fsync(fd)
    }
}

/// `ftruncate(2)`.
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> Result<(), Errno> {
    nix::unistd::ftruncate(fd, len as i64)
}

/// Reads directory entries of an open directory fd: (name, d_ino, d_type).
/// Skips `.` and `..`.
pub fn read_dir_fd(fd: OwnedFd) -> Result<Vec<(Vec<u8>, u64, u8)>, Errno> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is writable for its length; getdents64 fills it with
        // packed linux_dirent64 records.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        let mut off = 0usize;
        while off < n as usize {
            // linux_dirent64: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, name...
            let rec = &buf[off..];
            let d_ino = u64::from_ne_bytes(rec[0..8].try_into().expect("8 bytes"));
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().expect("2 bytes")) as usize;
            let d_type = rec[18];
            let name_bytes = &rec[19..reclen];
            let len = name_bytes
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(name_bytes.len());
            let name = &name_bytes[..len];
            if name != b"." && name != b".." {
                out.push((name.to_vec(), d_ino, d_type));
            }
            off += reclen;
        }
    }
    Ok(out)
}
