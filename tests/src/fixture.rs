//! The layer-stack builder: describe lower layers and an upper layer in a few
//! readable lines, then materialize them into fresh directories (one copy per
//! mount, so two mounts never share an upper or work directory).
//!
//! Lowers are added bottom first, as image layers stack:
//! `Layers::new().lower(base).lower(top).upper(u)` mounts as
//! `lowerdir=top:base,upperdir=u`.
//!
//! Every entry gets the fixed modification time [`FIXTURE_MTIME`] (unless the
//! layer sets another), so two materializations of one stack are identical
//! and a tree comparison can tell "kept from the layer" from "changed now".

use std::ffi::{CStr, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{mkfifo, Gid, Uid};
use strata_ovl::names;
use strata_ovl::Xattr;
use strata_ovl::XattrNs::{Trusted, User};

use crate::sys;

/// The modification time every fixture entry starts with (2017-07-14).
pub const FIXTURE_MTIME: i64 = 1_500_000_000;

/// How a layer marks a directory opaque (issue 3, item 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpaqueForm {
    /// `trusted.overlay.opaque=y`, the kernel's form.
    TrustedXattr,
    /// `user.overlay.opaque=y`, the kernel's `userxattr` form.
    UserXattr,
    /// `user.fuseoverlayfs.opaque=y`, fuse-overlayfs' unprivileged form.
    FuseOverlayXattr,
    /// A `.wh..wh..opq` file inside the directory (AUFS/OCI form).
    WhOpq,
}

#[derive(Debug, Clone)]
enum Step {
    File(PathBuf, Vec<u8>),
    Dir(PathBuf),
    Symlink(PathBuf, PathBuf),
    Whiteout(PathBuf),
    WhFile(PathBuf),
    XWhiteout(PathBuf),
    Opaque(PathBuf, OpaqueForm),
    Hardlink(PathBuf, PathBuf),
    Fifo(PathBuf),
    Socket(PathBuf),
    CharDev(PathBuf, u32, u32),
    Xattr(PathBuf, String, Vec<u8>),
    Mode(PathBuf, u32),
    Owner(PathBuf, u32, u32),
    Mtime(PathBuf, i64),
}

/// One layer directory's contents, as a list of steps applied in order.
/// Parent directories are created as needed (mode 0755, owner root).
#[derive(Debug, Clone, Default)]
pub struct Layer {
    steps: Vec<Step>,
}

fn p(path: impl AsRef<Path>) -> PathBuf {
    path.as_ref().to_path_buf()
}

impl Layer {
    /// A regular file (mode 0644) with these contents.
    pub fn file(mut self, path: impl AsRef<Path>, data: impl AsRef<[u8]>) -> Self {
        self.steps.push(Step::File(p(path), data.as_ref().to_vec()));
        self
    }
    /// A directory (mode 0755).
    pub fn dir(mut self, path: impl AsRef<Path>) -> Self {
        self.steps.push(Step::Dir(p(path)));
        self
    }
    /// A symlink at `path` pointing to `target`.
    pub fn symlink(mut self, path: impl AsRef<Path>, target: impl AsRef<Path>) -> Self {
        self.steps.push(Step::Symlink(p(path), p(target)));
        self
    }
    /// A whiteout in the kernel's form: a character device 0/0.
    pub fn whiteout(mut self, path: impl AsRef<Path>) -> Self {
        self.steps.push(Step::Whiteout(p(path)));
        self
    }
    /// A whiteout in the AUFS/OCI form: an empty `.wh.NAME` file, mode 000
    /// (as podman stores image layers). Materialized for the kernel as a
    /// device whiteout, which the kernel understands.
    pub fn wh_file(mut self, path: impl AsRef<Path>) -> Self {
        self.steps.push(Step::WhFile(p(path)));
        self
    }
    /// A whiteout in the kernel's xattr form (Linux 6.7+): an empty regular
    /// file with `trusted.overlay.whiteout`, its parent marked with
    /// `trusted.overlay.whiteouts` and `trusted.overlay.opaque=x`.
    /// Only honored in lower layers.
    pub fn xwhiteout(mut self, path: impl AsRef<Path>) -> Self {
        self.steps.push(Step::XWhiteout(p(path)));
        self
    }
    /// An opaque directory marked with `trusted.overlay.opaque=y` (created
    /// if absent).
    pub fn opaque(self, path: impl AsRef<Path>) -> Self {
        self.opaque_as(path, OpaqueForm::TrustedXattr)
    }
    /// An opaque directory marked with a `.wh..wh..opq` entry.
    pub fn opaque_wh(self, path: impl AsRef<Path>) -> Self {
        self.opaque_as(path, OpaqueForm::WhOpq)
    }
    /// An opaque directory marked in the given form. Materialized for the
    /// kernel as `trusted.overlay.opaque=y`.
    pub fn opaque_as(mut self, path: impl AsRef<Path>, form: OpaqueForm) -> Self {
        self.steps.push(Step::Opaque(p(path), form));
        self
    }
    /// A hard link `new` to the existing entry `existing` of this layer.
    pub fn hardlink(mut self, existing: impl AsRef<Path>, new: impl AsRef<Path>) -> Self {
        self.steps.push(Step::Hardlink(p(existing), p(new)));
        self
    }
    /// A fifo (mode 0644).
    pub fn fifo(mut self, path: impl AsRef<Path>) -> Self {
        self.steps.push(Step::Fifo(p(path)));
        self
    }
    /// A socket inode (mode 0755), as `bind(2)` of a unix socket leaves.
    pub fn socket(mut self, path: impl AsRef<Path>) -> Self {
        self.steps.push(Step::Socket(p(path)));
        self
    }
    /// A character device (mode 0644).
    pub fn chardev(mut self, path: impl AsRef<Path>, major: u32, minor: u32) -> Self {
        self.steps.push(Step::CharDev(p(path), major, minor));
        self
    }
    /// An extended attribute on an existing entry (not following symlinks).
    pub fn xattr(mut self, path: impl AsRef<Path>, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.steps.push(Step::Xattr(
            p(path),
            name.to_string(),
            value.as_ref().to_vec(),
        ));
        self
    }
    /// Permission bits (including setuid/setgid/sticky) of an existing entry.
    pub fn mode(mut self, path: impl AsRef<Path>, mode: u32) -> Self {
        self.steps.push(Step::Mode(p(path), mode));
        self
    }
    /// Owner of an existing entry (not following symlinks).
    pub fn owner(mut self, path: impl AsRef<Path>, uid: u32, gid: u32) -> Self {
        self.steps.push(Step::Owner(p(path), uid, gid));
        self
    }
    /// Modification (and access) time of an existing entry, instead of
    /// [`FIXTURE_MTIME`].
    pub fn mtime(mut self, path: impl AsRef<Path>, secs: i64) -> Self {
        self.steps.push(Step::Mtime(p(path), secs));
        self
    }

    /// Writes this layer into the empty directory `dir`. With `kernel_native`
    /// the forms only FUSE implementations read (`.wh.` files, user-namespace
    /// opaque markers, `.wh..wh..opq`) are written in the kernel's form, so a
    /// kernel overlay mount gives the semantics the layer describes.
    pub fn materialize(&self, dir: &Path, kernel_native: bool) {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod layer root");
        let mut mtimes: Vec<(PathBuf, i64)> = Vec::new();
        let w = Writes::for_dir(dir, kernel_native);
        for step in &self.steps {
            apply_step(dir, step, &w, &mut mtimes);
        }
        set_times(dir, FIXTURE_MTIME);
        for (path, secs) in mtimes {
            utimes(&path, secs);
        }
    }
}

/// What a materialization may write where it writes.
struct Writes {
    /// Forms a kernel overlay mount reads (see [`Layer::materialize`]).
    native: bool,
    /// The kernel's xattr namespace: `user.` in a user namespace (the
    /// kernel's overlayfs mounts there with `userxattr`).
    ns: strata_ovl::XattrNs,
    /// Not in a user namespace. In one, xattrs (`trusted.*`) and device
    /// nodes the kernel refuses (EPERM) are left out, on every side of a
    /// comparison alike, with a note on stderr.
    privileged: bool,
    /// The directory's filesystem takes 0/0 devices and overlay xattrs as
    /// plain files and attributes. A kernel overlayfs or FUSE overlay does
    /// not (a 0/0 device made through one is a whiteout of its own, its
    /// private xattrs are refused): there whiteouts are written as `.wh.`
    /// files and opaque directories with `.wh..wh..opq`.
    plain_fs: bool,
    /// The directory is on a strata-mount, which escapes overlay xattrs:
    /// whiteouts are written in the kernel's xattr form and opaque
    /// directories with the opaque xattr.
    xattr_forms: bool,
}

impl Writes {
    fn for_dir(dir: &Path, native: bool) -> Writes {
        let userns = crate::upperfs::in_userns();
        Writes {
            native,
            ns: if userns { User } else { Trusted },
            privileged: !userns,
            plain_fs: !crate::upperfs::is_overlay_fs(dir),
            xattr_forms: crate::upperfs::escapes_overlay_xattrs(dir),
        }
    }
}

fn skipped(what: &str, full: &Path) {
    eprintln!(
        "fixture: {what} {} left out (not possible in a user namespace)",
        full.display()
    );
}

fn parent_dirs(root: &Path, rel: &Path) -> PathBuf {
    let full = root.join(rel);
    if let Some(parent) = full.parent() {
        if !parent.exists() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
        }
    }
    full
}

fn with_name_prefix(path: &Path, prefix: &[u8]) -> PathBuf {
    let name = path.file_name().expect("a path with a file name");
    path.with_file_name(OsStr::from_bytes(&[prefix, name.as_bytes()].concat()))
}

fn make_dir(full: &Path) {
    if !full.is_dir() {
        fs::create_dir_all(full).unwrap_or_else(|e| panic!("mkdir {}: {e}", full.display()));
        fs::set_permissions(full, fs::Permissions::from_mode(0o755)).expect("chmod dir");
    }
}

/// A whiteout in the kernel's xattr form, as strata-mount writes it on an
/// upper that takes neither devices nor `.wh.` names: an empty file
/// carrying `overlay.whiteout`, in a directory marked `overlay.whiteouts`.
fn xwhiteout(full: &Path, ns: strata_ovl::XattrNs) {
    let parent = full.parent().expect("parent");
    setx(parent, Xattr::Whiteouts.name(ns), b"y");
    fs::write(full, b"").expect("write xwhiteout");
    setx(full, Xattr::Whiteout.name(ns), b"y");
}

fn whiteout_dev(full: &Path) {
    mknod(full, SFlag::S_IFCHR, Mode::empty(), 0)
        .unwrap_or_else(|e| panic!("mknod whiteout {}: {e}", full.display()));
}

fn setx(full: &Path, name: &CStr, value: &[u8]) {
    set_xattr(full, name.to_str().expect("an ASCII xattr name"), value)
}

fn set_xattr(full: &Path, name: &str, value: &[u8]) {
    sys::lsetxattr(full, name, value)
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", full.display()));
}

fn apply_step(root: &Path, step: &Step, w: &Writes, mtimes: &mut Vec<(PathBuf, i64)>) {
    let native = w.native && w.plain_fs;
    match step {
        Step::File(rel, data) => {
            let full = parent_dirs(root, rel);
            fs::write(&full, data).unwrap_or_else(|e| panic!("write {}: {e}", full.display()));
            fs::set_permissions(&full, fs::Permissions::from_mode(0o644)).expect("chmod file");
        }
        Step::Dir(rel) => {
            parent_dirs(root, rel);
            make_dir(&root.join(rel));
        }
        Step::Symlink(rel, target) => {
            let full = parent_dirs(root, rel);
            symlink(target, &full).unwrap_or_else(|e| panic!("symlink {}: {e}", full.display()));
        }
        Step::Whiteout(rel) | Step::WhFile(rel) => {
            let full = parent_dirs(root, rel);
            if native || (w.plain_fs && matches!(step, Step::Whiteout(_))) {
                whiteout_dev(&full);
            } else if w.xattr_forms {
                xwhiteout(&full, w.ns);
            } else {
                let wh = with_name_prefix(&full, names::WHITEOUT_PREFIX);
                fs::write(&wh, b"").expect("write .wh. file");
                fs::set_permissions(&wh, fs::Permissions::from_mode(0o000))
                    .expect("chmod .wh. file");
            }
        }
        Step::XWhiteout(rel) => {
            let full = parent_dirs(root, rel);
            fs::write(&full, b"").expect("write xwhiteout");
            fs::set_permissions(&full, fs::Permissions::from_mode(0o000)).expect("chmod xwhiteout");
            setx(&full, Xattr::Whiteout.name(w.ns), b"");
            let parent = full.parent().expect("parent");
            setx(parent, Xattr::Whiteouts.name(w.ns), b"");
            setx(parent, Xattr::Opaque.name(w.ns), b"x");
        }
        Step::Opaque(rel, form) => {
            let full = parent_dirs(root, rel);
            make_dir(&full);
            let form = match (w.plain_fs, w.xattr_forms) {
                (true, _) => *form,
                (false, true) => OpaqueForm::TrustedXattr,
                (false, false) => OpaqueForm::WhOpq,
            };
            match (native, form) {
                (true, _) => setx(&full, Xattr::Opaque.name(w.ns), b"y"),
                (false, OpaqueForm::TrustedXattr) => setx(&full, Xattr::Opaque.name(w.ns), b"y"),
                (false, OpaqueForm::UserXattr) => setx(&full, Xattr::Opaque.name(User), b"y"),
                (false, OpaqueForm::FuseOverlayXattr) => {
                    setx(&full, names::FUSE_OVERLAYFS_OPAQUE, b"y")
                }
                (false, OpaqueForm::WhOpq) => {
                    let m = full.join(OsStr::from_bytes(names::OPAQUE_MARKER));
                    fs::write(&m, b"").expect("write the opaque marker");
                    fs::set_permissions(&m, fs::Permissions::from_mode(0o000))
                        .expect("chmod the opaque marker");
                }
            }
        }
        Step::Hardlink(existing, new) => {
            let full = parent_dirs(root, new);
            fs::hard_link(root.join(existing), &full)
                .unwrap_or_else(|e| panic!("link {}: {e}", full.display()));
        }
        Step::Fifo(rel) => {
            let full = parent_dirs(root, rel);
            mkfifo(&full, Mode::from_bits_truncate(0o644)).expect("mkfifo");
            fs::set_permissions(&full, fs::Permissions::from_mode(0o644)).expect("chmod fifo");
        }
        Step::Socket(rel) => {
            let full = parent_dirs(root, rel);
            mknod(&full, SFlag::S_IFSOCK, Mode::from_bits_truncate(0o755), 0)
                .expect("mknod socket");
            fs::set_permissions(&full, fs::Permissions::from_mode(0o755)).expect("chmod socket");
        }
        Step::CharDev(rel, major, minor) => {
            let full = parent_dirs(root, rel);
            let dev = libc::makedev(*major, *minor);
            match mknod(&full, SFlag::S_IFCHR, Mode::from_bits_truncate(0o644), dev) {
                Err(Errno::EPERM) if !w.privileged => {
                    return skipped(&format!("device {major}/{minor}"), &full)
                }
                r => r.expect("mknod"),
            }
            fs::set_permissions(&full, fs::Permissions::from_mode(0o644)).expect("chmod dev");
        }
        Step::Xattr(rel, name, value) => {
            let full = root.join(rel);
            match sys::lsetxattr(&full, name, value) {
                Err(Errno::EPERM) if !w.privileged => skipped(&format!("xattr {name} of"), &full),
                r => r.unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", full.display())),
            }
        }
        Step::Mode(rel, mode) => {
            fs::set_permissions(root.join(rel), fs::Permissions::from_mode(*mode)).expect("chmod");
        }
        Step::Owner(rel, uid, gid) => {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &root.join(rel),
                Some(Uid::from_raw(*uid)),
                Some(Gid::from_raw(*gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .expect("lchown");
        }
        Step::Mtime(rel, secs) => mtimes.push((root.join(rel), *secs)),
    }
}

/// Sets atime and mtime of `path` (not following symlinks).
pub fn utimes(path: &Path, secs: i64) {
    let t = TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

/// Sets the times of everything under `dir`, children before parents.
fn set_times(dir: &Path, secs: i64) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        if entry.file_type().expect("file type").is_dir() {
            set_times(&path, secs);
        } else {
            utimes(&path, secs);
        }
    }
    utimes(dir, secs);
}

/// A stack of layers: lowers (bottom first), an optional upper, or none for
/// a read-only mount. Cheap to clone; materialized afresh for every mount.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    pub(crate) lowers: Vec<Layer>,
    pub(crate) upper: Layer,
    pub(crate) read_only: bool,
}

impl Layers {
    /// An empty stack (no lowers yet, an empty upper).
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a lower layer above those added before.
    pub fn lower(mut self, build: impl FnOnce(Layer) -> Layer) -> Self {
        self.lowers.push(build(Layer::default()));
        self
    }
    /// Adds `n` lower layers, bottom first; `build` gets the index (0 = bottom).
    pub fn lowers(mut self, n: usize, mut build: impl FnMut(usize, Layer) -> Layer) -> Self {
        for i in 0..n {
            self.lowers.push(build(i, Layer::default()));
        }
        self
    }
    /// Sets the upper layer's starting contents.
    pub fn upper(mut self, build: impl FnOnce(Layer) -> Layer) -> Self {
        self.upper = build(self.upper);
        self
    }
    /// No upper and no work directory: the mount is read-only.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }
    /// The same stack with the upper's whiteouts and opaque markers left
    /// out (its other entries kept).
    pub fn without_upper_markers(&self) -> Layers {
        let mut l = self.clone();
        l.upper.steps.retain(|s| {
            !matches!(
                s,
                Step::Whiteout(_) | Step::WhFile(_) | Step::XWhiteout(_) | Step::Opaque(..)
            )
        });
        l
    }
    /// The number of lower layers.
    pub fn lower_count(&self) -> usize {
        self.lowers.len()
    }
}

/// Materializes a single layer into a fresh temporary directory, for use as
/// an expected tree.
pub fn materialize_single(layer: &Layer) -> tempfile::TempDir {
    let dir = crate::mount::temp_root();
    layer.materialize(dir.path(), false);
    dir
}
