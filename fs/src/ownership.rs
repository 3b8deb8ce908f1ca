//! Owners and modes kept in an xattr: fuse-overlayfs' `xattr_permissions`
//! and containers/storage's `force_mask` (see [`strata_ovl::ownership`]).
//!
//! Each layer's [`OverrideMode`] is read once at mount from its root
//! directory; the upper's, when its root carries none, comes from
//! `-o xattr_permissions=1|2`. In a layer with a mode, an entry carrying
//! the override xattr is presented with its owner and permission bits (the
//! ids then go through `uidmapping`/`gidmapping` and `squash_to_*` as real
//! ones do), so the kernel's `default_permissions` checks judge by them.
//! The type stays the real one: a regular file whose override records
//! `char-1-3` (containers/storage's form of a device it could not make) is
//! shown as a regular file; the recorded type is kept through chmod and
//! chown, so containers/storage still finds it when it makes a layer tar.
//!
//! In an upper layer with a mode, chown and chmod write the override
//! instead of changing the inode (a user without enough ids could not), a
//! new entry or a copy-up whose owner cannot be set for real gets one, and
//! copy-up carries a lower entry's override into the upper (translated to
//! the upper's name; made real when the upper has no mode). Entries that
//! cannot carry a `user.*` xattr (symlinks, devices, fifos, sockets) are
//! changed for real in the `user.*` modes. An open file whose name is gone
//! is shown and changed for real.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use strata_ovl::{OverrideMode, OverrideStat};

use crate::layers::{LayerIdx, Stack};
use crate::options::MountOptions;
use crate::overlay::{Overlay, Res};
use crate::path::RelPath;
use crate::sys;

/// The override mode of every layer, indexed by [`LayerIdx`].
/// Said once at `-d` when any layer has one.
pub(crate) fn layer_modes(stack: &Stack, opts: &MountOptions) -> Vec<Option<OverrideMode>> {
    let modes: Vec<Option<OverrideMode>> = stack
        .all()
        .map(|l| {
            let found = OverrideMode::detect(stack.fd(l));
            if stack.is_upper(l) {
                found.or(opts.xattr_permissions)
            } else {
                found
            }
        })
        .collect();
    for (i, m) in modes.iter().enumerate() {
        if let Some(m) = m {
            let layer = &stack.layer(LayerIdx(i as u16)).path;
            tracing::info!(?m, layer = %layer.display(), "owners and modes from override xattrs");
        }
    }
    modes
}

/// The real owner and permission bits of a stat, as an override value.
fn real(st: &libc::stat) -> OverrideStat {
    OverrideStat {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
        kind: None,
    }
}

impl Overlay {
    /// The override mode of `layer`.
    pub(crate) fn override_mode(&self, layer: LayerIdx) -> Option<OverrideMode> {
        self.overrides.get(layer.0 as usize).copied().flatten()
    }

    /// The override of `path` in `layer`, if the layer has a mode and the
    /// entry one (a malformed value is ignored: the real stat shows).
    pub(crate) fn override_at(&self, layer: LayerIdx, path: &RelPath) -> Option<OverrideStat> {
        let mode = self.override_mode(layer)?;
        match mode.read(self.stack.fd(layer), path.c()) {
            Ok(v) => v,
            Err(err) => {
                tracing::debug!(?err, %path, %layer, "owner override ignored");
                None
            }
        }
    }

    /// `st` (a stat of `path` in `layer`) with the entry's override
    /// applied: owner and permission bits, never the type.
    pub(crate) fn apply_override(&self, layer: LayerIdx, path: &RelPath, st: &mut libc::stat) {
        if let Some(o) = self.override_at(layer, path) {
            st.st_uid = o.uid;
            st.st_gid = o.gid;
            st.st_mode = (st.st_mode & libc::S_IFMT) | o.mode;
        }
    }

    /// The override mode of the upper layer when the entry of type
    /// `st_mode` can carry it.
    fn upper_carrier(&self, st_mode: u32) -> Option<OverrideMode> {
        let upper = self.stack.upper()?;
        self.override_mode(upper).filter(|m| m.can_carry(st_mode))
    }

    /// Gives the new upper entry `dir/at` (of type `st_mode`) the owner
    /// `uid:gid`: for real when the server may, else, in an upper with a
    /// mode, as an override with permission bits `perm`.
    pub(crate) fn own_new_entry(
        &self,
        dir: BorrowedFd<'_>,
        at: &CStr,
        st_mode: u32,
        uid: u32,
        gid: u32,
        perm: u32,
    ) -> Res<()> {
        match sys::chown_at(dir, at, uid, gid) {
            Err(e @ (Errno::EPERM | Errno::EINVAL)) => {
                let Some(m) = self.upper_carrier(st_mode) else {
                    return Err(e);
                };
                let value = OverrideStat {
                    uid,
                    gid,
                    mode: perm & 0o7777,
                    kind: None,
                };
                m.write(dir, at, &value)
            }
            r => r,
        }
    }

    /// Owner and mode of a copy-up of `path` (stat `st`) from layer
    /// `from`, assembled at `work/tmp`: the lower entry's override goes
    /// into the upper's name, or is made real when the upper has no mode;
    /// a real owner the server cannot set becomes an override.
    pub(crate) fn copy_up_owner(
        &self,
        from: LayerIdx,
        path: &RelPath,
        st: &libc::stat,
        work: BorrowedFd<'_>,
        tmp: &CStr,
    ) -> Res<()> {
        let lower = self.override_at(from, path);
        let carrier = self.upper_carrier(st.st_mode);
        let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        let perm = st.st_mode & 0o7777;
        match (lower, carrier) {
            (Some(o), Some(m)) => {
                // The real owner as far as the server may; the override
                // says what users see.
                match sys::chown_at(work, tmp, st.st_uid, st.st_gid) {
                    Ok(()) | Err(Errno::EPERM) | Err(Errno::EINVAL) => {}
                    Err(e) => return Err(e),
                }
                if !is_link {
                    sys::chmod_at(work, tmp, perm)?;
                }
                m.write(work, tmp, &o)
            }
            (Some(o), None) => {
                sys::chown_at(work, tmp, o.uid, o.gid)?;
                if !is_link {
                    sys::chmod_at(work, tmp, o.mode)?;
                }
                Ok(())
            }
            (None, _) => {
                // Owner first: a chown drops set-id bits, which the mode
                // then restores.
                self.own_new_entry(work, tmp, st.st_mode, st.st_uid, st.st_gid, perm)?;
                if !is_link {
                    sys::chmod_at(work, tmp, perm)?;
                }
                Ok(())
            }
        }
    }

    /// A chown or chmod of the upper entry `path` (stat `st`) written as
    /// its override, when the upper has a mode the entry can carry.
    /// Fields not changed come from the current override, else the real
    /// stat. Returns whether it was handled.
    pub(crate) fn set_override(
        &self,
        path: &RelPath,
        st: &libc::stat,
        uid: Option<u32>,
        gid: Option<u32>,
        mode: Option<u32>,
    ) -> Res<bool> {
        let upper = self.upper()?;
        let Some(m) = self.upper_carrier(st.st_mode) else {
            return Ok(false);
        };
        let mut v = self.override_at(upper, path).unwrap_or_else(|| real(st));
        if let Some(u) = uid {
            v.uid = u;
        }
        if let Some(g) = gid {
            v.gid = g;
        }
        if let Some(p) = mode {
            v.mode = p & 0o7777;
        }
        m.write(self.stack.fd(upper), path.c(), &v)?;
        Ok(true)
    }
}
