//! Changing attributes: truncate, chown, chmod, utimes — each copies a lower
//! entry up first (a truncate to zero copies no data). In an upper with an
//! owner override mode, chown and chmod write the override instead of
//! changing the inode (see `ownership.rs`).

use std::os::fd::AsFd;

use fuser::FileAttr;
use nix::errno::Errno;

use crate::copyup::CopyData;
use crate::nodes::{Kind, Node};
use crate::overlay::{Overlay, Res};
use crate::sys::{self, Time};

/// The attribute changes of one SETATTR request.
#[derive(Debug, Default, Clone, Copy)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    /// The open file the change came through (ftruncate).
    pub fh: Option<u64>,
}

impl Overlay {
    /// Applies `ch` to `node` and returns its new attributes.
    pub fn setattr(&self, node: &Node, ch: AttrChange) -> Res<FileAttr> {
        let upper = self.upper()?;
        let data = match ch.size {
            Some(0) => CopyData::None,
            Some(_) => CopyData::All,
            None => CopyData::Meta,
        };
        self.ensure_upper_with(node, data)?;
        if ch.size.is_some() {
            // New data must not land in a copy-up still marked unsynced.
            self.settle_copyup(node)?;
        }
        let ufd = self.stack.fd(upper);
        let unlinked = node.state.read().unlinked;
        if let Some(size) = ch.size {
            if node.kind() == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            let via_fh = ch.fh.and_then(|fh| self.file_fd(fh).ok());
            match via_fh {
                Some(fd) => sys::ftruncate(fd.as_fd(), size)?,
                None => {
                    let path = self.nodes.path(node)?;
                    let fd = sys::open_beneath(ufd, path.c(), libc::O_WRONLY, 0)?;
                    sys::ftruncate(fd.as_fd(), size)?;
                }
            }
        }
        if unlinked {
            // Only an open fd reaches an unlinked file.
            let fd = node.io().any_fd.clone().ok_or(Errno::ENOENT)?;
            if ch.uid.is_some() || ch.gid.is_some() {
                let uid = ch.uid.map(|u| self.disk_uid(u)).unwrap_or(u32::MAX);
                let gid = ch.gid.map(|g| self.disk_gid(g)).unwrap_or(u32::MAX);
                sys::fchown(fd.as_fd(), uid, gid)?;
            }
            if let Some(mode) = ch.mode {
                sys::fchmod(fd.as_fd(), mode & 0o7777)?;
            }
            if ch.atime.is_some() || ch.mtime.is_some() {
                sys::futimens(
                    fd.as_fd(),
                    ch.atime.unwrap_or(Time::Omit),
                    ch.mtime.unwrap_or(Time::Omit),
                )?;
            }
            return self.getattr(node);
        }
        let path = self.nodes.path(node)?;
        let mode = ch.mode.filter(|_| node.kind() != Kind::Symlink);
        let owner = ch.uid.is_some() || ch.gid.is_some();
        // An upper with an owner override mode keeps owner and mode in
        // the override (see ownership.rs).
        let overridden = (owner || mode.is_some())
            && self.override_mode(upper).is_some()
            && self.set_override(
                &path,
                &sys::stat_at(ufd, path.c())?,
                ch.uid.map(|u| self.disk_uid(u)),
                ch.gid.map(|g| self.disk_gid(g)),
                mode,
            )?;
        if owner && !overridden {
            let uid = ch.uid.map(|u| self.disk_uid(u)).unwrap_or(u32::MAX);
            let gid = ch.gid.map(|g| self.disk_gid(g)).unwrap_or(u32::MAX);
            sys::chown_at(ufd, path.c(), uid, gid)?;
        }
        if let Some(mode) = mode.filter(|_| !overridden) {
            sys::chmod_at(ufd, path.c(), mode & 0o7777)?;
        }
        if ch.atime.is_some() || ch.mtime.is_some() {
            sys::utimens_at(
                ufd,
                path.c(),
                ch.atime.unwrap_or(Time::Omit),
                ch.mtime.unwrap_or(Time::Omit),
            )?;
        }
        self.getattr(node)
    }
}
