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
}

/// The names a probe makes in the work directory, and removes again.
const PROBE_WH: &std::ffi::CStr = c"strata-probe-wh";
const PROBE_FILE: &std::ffi::CStr = c"strata-probe";

impl Probe {
    /// Probes the filesystem of the directory `work` (an upper layer's work
    /// directory: writable, on the upper's filesystem, private to the
    /// mount), leaving it as it was; fails only when nothing can be
    /// created there at all. One inode at most is made (the whiteout
    /// device, or a plain file where devices are refused): on ext4 each
    /// new inode can cost a scan of an inode table block, which made the
    /// probe most of a mount's time; the xattrs go on `work` itself.
    pub fn run(work: BorrowedFd<'_>) -> Result<Probe, Errno> {
        let dir = sys::open_beneath(work, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        let d = dir.as_fd();
        let _ = sys::unlink_at(d, PROBE_WH, false);
        let device_whiteout = match sys::mknod_at(d, PROBE_WH, libc::S_IFCHR, 0) {
            Ok(()) => {
                let ok =
                    sys::stat_at(d, PROBE_WH).is_ok_and(|st| crate::layer::is_device_whiteout(&st));
                let _ = sys::unlink_at(d, PROBE_WH, false);
                ok
            }
            Err(_) => {
                let _ = sys::unlink_at(d, PROBE_FILE, false);
                sys::open_beneath(
                    d,
                    PROBE_FILE,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    0o600,
                )?;
                let _ = sys::unlink_at(d, PROBE_FILE, false);
                false
            }
        };
        let xattr = |ns: XattrNs| {
            let name = Xattr::Opaque.name(ns);
            let ok = sys::setxattr_at(d, c".", name, b"y", 0).is_ok()
                && sys::getxattr_at(d, c".", name, &mut [0u8; 1]) == Ok(1);
            let _ = sys::removexattr_at(d, c".", name);
            ok
        };
        Ok(Probe {
            device_whiteout,
            trusted_xattr: xattr(XattrNs::Trusted),
            user_xattr: xattr(XattrNs::User),
        })
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
            "whiteout device {}, trusted xattrs {}, user xattrs {}",
            yn(self.device_whiteout),
            yn(self.trusted_xattr),
            yn(self.user_xattr),
        )
    }
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
        let left = sys::listxattr_vec(fd.as_fd(), c".").unwrap_or_default();
        assert!(
            !left.iter().any(|n| n.ends_with(b"overlay.opaque")),
            "the probe's xattrs stayed on the work directory"
        );
    }
}
