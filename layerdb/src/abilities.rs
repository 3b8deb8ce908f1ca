//! What the store may do on its filesystem as this process: probed before
//! the store's first extraction, never judged by the uid. Root in a user namespace
//! (rootless `strata`, `unshare -Ur`) is uid 0 but may not make device
//! nodes or write `trusted.*` xattrs, and may give files only the owners
//! its id mapping holds; an ordinary user may do none of it.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use strata_ovl::sys as ovl_sys;
use strata_ovl::{Forms, OpaqueForm, Probe, WhiteoutForm, XattrNs};

use crate::error::{Error, Result};
use crate::fsutil::TempDir;

/// The forms a store writes when it may not probe for better: `.wh.NAME`
/// whiteouts and the kernel's `userxattr` opaque marker.
pub const UNPRIVILEGED_FORMS: Forms = Forms {
    whiteout: WhiteoutForm::WhFile,
    opaque: OpaqueForm::Xattr(XattrNs::User),
    xattrs: Some(XattrNs::User),
};

/// What extraction may do in a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abilities {
    /// Files may be given the owners their tar headers name (within the id
    /// mapping of the user namespace).
    pub owners: bool,
    /// Character and block devices may be made; where they may not, device
    /// entries are skipped with a warning, as docker and containers/storage
    /// do in a user namespace.
    pub devices: bool,
    /// `trusted.*` xattrs may be written.
    pub trusted_xattrs: bool,
    /// The whiteout and opaque forms written.
    pub forms: Forms,
}

impl Abilities {
    /// An ordinary user's store: no owners, no devices (refused), no
    /// `trusted.*`; `.wh.` whiteouts.
    pub const UNPRIVILEGED: Abilities = Abilities {
        owners: false,
        devices: false,
        trusted_xattrs: false,
        forms: UNPRIVILEGED_FORMS,
    };

    /// Probes what this process may do in the directory `scratch` (the
    /// store's `tmp`), in a directory of its own it removes again.
    pub fn probe(scratch: &Path) -> Result<Abilities> {
        let dir = TempDir::new(scratch)?;
        let fd = std::fs::File::open(dir.path()).map_err(|e| Error::io("open", dir.path(), e))?;
        let probe = Probe::run(fd.as_fd()).map_err(|e| Error::io("probe", dir.path(), e.into()))?;
        let owners = try_chown(fd.as_fd());
        let devices = ovl_sys::mknod_at(
            fd.as_fd(),
            c"null",
            libc::S_IFCHR | 0o600,
            nix::sys::stat::makedev(1, 3),
        )
        .is_ok();
        Ok(Abilities {
            owners,
            devices,
            trusted_xattrs: probe.trusted_xattr,
            forms: if owners || probe.device_whiteout {
                probe.forms()
            } else {
                UNPRIVILEGED_FORMS
            },
        })
    }
}

/// Whether a file here may be given another owner (uid and gid 1, mapped
/// in every user namespace a container runs in).
fn try_chown(dir: BorrowedFd<'_>) -> bool {
    let made = ovl_sys::open_beneath(dir, c"owner", libc::O_CREAT | libc::O_WRONLY, 0o600);
    made.is_ok() && ovl_sys::chown_at(dir, c"owner", 1, 1).is_ok()
}
