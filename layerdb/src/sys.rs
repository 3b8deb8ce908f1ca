//! Every raw syscall of the crate that nix does not wrap safely: extended
//! attributes. Each takes a directory fd and a single name inside it, and
//! acts on the entry itself (never following a symlink), by going through
//! `/proc/self/fd/<dirfd>/<name>`, so no host path is ever joined.
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cname(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Sets xattr `key` of entry `name` in `dir` (not following symlinks).
pub(crate) fn lsetxattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    key: &[u8],
    value: &[u8],
) -> io::Result<()> {
    let path = proc_path(dir, name)?;
    let key = cname(key)?;
    // SAFETY: path and key are valid NUL-terminated strings that outlive the
    // call; value points to value.len() readable bytes.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lists the xattr names of entry `name` in `dir` (not following symlinks).
pub(crate) fn llistxattr_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<Vec<u8>>> {
    let path = proc_path(dir, name)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: path is a valid C string; buf has buf.len() writable bytes.
        let rc = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if rc >= 0 {
            buf.truncate(rc as usize);
            return Ok(buf
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| s.to_vec())
                .collect());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(err),
        }
    }
}

/// Reads xattr `key` of entry `name` in `dir` (not following symlinks).
/// Returns `None` when the attribute does not exist.
pub(crate) fn lgetxattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    key: &[u8],
) -> io::Result<Option<Vec<u8>>> {
    let path = proc_path(dir, name)?;
    let key = cname(key)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: path and key are valid C strings; buf has buf.len()
        // writable bytes.
        let rc = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                key.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if rc >= 0 {
            buf.truncate(rc as usize);
            return Ok(Some(buf));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            _ => return Err(err),
        }
    }
}
