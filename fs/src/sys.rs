//! Every raw syscall the filesystem makes that `nix` does not wrap safely.
//!
//! Signatures are I/O-safe: `BorrowedFd`/`AsFd` in, `OwnedFd` out. Paths are
//! always relative to a layer's directory fd; `openat2` is called with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` so nothing a layer holds (a
//! symlink, `..`) can make the server open a host path outside that layer.
//! This is the only module of the crate allowed to use `unsafe`.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;

/// `openat2(2)` resolve flags used for every open inside a layer.
const RESOLVE_BENEATH: u64 = 0x08;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// The short-path form of the public function of the same name.
fn open_beneath_short(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64,
        mode: if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
            mode as u64
        } else {
            0
        },
        resolve: RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS,
    };
    loop {
        // SAFETY: `how` is a valid open_how of the size passed; `path` is a
        // NUL-terminated string that outlives the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if ret >= 0 {
            // SAFETY: the kernel returned a new, owned file descriptor.
            return Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) });
        }
        let err = Errno::last();
        if err == Errno::EAGAIN || err == Errno::EINTR {
            continue;
        }
        return Err(err);
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
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `c` is NUL-terminated and lives across the call.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new fd returned by open(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The short-path form of the public function of the same name.
fn stat_at_short(dir: BorrowedFd<'_>, path: &CStr) -> Result<libc::stat, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer; `path` is NUL-terminated.
    let ret = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            path.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// An all-zero `stat` (the attributes of a negative lookup entry).
pub fn fstat_placeholder() -> libc::stat {
    // SAFETY: `stat` is a C struct of integers, for which all-zero bytes
    // are a valid value.
    unsafe { std::mem::zeroed() }
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd<'_>) -> Result<libc::stat, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer.
    let ret = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fstat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
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

fn check(ret: libc::c_int) -> Result<(), Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// The short-path form of the public function of the same name.
fn mkdir_at_short(dir: BorrowedFd<'_>, path: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: plain syscall on a NUL-terminated path.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), path.as_ptr(), mode) })
}

/// The short-path form of the public function of the same name.
fn mknod_at_short(dir: BorrowedFd<'_>, path: &CStr, mode: u32, rdev: u64) -> Result<(), Errno> {
    // SAFETY: plain syscall on a NUL-terminated path.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), path.as_ptr(), mode, rdev) })
}

/// The short-path form of the public function of the same name.
fn symlink_at_short(target: &CStr, dir: BorrowedFd<'_>, path: &CStr) -> Result<(), Errno> {
    // SAFETY: plain syscall on NUL-terminated strings.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), path.as_ptr()) })
}

/// The short-path form of the public function of the same name.
fn link_at_short(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
) -> Result<(), Errno> {
    // SAFETY: plain syscall on NUL-terminated paths.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            0,
        )
    })
}

/// The short-path form of the public function of the same name.
fn link_fd_short(fd: BorrowedFd<'_>, new_dir: BorrowedFd<'_>, new: &CStr) -> Result<(), Errno> {
    // SAFETY: plain syscall; the empty path is a valid NUL-terminated string.
    check(unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })
}

/// The short-path form of the public function of the same name.
fn unlink_at_short(dir: BorrowedFd<'_>, path: &CStr, remove_dir: bool) -> Result<(), Errno> {
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: plain syscall on a NUL-terminated path.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), path.as_ptr(), flags) })
}

/// The short-path form of the public function of the same name.
fn rename_at2_short(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
    flags: u32,
) -> Result<(), Errno> {
    // SAFETY: plain syscall on NUL-terminated paths.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// The short-path form of the public function of the same name.
fn chown_at_short(dir: BorrowedFd<'_>, path: &CStr, uid: u32, gid: u32) -> Result<(), Errno> {
    // SAFETY: plain syscall on a NUL-terminated path.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            path.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// The short-path form of the public function of the same name.
fn chmod_at_short(dir: BorrowedFd<'_>, path: &CStr, mode: u32) -> Result<(), Errno> {
    // SAFETY: plain syscall on a NUL-terminated path.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), path.as_ptr(), mode, 0) })
}

/// `fchown(fd)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Errno> {
    // SAFETY: plain syscall on an fd.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })
}

/// `fchmod(fd)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    // SAFETY: plain syscall on an fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
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
    let ts = [atime.timespec(), mtime.timespec()];
    // SAFETY: `ts` is a two-element array as utimensat requires.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            path.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// `futimens(fd, [atime, mtime])`.
pub fn futimens(fd: BorrowedFd<'_>, atime: Time, mtime: Time) -> Result<(), Errno> {
    let ts = [atime.timespec(), mtime.timespec()];
    // SAFETY: `ts` is a two-element array as futimens requires.
    check(unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) })
}

/// The short-path form of the public function of the same name.
fn readlink_at_short(dir: BorrowedFd<'_>, path: &CStr) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `buf` is writable for its whole length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            path.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(Errno::last());
    }
    buf.truncate(n as usize);
    Ok(buf)
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
        // SAFETY: the slice is writable for the length passed.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
                (offset + done as u64) as i64,
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
        done += n as usize;
    }
    Ok(done)
}

/// `pwrite(2)` of the whole buffer, retried on EINTR and short writes.
pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the slice is readable for the length passed.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                buf[done..].as_ptr().cast(),
                buf.len() - done,
                (offset + done as u64) as i64,
            )
        };
        if n < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            if done > 0 {
                return Ok(done);
            }
            return Err(e);
        }
        done += n as usize;
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
        // SAFETY: offsets are valid out-pointers; fds are borrowed for the call.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
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
        done += n as u64;
    }
    Ok(done)
}

/// `lseek(2)` (used for SEEK_DATA / SEEK_HOLE).
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> Result<i64, Errno> {
    // SAFETY: plain syscall on an fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

/// `fallocate(2)`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: i64, len: i64) -> Result<(), Errno> {
    // SAFETY: plain syscall on an fd.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) })
}

/// `fsync(2)` or `fdatasync(2)`.
pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> Result<(), Errno> {
    // SAFETY: plain syscall on an fd.
    check(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
}

/// `ftruncate(2)`.
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> Result<(), Errno> {
    // SAFETY: plain syscall on an fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64) })
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

/// Opens the directory `path` (`O_RDONLY | O_DIRECTORY | O_CLOEXEC`) and
/// takes an exclusive `flock` on it without waiting: `EWOULDBLOCK` while
/// another open file holds it. The lock belongs to the open file, so a
/// forked child that keeps the fd keeps the lock, and it goes when the last
/// fd closes (no explicit unlock that a child could run by mistake).
pub fn lock_dir(path: &std::path::Path) -> Result<OwnedFd, Errno> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: NUL-terminated path.
    let fd = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new fd from open(2).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain syscall on an fd we own.
    check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) })?;
    Ok(fd)
}

/// Opens `/dev/fuse` for a new connection.
pub fn open_fuse_device() -> Result<OwnedFd, Errno> {
    // SAFETY: literal NUL-terminated path.
    let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: a new fd from open(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fork(2)`, for a program that has not started any thread yet (the
/// mount program daemonizing before it mounts).
pub fn fork_single_threaded() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: callers fork before any thread exists, so the child cannot
    // inherit a lock held by another thread.
    unsafe { nix::unistd::fork() }
}

/// Sets the process umask (the server creates files with exact modes).
pub fn set_umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe {
        libc::umask(mask);
    }
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
