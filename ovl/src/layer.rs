//! One layer directory: the whiteout and opaque forms read from it and
//! written into it.
//!
//! Read, every form any overlay implementation writes:
//! - whiteouts: a character device 0/0 (the kernel's overlayfs), a
//!   `.wh.NAME` entry (AUFS/OCI, as podman stores image layers), and an
//!   empty regular file carrying `overlay.whiteout` in either xattr
//!   namespace (the kernel's xattr form, in directories marked
//!   `overlay.whiteouts`);
//! - opaque directories: `overlay.opaque=y` in either namespace,
//!   `user.fuseoverlayfs.opaque=y`, or a `.wh..wh..opq` entry inside.
//!
//! Written: the forms a [`Forms`](crate::Forms) names, chosen by probing
//! what the upper filesystem and the caller's privileges allow.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use nix::errno::Errno;

use crate::forms::{OpaqueForm, WhiteoutForm};
use crate::names::{self, EntryName, Xattr, XattrNs, OPAQUE_MARKER, OPAQUE_XATTRS};
use crate::path::RelPath;
use crate::sys;

/// Whether a stat result is a device whiteout (char 0/0).
pub fn is_device_whiteout(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Whether an entry found by stat is a whiteout in a form that can be seen
/// from the entry itself: the device, or the kernel's xattr form (an empty
/// regular file with `overlay.whiteout`).
pub fn is_whiteout(dir: BorrowedFd<'_>, path: &RelPath, st: &libc::stat) -> bool {
    if is_device_whiteout(st) {
        return true;
    }
    st.st_mode & libc::S_IFMT == libc::S_IFREG
        && st.st_size == 0
        && [XattrNs::Trusted, XattrNs::User]
            .into_iter()
            .any(|ns| sys::getxattr_at(dir, path.c(), Xattr::Whiteout.name(ns), &mut []).is_ok())
}

/// Whether the AUFS-form whiteout `.wh.NAME` exists in `parent` of a layer.
pub fn has_wh_file(dir: BorrowedFd<'_>, parent: &RelPath, name: &[u8]) -> bool {
    sys::stat_at(dir, parent.join(&names::whiteout_name(name)).c()).is_ok()
}

/// The AUFS-form whiteout path `PARENT/.wh.NAME` for `path` (`PARENT/NAME`).
fn wh_path(path: &RelPath) -> RelPath {
    let (parent, name) = path.split();
    parent.join(&names::whiteout_name(name))
}

/// Whether the directory at `path` in a layer is opaque, in any form.
pub fn is_opaque(dir: BorrowedFd<'_>, path: &RelPath) -> bool {
    dir_marks(dir, path).opaque || sys::stat_at(dir, path.join(OPAQUE_MARKER).c()).is_ok()
}

/// The overlay xattrs of a directory that change how it is read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DirMarks {
    /// An opaque xattr with the value `y`.
    pub opaque: bool,
    /// `overlay.whiteouts`, or `overlay.opaque` set to `x`: files in it may
    /// be xattr whiteouts.
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
        if Xattr::parse(n) == Some(Xattr::Whiteouts) {
            marks.xattr_whiteouts = true;
        } else if !marks.opaque {
            if let Some(name) = OPAQUE_XATTRS.iter().find(|o| o.to_bytes() == n.as_slice()) {
                let one = matches!(sys::getxattr_at(dir, path.c(), name, &mut v), Ok(1));
                marks.opaque = one && v[0] == b'y';
                // `x`: not opaque, but holding xattr whiteouts (Linux 6.8).
                marks.xattr_whiteouts |= one && v[0] == b'x';
            }
        }
    }
    marks
}

/// What one entry of a layer directory is, read from its name and its
/// `stat`: how a listing of the layer treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    /// An ordinary entry.
    Plain,
    /// A whiteout of the entry's own name (device or xattr form).
    Whiteout,
    /// `.wh.NAME`: hides `NAME` in the layers below.
    HidesBelow(&'a [u8]),
    /// The opaque marker or AUFS bookkeeping: not an entry of the tree.
    Meta,
}

/// Classifies the entry `name` of the directory `parent` of a layer;
/// `st` is its `lstat`.
pub fn classify<'a>(
    dir: BorrowedFd<'_>,
    parent: &RelPath,
    name: &'a [u8],
    st: &libc::stat,
) -> Entry<'a> {
    match EntryName::of(name) {
        EntryName::Whiteout(target) => Entry::HidesBelow(target),
        EntryName::OpaqueMarker | EntryName::AufsMeta => Entry::Meta,
        EntryName::Plain if is_whiteout(dir, &parent.join(name), st) => Entry::Whiteout,
        EntryName::Plain => Entry::Plain,
    }
}

/// Marks the directory `path` of the upper layer opaque.
pub fn set_opaque(dir: BorrowedFd<'_>, path: &RelPath, form: OpaqueForm) -> Result<(), Errno> {
    match form {
        OpaqueForm::Xattr(ns) => sys::setxattr_at(dir, path.c(), Xattr::Opaque.name(ns), b"y", 0),
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

/// Removes the opaque mark of `form` from the upper directory `path`
/// (nothing to do when it has none).
pub fn clear_opaque(dir: BorrowedFd<'_>, path: &RelPath, form: OpaqueForm) -> Result<(), Errno> {
    let r = match form {
        OpaqueForm::Xattr(ns) => sys::removexattr_at(dir, path.c(), Xattr::Opaque.name(ns)),
        OpaqueForm::Marker => sys::unlink_at(dir, path.join(OPAQUE_MARKER).c(), false),
    };
    match r {
        Ok(()) | Err(Errno::ENODATA) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates a whiteout for `path` (whose parent exists in the upper layer).
/// The device and xattr forms take the name itself, which must not exist;
/// the `.wh.` form takes `.wh.NAME` beside it. The xattr form marks its
/// directory first ([`mark_xattr_whiteouts`]).
pub fn make_whiteout(dir: BorrowedFd<'_>, path: &RelPath, form: WhiteoutForm) -> Result<(), Errno> {
    match form {
        WhiteoutForm::Device => sys::mknod_at(dir, path.c(), libc::S_IFCHR, 0),
        WhiteoutForm::WhFile => {
            sys::open_beneath(dir, wh_path(path).c(), libc::O_CREAT | libc::O_WRONLY, 0)?;
            Ok(())
        }
        WhiteoutForm::Xattr(ns) => {
            mark_xattr_whiteouts(dir, &path.split().0, ns)?;
            let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
            sys::open_beneath(dir, path.c(), flags, 0o600)?;
            let marked = sys::setxattr_at(dir, path.c(), Xattr::Whiteout.name(ns), b"y", 0);
            if let Err(e) = marked {
                let _ = sys::unlink_at(dir, path.c(), false);
                return Err(e);
            }
            Ok(())
        }
    }
}

/// Marks the directory `path` of a layer as holding xattr whiteouts, which
/// listings of it then look for: `overlay.whiteouts`, and `overlay.opaque`
/// set to `x` (the kernel's mark since Linux 6.8) unless it is opaque
/// (`y`) already.
pub fn mark_xattr_whiteouts(dir: BorrowedFd<'_>, path: &RelPath, ns: XattrNs) -> Result<(), Errno> {
    sys::setxattr_at(dir, path.c(), Xattr::Whiteouts.name(ns), b"y", 0)?;
    let opaque = Xattr::Opaque.name(ns);
    let mut v = [0u8; 1];
    match sys::getxattr_at(dir, path.c(), opaque, &mut v) {
        Ok(1) if v[0] == b'y' => Ok(()),
        _ => sys::setxattr_at(dir, path.c(), opaque, b"x", 0),
    }
}

/// Removes an AUFS-form whiteout `.wh.NAME` for `path` if there is one.
pub fn remove_wh_file(dir: BorrowedFd<'_>, path: &RelPath) -> Result<(), Errno> {
    match sys::unlink_at(dir, wh_path(path).c(), false) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
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

/// Removes every whiteout directly inside the upper directory `path`
/// (device and xattr forms, `.wh.NAME` files; not the opaque marker): once
/// the directory is opaque nothing below it shows through, and the
/// kernel's overlayfs lists a non-merged directory as it is on disk, so a
/// whiteout left there would show up as a name that cannot be looked up.
/// Returns the names the removed whiteouts hid.
pub fn remove_whiteouts(dir: BorrowedFd<'_>, path: &RelPath) -> Result<Vec<Vec<u8>>, Errno> {
    let mut hidden = Vec::new();
    let fd = sys::open_beneath(dir, path.c(), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for (name, _, dtype) in sys::read_dir_fd(fd)? {
        let child = path.join(&name);
        let target = match EntryName::of(&name) {
            EntryName::Whiteout(t) => Some(Some(t.to_vec())),
            EntryName::AufsMeta => Some(None),
            EntryName::OpaqueMarker => None,
            EntryName::Plain
                if dtype == libc::DT_CHR || dtype == libc::DT_REG || dtype == libc::DT_UNKNOWN =>
            {
                sys::stat_at(dir, child.c())
                    .is_ok_and(|st| is_whiteout(dir, &child, &st))
                    .then(|| Some(name.clone()))
            }
            EntryName::Plain => None,
        };
        if let Some(target) = target {
            match sys::unlink_at(dir, child.c(), false) {
                Ok(()) | Err(Errno::ENOENT) => hidden.extend(target),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(hidden)
}
