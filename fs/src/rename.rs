//! Rename across layers: plain, `RENAME_NOREPLACE` and `RENAME_EXCHANGE`,
//! files and directories.
//!
//! Both names are brought into the upper layer first. A directory that has
//! content in a lower layer is renamed by copying its whole merged tree up
//! and marking it opaque ("materialising" it), where the kernel's overlayfs
//! without `redirect_dir` fails with `EXDEV`. The upper layer stays portable:
//! any overlay reader sees the same tree, with no redirect to resolve. The
//! cost is a copy of the tree's data, once. The copy is built in the work
//! directory and moved into place by one rename, so a failure or a crash
//! at any step leaves the old tree (see [`Overlay::materialize_dir`]). The
//! old name gets a whiteout when
//! a lower layer still holds it (atomically, with `RENAME_WHITEOUT`, where
//! devices can be made).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use tracing::warn;

use crate::copyup::CopyData;
use crate::layers::{remove_tree, remove_tree_contents, LayerIdx};
use crate::lookup::{Resolved, NAME_MAX};
use crate::nodes::{Kind, Node};
use crate::overlay::{Overlay, Res};
use crate::path::RelPath;
use crate::sys::{self, Time};
use fuser::RenameFlags;
use strata_ovl::layer as whiteout;
use strata_ovl::names::is_reserved_name;
use strata_ovl::WhiteoutForm;

impl Overlay {
    /// Renames `name` in `parent` to `newname` in `newparent`, with
    /// `renameat2`'s `RENAME_NOREPLACE` or `RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        parent: &Node,
        name: &OsStr,
        newparent: &Node,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Res<()> {
        let upper = self.upper()?;
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        // RENAME_WHITEOUT is the kernel's overlayfs' own business, and
        // unknown bits are refused as renameat2 refuses them.
        let known = RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_NOREPLACE;
        if !known.contains(flags) || (exchange && noreplace) {
            return Err(Errno::EINVAL);
        }
        if name.len() > NAME_MAX || newname.len() > NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        if is_reserved_name(newname.as_bytes()) {
            return Err(Errno::EINVAL);
        }
        // A marked copy-up finds its data by its path: none may move.
        self.settle_copyups()?;
        self.ensure_upper(parent)?;
        self.ensure_upper(newparent)?;
        // No other request runs meanwhile: the FUSE dispatch holds
        // `Overlay::namespace` exclusively for renames.
        let (_g1, _g2) = if parent.id == newparent.id {
            (Some(parent.change.lock()), None)
        } else if parent.id < newparent.id {
            let a = parent.change.lock();
            (Some(a), Some(newparent.change.lock()))
        } else {
            let b = newparent.change.lock();
            (Some(b), Some(parent.change.lock()))
        };
        let p1 = self.nodes.path(parent)?;
        let p2 = self.nodes.path(newparent)?;
        let l1 = parent.state().layers;
        let l2 = newparent.state().layers;
        let src = self
            .resolve(&p1, &l1, name.as_bytes())?
            .ok_or(Errno::ENOENT)?;
        let dst = self.resolve(&p2, &l2, newname.as_bytes())?;
        if noreplace && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }
        if parent.id == newparent.id && name == newname {
            return Ok(());
        }
        let path1 = p1.join(name.as_bytes());
        let path2 = p2.join(newname.as_bytes());
        if !exchange {
            if let Some(d) = &dst {
                match (src.kind == Kind::Dir, d.kind == Kind::Dir) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    (true, true) if !self.dir_is_empty(&path2, &d.layers)? => {
                        return Err(Errno::ENOTEMPTY)
                    }
                    _ => {}
                }
            }
        }
        let ufd = self.stack.fd(upper);
        // Bring the moving entries up.
        self.bring_up(parent, name, &path1, &src)?;
        if exchange {
            self.bring_up(newparent, newname, &path2, dst.as_ref().expect("checked"))?;
        } else if let Some(d) = &dst {
            if d.kind == Kind::Dir && self.stack.is_upper(d.layers[0]) {
                // Merged-empty: only whiteouts left, which must go for the
                // real rename to replace it.
                let dfd = sys::open_beneath(ufd, path2.c(), libc::O_PATH | libc::O_DIRECTORY, 0)?;
                remove_tree_contents(std::os::fd::AsFd::as_fd(&dfd))?;
            }
        }
        // A directory landing on a name that lower layers hold must not merge
        // with them.
        if src.kind == Kind::Dir && self.exists_below(&p2, &l2, newname.as_bytes())? {
            whiteout::set_opaque(ufd, &path1, self.forms.opaque)?;
        }
        if exchange {
            let d = dst.as_ref().expect("checked");
            if d.kind == Kind::Dir && self.exists_below(&p1, &l1, name.as_bytes())? {
                whiteout::set_opaque(ufd, &path2, self.forms.opaque)?;
            }
            sys::rename_at2(ufd, path1.c(), ufd, path2.c(), libc::RENAME_EXCHANGE)?;
        } else {
            let needs_whiteout = self.exists_below(&p1, &l1, name.as_bytes())?;
            let is_dir = src.kind == Kind::Dir;
            self.move_upper_entry(&path1, &path2, is_dir, dst.is_none(), needs_whiteout)?;
        }
        // An entry numbered as its origin that lands in another directory
        // makes that one impure.
        if parent.id != newparent.id {
            self.mark_impure_for(&p2, &path2);
            if exchange {
                self.mark_impure_for(&p1, &path1);
            }
        }
        // The node table follows.
        if exchange {
            let a = parent.children().remove(name);
            let b = newparent.children().remove(newname);
            for (id, p, n) in [(a, newparent, newname), (b, parent, name)] {
                if let Some(id) = id {
                    if let Ok(node) = self.nodes.get(id) {
                        let mut s = node.state.write();
                        s.parent = p.id;
                        s.name = n.to_os_string();
                        drop(s);
                        p.children().insert(n.to_os_string(), id);
                    }
                }
            }
        } else {
            self.nodes.detach_child(newparent, newname);
            self.nodes.move_child(parent, name, newparent, newname);
        }
        Ok(())
    }

    /// Moves the upper entry `path1` to `path2` (where nothing is in view:
    /// `to_free`, or an entry it replaces), leaving a whiteout at `path1`
    /// when a lower layer holds that name (`needs_whiteout`). Either all of
    /// it happens or none: the old name is never shown from below.
    fn move_upper_entry(
        &self,
        path1: &RelPath,
        path2: &RelPath,
        is_dir: bool,
        to_free: bool,
        needs_whiteout: bool,
    ) -> Res<()> {
        let ufd = self.stack.fd(self.upper()?);
        let onto_whiteout = to_free
            && matches!(sys::stat_at(ufd, path2.c()), Ok(st) if whiteout::is_whiteout(ufd, path2, &st));
        let mut done = false;
        if is_dir && onto_whiteout {
            // The swap also leaves the whiteout the old name may need.
            whiteout::swap_dir_onto_whiteout(ufd, path1.c(), ufd, path2.c(), needs_whiteout)?;
            done = true;
        }
        if !done && needs_whiteout && self.forms.whiteout == WhiteoutForm::Device {
            let atomic = crate::faults::point("rename.rename_whiteout").and_then(|()| {
                sys::rename_at2(ufd, path1.c(), ufd, path2.c(), libc::RENAME_WHITEOUT)
            });
            match atomic {
                Ok(()) => done = true,
                Err(Errno::EINVAL) | Err(Errno::EPERM) | Err(Errno::EOPNOTSUPP) => {}
                Err(e) => return Err(e),
            }
        }
        if !done && needs_whiteout && self.forms.whiteout == WhiteoutForm::WhFile {
            // `.wh.OLD` beside the upper entry hides only the layers
            // below: the old name stays in view until the entry moves.
            self.make_whiteout(ufd, path1.c())?;
            let moved = crate::faults::point("rename.move")
                .and_then(|()| sys::rename_at2(ufd, path1.c(), ufd, path2.c(), 0));
            if let Err(e) = moved {
                let _ = whiteout::remove_wh_file(ufd, path1);
                return Err(e);
            }
            done = true;
        }
        if !done {
            sys::rename_at2(ufd, path1.c(), ufd, path2.c(), 0)?;
            if needs_whiteout {
                // The entry moved: without its whiteout the lower entry of
                // the old name would show again, so a failure here moves it
                // back.
                let hidden = crate::faults::point("rename.whiteout")
                    .and_then(|()| self.make_whiteout(ufd, path1.c()));
                if let Err(e) = hidden {
                    let _ = sys::rename_at2(ufd, path2.c(), ufd, path1.c(), 0);
                    return Err(e);
                }
            }
        }
        if self.forms.whiteout == WhiteoutForm::WhFile {
            whiteout::remove_wh_file(ufd, path2)?;
        }
        Ok(())
    }

    /// Makes the entry `path` (resolved as `r`, named `name` in `parent`)
    /// live entirely in the upper layer, and updates its live node.
    fn bring_up(&self, parent: &Node, name: &OsStr, path: &RelPath, r: &Resolved) -> Res<()> {
        let upper = self.upper()?;
        let child = self.nodes.child(parent, name);
        if r.kind == Kind::Dir {
            if r.layers.iter().all(|l| self.stack.is_upper(*l)) {
                return Ok(());
            }
            self.materialize_dir(path, &r.layers)?;
            if let Some(c) = &child {
                // No longer merged: directories stop reporting nlink 1, and
                // the kernel must not keep the attributes it cached.
                c.state.write().layers = smallvec::smallvec![upper];
                self.invalidate_attrs(c);
                for d in self.nodes.descendants(c) {
                    d.state.write().layers = smallvec::smallvec![upper];
                    self.invalidate_attrs(&d);
                }
            }
            return Ok(());
        }
        if self.stack.is_upper(r.layers[0]) {
            // A metacopy file finds its data by its path: it moves whole.
            if r.kind == Kind::File && r.layers.len() > 1 {
                self.copy_up_data_at(path, r.layers[1])?;
                if let Some(c) = &child {
                    c.state.write().layers = smallvec::smallvec![upper];
                }
            }
            return Ok(());
        }
        let ino = match &child {
            Some(c) => c.ino,
            None => self.ino_for(r.layers[0], path, &r.stat, r.kind, &r.layers),
        };
        self.copy_up_entry(r.layers[0], path, crate::copyup::CopyData::All, ino)?;
        if let Some(c) = &child {
            c.state.write().layers = smallvec::smallvec![upper];
        }
        Ok(())
    }

    /// Copies the merged directory tree at `path` (merged from `layers`)
    /// entirely into the upper layer, every directory of it opaque. The
    /// copy is built in the work directory (lower files copied, upper files
    /// hard-linked, directories made anew) and moved into place by one
    /// rename as the last step: over nothing, or exchanged with the upper
    /// directory it replaces, which is then removed. A failure at any step,
    /// or a crash, leaves the view and the upper layer as they were; what
    /// was built stays only in the work directory, emptied at the next
    /// mount. An upper directory that cannot be exchanged (no
    /// `RENAME_EXCHANGE`) is refused with `EXDEV`, as the kernel's overlayfs
    /// refuses it, and `mv` copies instead.
    pub fn materialize_dir(&self, path: &RelPath, layers: &[LayerIdx]) -> Res<()> {
        let ufd = self.stack.fd(self.upper()?);
        let work = self.stack.work().ok_or(Errno::EROFS)?;
        let tmp = crate::copyup::temp_name();
        let tmp_path = RelPath::from_bytes(tmp.to_bytes());
        let mut links = HashMap::new();
        let in_upper = sys::stat_at(ufd, path.c()).is_ok();
        let placed = self
            .build_tree(path, layers, &tmp_path, &mut links)
            .and_then(|()| crate::faults::point("materialize.place"))
            .and_then(|()| {
                if !in_upper {
                    return sys::rename_at2(work, &tmp, ufd, path.c(), libc::RENAME_NOREPLACE);
                }
                match sys::rename_at2(work, &tmp, ufd, path.c(), libc::RENAME_EXCHANGE) {
                    Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) | Err(Errno::ENOSYS) => {
                        Err(Errno::EXDEV)
                    }
                    r => r,
                }
            });
        if let Err(e) = placed {
            warn!(?e, %path, "copying a directory up for its rename failed");
            let _ = remove_tree(work, &tmp, true);
            return Err(e);
        }
        if in_upper {
            // The old upper directory, now under the temporary name: its
            // files are other names of the new tree's. Removing it can
            // wait for the next mount if it fails now.
            let cleared = crate::faults::point("materialize.clear")
                .and_then(|()| remove_tree(work, &tmp, true));
            if let Err(e) = cleared {
                warn!(?e, %path, "the replaced upper directory stays in the work directory until the next mount");
            }
        }
        // Lower hard links with names outside the tree: those names keep
        // sharing the file (a name that is not linked still shows the same
        // data, from below).
        for ((from, real_ino), (src, _)) in links {
            if let Err(e) = self.link_up_siblings(from, &src, real_ino) {
                warn!(?e, %src, "cannot link a hard link's other names to its copy");
            }
        }
        Ok(())
    }

    /// Builds the copy of the merged directory `src` (merged from `layers`)
    /// at `dst` in the work directory, for [`Overlay::materialize_dir`].
    /// `links` maps each multiply-linked lower file copied so far (layer,
    /// real inode) to its path in the view and in the copy, so its other
    /// names in the tree link to the one copy.
    fn build_tree(
        &self,
        src: &RelPath,
        layers: &[LayerIdx],
        dst: &RelPath,
        links: &mut HashMap<(LayerIdx, u64), (RelPath, RelPath)>,
    ) -> Res<()> {
        let upper = self.upper()?;
        let ufd = self.stack.fd(upper);
        let work = self.stack.work().ok_or(Errno::EROFS)?;
        let top = layers[0];
        let st = sys::stat_at(self.stack.fd(top), src.c())?;
        let ino = self.ino_for(top, src, &st, Kind::Dir, layers);
        // Not marked: the tree's files are synced before its one rename.
        self.build_copy(
            top,
            src,
            &st,
            Kind::Dir,
            work,
            dst.c(),
            CopyData::All,
            ino,
            false,
        )?;
        for (name, layer, _, kind) in self.merged_entries(src, layers)? {
            let (child, copy) = (src.join(&name), dst.join(&name));
            if kind == Kind::Dir {
                if let Some(r) = self.resolve(src, layers, &name)? {
                    self.build_tree(&child, &r.layers, &copy, links)?;
                }
            } else if self.stack.is_upper(layer) {
                // A metacopy file in a tree that becomes opaque: its data
                // comes up first, in place (the same file in view either
                // way), before the lower layers are cut off.
                if kind == Kind::File && self.is_metacopy_at(upper, &child) {
                    if let Some(r) = self.resolve(src, layers, &name)? {
                        if r.layers.len() > 1 {
                            self.copy_up_data_at(&child, r.layers[1])?;
                        }
                    }
                }
                crate::faults::point("materialize.link")?;
                sys::link_at(ufd, child.c(), work, copy.c())?;
            } else {
                let lst = sys::stat_at(self.stack.fd(layer), child.c())?;
                let shared = lst.st_nlink > 1;
                if let Some((_, first)) = links.get(&(layer, lst.st_ino)).filter(|_| shared) {
                    crate::faults::point("materialize.link")?;
                    sys::link_at(work, first.c(), work, copy.c())?;
                    continue;
                }
                crate::faults::point("materialize.copy_up")?;
                let ino = self.stack.ino(layer, lst.st_ino);
                self.build_copy(
                    layer,
                    &child,
                    &lst,
                    kind,
                    work,
                    copy.c(),
                    CopyData::All,
                    ino,
                    false,
                )?;
                if shared {
                    links.insert((layer, lst.st_ino), (child, copy));
                }
            }
        }
        // No longer merged, and full of copied-up entries.
        crate::faults::point("materialize.opaque")?;
        whiteout::set_opaque(work, dst, self.forms.opaque)?;
        if let Some(impure) = self.xattr(strata_ovl::Xattr::Impure) {
            let _ = sys::setxattr_at(work, dst.c(), impure, b"y", 0);
        }
        // Filling it was not a change users made: its times are the
        // original's.
        sys::utimens_at(
            work,
            dst.c(),
            Time::Set(st.st_atime, st.st_atime_nsec),
            Time::Set(st.st_mtime, st.st_mtime_nsec),
        )
    }
}
