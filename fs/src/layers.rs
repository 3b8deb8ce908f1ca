//! The stack of layers: one directory fd per layer, opened once at mount.
//!
//! Invariants: index 0 is the upper layer when there is one, then the lower
//! layers topmost first. Only the upper layer is ever written. Every path the
//! server touches is relative to one of these fds.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::sys;

/// Index of a layer in the [`Stack`] (0 is the upper layer when present).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LayerIdx(pub u16);

/// The layers an entry resolves to, top first: inline up to four (a file
/// has one, a metacopy file two), so most nodes need no allocation.
pub type Layers = smallvec::SmallVec<[LayerIdx; 4]>;

impl std::fmt::Display for LayerIdx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "layer {}", self.0)
    }
}

/// One layer directory.
#[derive(Debug)]
pub struct Layer {
    /// `O_PATH` fd of the layer's root directory.
    pub root: OwnedFd,
    /// The host path it was opened from (for messages only).
    pub path: PathBuf,
    /// Its filesystem's device number.
    pub dev: u64,
    /// The xino prefix of this layer's filesystem (see [`Stack::ino`]).
    pub fs_index: u64,
}

/// Errors opening the stack; each names the directory and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot open {kind} {path}: {err}")]
    Open {
        kind: &'static str,
        path: PathBuf,
        err: Errno,
    },
    #[error("{kind} {path} is not a directory")]
    NotDir { kind: &'static str, path: PathBuf },
    #[error("workdir {work} and upperdir {upper} are on different filesystems; put them on the same one")]
    WorkOnOtherFs { work: PathBuf, upper: PathBuf },
    #[error("cannot prepare workdir {path}: {err}")]
    Work { path: PathBuf, err: Errno },
    #[error("too many lower layers ({0}); at most 4096")]
    TooMany(usize),
}

/// The layers of one mount.
#[derive(Debug)]
pub struct Stack {
    layers: Vec<Layer>,
    has_upper: bool,
    /// `O_PATH` fd of `WORKDIR/work`, where copy-ups are assembled.
    work: Option<OwnedFd>,
    xino_bits: u32,
}

/// The directories of a mount, opened but not yet checked or prepared:
/// taken first so the upper and work directories can be locked through
/// them (`lock_layers` in `lib.rs`) before the work directory is
/// emptied.
///
/// Each is opened on a detached copy of its mount where the kernel allows
/// it ([`sys::clone_tree`], `CAP_SYS_ADMIN` over the mount namespace), as
/// the kernel's overlayfs holds its layers: the server's fds then never
/// keep the layers' own mounts busy, so `umount` of a lower (or upper)
/// filesystem succeeds right after the union's unmount returns, or while
/// it is mounted, instead of failing with `EBUSY` until the server has
/// exited. Elsewhere (rootless), the plain directory.
#[derive(Debug)]
pub struct Roots {
    upper: Option<(PathBuf, OwnedFd)>,
    /// `WORKDIR` itself (`WORKDIR/work` is made in [`Stack::from_roots`]).
    work: Option<(PathBuf, OwnedFd)>,
    lowers: Vec<(PathBuf, OwnedFd)>,
}

impl Roots {
    /// Opens the layer directories. `upper` and `work` go together.
    pub fn open(
        lowers: &[PathBuf],
        upper: Option<&Path>,
        work: Option<&Path>,
    ) -> Result<Roots, StackError> {
        if lowers.len() > 4096 {
            return Err(StackError::TooMany(lowers.len()));
        }
        let plain = |kind: &'static str, p: &Path| {
            sys::open_dir_path(p).map_err(|err| match err {
                Errno::ENOTDIR => StackError::NotDir {
                    kind,
                    path: p.to_path_buf(),
                },
                err if kind == "workdir" => StackError::Work {
                    path: p.to_path_buf(),
                    err,
                },
                err => StackError::Open {
                    kind,
                    path: p.to_path_buf(),
                    err,
                },
            })
        };
        let mut out = Roots {
            upper: None,
            work: None,
            lowers: Vec::new(),
        };
        for l in lowers {
            let fd = plain("lowerdir", l)?;
            let fd = on_clone(fd, sys::clone_tree(l, true));
            out.lowers.push((l.to_path_buf(), fd));
        }
        if let (Some(u), Some(w)) = (upper, work) {
            let (ufd, wfd) = (plain("upperdir", u)?, plain("workdir", w)?);
            let (ufd, wfd) = match clone_pair(u, &ufd, w, &wfd) {
                Some(pair) => pair,
                None => (ufd, wfd),
            };
            out.upper = Some((u.to_path_buf(), ufd));
            out.work = Some((w.to_path_buf(), wfd));
        } else if let Some(u) = upper {
            let fd = plain("upperdir", u)?;
            let fd = on_clone(fd, sys::clone_tree(u, false));
            out.upper = Some((u.to_path_buf(), fd));
        }
        Ok(out)
    }

    /// The upper directory, if any.
    pub fn upper(&self) -> Option<BorrowedFd<'_>> {
        self.upper.as_ref().map(|(_, fd)| fd.as_fd())
    }

    /// The work directory (`WORKDIR`), if any.
    pub fn work(&self) -> Option<BorrowedFd<'_>> {
        self.work.as_ref().map(|(_, fd)| fd.as_fd())
    }
}

/// The upper and work directories `u` and `w` (open as `ufd` and `wfd`)
/// opened again on one detached copy of the mount at their common
/// ancestor: renames between the two need one mount. The mounts below the
/// ancestor are not copied (the union's own mountpoint may be there), so
/// both must be on the ancestor's own mount. None where that cannot be.
fn clone_pair(u: &Path, ufd: &OwnedFd, w: &Path, wfd: &OwnedFd) -> Option<(OwnedFd, OwnedFd)> {
    let common: PathBuf = u
        .components()
        .zip(w.components())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    let dev = |f: BorrowedFd<'_>| sys::stat_at(f, c".").ok().map(|st| st.st_dev);
    let at = sys::open_dir_path(&common).ok()?;
    if dev(at.as_fd())? != dev(ufd.as_fd())? {
        // Above the upper's filesystem: a copy would not hold it.
        return None;
    }
    let clone = sys::clone_tree(&common, false).ok()?;
    let under = |p: &Path, plain: &OwnedFd| {
        let rel = p.strip_prefix(&common).ok()?;
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let r = sys::cstr(rel.as_os_str()).ok()?;
        let fd = sys::open_beneath(clone.as_fd(), &r, libc::O_PATH | libc::O_DIRECTORY, 0).ok()?;
        same_file(&fd, plain).then_some(fd)
    };
    Some((under(u, ufd)?, under(w, wfd)?))
}

/// Whether two fds are the same directory (device and inode).
fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    let id = |f: &OwnedFd| sys::stat_at(f.as_fd(), c".").map(|st| (st.st_dev, st.st_ino));
    matches!((id(a), id(b)), (Ok(x), Ok(y)) if x == y)
}

/// `cloned` (the same directory opened on a detached copy of its mount)
/// in place of `plain` where it was made and is the same directory; else
/// `plain`.
fn on_clone(plain: OwnedFd, cloned: Result<OwnedFd, Errno>) -> OwnedFd {
    match cloned {
        Ok(c) if same_file(&c, &plain) => c,
        _ => plain,
    }
}

impl Stack {
    /// Opens the layers. `upper` and `work` go together.
    pub fn open(
        lowers: &[PathBuf],
        upper: Option<&Path>,
        work: Option<&Path>,
    ) -> Result<Stack, StackError> {
        Stack::from_roots(Roots::open(lowers, upper, work)?)
    }

    /// The stack of the directories `roots`: checks that the work
    /// directory is on the upper's filesystem, makes `WORKDIR/work` and
    /// empties it of leftovers.
    pub fn from_roots(roots: Roots) -> Result<Stack, StackError> {
        let mut layers = Vec::new();
        let mut devs: Vec<u64> = Vec::new();
        let mut open =
            |kind: &'static str, (p, root): (PathBuf, OwnedFd)| -> Result<Layer, StackError> {
                let st = sys::stat_at(root.as_fd(), c".").map_err(|err| StackError::Open {
                    kind,
                    path: p.clone(),
                    err,
                })?;
                let dev = st.st_dev;
                let fs_index = match devs.iter().position(|d| *d == dev) {
                    Some(i) => i as u64,
                    None => {
                        devs.push(dev);
                        (devs.len() - 1) as u64
                    }
                };
                Ok(Layer {
                    root,
                    path: p,
                    dev,
                    fs_index,
                })
            };
        let Roots {
            upper,
            work,
            lowers,
        } = roots;
        let has_upper = upper.is_some();
        let upper_path = upper.as_ref().map(|(p, _)| p.clone());
        if let Some(u) = upper {
            layers.push(open("upperdir", u)?);
        }
        for l in lowers {
            layers.push(open("lowerdir", l)?);
        }
        let ndevs = devs.len();
        let work = match (upper_path, work) {
            (Some(u), Some((w, wfd))) => {
                let st = sys::stat_at(wfd.as_fd(), c".").map_err(|err| StackError::Work {
                    path: w.clone(),
                    err,
                })?;
                if st.st_dev != layers[0].dev {
                    return Err(StackError::WorkOnOtherFs { work: w, upper: u });
                }
                Some(prepare_work(wfd.as_fd()).map_err(|err| StackError::Work { path: w, err })?)
            }
            _ => None,
        };
        let xino_bits = if ndevs <= 1 {
            0
        } else {
            64 - (ndevs as u64).leading_zeros()
        };
        Ok(Stack {
            layers,
            has_upper,
            work,
            xino_bits,
        })
    }

    /// The upper layer's index, if the mount is writable.
    pub fn upper(&self) -> Option<LayerIdx> {
        self.has_upper.then_some(LayerIdx(0))
    }

    /// Whether `idx` is the upper layer.
    pub fn is_upper(&self, idx: LayerIdx) -> bool {
        self.has_upper && idx.0 == 0
    }

    /// All layers, top first.
    pub fn all(&self) -> impl Iterator<Item = LayerIdx> {
        (0..self.layers.len() as u16).map(LayerIdx)
    }

    /// Number of layers (upper included).
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there is no layer at all (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The root fd of a layer.
    pub fn fd(&self, idx: LayerIdx) -> BorrowedFd<'_> {
        self.layers[idx.0 as usize].root.as_fd()
    }

    /// A layer.
    pub fn layer(&self, idx: LayerIdx) -> &Layer {
        &self.layers[idx.0 as usize]
    }

    /// The work directory fd (`WORKDIR/work`); only with an upper layer.
    pub fn work(&self) -> Option<BorrowedFd<'_>> {
        self.work.as_ref().map(|w| w.as_fd())
    }

    /// The inode number users see for a real inode `ino` of layer `idx`.
    ///
    /// As the kernel's `xino`: when all layers share one filesystem the real
    /// number is used as is (it is unique across them); otherwise the top
    /// bits carry the index of the layer's filesystem.
    pub fn ino(&self, idx: LayerIdx, ino: u64) -> u64 {
        if self.xino_bits == 0 {
            return ino;
        }
        let l = &self.layers[idx.0 as usize];
        (ino & (u64::MAX >> self.xino_bits)) | (l.fs_index << (64 - self.xino_bits))
    }
}

/// Creates `WORKDIR/work` if needed and empties it of leftovers from an
/// earlier, interrupted mount (half-copied files never become visible: they
/// live only here until renamed into the upper layer).
fn prepare_work(workdir: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let name = c"work";
    match sys::mkdir_at(workdir, name, 0o700) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e),
    }
    let fd = sys::open_beneath(workdir, name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    remove_tree_contents(fd.as_fd())?;
    Ok(fd)
}

/// Removes everything inside the directory `dir` (not `dir` itself).
pub fn remove_tree_contents(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    let rd = sys::open_beneath(dir, c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for (name, _, dtype) in sys::read_dir_fd(rd)? {
        let c = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
        remove_tree(dir, &c, dtype == libc::DT_DIR)?;
    }
    Ok(())
}

/// Removes `name` beneath `dir`, recursively if it is a directory.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> Result<(), Errno> {
    if !is_dir {
        match sys::unlink_at(dir, name, false) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EISDIR) | Err(Errno::EPERM) => {}
            Err(e) => return Err(e),
        }
    }
    match sys::unlink_at(dir, name, true) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) => {}
        Err(Errno::ENOTDIR) => return sys::unlink_at(dir, name, false),
        Err(e) => return Err(e),
    }
    let sub = sys::open_beneath(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
    remove_tree_contents(sub.as_fd())?;
    sys::unlink_at(dir, name, true)
}
