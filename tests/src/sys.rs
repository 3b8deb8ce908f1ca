//! The raw syscalls the test helpers need that `nix` does not wrap: extended
//! attributes on paths (never following symlinks) and `getdents64` with a
//! caller-chosen buffer size. Each returns the errno the kernel gave.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

fn cpath(path: &Path) -> Result<CString, Errno> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn cname(name: &str) -> Result<CString, Errno> {
    CString::new(name).map_err(|_| Errno::EINVAL)
}

/// `lsetxattr(2)` with flags 0 (create or replace).
pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> Result<(), Errno> {
    let (p, n) = (cpath(path)?, cname(name)?);
    // SAFETY: p and n are NUL-terminated and live across the call; value is a
    // valid slice of value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// `lremovexattr(2)`.
pub fn lremovexattr(path: &Path, name: &str) -> Result<(), Errno> {
    let (p, n) = (cpath(path)?, cname(name)?);
    // SAFETY: both strings are NUL-terminated and live across the call.
    let r = unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
    Errno::result(r).map(drop)
}

/// `lgetxattr(2)`: the whole value, however long.
pub fn lgetxattr(path: &Path, name: &str) -> Result<Vec<u8>, Errno> {
    let (p, n) = (cpath(path)?, cname(name)?);
    loop {
        // SAFETY: a NULL buffer with size 0 asks for the value's length.
        let len = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        let len = Errno::result(len)? as usize;
        let mut buf = vec![0u8; len.max(1)];
        // SAFETY: buf is writable for buf.len() bytes.
        let got =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(got) {
            Ok(got) => {
                buf.truncate(got as usize);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => continue, // it grew in between
            Err(e) => return Err(e),
        }
    }
}

/// `llistxattr(2)`: all names, in the order the filesystem gave them.
pub fn llistxattr(path: &Path) -> Result<Vec<String>, Errno> {
    let p = cpath(path)?;
    loop {
        // SAFETY: a NULL buffer with size 0 asks for the list's length.
        let len = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        let len = Errno::result(len)? as usize;
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; len];
        // SAFETY: buf is writable for buf.len() bytes.
        let got = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(got) {
            Ok(got) => {
                buf.truncate(got as usize);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect());
            }
            Err(Errno::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One entry returned by `getdents64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirent {
    /// `d_ino`.
    pub ino: u64,
    /// `d_off`: the cookie to continue after this entry.
    pub off: i64,
    /// `d_type` (`DT_*`).
    pub kind: u8,
    /// The name, without its NUL.
    pub name: Vec<u8>,
}

/// One `getdents64(2)` call with a buffer of `buf_size` bytes. An empty vector
/// means end of directory.
pub fn getdents64(dir: BorrowedFd<'_>, buf_size: usize) -> Result<Vec<Dirent>, Errno> {
    let mut buf = vec![0u8; buf_size];
    // SAFETY: buf is writable for buf.len() bytes and dir is an open fd.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    let n = Errno::result(n)? as usize;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < n {
        let rec = &buf[pos..n];
        let ino = u64::from_ne_bytes(rec[0..8].try_into().expect("8 bytes"));
        let off = i64::from_ne_bytes(rec[8..16].try_into().expect("8 bytes"));
        let reclen = u16::from_ne_bytes(rec[16..18].try_into().expect("2 bytes")) as usize;
        let kind = rec[18];
        let name_field = &rec[19..reclen];
        let len = name_field
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_field.len());
        out.push(Dirent {
            ino,
            off,
            kind,
            name: name_field[..len].to_vec(),
        });
        pos += reclen;
    }
    Ok(out)
}

/// `lgetxattr(2)` into a buffer of `len` bytes: the size it returned (or
/// ERANGE when the value does not fit).
pub fn lgetxattr_len(path: &Path, name: &str, len: usize) -> Result<usize, Errno> {
    let (p, n) = (cpath(path)?, cname(name)?);
    let mut buf = vec![0u8; len];
    // SAFETY: buf is writable for buf.len() bytes; p and n are NUL-terminated.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    Errno::result(r).map(|r| r as usize)
}

/// `llistxattr(2)` into a buffer of `len` bytes: the size it returned (or
/// ERANGE when the list does not fit).
pub fn llistxattr_len(path: &Path, len: usize) -> Result<usize, Errno> {
    let p = cpath(path)?;
    let mut buf = vec![0u8; len];
    // SAFETY: buf is writable for buf.len() bytes; p is NUL-terminated.
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    Errno::result(r).map(|r| r as usize)
}

/// `lsetxattr(2)` with `flags` (`XATTR_CREATE`, `XATTR_REPLACE`).
pub fn lsetxattr_flags(path: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), Errno> {
    let (p, n) = (cpath(path)?, cname(name)?);
    // SAFETY: p and n are NUL-terminated; value is valid for value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    Errno::result(r).map(drop)
}

/// Runs `cmd` to completion in a new user and mount namespace where it is
/// root, with `map` (`/proc/PID/uid_map` lines, used for gids too) written
/// by this process, which is root (as newuidmap would for a rootless
/// user's subordinate range). The command has no capability in the
/// initial namespace: `trusted.*` and `security.*` xattrs are refused, as
/// for rootless podman. Returns its output (stdout and stderr captured).
pub fn output_in_userns(
    mut cmd: std::process::Command,
    map: &str,
) -> std::io::Result<std::process::Output> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;

    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (ready_raw, go_raw) = (ready_w.as_raw_fd(), go_r.as_raw_fd());
    let go_w_raw = go_w.as_raw_fd();
    let child_setup = move || -> std::io::Result<()> {
        // Only async-signal-safe calls between fork and exec.
        // SAFETY: plain syscalls on fds this closure owns copies of; the
        // buffers are valid for their lengths.
        unsafe {
            // The parent's end only: if it goes away, the read sees EOF.
            libc::close(go_w_raw);
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(ready_raw, pid.as_ptr().cast(), pid.len()) != pid.len() as isize {
                return Err(std::io::Error::last_os_error());
            }
            let mut go = [0u8; 1];
            if libc::read(go_raw, go.as_mut_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::other("the id maps were not written"));
            }
            if libc::setresgid(0, 0, 0) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresuid(0, 0, 0) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: child_setup makes only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(child_setup);
    }
    // spawn() returns once the child has exec'd, which waits for the maps:
    // the child is spawned on a thread while this one writes them.
    let runner = std::thread::spawn(move || {
        let child = cmd.spawn();
        drop(ready_w);
        drop(go_r);
        child?.wait_with_output()
    });
    let mut pid = [0u8; 4];
    let mut ready = std::fs::File::from(ready_r);
    let mapped = ready.read_exact(&mut pid).and_then(|()| {
        let pid = i32::from_ne_bytes(pid);
        std::fs::write(format!("/proc/{pid}/uid_map"), map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), map)?;
        std::fs::File::from(go_w).write_all(b"g")
    });
    let out = runner.join().expect("the spawning thread panicked");
    mapped?;
    out
}

/// Runs `f` when the process exits normally: after `main` returns or at
/// `std::process::exit` (the test harness's exit after failed tests too).
/// Used to unmount what a whole test binary shares.
pub fn at_exit(f: extern "C" fn()) {
    // SAFETY: registers a plain function pointer with the C library; it
    // takes no arguments and lives for the whole program.
    let r = unsafe { libc::atexit(f) };
    assert_eq!(r, 0, "atexit failed");
}

/// Device nodes opened to every user for the guard's life (Debian makes
/// `/dev/fuse` and `/dev/net/tun` 0666; some machines have 0600), for
/// tests that run as an unprivileged user; the old modes come back on
/// drop.
pub struct DevicesOpen(Vec<(&'static str, u32)>);

impl DevicesOpen {
    /// Sets `paths` to `mode`.
    pub fn set(paths: &[&'static str], mode: u32) -> DevicesOpen {
        use std::os::unix::fs::PermissionsExt;
        let mut saved = Vec::new();
        for p in paths {
            let old = std::fs::metadata(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            saved.push((*p, old.permissions().mode() & 0o7777));
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {p}: {e}"));
        }
        DevicesOpen(saved)
    }

    /// `/dev/fuse` mode 0666.
    pub fn fuse() -> DevicesOpen {
        DevicesOpen::set(&["/dev/fuse"], 0o666)
    }
}

impl Drop for DevicesOpen {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        for (p, mode) in &self.0 {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(*mode));
        }
    }
}
