//! Whiteouts and opaque directories: the forms Strata reads and the one it
//! writes.
//!
//! Read: a character device 0/0 (overlayfs), a `.wh.NAME` file (AUFS/OCI, as
//! podman stores image layers), and a zero-size regular file carrying
//! `trusted.overlay.whiteout` (the kernel's xattr form). Opaque directories:
//! `trusted.overlay.opaque=y`, `user.overlay.opaque=y`,
//! `user.fuseoverlayfs.opaque=y`, or a `.wh..wh..opq` entry inside.
//!
//! Written: the device form and `trusted.overlay.opaque=y` where the server
//! may create devices (as root), else `.wh.NAME` and the `.wh..wh..opq`
//! marker, which every reader of OCI layers understands.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use nix::errno::Errno;

use crate::path::RelPath;
use crate::sys;

/// Prefix of AUFS/OCI whiteout names.
pub const WH_PREFIX: &[u8] = b".wh.";
/// Name of the AUFS/OCI opaque marker inside a directory.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// The xattr names that mark a directory opaque (value `y`).
const OPAQUE_XATTRS: [&CStr; 3] = [
    c"trusted.overlay.opaque",
    c"user.overlay.opaque",
    c"user.fuseoverlayfs.opaque",
];

/// How a whiteout is written into the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutForm {
    /// A character device 0/0, as the kernel's overlayfs writes.
    Device,
    /// An empty `.wh.NAME` file beside the hidden name (unprivileged).
    WhFile,
}

/// How an opaque directory is marked in the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpaqueForm {
    /// `trusted.overlay.opaque=y`, as the kernel's overlayfs writes.
    TrustedXattr,
    /// A `.wh..wh..opq` entry inside the directory (unprivileged).
    Marker,
}

/// Whether a stat result is a device whiteout (char 0/0).
pub fn is_device_whiteout(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Whether an entry found by stat is a whiteout in any form that can be
/// seen from the entry itself (device, or the kernel's xattr form).
pub fn is_whiteout(dir: BorrowedFd<'_>, path: &RelPath, st: &libc::stat) -> bool {
    if is_device_whiteout(st) {
        return true;
    }
    if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_size == 0 {
        return sys::getxattr_at(dir, path.c(), c"trusted.overlay.whiteout", &mut []).is_ok();
    }
    false
}

/// Whether the AUFS-form whiteout `.wh.NAME` exists in `parent` of a layer.
pub fn has_wh_file(dir: BorrowedFd<'_>, parent: &RelPath, name: &[u8]) -> bool {
    sys::stat_at(dir, parent.join(&wh_name(name)).c()).is_ok()
}

/// The AUFS-form whiteout path `PARENT/.wh.NAME` for `path` (`PARENT/NAME`).
fn wh_path(path: &RelPath) -> RelPath {
    let (parent, name) = path.split();
    parent.join(&wh_name(name))
}

/// `.wh.NAME`.
fn wh_name(name: &[u8]) -> Vec<u8> {
    [WH_PREFIX, name].concat()
}

/// Whether the directory at `path` in a layer is opaque.
pub fn is_opaque(dir: BorrowedFd<'_>, path: &RelPath) -> bool {
    has_opaque_xattr(dir, path) || sys::stat_at(dir, path.join(OPAQUE_MARKER).c()).is_ok()
}

/// Whether the directory at `path` in a layer carries an opaque xattr.
pub fn has_opaque_xattr(dir: BorrowedFd<'_>, path: &RelPath) -> bool {
    dir_marks(dir, path).opaque
}

/// The overlay xattrs of a directory that change how it is read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirMarks {
    /// An opaque xattr with the value `y`.
    pub opaque: bool,
    /// `trusted.overlay.whiteouts`: files in it may be xattr whiteouts.
    pub xattr_whiteouts: bool,
}

/// Reads the marks of the directory at `path` in a layer: one listxattr,
/// and a getxattr only for an opaque name that is there (most directories
/// have none, so this is one syscall instead of one per name).
pub fn dir_marks(dir: BorrowedFd<'_>, path: &RelPath) -> DirMarks {
    let Ok(names) = sys::listxattr_vec(dir, path.c()) else {
        return DirMarks::default();
    };
    let mut marks = DirMarks::default();
    let mut v = [0u8; 1];
    for n in &names {
        if n.as_slice() == b"trusted.overlay.whiteouts" {
            marks.xattr_whiteouts = true;
        } else if !marks.opaque {
            if let Some(name) = OPAQUE_XATTRS.iter().find(|o| o.to_bytes() == n.as_slice()) {
                marks.opaque =
                    matches!(sys::getxattr_at(dir, path.c(), name, &mut v), Ok(1)) && v[0] == b'y';
            }
        }
    }
    marks
}

/// Marks the directory `path` of the upper layer opaque.
pub fn set_opaque(dir: BorrowedFd<'_>, path: &RelPath, form: OpaqueForm) -> Result<(), Errno> {
    match form {
        OpaqueForm::TrustedXattr => {
            sys::setxattr_at(dir, path.c(), c"trusted.overlay.opaque", b"y", 0)
        }
        OpaqueForm::Marker => {
            let fd = sys::open_beneath(
                dir,
                path.join(OPAQUE_MARKER).c(),
                libc::O_CREAT | libc::O_WRONLY,
                0,
            )?;
            drop(fd);
            Ok(())
        }
    }
}

/// Creates a whiteout for `path` (whose parent exists in the upper layer).
/// The name must not exist in the upper layer.
pub fn make_whiteout(dir: BorrowedFd<'_>, path: &RelPath, form: WhiteoutForm) -> Result<(), Errno> {
    match form {
        WhiteoutForm::Device => sys::mknod_at(dir, path.c(), libc::S_IFCHR, 0),
        WhiteoutForm::WhFile => {
            sys::open_beneath(dir, wh_path(path).c(), libc::O_CREAT | libc::O_WRONLY, 0)?;
            Ok(())
        }
    }
}

/// Removes an AUFS-form whiteout `.wh.NAME` for `path` if there is one.
pub fn remove_wh_file(dir: BorrowedFd<'_>, path: &RelPath) -> Result<(), Errno> {
    match sys::unlink_at(dir, wh_path(path).c(), false) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a name is reserved by the whiteout forms (never shown to users).
pub fn is_reserved_name(name: &[u8]) -> bool {
    name.starts_with(WH_PREFIX)
}

/// Moves the directory `from_dir/from` onto the device whiteout
/// `to_dir/to` (a directory cannot be renamed over a device): swaps the
/// two, then removes the whiteout that now sits at `from` unless `keep`
/// (the old name needs one).
pub fn swap_dir_onto_whiteout(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
    keep: bool,
) -> Result<(), Errno> {
    sys::rename_at2(from_dir, from, to_dir, to, libc::RENAME_EXCHANGE)?;
    if keep {
        return Ok(());
    }
    sys::unlink_at(from_dir, from, false)
}

/// Removes every whiteout directly inside the upper directory `path` (device
/// and xattr forms, `.wh.NAME` files; not the opaque marker): once the
/// directory is opaque nothing below it shows through, and the kernel's
/// overlayfs lists a non-merged directory as it is on disk, so a whiteout
/// left there would show up as a name that cannot be looked up.
pub fn remove_whiteouts(dir: BorrowedFd<'_>, path: &RelPath) -> Result<(), Errno> {
    let fd = sys::open_beneath(dir, path.c(), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for (name, _, dtype) in sys::read_dir_fd(fd)? {
        if name == b"." || name == b".." || name == OPAQUE_MARKER {
            continue;
        }
        let child = path.join(&name);
        let gone = if name.starts_with(WH_PREFIX) {
            true
        } else if dtype == libc::DT_CHR || dtype == libc::DT_REG || dtype == libc::DT_UNKNOWN {
            match sys::stat_at(dir, child.c()) {
                Ok(st) => is_whiteout(dir, &child, &st),
                Err(_) => false,
            }
        } else {
            false
        };
        if gone {
            match sys::unlink_at(dir, child.c(), false) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
