//! The forms written into an upper layer, chosen from what the upper
//! filesystem and the caller's privileges allow, probed, never assumed
//! from the uid: uid 0 in a user namespace may not set `trusted.*` xattrs,
//! an overlayfs upper refuses whiteout devices even for root, and since
//! Linux 5.8 anyone may make the 0/0 device that is a whiteout.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;

use crate::names::{Xattr, XattrNs};
use crate::sys;

/// How a whiteout is written into the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutForm {
    /// A character device 0/0, as the kernel's overlayfs writes.
    Device,
    /// An empty `.wh.NAME` file beside the hidden name, where the upper
    /// filesystem refuses the device.
    WhFile,
    /// An empty regular file of the hidden name carrying `overlay.whiteout`
    /// in a namespace (the kernel's xattr whiteout, which it reads in lower
    /// layers since Linux 6.7): where the upper takes neither the device
    /// nor `.wh.` names but takes overlay xattrs, as a Strata mount does
    /// for a nested overlay (it escapes them).
    Xattr(XattrNs),
}

/// How an opaque directory is marked in the upper layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpaqueForm {
    /// `overlay.opaque=y` in a namespace: `trusted.` as the kernel's
    /// overlayfs writes, `user.` as it does with `userxattr`.
    Xattr(XattrNs),
    /// A `.wh..wh..opq` entry inside the directory, where the upper
    /// filesystem takes no overlay xattr.
    Marker,
}

/// The forms one upper layer is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forms {
    /// Whiteouts.
    pub whiteout: WhiteoutForm,
    /// Opaque directories.
    pub opaque: OpaqueForm,
    /// Where the bookkeeping xattrs go (origin, impure, metacopy): `None`
    /// when the upper takes no overlay xattr, and then there is none.
    pub xattrs: Option<XattrNs>,
}

impl Forms {
    /// The kernel's own forms: device whiteouts and `trusted.overlay.*`.
    pub const KERNEL: Forms = Forms {
        whiteout: WhiteoutForm::Device,
        opaque: OpaqueForm::Xattr(XattrNs::Trusted),
        xattrs: Some(XattrNs::Trusted),
    };

    /// The forms every reader of OCI layers understands and any writable
    /// filesystem takes: `.wh.NAME` and `.wh..wh..opq`, no xattrs.
    pub const AUFS: Forms = Forms {
        whiteout: WhiteoutForm::WhFile,
        opaque: OpaqueForm::Marker,
        xattrs: None,
    };
}

impl fmt::Display for Forms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wh = match self.whiteout {
            WhiteoutForm::Device => "device 0/0",
            WhiteoutForm::WhFile => ".wh.NAME",
            WhiteoutForm::Xattr(ns) => Xattr::Whiteout.name(ns).to_str().unwrap_or("?"),
        };
        let opq = match self.opaque {
            OpaqueForm::Xattr(ns) => Xattr::Opaque.name(ns).to_str().unwrap_or("?"),
            OpaqueForm::Marker => ".wh..wh..opq",
        };
        let xattrs = match self.xattrs {
            Some(XattrNs::Trusted) => "trusted.overlay.*",
            Some(XattrNs::User) => "user.overlay.*",
            None => "none",
        };
        write!(f, "whiteouts {wh}, opaque {opq}, records {xattrs}")
    }
}

/// What an upper filesystem accepted when probed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Probe {
    /// `mknod` of a character device 0/0.
    pub device_whiteout: bool,
    /// `trusted.overlay.*` xattrs on a directory.
    pub trusted_xattr: bool,
    /// `user.overlay.*` xattrs on a directory.
    pub user_xattr: bool,
    /// `O_TMPFILE` files.
    pub tmpfile: bool,
    /// `renameat2(RENAME_EXCHANGE)`.
    pub rename_exchange: bool,
}

/// The name of the scratch directory a probe works in.
const PROBE_DIR: &std::ffi::CStr = c"strata-probe";

impl Probe {
    /// Probes the filesystem of the directory `work` (an upper layer's work
    /// directory: writable, on the upper's filesystem, private to the
    /// mount). Works in a scratch directory it removes again; fails only
    /// when nothing can be created there at all.
    pub fn run(work: BorrowedFd<'_>) -> Result<Probe, Errno> {
        let _ = remove_tree(work, PROBE_DIR);
        sys::mkdir_at(work, PROBE_DIR, 0o700)?;
        let r = Self::run_in(work);
        let _ = remove_tree(work, PROBE_DIR);
        Ok(r)
    }

    fn run_in(work: BorrowedFd<'_>) -> Probe {
        let Ok(dir) = sys::open_beneath(work, PROBE_DIR, libc::O_RDONLY | libc::O_DIRECTORY, 0)
        else {
            return Probe::default();
        };
        let d = dir.as_fd();
        let xattr = |ns: XattrNs| {
            sys::setxattr_at(d, c".", Xattr::Opaque.name(ns), b"y", 0).is_ok()
                && sys::getxattr_at(d, c".", Xattr::Opaque.name(ns), &mut [0u8; 1]) == Ok(1)
        };
        let device_whiteout = sys::mknod_at(d, c"wh", libc::S_IFCHR, 0).is_ok()
            && sys::stat_at(d, c"wh").is_ok_and(|st| crate::layer::is_device_whiteout(&st));
        let made = |name: &std::ffi::CStr| {
            sys::open_beneath(d, name, libc::O_CREAT | libc::O_WRONLY, 0o600).is_ok()
        };
        let rename_exchange = made(c"a")
            && made(c"b")
            && sys::rename_at2(d, c"a", d, c"b", libc::RENAME_EXCHANGE).is_ok();
        let tmpfile = sys::open_beneath(d, c".", libc::O_TMPFILE | libc::O_WRONLY, 0o600).is_ok();
        Probe {
            device_whiteout,
            trusted_xattr: xattr(XattrNs::Trusted),
            user_xattr: xattr(XattrNs::User),
            tmpfile,
            rename_exchange,
        }
    }

    /// The forms to write on a filesystem that accepted this: the kernel's
    /// where it can, its `userxattr` forms where only `user.*` xattrs are
    /// allowed, `.wh.` files and markers where nothing else is.
    pub fn forms(&self) -> Forms {
        let ns = if self.trusted_xattr {
            Some(XattrNs::Trusted)
        } else if self.user_xattr {
            Some(XattrNs::User)
        } else {
            None
        };
        Forms {
            whiteout: if self.device_whiteout {
                WhiteoutForm::Device
            } else {
                WhiteoutForm::WhFile
            },
            opaque: ns.map_or(OpaqueForm::Marker, OpaqueForm::Xattr),
            xattrs: ns,
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "whiteout device {}, trusted xattrs {}, user xattrs {}, O_TMPFILE {}, RENAME_EXCHANGE {}",
            yn(self.device_whiteout),
            yn(self.trusted_xattr),
            yn(self.user_xattr),
            yn(self.tmpfile),
            yn(self.rename_exchange)
        )
    }
}

/// Removes the small scratch tree `name` beneath `dir` (no subdirectories).
fn remove_tree(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<(), Errno> {
    if let Ok(fd) = sys::open_beneath(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
        let sub = sys::open_beneath(fd.as_fd(), c".", libc::O_PATH | libc::O_DIRECTORY, 0)?;
        for (n, _, _) in sys::read_dir_fd(fd)? {
            let n = std::ffi::CString::new(n).map_err(|_| Errno::EINVAL)?;
            let _ = sys::unlink_at(sub.as_fd(), &n, false);
        }
    }
    sys::unlink_at(dir, name, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_follow_what_the_filesystem_accepts() {
        let all = Probe {
            device_whiteout: true,
            trusted_xattr: true,
            user_xattr: true,
            ..Probe::default()
        };
        assert_eq!(all.forms(), Forms::KERNEL);
        let userns = Probe {
            device_whiteout: true,
            user_xattr: true,
            ..Probe::default()
        };
        assert_eq!(userns.forms().opaque, OpaqueForm::Xattr(XattrNs::User));
        assert_eq!(userns.forms().whiteout, WhiteoutForm::Device);
        assert_eq!(Probe::default().forms(), Forms::AUFS);
    }

    #[test]
    fn a_probe_leaves_nothing_behind() {
        let t = tempfile::tempdir().unwrap();
        let fd = std::fs::File::open(t.path()).unwrap();
        let p = Probe::run(fd.as_fd()).unwrap();
        assert!(p.user_xattr || !p.trusted_xattr, "{p}");
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }
}
