//! Extended attributes, with the overlay's private names hidden.
//!
//! `trusted.overlay.*`, `user.overlay.*` and `user.fuseoverlayfs.*` belong to
//! the union (whiteouts, opacity, origins), and so do the owner overrides
//! (`security.fuseoverlayfs.override_stat`, `user.containers.override_stat`,
//! shown as the owner and mode instead, see `ownership.rs`): they are never
//! listed, and a layer's own are never read or changed through the mount.
//!
//! A client's overlay xattrs are escaped, as the kernel's overlayfs does
//! since Linux 6.7 ("Nesting overlayfs mounts"): `trusted.overlay.X` (and
//! `user.overlay.X`) set through the mount is stored as
//! `trusted.overlay.overlay.X`, and such an escaped xattr of any layer is
//! listed and read as `trusted.overlay.X`. So an overlay mounted with its
//! upper (or lower) directory on this mount, a nested strata-mount or the
//! kernel's, keeps its opaque directories and xattr whiteouts, and this
//! mount never takes them for its own. The other private names are refused
//! (`ENODATA` to read, `EPERM` to change).
//! Changing any other xattr of a lower entry copies it up first. With
//! `noxattrs=1` every xattr call fails (EOPNOTSUPP to the caller).
//!
//! The kernel asks for `security.capability` before every write and every
//! change of owner (to drop file capabilities), and `ls -l` asks for
//! `security.selinux` of every entry (the kernel caches no xattr of a FUSE
//! file but its ACLs): once a node is known to have none, the answer comes
//! from memory. Every way either can appear goes through this server
//! (setxattr), which forgets what it knew.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;

use nix::errno::Errno;

use crate::copyup::CopyData;
use crate::nodes::Node;
use crate::overlay::{Overlay, Res};
use crate::sys;
use strata_ovl::{escape_xattr, is_private_xattr, unescape_xattr};

/// The xattr that holds file capabilities.
const CAPS: &[u8] = b"security.capability";
/// The xattr that holds a file's SELinux label.
const SELINUX: &[u8] = b"security.selinux";

/// The flag of `node` that says it has no xattr `name`, for the names
/// whose absence is remembered. A label's absence only while SELinux is
/// off: on, it labels the files a copy-up creates.
fn absence_flag<'a>(node: &'a Node, name: &[u8]) -> Option<&'a std::sync::atomic::AtomicBool> {
    static SELINUX_ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    match name {
        CAPS => Some(&node.no_caps),
        SELINUX
            if !*SELINUX_ON
                .get_or_init(|| std::path::Path::new("/sys/fs/selinux/enforce").exists()) =>
        {
            Some(&node.no_selinux)
        }
        _ => None,
    }
}

/// The name a client's xattr `name` has in the layers: escaped for an
/// overlay name, `EPERM` (`ENODATA` for a read) for another private one.
fn layer_name(name: &OsStr, private: Errno) -> Res<CString> {
    let stored = match escape_xattr(name.as_bytes()) {
        Some(escaped) => escaped,
        None if is_private_xattr(name.as_bytes()) => return Err(private),
        None => name.as_bytes().to_vec(),
    };
    CString::new(stored).map_err(|_| Errno::EINVAL)
}

impl Overlay {
    /// ENOSYS under `noxattrs`: the kernel then stops sending xattr
    /// requests and answers EOPNOTSUPP itself, as with fuse-overlayfs.
    fn xattrs_on(&self) -> Res<()> {
        if self.opts.noxattrs {
            return Err(Errno::ENOSYS);
        }
        Ok(())
    }

    /// Reads xattr `name` of `node`; with `size` 0, only its length.
    pub fn getxattr(&self, node: &Node, name: &OsStr, size: u32) -> Res<Vec<u8>> {
        self.xattrs_on()?;
        let cname = layer_name(name, Errno::ENODATA)?;
        let absent = absence_flag(node, name.as_bytes());
        if absent.is_some_and(|f| f.load(Ordering::Relaxed)) {
            return Err(Errno::ENODATA);
        }
        let path = self.nodes.path(node)?;
        let fd = self.stack.fd(node.top());
        let mut buf = vec![0u8; size as usize];
        let n = match sys::getxattr_at(fd, path.c(), &cname, &mut buf) {
            Err(Errno::ENODATA) if absent.is_some() => {
                if let Some(f) = absent {
                    f.store(true, Ordering::Relaxed);
                }
                return Err(Errno::ENODATA);
            }
            r => r?,
        };
        if size == 0 {
            return Ok(vec![0; n]);
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// The mode a new entry in `parent` is created with: the caller's
    /// `umask` applies unless the directory has a default ACL, which the
    /// layer's filesystem then applies instead (POSIX; with FUSE_DONT_MASK
    /// the kernel leaves both to the server). Idempotent when the kernel
    /// masked already.
    pub fn creation_mode(&self, parent: &Node, mode: u32, umask: u32) -> u32 {
        if umask & 0o777 == 0 {
            return mode;
        }
        let default_acl = self.nodes.path(parent).is_ok_and(|p| {
            let fd = self.stack.fd(parent.top());
            sys::getxattr_at(fd, p.c(), c"system.posix_acl_default", &mut []).is_ok()
        });
        if default_acl {
            mode
        } else {
            mode & !(umask & 0o7777)
        }
    }

    /// After a change of `name` on some node: what any node knew of its
    /// capabilities or label may be wrong (hard links share them).
    fn xattr_changed(&self, name: &OsStr) {
        if matches!(name.as_bytes(), CAPS | SELINUX) {
            self.nodes.forget_no_caps();
        }
    }

    /// The NUL-separated list of `node`'s visible xattr names.
    pub fn listxattr(&self, node: &Node) -> Res<Vec<u8>> {
        self.xattrs_on()?;
        let path = self.nodes.path(node)?;
        let fd = self.stack.fd(node.top());
        let names = sys::listxattr_vec(fd, path.c())?;
        let mut out = Vec::new();
        for n in names.into_iter().filter(|n| !is_private_xattr(n)) {
            out.extend_from_slice(&unescape_xattr(&n).unwrap_or(n));
            out.push(0);
        }
        Ok(out)
    }

    /// Sets xattr `name` of `node` (copying it up first).
    pub fn setxattr(&self, node: &Node, name: &OsStr, value: &[u8], flags: i32) -> Res<()> {
        self.xattrs_on()?;
        let upper = self.upper()?;
        let cname = layer_name(name, Errno::EPERM)?;
        self.ensure_upper_with(node, CopyData::Meta)?;
        let path = self.nodes.path(node)?;
        self.xattr_changed(name);
        sys::setxattr_at(self.stack.fd(upper), path.c(), &cname, value, flags)
    }

    /// Removes xattr `name` of `node` (copying it up first).
    pub fn removexattr(&self, node: &Node, name: &OsStr) -> Res<()> {
        self.xattrs_on()?;
        let upper = self.upper()?;
        let cname = layer_name(name, Errno::EPERM)?;
        // Fail before a copy-up when there is nothing to remove.
        let path = self.nodes.path(node)?;
        sys::getxattr_at(self.stack.fd(node.top()), path.c(), &cname, &mut [])?;
        self.ensure_upper_with(node, CopyData::Meta)?;
        let path = self.nodes.path(node)?;
        sys::removexattr_at(self.stack.fd(upper), path.c(), &cname)
    }
}
