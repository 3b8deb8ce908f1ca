//! Paths inside a container's or an image's tree, resolved by the kernel
//! beneath that tree's root (`openat2` with `RESOLVE_IN_ROOT`): a symlink
//! in the tree, absolute or with `..`, resolves inside it, as it would for
//! the container's own processes, and never reaches a host path. The host
//! side of strata (`cp`, the init layer, volume targets, build's COPY and
//! `--chown`) goes through here instead of joining strings onto host
//! paths.
//!
//! [`Root::open_beneath`] is the stricter form for a build context: a path
//! whose resolution would leave the root fails (`EXDEV`) instead of being
//! clamped to it.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// A directory tree whose paths resolve beneath it.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// `rel` without its leading slashes (`.` for the root itself).
fn relative(rel: &Path) -> &Path {
    let b = rel.as_os_str().as_bytes();
    let start = b.iter().position(|c| *c != b'/').unwrap_or(b.len());
    let r = Path::new(OsStr::from_bytes(&b[start..]));
    if r.as_os_str().is_empty() {
        Path::new(".")
    } else {
        r
    }
}

impl Root {
    /// Opens the tree at `path` (a host path the caller trusts).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The host path the tree was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn open_how(
        &self,
        dir: BorrowedFd<'_>,
        rel: &Path,
        flags: OFlag,
        mode: u32,
        resolve: ResolveFlag,
    ) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(resolve | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        loop {
            match nix::fcntl::openat2(dir, relative(rel), how) {
                // The kernel asks to retry when a rename raced the walk.
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
                r => return r.map_err(io_err),
            }
        }
    }

    /// Opens `rel` as the tree's own processes would see it: symlinks
    /// (absolute ones and `..` too) resolve inside the tree.
    pub fn open_at(&self, rel: &Path, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        self.open_how(
            self.fd.as_fd(),
            rel,
            flags,
            mode,
            ResolveFlag::RESOLVE_IN_ROOT,
        )
    }

    /// Opens `rel`, failing (`EXDEV`) when its resolution would leave the
    /// tree (a build context's symlink to `/etc` or `../x`).
    pub fn open_beneath(&self, rel: &Path, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        self.open_how(
            self.fd.as_fd(),
            rel,
            flags,
            mode,
            ResolveFlag::RESOLVE_BENEATH,
        )
    }

    /// Reads the file `rel` resolved in the tree.
    pub fn read(&self, rel: &Path) -> io::Result<Vec<u8>> {
        let fd = self.open_at(rel, OFlag::O_RDONLY, 0)?;
        let mut v = Vec::new();
        io::Read::read_to_end(&mut File::from(fd), &mut v)?;
        Ok(v)
    }

    /// The parent directory of `rel` (resolved in the tree) and its last
    /// component; `None` for the root itself.
    pub fn parent_of(&self, rel: &Path) -> io::Result<Option<(OwnedFd, PathBuf)>> {
        let rel = relative(rel);
        let Some(name) = rel.file_name() else {
            return Ok(None);
        };
        let parent = rel.parent().unwrap_or(Path::new("."));
        let dir = self.open_at(parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
        Ok(Some((dir, PathBuf::from(name))))
    }

    /// Makes the directories of `rel` that are missing (mode `mode`, owner
    /// the caller), each resolved in the tree; returns the last one.
    pub fn mkdir_all(&self, rel: &Path, mode: u32) -> io::Result<OwnedFd> {
        let mut dir = self.open_at(Path::new("."), OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
        let mut walked = PathBuf::from("/");
        for c in relative(rel).components() {
            let name = match c {
                std::path::Component::Normal(n) => n,
                std::path::Component::ParentDir => {
                    walked.pop();
                    dir = self.open_at(&walked, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
                    continue;
                }
                _ => continue,
            };
            walked.push(name);
            match nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(mode)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io_err(e)),
            }
            // A symlink just named resolves in the tree, like the rest.
            dir = self.open_at(&walked, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
        }
        Ok(dir)
    }

    /// The path of `fd` under `/proc/self/fd`, for calls that take a path
    /// (the kernel resolves it to the opened file, not by name).
    pub fn proc_path(fd: &impl AsRawFd) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }
}

/// Opens `rel` in `dir` without following a symlink in its last component
/// (`O_NOFOLLOW`); `rel` must be one name.
pub fn open_in(dir: BorrowedFd<'_>, name: &Path, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )
    .map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host-secret");
        std::fs::write(&host, "host").unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/shadow"), "ctr").unwrap();
        symlink(&host, root.join("abs")).unwrap();
        symlink("/etc/shadow", root.join("shadow")).unwrap();
        symlink("../../../../host-secret", root.join("up")).unwrap();
        let r = Root::open(&root).unwrap();
        assert_eq!(r.read(Path::new("/shadow")).unwrap(), b"ctr");
        // An absolute link to a host path names a path in the root.
        assert!(r.read(Path::new("abs")).is_err());
        assert!(r.read(Path::new("up")).is_err());
        assert!(r.open_beneath(Path::new("up"), OFlag::O_RDONLY, 0).is_err());
        let d = r.mkdir_all(Path::new("/a/b"), 0o755).unwrap();
        drop(d);
        assert!(root.join("a/b").is_dir());
        // A dir link to the host's /: mkdir lands in the root.
        symlink(t.path(), root.join("out")).unwrap();
        let _ = r.mkdir_all(Path::new("out/made"), 0o755);
        assert!(!t.path().join("made").exists());
    }
}
