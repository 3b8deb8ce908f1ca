//! Creating and removing names: create, mkdir, mknod, symlink, link, unlink,
//! rmdir, with whiteouts and opaque directories.
//!
//! A new entry is created straight in the upper layer, except over a
//! whiteout: then it is assembled in the work directory and renamed over the
//! whiteout in one step (a directory made there is marked opaque, so the
//! lower entries it replaces stay hidden). Removing an entry that also exists
//! below writes a whiteout; removing one that exists only in the upper layer
//! just removes it.

use std::ffi::{CStr, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::FileAttr;
use nix::errno::Errno;

use crate::copyup::temp_name;
use crate::layers::remove_tree;
use crate::lookup::NAME_MAX;
use crate::nodes::{Kind, Node, NodeState};
use crate::overlay::{Caller, Overlay, Res};
use crate::path::RelPath;
use crate::sys;
use strata_ovl::layer as whiteout;
use strata_ovl::names::is_reserved_name;
use strata_ovl::WhiteoutForm;

/// What to create.
#[derive(Debug, Clone)]
pub enum NewEntry<'a> {
    /// A regular file, opened with these flags (the fd is returned).
    File { flags: i32 },
    /// A directory.
    Dir,
    /// A device node, fifo or socket of type `file_type` (`S_IF*`).
    Node { rdev: u64, file_type: u32 },
    /// A symbolic link to this target.
    Symlink { target: &'a [u8] },
}

/// What the upper layer holds at a name that the merged view shows absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpperSlot {
    Empty,
    DeviceWhiteout,
    WhFileWhiteout,
}

impl Overlay {
    fn upper_slot(&self, ppath: &RelPath, name: &[u8]) -> Res<UpperSlot> {
        let upper = self.upper()?;
        let fd = self.stack.fd(upper);
        let path = ppath.join(name);
        match sys::stat_at(fd, path.c()) {
            Ok(st) if whiteout::is_whiteout(fd, &path, &st) => Ok(UpperSlot::DeviceWhiteout),
            Ok(_) => Err(Errno::EEXIST),
            Err(Errno::ENOENT) => {
                if whiteout::has_wh_file(fd, ppath, name) {
                    Ok(UpperSlot::WhFileWhiteout)
                } else {
                    Ok(UpperSlot::Empty)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The owner a new entry in the upper directory `ppath` gets, and
    /// whether it inherits the set-group-id bit (a directory in a setgid
    /// directory).
    fn new_owner(&self, ppath: &RelPath, caller: &Caller) -> Res<(u32, u32, bool)> {
        let upper = self.upper()?;
        let mut pst = sys::stat_at(self.stack.fd(upper), ppath.c())?;
        self.apply_override(upper, ppath, &mut pst);
        let uid = self.disk_uid(caller.uid);
        if pst.st_mode & libc::S_ISGID != 0 {
            Ok((uid, pst.st_gid, true))
        } else {
            Ok((uid, self.disk_gid(caller.gid), false))
        }
    }

    /// Creates `name` in `parent`; returns the new node, its attributes and,
    /// for a file, the open fd.
    pub fn create_entry(
        &self,
        parent: &Node,
        name: &OsStr,
        mode: u32,
        entry: NewEntry<'_>,
        caller: &Caller,
    ) -> Res<(Arc<Node>, FileAttr, Option<OwnedFd>)> {
        let upper = self.upper()?;
        if name.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        // A character device 0/0 is a whiteout: made through the mount it
        // would hide the lower entry of its name after a remount. Refused
        // before anything is copied up, as the kernel's overlayfs does.
        if let NewEntry::Node { rdev: 0, file_type } = entry {
            if file_type == libc::S_IFCHR {
                return Err(Errno::EPERM);
            }
        }
        if is_reserved_name(name.as_bytes()) {
            return Err(Errno::EINVAL);
        }
        let pst = parent.state();
        if pst.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let ppath = self.nodes.path(parent)?;
        self.ensure_upper(parent)?;
        let _guard = parent.change.lock();
        // The upper layer answers for itself (a real entry there is
        // EEXIST); below an empty upper slot the lower layers may still
        // hold the name (a whiteout slot hides them).
        let slot = self.upper_slot(&ppath, name.as_bytes())?;
        if slot == UpperSlot::Empty
            && self.exists_below(&ppath, &parent.state().layers, name.as_bytes())?
        {
            return Err(Errno::EEXIST);
        }
        let (uid, gid, inherit_sgid) = self.new_owner(&ppath, caller)?;
        let mut perm = mode & 0o7777;
        if inherit_sgid && matches!(entry, NewEntry::Dir) {
            perm |= libc::S_ISGID;
        }
        let ufd = self.stack.fd(upper);
        let path = ppath.join(name.as_bytes());
        let (dir_fd, at): (std::os::fd::BorrowedFd<'_>, std::ffi::CString) = match slot {
            UpperSlot::Empty => (ufd, path.c().to_owned()),
            _ => (self.stack.work().ok_or(Errno::EROFS)?, temp_name()),
        };
        let fd = make_entry(dir_fd, &at, perm, &entry)?;
        let finish = || -> Res<()> {
            let st_mode = match entry {
                NewEntry::Dir => libc::S_IFDIR,
                NewEntry::Symlink { .. } => libc::S_IFLNK,
                NewEntry::Node { file_type, .. } => file_type,
                NewEntry::File { .. } => libc::S_IFREG,
            };
            self.own_new_entry(dir_fd, &at, st_mode, uid, gid, perm)?;
            if !matches!(entry, NewEntry::Symlink { .. }) && (perm & 0o7000 != 0) {
                sys::chmod_at(dir_fd, &at, perm)?;
            }
            if slot != UpperSlot::Empty {
                if matches!(entry, NewEntry::Dir) {
                    whiteout::set_opaque(
                        dir_fd,
                        &RelPath::from_bytes(at.to_bytes()),
                        self.forms.opaque,
                    )?;
                }
                match slot {
                    UpperSlot::DeviceWhiteout if matches!(entry, NewEntry::Dir) => {
                        whiteout::swap_dir_onto_whiteout(dir_fd, &at, ufd, path.c(), false)?
                    }
                    UpperSlot::DeviceWhiteout => sys::rename_at2(dir_fd, &at, ufd, path.c(), 0)?,
                    _ => {
                        sys::rename_at2(dir_fd, &at, ufd, path.c(), libc::RENAME_NOREPLACE)?;
                        whiteout::remove_wh_file(ufd, &path)?;
                    }
                }
            }
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = remove_tree(dir_fd, &at, matches!(entry, NewEntry::Dir));
            return Err(e);
        }
        let st = sys::stat_at(ufd, path.c())?;
        let kind = Kind::from_mode(st.st_mode);
        let ino = self.stack.ino(upper, st.st_ino);
        let state = NodeState {
            parent: parent.id,
            name: name.to_os_string(),
            kind,
            layers: smallvec::smallvec![upper],
            unlinked: false,
        };
        let node = self.nodes.lookup_child(parent, name, state, ino);
        self.check_node_limit();
        let attr = self.attr_from_stat(&node, &st);
        Ok((node, attr, fd))
    }

    /// Creates an unnamed regular file in `parent` (`O_TMPFILE`) and returns
    /// its node (which has no name until linked), attributes and open fd.
    pub fn create_tmpfile(
        &self,
        parent: &Node,
        mode: u32,
        flags: i32,
        caller: &Caller,
    ) -> Res<(Arc<Node>, FileAttr, OwnedFd)> {
        let upper = self.upper()?;
        if parent.kind() != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        self.ensure_upper(parent)?;
        let ppath = self.nodes.path(parent)?;
        let (uid, gid, _) = self.new_owner(&ppath, caller)?;
        let perm = mode & 0o7777;
        let keep = flags
            & (libc::O_ACCMODE
                | libc::O_APPEND
                | libc::O_SYNC
                | libc::O_DSYNC
                | libc::O_NOATIME
                | libc::O_EXCL);
        let fd = sys::open_beneath(
            self.stack.fd(upper),
            ppath.c(),
            libc::O_TMPFILE | keep,
            perm,
        )?;
        sys::fchown(std::os::fd::AsFd::as_fd(&fd), uid, gid)?;
        if perm & 0o7000 != 0 {
            sys::fchmod(std::os::fd::AsFd::as_fd(&fd), perm)?;
        }
        let st = sys::fstat(std::os::fd::AsFd::as_fd(&fd))?;
        let state = NodeState {
            parent: crate::nodes::NodeId::NONE,
            name: Default::default(),
            kind: Kind::File,
            layers: smallvec::smallvec![upper],
            unlinked: true,
        };
        let node = self
            .nodes
            .insert_detached(state, self.stack.ino(upper, st.st_ino));
        self.check_node_limit();
        let attr = self.attr_from_stat(&node, &st);
        Ok((node, attr, fd))
    }

    /// Makes a hard link `newname` in `newparent` to `node`.
    pub fn link(
        &self,
        node: &Node,
        newparent: &Node,
        newname: &OsStr,
    ) -> Res<(Arc<Node>, FileAttr)> {
        let upper = self.upper()?;
        if node.kind() == Kind::Dir {
            return Err(Errno::EPERM);
        }
        if newname.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if is_reserved_name(newname.as_bytes()) {
            return Err(Errno::EINVAL);
        }
        // A marked copy-up finds its data by its path: no second name.
        self.settle_copyups()?;
        let pst = newparent.state();
        let ppath = self.nodes.path(newparent)?;
        if self
            .resolve(&ppath, &pst.layers, newname.as_bytes())?
            .is_some()
        {
            return Err(Errno::EEXIST);
        }
        // An unnamed file (O_TMPFILE, or open and unlinked) is linked
        // through its open fd, and the node gets the new name.
        let unnamed = node.state.read().unlinked;
        if !unnamed {
            self.ensure_upper(node)?;
        }
        self.ensure_upper(newparent)?;
        let _guard = newparent.change.lock();
        let ufd = self.stack.fd(upper);
        let new = ppath.join(newname.as_bytes());
        let link_to = |dir: std::os::fd::BorrowedFd<'_>, at: &std::ffi::CStr| -> Res<()> {
            if unnamed {
                let fd = node.io().any_fd.clone().ok_or(Errno::ENOENT)?;
                sys::link_fd(std::os::fd::AsFd::as_fd(&*fd), dir, at)
            } else {
                let old = self.nodes.path(node)?;
                sys::link_at(ufd, old.c(), dir, at)
            }
        };
        match self.upper_slot(&ppath, newname.as_bytes())? {
            UpperSlot::Empty => link_to(ufd, new.c())?,
            slot => {
                let work = self.stack.work().ok_or(Errno::EROFS)?;
                let tmp = temp_name();
                link_to(work, &tmp)?;
                let flags = if slot == UpperSlot::DeviceWhiteout {
                    0
                } else {
                    libc::RENAME_NOREPLACE
                };
                if let Err(e) = sys::rename_at2(work, &tmp, ufd, new.c(), flags) {
                    let _ = sys::unlink_at(work, &tmp, false);
                    return Err(e);
                }
                whiteout::remove_wh_file(ufd, &new)?;
            }
        }
        self.mark_impure_for(&ppath, &new);
        let st = sys::stat_at(ufd, new.c())?;
        if unnamed {
            let n = self.nodes.attach(node, newparent, newname);
            let attr = self.attr_from_stat(&n, &st);
            return Ok((n, attr));
        }
        let state = NodeState {
            parent: newparent.id,
            name: newname.to_os_string(),
            kind: Kind::from_mode(st.st_mode),
            layers: smallvec::smallvec![upper],
            unlinked: false,
        };
        let n = self.nodes.lookup_child(newparent, newname, state, node.ino);
        self.check_node_limit();
        // The old name's node is another FUSE inode: its link count and
        // ctime just changed.
        self.invalidate_attrs(node);
        let attr = self.attr_from_stat(&n, &st);
        Ok((n, attr))
    }

    /// `unlink`: removes the non-directory `name` from `parent` (a whiteout
    /// when a lower layer has it); `EISDIR` for a directory.
    pub fn unlink(&self, parent: &Node, name: &OsStr) -> Res<()> {
        self.remove(parent, name, Removing::NonDir)
    }

    /// `rmdir`: removes the empty directory `name` from `parent` (a
    /// whiteout when a lower layer has it); `ENOTDIR`, `ENOTEMPTY`.
    pub fn rmdir(&self, parent: &Node, name: &OsStr) -> Res<()> {
        self.remove(parent, name, Removing::Dir)
    }

    fn remove(&self, parent: &Node, name: &OsStr, what: Removing) -> Res<()> {
        let dir = what == Removing::Dir;
        let upper = self.upper()?;
        let pst = parent.state();
        let ppath = self.nodes.path(parent)?;
        let r = self
            .resolve(&ppath, &pst.layers, name.as_bytes())?
            .ok_or(Errno::ENOENT)?;
        if dir && r.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        if !dir && r.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        let path = ppath.join(name.as_bytes());
        if dir && !self.dir_is_empty(&path, &r.layers)? {
            return Err(Errno::ENOTEMPTY);
        }
        self.ensure_upper(parent)?;
        let _guard = parent.change.lock();
        let pst = parent.state();
        let in_upper = self.stack.is_upper(r.layers[0]);
        // A name whose top entry is in a lower layer obviously exists below.
        let below = !in_upper || self.exists_below(&ppath, &pst.layers, name.as_bytes())?;
        let ufd = self.stack.fd(upper);
        match (in_upper, below) {
            (true, false) => remove_tree(ufd, path.c(), dir)?,
            (true, true) => self.replace_with_whiteout(&path, dir)?,
            (false, _) => self.make_whiteout(ufd, path.c())?,
        }
        self.nodes.detach_child(parent, name);
        Ok(())
    }

    /// Replaces the upper entry at `path` with a whiteout, atomically where
    /// the device form can be used.
    pub(crate) fn replace_with_whiteout(&self, path: &RelPath, dir: bool) -> Res<()> {
        let upper = self.upper()?;
        let ufd = self.stack.fd(upper);
        match self.forms.whiteout {
            WhiteoutForm::Device | WhiteoutForm::Xattr(_) => {
                if let WhiteoutForm::Xattr(ns) = self.forms.whiteout {
                    whiteout::mark_xattr_whiteouts(ufd, &path.split().0, ns)?;
                }
                let work = self.stack.work().ok_or(Errno::EROFS)?;
                let tmp = temp_name();
                self.make_whiteout(work, &tmp)?;
                if dir {
                    if let Err(e) = crate::faults::point("unlink.exchange").and_then(|()| {
                        sys::rename_at2(work, &tmp, ufd, path.c(), libc::RENAME_EXCHANGE)
                    }) {
                        let _ = sys::unlink_at(work, &tmp, false);
                        return Err(e);
                    }
                    remove_tree(work, &tmp, true)?;
                } else if let Err(e) = crate::faults::point("unlink.exchange")
                    .and_then(|()| sys::rename_at2(work, &tmp, ufd, path.c(), 0))
                {
                    let _ = sys::unlink_at(work, &tmp, false);
                    return Err(e);
                }
                Ok(())
            }
            WhiteoutForm::WhFile => {
                // `.wh.NAME` first: beside the upper entry it hides only
                // the layers below, so nothing changes in view until the
                // entry goes; if that fails, the whiteout goes again.
                whiteout::make_whiteout(ufd, path, WhiteoutForm::WhFile)?;
                let removed = crate::faults::point("unlink.remove_upper")
                    .and_then(|()| remove_tree(ufd, path.c(), dir));
                if let Err(e) = removed {
                    let _ = whiteout::remove_wh_file(ufd, path);
                    return Err(e);
                }
                Ok(())
            }
        }
    }
}

/// What `unlink` and `rmdir` remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removing {
    NonDir,
    Dir,
}

/// Creates the object itself at `dir/at`, with permissions `perm`.
fn make_entry(
    dir: std::os::fd::BorrowedFd<'_>,
    at: &CStr,
    perm: u32,
    entry: &NewEntry<'_>,
) -> Res<Option<OwnedFd>> {
    match entry {
        NewEntry::File { flags } => {
            let keep = flags
                & (libc::O_ACCMODE
                    | libc::O_APPEND
                    | libc::O_SYNC
                    | libc::O_DSYNC
                    | libc::O_NOATIME);
            let fd = sys::open_beneath(dir, at, keep | libc::O_CREAT | libc::O_EXCL, perm)?;
            Ok(Some(fd))
        }
        NewEntry::Dir => {
            sys::mkdir_at(dir, at, perm)?;
            Ok(None)
        }
        NewEntry::Node { rdev, file_type } => {
            sys::mknod_at(dir, at, file_type | perm, *rdev)?;
            Ok(None)
        }
        NewEntry::Symlink { target } => {
            let t = std::ffi::CString::new(target.to_vec()).map_err(|_| Errno::EINVAL)?;
            sys::symlink_at(&t, dir, at)?;
            Ok(None)
        }
    }
}
