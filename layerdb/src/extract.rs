//! Tar stream → layer directory, in one pass.
//!
//! The stream is hashed (diffID) and recorded (tar-split, see
//! [`crate::tarsplit`]) while it is extracted; memory stays flat whatever the
//! layer size. Invariants enforced here:
//!
//! - Every path is created relative to a directory fd of the layer, parents
//!   opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: no entry
//!   can write outside the layer, even through a symlink an earlier entry
//!   planted.
//! - Entries with `..`, absolute paths, hard links out of the layer or to a
//!   path not in it, symlinks whose relative target climbs above the layer
//!   root, duplicates, unknown types and (in an unprivileged store) device
//!   nodes are refused with [`Error::BadEntry`].
//! - Extension headers (PAX `x`/`g`, GNU `L`/`K`) are bounded per entry by
//!   [`crate::tarfmt::ExtBudget`]: a metadata bomb is refused with at most
//!   1 MiB of it held.
//! - Whiteouts are written in overlay form: `.wh.NAME` becomes a character
//!   device 0/0 named NAME where mknod is permitted, else stays a `.wh.NAME`
//!   file; `.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y`
//!   (`user.overlay.opaque` when unprivileged) on its directory.
//! - Private overlay xattrs (`trusted.overlay.*`, `user.overlay.*`) in a tar
//!   are dropped: a layer cannot forge opacity or redirects.
//!
//! The caller extracts into a fresh temporary directory and deletes it on
//! error, so a refused layer leaves nothing behind.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use tracing::warn;

use crate::abilities::Abilities;
use crate::error::{Error, Result};
use crate::ids::{DiffId, Hasher};
use crate::tarfmt::{padding, EntryKind, ExtBudget, RawHeader, BLOCK};
use crate::tarsplit::SplitWriter;
use strata_ovl::names::EntryName;
use strata_ovl::sys as ovl_sys;
use strata_ovl::{is_private_xattr, layer, Forms, RelPath, WhiteoutForm};

/// What an extraction produced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extracted {
    pub diff_id: DiffId,
    /// Bytes of the uncompressed tar stream.
    pub tar_size: u64,
    /// Sum of regular-file content sizes.
    pub content_size: u64,
}

/// The input side: every byte read is hashed and recorded.
struct Source<'a, R: Read, S: Write> {
    input: R,
    hasher: Hasher,
    total: u64,
    split: &'a mut SplitWriter<S>,
    what: &'a str,
}

impl<R: Read, S: Write> Source<'_, R, S> {
    fn rerr(&self, e: io::Error) -> Error {
        Error::stream(self.what.to_string(), e)
    }

    fn werr(&self, e: io::Error) -> Error {
        Error::stream(format!("{} (tar-split record)", self.what), e)
    }

    fn truncated(&self) -> Error {
        Error::CorruptTar {
            what: self.what.to_string(),
            reason: format!("truncated after {} bytes", self.total),
        }
    }

    /// Reads up to buf.len() bytes, retrying on EINTR; returns 0 at EOF.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        loop {
            match self.input.read(buf) {
                Ok(n) => {
                    self.hasher.update(&buf[..n]);
                    self.total += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.rerr(e)),
            }
        }
    }

    fn read_exact_raw(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let n = self.read_some(&mut buf[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        self.split.raw(&buf[..got]).map_err(|e| self.werr(e))?;
        Ok(got)
    }

    /// Reads a header block: `Ok(false)` at a clean end of stream.
    fn block(&mut self, buf: &mut [u8; BLOCK]) -> Result<bool> {
        match self.read_exact_raw(buf)? {
            0 => Ok(false),
            BLOCK => Ok(true),
            _ => Err(self.truncated()),
        }
    }

    /// Reads `size` bytes of metadata content plus padding; the caller
    /// has charged them to its [`ExtBudget`].
    fn meta(&mut self, size: u64) -> Result<Vec<u8>> {
        let total = size as usize + padding(size);
        let mut buf = vec![0u8; total];
        if self.read_exact_raw(&mut buf)? != total {
            return Err(self.truncated());
        }
        buf.truncate(size as usize);
        Ok(buf)
    }

    /// Skips `size` bytes plus padding, recording them verbatim.
    fn skip(&mut self, size: u64) -> Result<()> {
        let mut left = size + padding(size) as u64;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            if self.read_exact_raw(&mut buf[..n])? != n {
                return Err(self.truncated());
            }
            left -= n as u64;
        }
        Ok(())
    }

    /// Copies `size` bytes of file content into `out`, recording a file
    /// reference, then the padding verbatim.
    fn content(&mut self, size: u64, rel: &[u8], out: &mut File, path: &Path) -> Result<()> {
        self.split.file(rel, size).map_err(|e| self.werr(e))?;
        let mut left = size;
        let mut buf = vec![0u8; (size.min(256 * 1024) as usize).max(1)];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            let got = self.read_some(&mut buf[..n])?;
            if got == 0 {
                return Err(self.truncated());
            }
            out.write_all(&buf[..got])
                .map_err(|e| Error::io("write", path, e))?;
            left -= got as u64;
        }
        let pad = padding(size);
        if pad > 0 {
            let mut p = [0u8; BLOCK];
            if self.read_exact_raw(&mut p[..pad])? != pad {
                return Err(self.truncated());
            }
        }
        Ok(())
    }

    /// Reads everything after the end-of-archive marker.
    fn drain(&mut self) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.read_some(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.split.raw(&buf[..n]).map_err(|e| self.werr(e))?;
        }
    }
}

/// Normalises a tar path: strips `./` and trailing slashes, refuses
/// absolute paths and `..`. The empty result names the layer root.
pub(crate) fn normalize(path: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
    if path.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    for comp in path.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("path contains '..'"),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Whether a relative symlink target, read from the directory `parent`,
/// climbs above the layer root.
fn symlink_escapes(parent: &[u8], target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        // Absolute targets resolve inside the container's root.
        return false;
    }
    let mut depth: i64 = parent
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .count() as i64;
    for comp in target.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

fn split_parent(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (b"", p),
    }
}

/// Metadata of a parsed entry, after PAX and GNU records are applied.
struct Entry {
    raw_name: Vec<u8>,
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    size: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct DirMeta {
    path: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Writes entries into a layer directory.
struct Extractor {
    root: OwnedFd,
    root_path: PathBuf,
    can: Abilities,
    forms: Forms,
    explicit_dirs: HashSet<Vec<u8>>,
    dirs: Vec<DirMeta>,
    cache: Option<(Vec<u8>, OwnedFd)>,
    content_size: u64,
}

fn open_beneath(dir: BorrowedFd<'_>, path: &[u8]) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    nix::fcntl::openat2(dir, OsStr::from_bytes(path), how)
}

fn path_err(errno: Errno, entry: &[u8]) -> Error {
    match errno {
        Errno::ELOOP | Errno::EXDEV => Error::bad_entry(entry, "its path goes through a symlink"),
        Errno::ENOTDIR => Error::bad_entry(entry, "a parent of it is a symlink or not a directory"),
        Errno::EEXIST => Error::bad_entry(entry, "duplicate entry (the path already exists)"),
        e => Error::bad_entry(entry, format!("cannot create it: {e}")),
    }
}

impl Extractor {
    fn host_path(&self, rel: &[u8]) -> PathBuf {
        self.root_path.join(OsStr::from_bytes(rel))
    }

    /// Opens (creating missing directories when `create`) the directory
    /// `parent` of the layer.
    fn dir(&mut self, parent: &[u8], entry: &[u8], create: bool) -> Result<OwnedFd> {
        if parent.is_empty() {
            return self
                .root
                .try_clone()
                .map_err(|e| Error::io("dup", &self.root_path, e));
        }
        if let Some((p, fd)) = &self.cache {
            if p == parent {
                return fd
                    .try_clone()
                    .map_err(|e| Error::io("dup", &self.root_path, e));
            }
        }
        let fd = match open_beneath(self.root.as_fd(), parent) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                let mut cur = self
                    .root
                    .try_clone()
                    .map_err(|e| Error::io("dup", &self.root_path, e))?;
                for comp in parent.split(|b| *b == b'/') {
                    match nix::sys::stat::mkdirat(
                        cur.as_fd(),
                        OsStr::from_bytes(comp),
                        Mode::from_bits_truncate(0o755),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(path_err(e, entry)),
                    }
                    cur = open_beneath(cur.as_fd(), comp).map_err(|e| path_err(e, entry))?;
                }
                cur
            }
            Err(Errno::ENOENT) => {
                return Err(Error::bad_entry(
                    entry,
                    "its directory is not in this layer",
                ))
            }
            Err(e) => return Err(path_err(e, entry)),
        };
        let ret = fd
            .try_clone()
            .map_err(|e| Error::io("dup", &self.root_path, e))?;
        self.cache = Some((parent.to_vec(), fd));
        Ok(ret)
    }

    fn set_xattrs(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        rel: &[u8],
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        for (k, v) in xattrs {
            if is_private_xattr(k) {
                continue;
            }
            let allowed = if k.starts_with(b"trusted.") {
                self.can.trusted_xattrs
            } else if k.starts_with(b"security.") {
                self.can.owners
            } else {
                true
            };
            if !allowed {
                warn!(path = %String::from_utf8_lossy(rel), xattr = %String::from_utf8_lossy(k),
                      "xattr dropped: not permitted here");
                continue;
            }
            let cname = |b: &[u8]| {
                std::ffi::CString::new(b).map_err(|_| Error::bad_entry(rel, "a NUL in an xattr"))
            };
            let (cn, ck) = (cname(name.as_bytes())?, cname(k)?);
            match ovl_sys::setxattr_at(dir, &cn, &ck, v, 0) {
                Ok(()) => {}
                Err(Errno::ENOTSUP) => {
                    warn!(path = %String::from_utf8_lossy(rel), xattr = %String::from_utf8_lossy(k),
                          "filesystem does not support this xattr; dropped");
                }
                Err(e) => return Err(Error::io("setxattr", self.host_path(rel), e.into())),
            }
        }
        Ok(())
    }

    /// Owner, mode, xattrs, times of a just-created non-directory.
    fn finish_meta(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        rel: &[u8],
        e: &Entry,
        chmod: bool,
    ) -> Result<()> {
        if self.can.owners {
            match nix::unistd::fchownat(
                dir,
                name,
                Some(Uid::from_raw(e.uid)),
                Some(Gid::from_raw(e.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(()) => {}
                // The owner is not mapped in this user namespace.
                Err(Errno::EINVAL) => {
                    return Err(Error::UnmappedOwner {
                        path: String::from_utf8_lossy(rel).into_owned(),
                        uid: e.uid,
                        gid: e.gid,
                    })
                }
                Err(err) => return Err(Error::io("chown", self.host_path(rel), err.into())),
            }
        }
        if chmod {
            nix::sys::stat::fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(e.mode & 0o7777),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
            .map_err(|err| Error::io("chmod", self.host_path(rel), err.into()))?;
        }
        self.set_xattrs(dir, name, rel, &e.xattrs)?;
        nix::sys::stat::utimensat(
            dir,
            name,
            &e.mtime,
            &e.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|err| Error::io("utimensat", self.host_path(rel), err.into()))?;
        Ok(())
    }

    fn whiteout(&mut self, parent: &[u8], target: &[u8], entry: &[u8]) -> Result<()> {
        if target.is_empty() || target == b"." || target == b".." {
            return Err(Error::bad_entry(entry, "whiteout of an invalid name"));
        }
        let dir = self.dir(parent, entry, true)?;
        let target = RelPath::from_bytes(target);
        if self.forms.whiteout == WhiteoutForm::Device {
            match layer::make_whiteout(dir.as_fd(), &target, WhiteoutForm::Device) {
                Ok(()) => return Ok(()),
                Err(Errno::EPERM) => {
                    warn!("mknod not permitted; writing whiteouts as .wh. files");
                    self.forms.whiteout = WhiteoutForm::WhFile;
                }
                Err(e) => return Err(path_err(e, entry)),
            }
        }
        // A `.wh.NAME` already there (a tar that lists it twice) is refused.
        if layer::has_wh_file(dir.as_fd(), &RelPath::root(), target.bytes()) {
            return Err(path_err(Errno::EEXIST, entry));
        }
        layer::make_whiteout(dir.as_fd(), &target, WhiteoutForm::WhFile)
            .map_err(|e| path_err(e, entry))
    }

    fn opaque(&mut self, dir_path: &[u8], entry: &[u8]) -> Result<()> {
        let (pp, base) = split_parent(dir_path);
        let (dir, name): (OwnedFd, &[u8]) = if dir_path.is_empty() {
            (self.dir(b"", entry, true)?, b".")
        } else {
            // Make sure the directory itself exists.
            let d = self.dir(dir_path, entry, true)?;
            drop(d);
            (self.dir(pp, entry, false)?, base)
        };
        layer::set_opaque(dir.as_fd(), &RelPath::from_bytes(name), self.forms.opaque)
            .map_err(|e| Error::io("setxattr", self.host_path(dir_path), e.into()))
    }

    fn entry<R: Read, S: Write>(&mut self, e: Entry, src: &mut Source<'_, R, S>) -> Result<()> {
        let raw = e.raw_name.clone();
        let p = normalize(&raw).map_err(|why| Error::bad_entry(&raw, why))?;
        let file_size = if e.kind == EntryKind::File { e.size } else { 0 };
        let (parent, base) = split_parent(&p);

        if p.is_empty() {
            if e.kind != EntryKind::Dir {
                return Err(Error::bad_entry(&raw, "the layer root must be a directory"));
            }
            if !self.explicit_dirs.insert(Vec::new()) {
                return Err(Error::bad_entry(&raw, "duplicate entry"));
            }
            self.dirs.push(DirMeta {
                path: Vec::new(),
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime: e.mtime,
                xattrs: e.xattrs,
            });
            return src.skip(e.size);
        }

        match EntryName::of(base) {
            EntryName::OpaqueMarker => {
                self.opaque(parent, &raw)?;
                return src.skip(e.size);
            }
            // AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): ignored, as docker does.
            EntryName::AufsMeta => return src.skip(e.size),
            EntryName::Whiteout(target) => {
                let target = target.to_vec();
                self.whiteout(parent, &target, &raw)?;
                return src.skip(e.size);
            }
            EntryName::Plain => {}
        }

        let dir = self.dir(parent, &raw, true)?;
        let name = OsStr::from_bytes(base);
        match &e.kind {
            EntryKind::Dir => {
                let size = e.size;
                self.make_dir(dir.as_fd(), name, &p, e)?;
                src.skip(size)
            }
            EntryKind::File => {
                let fd = nix::fcntl::openat(
                    dir.as_fd(),
                    name,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|err| path_err(err, &raw))?;
                let mut f = File::from(fd);
                let host = self.host_path(&p);
                src.content(file_size, &p, &mut f, &host)?;
                drop(f);
                self.content_size += file_size;
                self.finish_meta(dir.as_fd(), name, &p, &e, true)
            }
            EntryKind::Symlink(target) => {
                if symlink_escapes(parent, target) {
                    return Err(Error::bad_entry(
                        &raw,
                        format!(
                            "symlink target {:?} points out of the layer",
                            String::from_utf8_lossy(target)
                        ),
                    ));
                }
                nix::unistd::symlinkat(OsStr::from_bytes(target), dir.as_fd(), name)
                    .map_err(|err| path_err(err, &raw))?;
                self.finish_meta(dir.as_fd(), name, &p, &e, false)?;
                src.skip(e.size)
            }
            EntryKind::HardLink(target) => {
                self.hard_link(dir.as_fd(), name, &raw, target)?;
                src.skip(e.size)
            }
            EntryKind::Char(ma, mi) | EntryKind::Block(ma, mi) => {
                self.device(dir.as_fd(), name, &p, &e, (*ma, *mi))?;
                src.skip(e.size)
            }
            EntryKind::Fifo => {
                nix::sys::stat::mknodat(
                    dir.as_fd(),
                    name,
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(0o600),
                    0,
                )
                .map_err(|err| path_err(err, &raw))?;
                self.finish_meta(dir.as_fd(), name, &p, &e, true)?;
                src.skip(e.size)
            }
        }
    }

    /// A directory entry: made 0700 now (or found, when an earlier entry
    /// made it implicitly), its metadata applied by `finish_dirs` once its
    /// children exist.
    fn make_dir(&mut self, dir: BorrowedFd<'_>, name: &OsStr, p: &[u8], e: Entry) -> Result<()> {
        let (_, base) = split_parent(p);
        if !self.explicit_dirs.insert(p.to_vec()) {
            return Err(Error::bad_entry(&e.raw_name, "duplicate entry"));
        }
        match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                // Created implicitly for an earlier entry: fine if a directory.
                open_beneath(dir, base).map_err(|_| {
                    Error::bad_entry(
                        &e.raw_name,
                        "duplicate entry (a non-directory has this path)",
                    )
                })?;
            }
            Err(err) => return Err(path_err(err, &e.raw_name)),
        }
        self.dirs.push(DirMeta {
            path: p.to_vec(),
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            xattrs: e.xattrs,
        });
        Ok(())
    }

    /// A hard link to an entry made earlier in this layer, resolved
    /// beneath the layer's root.
    fn hard_link(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        raw: &[u8],
        target: &[u8],
    ) -> Result<()> {
        let t = normalize(target).map_err(|why| {
            Error::bad_entry(
                raw,
                format!("hard link target points out of the layer ({why})"),
            )
        })?;
        if t.is_empty() {
            return Err(Error::bad_entry(raw, "hard link to the layer root"));
        }
        let (tp, tb) = split_parent(&t);
        // A target at the layer's root is in the root itself (openat2 of an
        // empty path fails).
        let tdir = match open_beneath(self.root.as_fd(), if tp.is_empty() { b"." } else { tp }) {
            Ok(fd) => fd,
            Err(_) => {
                return Err(Error::bad_entry(
                    raw,
                    format!(
                        "hard link target {:?} is not in this layer",
                        String::from_utf8_lossy(target)
                    ),
                ))
            }
        };
        match nix::unistd::linkat(tdir, OsStr::from_bytes(tb), dir, name, AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::ENOENT) => {
                return Err(Error::bad_entry(
                    raw,
                    format!(
                        "hard link target {:?} is not in this layer",
                        String::from_utf8_lossy(target)
                    ),
                ))
            }
            Err(Errno::EPERM) => {
                return Err(Error::bad_entry(
                    raw,
                    "hard link to a directory or a protected file",
                ))
            }
            Err(err) => return Err(path_err(err, raw)),
        }
        Ok(())
    }

    /// A character or block device. Where devices cannot be made (a user
    /// namespace) it is skipped with a warning, as docker and
    /// containers/storage do there; an unprivileged store refuses it.
    fn device(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        p: &[u8],
        e: &Entry,
        (ma, mi): (u32, u32),
    ) -> Result<()> {
        if !self.can.devices {
            if !self.can.owners {
                return Err(Error::bad_entry(
                    &e.raw_name,
                    "device node in an unprivileged store",
                ));
            }
            warn!(path = %String::from_utf8_lossy(p), "device node skipped: devices cannot be made in a user namespace");
            return Ok(());
        }
        let kind = if matches!(e.kind, EntryKind::Char(..)) {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        nix::sys::stat::mknodat(
            dir,
            name,
            kind,
            Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(ma as u64, mi as u64),
        )
        .map_err(|err| path_err(err, &e.raw_name))?;
        self.finish_meta(dir, name, p, e, true)?;
        Ok(())
    }

    /// Applies directory metadata once every entry exists (creating
    /// children changes a directory's mtime).
    fn finish_dirs(&mut self) -> Result<()> {
        self.cache = None;
        let dirs = std::mem::take(&mut self.dirs);
        for d in dirs.iter().rev() {
            let (pp, base) = split_parent(&d.path);
            let (dir, name): (OwnedFd, &[u8]) = if d.path.is_empty() {
                (self.dir(b"", &d.path, false)?, b".")
            } else {
                (self.dir(pp, &d.path, false)?, base)
            };
            let name = OsStr::from_bytes(name);
            let e = Entry {
                raw_name: d.path.clone(),
                kind: EntryKind::Dir,
                mode: d.mode,
                uid: d.uid,
                gid: d.gid,
                mtime: d.mtime,
                size: 0,
                xattrs: d.xattrs.clone(),
            };
            self.finish_meta(dir.as_fd(), name, &d.path, &e, true)?;
        }
        Ok(())
    }
}

fn pax_num(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn pax_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let scale = 10i64.pow(9 - digits.len() as u32);
        nanos = digits.parse::<i64>().ok()? * scale;
    }
    Some(TimeSpec::new(secs, nanos))
}

/// Extracts the tar stream `input` into the existing empty directory
/// `dest`, recording the stream in `split`. `what` names the stream in
/// errors. On error `dest` holds a partial tree that the caller removes.
pub(crate) fn extract<R: Read, S: Write>(
    input: R,
    dest: &Path,
    split: &mut SplitWriter<S>,
    can: Abilities,
    what: &str,
) -> Result<Extracted> {
    let root = nix::fcntl::open(
        dest,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", dest, e.into()))?;
    let mut ex = Extractor {
        root,
        root_path: dest.to_path_buf(),
        can,
        forms: can.forms,
        explicit_dirs: HashSet::new(),
        dirs: Vec::new(),
        cache: None,
        content_size: 0,
    };
    let mut src = Source {
        input,
        hasher: Hasher::new(),
        total: 0,
        split,
        what,
    };
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut budget = ExtBudget::default();
    let mut block = [0u8; BLOCK];
    let mut entries = 0u64;
    loop {
        if !src.block(&mut block)? {
            return Err(Error::CorruptTar {
                what: what.to_string(),
                reason: format!(
                    "ends after {} bytes without an end-of-archive marker (truncated?)",
                    src.total
                ),
            });
        }
        let h = RawHeader(&block);
        if h.is_zero() {
            src.drain()?;
            break;
        }
        if !h.checksum_ok() {
            return Err(Error::CorruptTar {
                what: what.to_string(),
                reason: format!(
                    "bad header checksum at byte {} (after {entries} entries); not a tar or corrupt",
                    src.total - BLOCK as u64
                ),
            });
        }
        let hname = h.name();
        let bad = |why: &str| Error::bad_entry(&hname, why.to_string());
        let size = h.size().ok_or_else(|| bad("bad size field"))?;
        if matches!(h.typeflag(), b'x' | b'g' | b'L' | b'K') {
            budget.header(h.typeflag(), size).map_err(|why| bad(&why))?;
        }
        match h.typeflag() {
            b'x' => {
                let data = src.meta(size)?;
                pax.extend(budget.pax(&data).map_err(|why| bad(&why))?);
                continue;
            }
            b'g' => {
                src.meta(size)?;
                continue;
            }
            b'L' => {
                let mut d = src.meta(size)?;
                if let Some(n) = d.iter().position(|b| *b == 0) {
                    d.truncate(n);
                }
                long_name = Some(d);
                continue;
            }
            b'K' => {
                let mut d = src.meta(size)?;
                if let Some(n) = d.iter().position(|b| *b == 0) {
                    d.truncate(n);
                }
                long_link = Some(d);
                continue;
            }
            _ => {}
        }
        entries += 1;
        budget.reset();
        let mut name = long_name.take().unwrap_or(hname.clone());
        let mut link = long_link.take().unwrap_or_else(|| h.linkname());
        let mut size = size;
        let mut uid = h.uid().ok_or_else(|| bad("bad uid field"))?;
        let mut gid = h.gid().ok_or_else(|| bad("bad gid field"))?;
        let mut mtime = TimeSpec::new(h.mtime().unwrap_or(0) as i64, 0);
        let mut xattrs = Vec::new();
        for (k, v) in pax.drain(..) {
            match &k[..] {
                b"path" => name = v,
                b"linkpath" => link = v,
                b"size" => size = pax_num(&v).ok_or_else(|| bad("bad PAX size"))?,
                b"uid" => uid = pax_num(&v).ok_or_else(|| bad("bad PAX uid"))?,
                b"gid" => gid = pax_num(&v).ok_or_else(|| bad("bad PAX gid"))?,
                b"mtime" => mtime = pax_time(&v).ok_or_else(|| bad("bad PAX mtime"))?,
                _ => {
                    if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                        xattrs.push((x.to_vec(), v));
                    }
                }
            }
        }
        let dev = || -> Result<(u32, u32)> {
            Ok((
                h.devmajor().ok_or_else(|| bad("bad device major"))? as u32,
                h.devminor().ok_or_else(|| bad("bad device minor"))? as u32,
            ))
        };
        let kind = match h.typeflag() {
            b'0' | b'\0' | b'7' if name.ends_with(b"/") => EntryKind::Dir,
            b'0' | b'\0' | b'7' => EntryKind::File,
            b'1' => EntryKind::HardLink(link),
            b'2' => EntryKind::Symlink(link),
            b'3' => {
                let (a, b) = dev()?;
                EntryKind::Char(a, b)
            }
            b'4' => {
                let (a, b) = dev()?;
                EntryKind::Block(a, b)
            }
            b'5' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            b'S' => {
                return Err(Error::bad_entry(
                    &name,
                    "GNU sparse files are not supported in layers",
                ))
            }
            t => {
                return Err(Error::bad_entry(
                    &name,
                    format!("unknown tar entry type {:?}", t as char),
                ))
            }
        };
        let e = Entry {
            raw_name: name,
            kind,
            mode: h.mode().unwrap_or(0o644) as u32,
            uid: u32::try_from(uid).map_err(|_| bad("uid too large"))?,
            gid: u32::try_from(gid).map_err(|_| bad("gid too large"))?,
            mtime,
            size,
            xattrs,
        };
        ex.entry(e, &mut src)?;
    }
    ex.finish_dirs()?;
    Ok(Extracted {
        diff_id: DiffId(src.hasher.finish()),
        tar_size: src.total,
        content_size: ex.content_size,
    })
}

/// Opens a possibly compressed stream: gzip and zstd are recognised by their
/// magic numbers, anything else is passed through as a plain tar.
pub(crate) fn decompress<'a, R: Read + 'a>(mut input: R, what: &str) -> Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; 6];
    let mut got = 0;
    while got < head.len() {
        match input.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::stream(what.to_string(), e)),
        }
    }
    let prefix = io::Cursor::new(head[..got].to_vec());
    let chained = prefix.chain(input);
    let h = &head[..got];
    if h.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(chained)))
    } else if h.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = zstd::stream::read::Decoder::new(chained)
            .map_err(|e| Error::stream(what.to_string(), e))?;
        Ok(Box::new(d))
    } else if h.starts_with(b"BZh") {
        Err(Error::Unsupported(format!(
            "{what} is bzip2-compressed; decompress it first"
        )))
    } else if h.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Err(Error::Unsupported(format!(
            "{what} is xz-compressed; decompress it first"
        )))
    } else {
        Ok(Box::new(chained))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize(b"./a/b/").unwrap(), b"a/b");
        assert_eq!(normalize(b"a//./b").unwrap(), b"a/b");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert!(normalize(b"/etc/passwd").is_err());
        assert!(normalize(b"a/../../b").is_err());
        assert!(normalize(b"..").is_err());
    }

    #[test]
    fn symlink_escape_is_lexical() {
        assert!(!symlink_escapes(b"etc", b"/proc/mounts"));
        assert!(!symlink_escapes(b"usr/lib", b"../../bin/x"));
        assert!(symlink_escapes(b"usr/lib", b"../../../bin/x"));
        assert!(symlink_escapes(b"", b".."));
        assert!(!symlink_escapes(b"bin", b"busybox"));
    }
}
