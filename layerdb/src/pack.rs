//! Directory tree → tar stream: commit (an upper directory becomes a layer
//! tar) and export (any tree becomes one flat tar).
//!
//! The walk goes through directory fds (`openat` with `O_NOFOLLOW`), names
//! sorted bytewise, so the same tree always gives the same stream. Owners,
//! modes, mtimes (seconds), xattrs, hard links (first path wins), symlinks,
//! devices and fifos are kept; sockets are skipped (tar cannot hold them).
//!
//! In [`PackMode::Layer`], overlay forms become tar forms (every form
//! `strata_ovl` reads): a whiteout (a 0/0 character device, or an empty
//! file with `overlay.whiteout`) becomes an empty `.wh.NAME` file and an
//! opaque directory (any opaque xattr) gets a `.wh..wh..opq` entry. In
//! both modes the overlay's private xattrs ([`strata_ovl::is_private_xattr`])
//! are never written.
//!
//! An upper directory written with `metacopy=on` holds metacopy files
//! (`overlay.metacopy`): their metadata is in the upper file, their data
//! in the image's layers at the same path (or at the absolute path in
//! `overlay.redirect`), found through the layers as the mount finds it.
//! Commit is given those layers and writes whole files.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

use crate::error::{Error, Result};
use crate::tarfmt::{EntryKind, EntryMeta, Pairs, TarWriter};
use strata_ovl::names::{self, OPAQUE_MARKER, OPAQUE_XATTRS};
use strata_ovl::sys as ovl_sys;
use strata_ovl::{is_private_xattr, RelPath, Stack, Xattr};

/// How a tree is turned into a tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackMode {
    /// A layer diff: overlay whiteouts and opaque dirs become `.wh.` entries.
    Layer,
    /// A flat tree (export): everything as it is.
    Flat,
}

struct Packer<'a, W: Write> {
    w: TarWriter<W>,
    mode: PackMode,
    links: HashMap<(u64, u64), Vec<u8>>,
    root: &'a Path,
    /// Where metacopy files find their data, top layer first.
    data_layers: Stack,
}

/// What a file's private xattrs say.
#[derive(Debug, Default)]
struct Marks {
    opaque: bool,
    /// Carries `overlay.whiteout` (a whiteout if it is an empty file).
    whiteout: bool,
    /// A metacopy file, with its redirect if any.
    metacopy: Option<Option<Vec<u8>>>,
}

fn trim_slashes(p: &[u8]) -> &[u8] {
    let n = p.iter().take_while(|b| **b == b'/').count();
    &p[n..]
}

impl<W: Write> Packer<'_, W> {
    fn host(&self, rel: &[u8]) -> std::path::PathBuf {
        self.root.join(OsStr::from_bytes(rel))
    }

    fn xattrs(&self, dir: &OwnedFd, name: &OsStr, rel: &[u8]) -> Result<(Pairs, Marks)> {
        let mut out = Vec::new();
        let mut marks = Marks::default();
        let mut redirect = None;
        let name = std::ffi::CString::new(name.as_bytes()).map_err(|_| {
            Error::io(
                "list xattrs of",
                self.host(rel),
                std::io::Error::from_raw_os_error(libc::EINVAL),
            )
        })?;
        let mut names = ovl_sys::listxattr_vec(dir.as_fd(), &name)
            .map_err(|e| Error::io("listxattr", self.host(rel), e.into()))?;
        names.sort();
        for k in names {
            let Ok(kc) = std::ffi::CString::new(k.clone()) else {
                continue;
            };
            let v = match ovl_sys::getxattr_vec(dir.as_fd(), &name, &kc) {
                Ok(v) => v,
                Err(nix::errno::Errno::ENODATA) => continue,
                Err(e) => return Err(Error::io("getxattr", self.host(rel), e.into())),
            };
            if OPAQUE_XATTRS.iter().any(|o| o.to_bytes() == k) {
                marks.opaque |= v == b"y";
            }
            match Xattr::parse(&k) {
                Some(Xattr::Whiteout) => marks.whiteout = true,
                Some(Xattr::Metacopy) => marks.metacopy = Some(None),
                Some(Xattr::Redirect) => redirect = Some(v.clone()),
                _ => {}
            }
            if !is_private_xattr(&k) {
                out.push((k, v));
            }
        }
        if let Some(m) = &mut marks.metacopy {
            *m = redirect;
        }
        Ok((out, marks))
    }

    /// Opens the data of the metacopy file `rel` (redirected to `redirect`)
    /// in the first data layer that has it as a regular file.
    fn metacopy_data(&self, rel: &[u8], redirect: Option<&[u8]>) -> Result<File> {
        let at: &[u8] = match redirect {
            Some(r) if r.starts_with(b"/") => trim_slashes(r),
            _ => rel,
        };
        let at = RelPath::from_bytes(at);
        let found = self
            .data_layers
            .lookup(&at)
            .map_err(|e| Error::io("look up", self.host(rel), e.into()))?;
        if let Some(f) = found.filter(|f| f.stat.st_mode & libc::S_IFMT == libc::S_IFREG) {
            let fd = self
                .data_layers
                .open_entry(&at, &f, libc::O_RDONLY)
                .map_err(|e| Error::io("open", self.host(rel), e.into()))?;
            return Ok(File::from(fd));
        }
        Err(Error::io(
            "find the data of metacopy file",
            self.host(rel),
            std::io::Error::from_raw_os_error(libc::ENOENT),
        ))
    }

    /// Writes the whiteout of `name` in the directory `rel` in the tar
    /// form: an empty `.wh.NAME` file.
    fn write_whiteout(&mut self, mut meta: EntryMeta, rel: &[u8], name: &[u8]) -> Result<()> {
        let mut wh = rel.to_vec();
        if !wh.is_empty() {
            wh.push(b'/');
        }
        wh.extend_from_slice(&names::whiteout_name(name));
        meta.path = wh;
        meta.kind = EntryKind::File;
        meta.mode = 0;
        meta.xattrs.clear();
        self.w
            .append(&meta, Some(&mut std::io::empty()))
            .map_err(|e| Error::stream("tar output", e))
    }

    /// Writes the entries of `dir` (path `rel`). `opaque_written`: the
    /// directory's opaque marker is already written, so a literal
    /// `.wh..wh..opq` file in it is not written twice.
    fn walk(&mut self, dir: &OwnedFd, rel: &[u8], opaque_written: bool) -> Result<()> {
        let listing = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let mut names: Vec<Vec<u8>> = std::fs::read_dir(&listing)
            .map_err(|e| Error::io("list", self.host(rel), e))?
            .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io("list", self.host(rel), e))?;
        names.sort();
        for name in names {
            let osname = OsStr::from_bytes(&name);
            let mut path = rel.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&name);
            if self.mode == PackMode::Layer && name == OPAQUE_MARKER && opaque_written {
                continue;
            }
            let st: FileStat =
                nix::sys::stat::fstatat(dir.as_fd(), osname, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| Error::io("stat", self.host(&path), e.into()))?;
            let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
            let mut meta = EntryMeta {
                path: path.clone(),
                kind: EntryKind::File,
                mode: st.st_mode & 0o7777,
                uid: st.st_uid as u64,
                gid: st.st_gid as u64,
                mtime: st.st_mtime,
                size: 0,
                xattrs: Vec::new(),
            };
            if fmt == SFlag::S_IFSOCK {
                continue;
            }
            let (xattrs, marks) = self.xattrs(dir, osname, &path)?;
            let opaque = marks.opaque;
            meta.xattrs = xattrs;
            let werr = |e: std::io::Error| Error::stream("tar output", e);
            match fmt {
                SFlag::S_IFDIR => {
                    meta.kind = EntryKind::Dir;
                    meta.path.push(b'/');
                    self.w.append(&meta, None).map_err(werr)?;
                    let child = nix::fcntl::openat(
                        dir.as_fd(),
                        osname,
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| Error::io("open", self.host(&path), e.into()))?;
                    if self.mode == PackMode::Layer && opaque {
                        let mut m = meta.clone();
                        m.path = path.clone();
                        m.path.push(b'/');
                        m.path.extend_from_slice(OPAQUE_MARKER);
                        m.kind = EntryKind::File;
                        m.mode = 0;
                        m.xattrs.clear();
                        self.w
                            .append(&m, Some(&mut std::io::empty()))
                            .map_err(werr)?;
                        self.walk(&child, &path, true)?;
                    } else {
                        self.walk(&child, &path, false)?;
                    }
                }
                SFlag::S_IFREG
                    if self.mode == PackMode::Layer && marks.whiteout && st.st_size == 0 =>
                {
                    self.write_whiteout(meta, rel, &name)?;
                }
                SFlag::S_IFREG => {
                    if st.st_nlink > 1 {
                        let key = (st.st_dev, st.st_ino);
                        if let Some(first) = self.links.get(&key) {
                            meta.kind = EntryKind::HardLink(first.clone());
                            self.w.append(&meta, None).map_err(werr)?;
                            continue;
                        }
                        self.links.insert(key, path.clone());
                    }
                    meta.size = st.st_size as u64;
                    let mut f = match &marks.metacopy {
                        Some(redirect) => self.metacopy_data(&path, redirect.as_deref())?,
                        None => File::from(
                            nix::fcntl::openat(
                                dir.as_fd(),
                                osname,
                                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                                Mode::empty(),
                            )
                            .map_err(|e| Error::io("open", self.host(&path), e.into()))?,
                        ),
                    };
                    self.w
                        .append(&meta, Some(&mut f))
                        .map_err(|e| Error::io("archive", self.host(&path), e))?;
                }
                SFlag::S_IFLNK => {
                    let t = nix::fcntl::readlinkat(dir.as_fd(), osname)
                        .map_err(|e| Error::io("readlink", self.host(&path), e.into()))?;
                    meta.kind = EntryKind::Symlink(t.as_bytes().to_vec());
                    self.w.append(&meta, None).map_err(werr)?;
                }
                SFlag::S_IFCHR | SFlag::S_IFBLK => {
                    let (ma, mi) = (
                        nix::sys::stat::major(st.st_rdev) as u32,
                        nix::sys::stat::minor(st.st_rdev) as u32,
                    );
                    if self.mode == PackMode::Layer && fmt == SFlag::S_IFCHR && st.st_rdev == 0 {
                        self.write_whiteout(meta, rel, &name)?;
                    } else {
                        meta.kind = if fmt == SFlag::S_IFCHR {
                            EntryKind::Char(ma, mi)
                        } else {
                            EntryKind::Block(ma, mi)
                        };
                        self.w.append(&meta, None).map_err(werr)?;
                    }
                }
                SFlag::S_IFIFO => {
                    meta.kind = EntryKind::Fifo;
                    self.w.append(&meta, None).map_err(werr)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Writes the tree under `dir` as a tar to `out`; returns the bytes written.
pub(crate) fn pack<W: Write>(
    dir: &Path,
    out: W,
    mode: PackMode,
    data_layers: &[PathBuf],
) -> Result<u64> {
    let root = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", dir, e.into()))?;
    let data_layers = Stack::open(data_layers).map_err(|e| {
        Error::io(
            "open",
            data_layers.first().map_or(dir, |p| p.as_path()),
            e.into(),
        )
    })?;
    let mut p = Packer {
        w: TarWriter::new(out),
        mode,
        links: HashMap::new(),
        root: dir,
        data_layers,
    };
    p.walk(&root, b"", false)?;
    let (_, n) = p.w.finish().map_err(|e| Error::stream("tar output", e))?;
    Ok(n)
}

/// Streams a flat tar of the tree under `dir` (a container's merged view,
/// or any directory) to `out`, like `docker export`: owners, modes, mtimes,
/// xattrs (except overlay-private ones), hard links, symlinks, devices and
/// fifos are preserved; the root directory itself is not an entry. Returns
/// the number of bytes written.
pub fn export_dir(dir: &Path, out: &mut dyn Write) -> Result<u64> {
    pack(dir, out, PackMode::Flat, &[])
}
