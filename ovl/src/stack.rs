//! A stack of layer directories read as one tree, as the kernel's
//! overlayfs reads it: the topmost layer holding a name wins, whiteouts
//! hide, opaque directories cut, and directories merge down the stack.
//!
//! Every path is resolved beneath each layer's directory fd (openat2 with
//! `RESOLVE_BENEATH`, no symlink followed): nothing a layer holds can make
//! the caller touch a host path. Symlinks of the tree are followed only by
//! [`Stack::resolve_in_root`], inside the merged tree, as a container sees
//! them.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

use crate::layer::{self, Entry};
use crate::path::RelPath;
use crate::sys;

/// Index of a layer in a [`Stack`], 0 being the topmost.
pub type LayerPos = usize;

/// Layer directories, topmost first, each open as a directory fd.
#[derive(Debug)]
pub struct Stack {
    layers: Vec<OwnedFd>,
}

/// An entry of the merged tree.
#[derive(Clone, Copy)]
pub struct Found {
    /// The layer whose entry wins.
    pub layer: LayerPos,
    /// Its `lstat`.
    pub stat: libc::stat,
}

impl std::fmt::Debug for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Found")
            .field("layer", &self.layer)
            .field("mode", &format_args!("{:o}", self.stat.st_mode))
            .finish()
    }
}

impl Found {
    /// Whether the entry is a directory.
    pub fn is_dir(&self) -> bool {
        self.stat.st_mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// Whether the entry is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.stat.st_mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// One name of a merged directory listing.
#[derive(Debug, Clone)]
pub struct MergedEntry {
    /// The name.
    pub name: Vec<u8>,
    /// Where it comes from.
    pub found: Found,
}

/// How many symlinks [`Stack::resolve_in_root`] follows, as the kernel.
const MAX_HOPS: usize = 40;

impl Stack {
    /// Opens the layer directories `dirs` (topmost first).
    pub fn open<P: AsRef<Path>>(dirs: &[P]) -> Result<Stack, Errno> {
        let layers = dirs
            .iter()
            .map(|d| {
                let c =
                    CString::new(d.as_ref().as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
                nix::fcntl::open(
                    c.as_c_str(),
                    nix::fcntl::OFlag::O_PATH
                        | nix::fcntl::OFlag::O_DIRECTORY
                        | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Stack { layers })
    }

    /// A stack of layer directory fds already open (topmost first).
    pub fn from_fds(layers: Vec<OwnedFd>) -> Stack {
        Stack { layers }
    }

    /// The number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the stack has no layer.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The directory fd of a layer.
    pub fn fd(&self, layer: LayerPos) -> BorrowedFd<'_> {
        self.layers[layer].as_fd()
    }

    /// The layers that hold the directory `path` in the merged tree
    /// (topmost first, cut after an opaque one), with the winning entry;
    /// `None` when `path` is absent, hidden, or not a directory.
    fn dir_layers(&self, path: &RelPath) -> Result<Option<(Found, Vec<LayerPos>)>, Errno> {
        let mut dirs: Vec<LayerPos> = (0..self.layers.len()).collect();
        let mut cur = RelPath::root();
        let mut found = match dirs.first() {
            Some(&l) => Found {
                layer: l,
                stat: sys::stat_at(self.fd(l), c".")?,
            },
            None => return Ok(None),
        };
        if path.is_root() {
            return Ok(Some((found, dirs)));
        }
        for name in path.bytes().split(|b| *b == b'/') {
            let Some((f, below)) = self.step(&dirs, &cur, name)? else {
                return Ok(None);
            };
            if f.stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Ok(None);
            }
            cur = cur.join(name);
            found = f;
            dirs = below;
        }
        Ok(Some((found, dirs)))
    }

    /// Looks `name` up in the directory `parent`, which the layers `dirs`
    /// hold: the winning entry and, when it is a directory, the layers that
    /// merge into it.
    fn step(
        &self,
        dirs: &[LayerPos],
        parent: &RelPath,
        name: &[u8],
    ) -> Result<Option<(Found, Vec<LayerPos>)>, Errno> {
        let path = parent.join(name);
        let mut found: Option<Found> = None;
        let mut below = Vec::new();
        for &l in dirs {
            let fd = self.fd(l);
            match sys::stat_at(fd, path.c()) {
                Ok(st) => {
                    if layer::is_whiteout(fd, &path, &st) {
                        break;
                    }
                    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                    match found {
                        None => found = Some(Found { layer: l, stat: st }),
                        Some(_) if !is_dir => break,
                        Some(_) => {}
                    }
                    if !is_dir {
                        break;
                    }
                    below.push(l);
                    if layer::is_opaque(fd, &path) {
                        break;
                    }
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            // `.wh.NAME` hides NAME in the layers below, not beside it.
            if layer::has_wh_file(fd, parent, name) {
                break;
            }
        }
        Ok(found.map(|f| (f, below)))
    }

    /// Looks `path` up in the merged tree, following no symlink: the entry
    /// that wins, or `None` when it is absent or hidden.
    pub fn lookup(&self, path: &RelPath) -> Result<Option<Found>, Errno> {
        if path.is_root() {
            return Ok(self.dir_layers(path)?.map(|(f, _)| f));
        }
        let (parent, name) = path.split();
        let Some((_, dirs)) = self.dir_layers(&parent)? else {
            return Ok(None);
        };
        Ok(self.step(&dirs, &parent, name)?.map(|(f, _)| f))
    }

    /// The merged listing of the directory `path`, sorted by name; `None`
    /// when it is absent, hidden or not a directory.
    pub fn read_dir(&self, path: &RelPath) -> Result<Option<Vec<MergedEntry>>, Errno> {
        let Some((_, dirs)) = self.dir_layers(path)? else {
            return Ok(None);
        };
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut out = Vec::new();
        for l in dirs {
            let fd = self.fd(l);
            let dfd = sys::open_beneath(fd, path.c(), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            let mut hides_below = Vec::new();
            for (name, _, _) in sys::read_dir_fd(dfd)? {
                let child = path.join(&name);
                let st = match sys::stat_at(fd, child.c()) {
                    Ok(st) => st,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(e),
                };
                match layer::classify(fd, path, &name, &st) {
                    Entry::Meta => {}
                    Entry::HidesBelow(t) => hides_below.push(t.to_vec()),
                    Entry::Whiteout => {
                        seen.insert(name);
                    }
                    Entry::Plain => {
                        if seen.insert(name.clone()) {
                            out.push(MergedEntry {
                                name,
                                found: Found { layer: l, stat: st },
                            });
                        }
                    }
                }
            }
            seen.extend(hides_below);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(out))
    }

    /// Resolves `path` (absolute or relative to the root; `.` and `..`
    /// allowed) in the merged tree the way a process chrooted into it
    /// would, following symlinks (absolute targets from the merged root,
    /// `..` never above it), and returns the path it names. The last
    /// component is followed only when `follow_last`. A missing component
    /// ends the following: the rest is taken as written.
    pub fn resolve_in_root(&self, path: &[u8], follow_last: bool) -> Result<RelPath, Errno> {
        let mut todo: Vec<Vec<u8>> = components(path).rev().collect();
        let mut done: Vec<Vec<u8>> = Vec::new();
        let mut hops = 0;
        while let Some(seg) = todo.pop() {
            match seg.as_slice() {
                b"." => continue,
                b".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            let cand = done
                .iter()
                .chain(std::iter::once(&seg))
                .fold(RelPath::root(), |p, n| p.join(n));
            let last = todo.is_empty();
            match self.lookup(&cand)? {
                Some(f) if f.is_symlink() && (follow_last || !last) => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(Errno::ELOOP);
                    }
                    let target = sys::readlink_at(self.fd(f.layer), cand.c())?;
                    if target.first() == Some(&b'/') {
                        done.clear();
                    }
                    todo.extend(components(&target).rev());
                }
                _ => done.push(seg),
            }
        }
        Ok(RelPath::from_bytes(&done.join(&b'/')))
    }

    /// Opens the entry `found` at `path` read-only (never a symlink's
    /// target), for reading a file's data.
    pub fn open_entry(&self, path: &RelPath, found: &Found, flags: i32) -> Result<OwnedFd, Errno> {
        sys::open_beneath(self.fd(found.layer), path.c(), flags, 0)
    }

    /// The whole content of the regular file at `path` in the merged tree,
    /// with the symlinks of its path followed inside the tree; `None` when
    /// it is absent or not a regular file.
    pub fn read_file(&self, path: &[u8]) -> Result<Option<Vec<u8>>, Errno> {
        use std::io::Read;
        let p = self.resolve_in_root(path, true)?;
        let Some(f) = self.lookup(&p)? else {
            return Ok(None);
        };
        if f.stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(None);
        }
        let fd = self.open_entry(&p, &f, libc::O_RDONLY)?;
        let mut out = Vec::new();
        std::fs::File::from(fd)
            .read_to_end(&mut out)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        Ok(Some(out))
    }
}

/// The non-empty components of a path.
fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = Vec<u8>> + '_ {
    path.split(|b| *b == b'/')
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// Layers `l0` (top) .. `lN` in a temp dir, made by `make`.
    fn layers(n: usize, make: impl Fn(&Path)) -> (tempfile::TempDir, Stack) {
        let t = tempfile::tempdir().unwrap();
        let dirs: Vec<_> = (0..n).map(|i| t.path().join(format!("l{i}"))).collect();
        for d in &dirs {
            fs::create_dir(d).unwrap();
        }
        make(t.path());
        let s = Stack::open(&dirs).unwrap();
        (t, s)
    }

    fn put(root: &Path, p: &str, data: &str) {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    fn names(s: &Stack, dir: &str) -> Vec<String> {
        s.read_dir(&RelPath::from_bytes(dir.as_bytes()))
            .unwrap()
            .unwrap_or_default()
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect()
    }

    fn layer_of(s: &Stack, p: &str) -> Option<LayerPos> {
        s.lookup(&RelPath::from_bytes(p.as_bytes()))
            .unwrap()
            .map(|f| f.layer)
    }

    #[test]
    fn the_top_layer_wins_and_directories_merge() {
        let (_t, s) = layers(2, |r| {
            put(r, "l0/d/a", "top");
            put(r, "l1/d/a", "bottom");
            put(r, "l1/d/b", "bottom");
        });
        assert_eq!(layer_of(&s, "d/a"), Some(0));
        assert_eq!(layer_of(&s, "d/b"), Some(1));
        assert_eq!(names(&s, "d"), ["a", "b"]);
        assert_eq!(s.read_file(b"/d/a").unwrap().unwrap(), b"top");
    }

    #[test]
    fn every_whiteout_form_hides() {
        let (_t, s) = layers(2, |r| {
            for n in ["dev", "wh", "keep"] {
                put(r, &format!("l1/d/{n}"), "x");
            }
            put(r, "l0/d/.wh.wh", "");
            nix::sys::stat::mknod(
                &r.join("l0/d/dev"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .unwrap();
        });
        assert_eq!(names(&s, "d"), ["keep"]);
        assert_eq!(layer_of(&s, "d/dev"), None);
        assert_eq!(layer_of(&s, "d/wh"), None);
        assert_eq!(
            layer_of(&s, "d/.wh.wh"),
            Some(0),
            "the marker itself is a file"
        );
    }

    #[test]
    fn a_wh_file_hides_below_not_beside() {
        let (_t, s) = layers(2, |r| {
            put(r, "l0/a", "beside");
            put(r, "l0/.wh.a", "");
            put(r, "l1/a", "below");
        });
        assert_eq!(layer_of(&s, "a"), Some(0));
        assert_eq!(names(&s, ""), ["a"]);
    }

    #[test]
    fn an_opaque_marker_cuts_the_directory() {
        let (_t, s) = layers(3, |r| {
            put(r, "l0/d/new", "n");
            put(r, "l1/d/.wh..wh..opq", "");
            put(r, "l1/d/mid", "m");
            put(r, "l2/d/old", "o");
        });
        assert_eq!(names(&s, "d"), ["mid", "new"]);
        assert_eq!(layer_of(&s, "d/old"), None);
    }

    #[test]
    fn a_file_over_a_directory_hides_it() {
        let (_t, s) = layers(2, |r| {
            put(r, "l0/d", "file");
            put(r, "l1/d/x", "x");
        });
        assert_eq!(layer_of(&s, "d/x"), None);
        assert!(s.read_dir(&RelPath::from_bytes(b"d")).unwrap().is_none());
    }

    #[test]
    fn symlinks_resolve_inside_the_merged_root() {
        let (t, s) = layers(2, |r| {
            put(r, "l1/usr/bin/tool", "t");
            symlink("usr/bin", r.join("l1/bin")).unwrap();
            symlink("/../../../etc", r.join("l0/esc")).unwrap();
            symlink("loop", r.join("l0/loop")).unwrap();
        });
        put(t.path(), "etc/passwd", "host");
        let r = |p: &str| s.resolve_in_root(p.as_bytes(), true).map(|p| p.to_string());
        assert_eq!(r("/bin/tool").unwrap(), "usr/bin/tool");
        assert_eq!(r("esc/passwd").unwrap(), "etc/passwd");
        assert_eq!(r("loop"), Err(Errno::ELOOP));
        assert_eq!(
            s.read_file(b"esc/passwd").unwrap(),
            None,
            "never the host's file"
        );
        assert_eq!(s.read_file(b"bin/tool").unwrap().unwrap(), b"t");
    }
}
