//! COPY and ADD: which files a step copies (with the metadata they will
//! have in the image), the digest that is their cache key, and the layer
//! tar ([`write_tar`]) that [`strata_layerdb::Store::commit_tar`]
//! extracts once, so copied files are written to disk one time.
//!
//! The digest covers each entry's destination path, type, mode, owner
//! (after `--chown`/`--chmod`) and content (or link target), never its
//! mtime, as Docker documents: a `touch` is still a cache hit.
//!
//! Parent directories of a destination that exist in the image are
//! written with the image's mode and owner, as a copy-up would; new ones
//! are 0755 root.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use strata_ovl::{RelPath, Stack};

use super::ignore::{self, Ignore};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file copied from `src`.
    File(PathBuf),
    /// A directory.
    Dir,
    /// A symlink to this target.
    Symlink(PathBuf),
    /// A file with this content (a heredoc).
    Inline(Vec<u8>),
    /// A tar archive (ADD) extracted into the destination directory.
    Tar(PathBuf),
}

/// One entry a COPY writes.
#[derive(Debug, Clone)]
pub struct Item {
    /// Destination, relative to the image root, no leading `/`.
    pub dst: String,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time kept from the source (seconds).
    pub mtime: i64,
}

/// Where sources are read from: the build context (with its ignore file)
/// or the root of a stage or image (`--from`).
pub struct SourceRoot<'a> {
    /// The directory.
    pub dir: &'a Path,
    /// The ignore rules (context only).
    pub ignore: Option<&'a Ignore>,
    /// Whether owners are kept from the source (`--from`) rather than
    /// set to root (the context).
    pub keep_owner: bool,
}

/// What can go wrong reading a COPY's sources or writing its layer; each
/// message names the source, path or archive entry.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A source file or directory could not be read.
    #[error("{}: {err}", path.display())]
    Read {
        /// The file on the host.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// A source names a path above the context.
    #[error("{src} is outside the build context")]
    OutsideContext {
        /// The source as written.
        src: String,
    },
    /// A glob matched nothing.
    #[error("no source files match {src}")]
    NoMatch {
        /// The source as written.
        src: String,
    },
    /// A source is excluded by `.dockerignore`.
    #[error("{src} is excluded by the ignore file (.dockerignore/.containerignore)")]
    Excluded {
        /// The source as written.
        src: String,
    },
    /// A source does not exist.
    #[error("{src}: no such file or directory")]
    Missing {
        /// The source as written.
        src: String,
    },
    /// A source's directories leave the context through a symlink.
    #[error("{src} leads outside the build context through a symbolic link")]
    LeavesContext {
        /// The source as written.
        src: String,
    },
    /// The image's layer directories could not be opened.
    #[error("cannot open the image's layers: {0}")]
    OpenImage(nix::errno::Errno),
    /// A destination could not be resolved inside the image.
    #[error("cannot resolve {rel} in the image: {err}")]
    Resolve {
        /// The destination, relative to the image root.
        rel: String,
        /// Why.
        err: nix::errno::Errno,
    },
    /// Writing an entry of the layer tar failed (`op` is open, stat, copy
    /// or write).
    #[error("{op} {path}: {err}")]
    Entry {
        /// What was being done.
        op: &'static str,
        /// The source file or the entry's path in the layer.
        path: String,
        /// Why.
        err: std::io::Error,
    },
    /// Finishing the layer tar failed.
    #[error("write the layer: {0}")]
    Finish(std::io::Error),
    /// An archive given to ADD could not be read.
    #[error("ADD {}: {err}", archive.display())]
    Archive {
        /// The archive on the host.
        archive: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// An entry of an archive given to ADD leaves it (`../`).
    #[error("ADD {}: entry {entry} leaves the archive", archive.display())]
    ArchiveEscape {
        /// The archive on the host.
        archive: PathBuf,
        /// The entry's path.
        entry: String,
    },
}

impl CopyError {
    /// Whether the layer's reader went away (the store gave up first and
    /// has its own reason).
    pub fn is_broken_pipe(&self) -> bool {
        let io = match self {
            CopyError::Read { err, .. }
            | CopyError::Entry { err, .. }
            | CopyError::Archive { err, .. }
            | CopyError::Finish(err) => err,
            _ => return false,
        };
        io.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// `--chown` and `--chmod`, resolved.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    /// uid and gid.
    pub owner: Option<(u32, u32)>,
    /// Permission bits.
    pub mode: Option<u32>,
}

/// Where a COPY writes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The destination, relative to the image root.
    pub dest: &'a str,
    /// Whether it is a directory (sources go inside it).
    pub is_dir: bool,
    /// ADD: local tar archives are extracted.
    pub add: bool,
    /// `--chown`, `--chmod`.
    pub overrides: Overrides,
}

fn rel_join(a: &str, b: &str) -> String {
    ignore::clean(&format!("{a}/{b}"))
}

impl SourceRoot<'_> {
    fn excluded(&self, rel: &str) -> bool {
        self.ignore.is_some_and(|i| i.excludes(rel))
    }

    /// The relative paths (files, dirs, links) under `rel`, depth first,
    /// minus excluded ones.
    fn walk(&self, rel: &str, out: &mut Vec<(String, fs::Metadata)>) -> Result<(), CopyError> {
        let dir = self.dir.join(rel);
        let rd = fs::read_dir(&dir).map_err(|err| CopyError::Read {
            path: dir.clone(),
            err,
        })?;
        let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let child = rel_join(rel, &n.to_string_lossy());
            let p = self.dir.join(&child);
            let md = fs::symlink_metadata(&p).map_err(|err| CopyError::Read {
                path: p.clone(),
                err,
            })?;
            let excluded = self.excluded(&child);
            if md.is_dir() {
                if excluded && !self.ignore.is_some_and(Ignore::has_exceptions) {
                    continue;
                }
                if !excluded {
                    out.push((child.clone(), md));
                }
                self.walk(&child, out)?;
            } else if !excluded {
                out.push((child, md));
            }
        }
        Ok(())
    }

    /// Resolves one source (a path or glob, already expanded) to the
    /// top-level entries it names.
    pub fn resolve(&self, src: &str) -> Result<Vec<(String, fs::Metadata)>, CopyError> {
        let src_s = || src.to_string();
        let rel = ignore::clean(src);
        if rel == ".." || rel.starts_with("../") {
            return Err(CopyError::OutsideContext { src: src_s() });
        }
        if ignore::has_glob(&rel) {
            let mut all = Vec::new();
            self.walk("", &mut all)?;
            let hits: Vec<_> = all
                .into_iter()
                .filter(|(p, _)| ignore::matches_path(&rel, p))
                .collect();
            if hits.is_empty() {
                return Err(CopyError::NoMatch { src: src_s() });
            }
            return Ok(hits);
        }
        if !self.keep_owner {
            self.beneath_context(src, &rel)?;
        }
        let p = self.dir.join(&rel);
        match fs::symlink_metadata(&p) {
            Ok(_) if !rel.is_empty() && self.excluded(&rel) => {
                Err(CopyError::Excluded { src: src_s() })
            }
            Ok(md) => Ok(vec![(rel, md)]),
            Err(_) => Err(CopyError::Missing { src: src_s() }),
        }
    }

    /// Fails when the directories of a context source lead out of the
    /// context through a symlink (`link/secret` with `link -> /etc`): the
    /// kernel resolves them beneath the context (`RESOLVE_BENEATH`). The
    /// source itself, when a symlink, is copied as one.
    fn beneath_context(&self, src: &str, rel: &str) -> Result<(), CopyError> {
        let parent = Path::new(rel).parent().unwrap_or(Path::new(""));
        let root = crate::beneath::Root::open(self.dir).map_err(|err| CopyError::Read {
            path: self.dir.to_path_buf(),
            err,
        })?;
        match root.open_beneath(parent, nix::fcntl::OFlag::O_PATH, 0) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Err(CopyError::LeavesContext {
                src: src.to_string(),
            }),
            Err(_) => Err(CopyError::Missing {
                src: src.to_string(),
            }),
        }
    }

    fn item(&self, rel: &str, md: &fs::Metadata, dst: String, o: Overrides) -> Item {
        let p = self.dir.join(rel);
        let kind = if md.is_dir() {
            Kind::Dir
        } else if md.file_type().is_symlink() {
            Kind::Symlink(fs::read_link(&p).unwrap_or_default())
        } else {
            Kind::File(p)
        };
        let (uid, gid) = o.owner.unwrap_or(if self.keep_owner {
            (md.uid(), md.gid())
        } else {
            (0, 0)
        });
        Item {
            dst,
            mode: if matches!(kind, Kind::Symlink(_)) {
                0o777
            } else {
                o.mode.unwrap_or(md.mode() & 0o7777)
            },
            kind,
            uid,
            gid,
            mtime: md.mtime(),
        }
    }

    /// The items one resolved source gives at `dest` (relative to the
    /// image root). A directory's content goes into `dest`; a file goes to
    /// `dest/NAME` when `dest_is_dir`, else to `dest`.
    pub fn items(
        &self,
        rel: &str,
        md: &fs::Metadata,
        t: &Target<'_>,
        out: &mut Vec<Item>,
    ) -> Result<(), CopyError> {
        let (dest, dest_is_dir, add, o) = (t.dest, t.is_dir, t.add, t.overrides);
        if md.is_dir() {
            if !dest.is_empty() {
                let mut d = self.item(rel, md, dest.to_string(), o);
                d.mode = o.mode.unwrap_or(0o755);
                d.uid = o.owner.map(|x| x.0).unwrap_or(0);
                d.gid = o.owner.map(|x| x.1).unwrap_or(0);
                out.push(d);
            }
            let mut all = Vec::new();
            self.walk(rel, &mut all)?;
            for (p, m) in all {
                let below = p.strip_prefix(rel).unwrap_or(&p).trim_start_matches('/');
                out.push(self.item(&p, &m, rel_join(dest, below), o));
            }
            return Ok(());
        }
        let name = Path::new(rel)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if add && md.is_file() && is_tar(&self.dir.join(rel)) {
            out.push(Item {
                dst: dest.to_string(),
                kind: Kind::Tar(self.dir.join(rel)),
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: md.mtime(),
            });
            return Ok(());
        }
        let dst = if dest_is_dir {
            rel_join(dest, &name)
        } else {
            dest.to_string()
        };
        out.push(self.item(rel, md, dst, o));
        Ok(())
    }
}

/// Whether a file is a tar archive, plain or gzip-compressed (what ADD
/// extracts).
fn is_tar(p: &Path) -> bool {
    let mut buf = [0u8; 512];
    let Ok(mut f) = fs::File::open(p) else {
        return false;
    };
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    (n >= 2 && buf[0] == 0x1f && buf[1] == 0x8b) || (n == 512 && &buf[257..262] == b"ustar")
}

fn hash_file(p: &Path, h: &mut Sha256) -> Result<(), CopyError> {
    let fail = |err| CopyError::Read {
        path: p.to_path_buf(),
        err,
    };
    let mut f = fs::File::open(p).map_err(fail)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(fail)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// The digest of what a COPY writes: paths, types, modes, owners and
/// contents; not mtimes.
pub fn digest(items: &[Item]) -> Result<String, CopyError> {
    let mut h = Sha256::new();
    for it in items {
        h.update(it.dst.as_bytes());
        h.update(format!("\0{:o}\0{}\0{}\0", it.mode, it.uid, it.gid).as_bytes());
        match &it.kind {
            Kind::File(p) => {
                h.update(b"f");
                hash_file(p, &mut h)?;
            }
            Kind::Tar(p) => {
                h.update(b"t");
                hash_file(p, &mut h)?;
            }
            Kind::Dir => h.update(b"d"),
            Kind::Symlink(t) => {
                h.update(b"l");
                h.update(t.as_os_str().as_encoded_bytes());
            }
            Kind::Inline(c) => {
                h.update(b"i");
                h.update(c);
            }
        }
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

/// An image's layers read as one tree, for COPY and ADD: the metadata of
/// the directories a COPY creates, and destinations resolved through the
/// image's symlinks. Every look-up goes through [`strata_ovl::Stack`]:
/// beneath each layer's root, with every whiteout and opaque form the
/// mount reads, never following a symlink on the host.
pub struct ImageTree(Stack);

impl ImageTree {
    /// The image whose layer directories are `lowers` (top first); no
    /// layers is the empty image (`FROM scratch`).
    pub fn open(lowers: &[PathBuf]) -> Result<ImageTree, CopyError> {
        Stack::open(lowers)
            .map(ImageTree)
            .map_err(CopyError::OpenImage)
    }

    /// The `lstat` of `rel` in the image; `None` when it is absent or
    /// hidden. Symlinks are not followed.
    pub fn stat(&self, rel: &str) -> Option<libc::stat> {
        let rel = ignore::clean(rel);
        let p = RelPath::from_bytes(rel.trim_start_matches('/').as_bytes());
        self.0.lookup(&p).ok().flatten().map(|f| f.stat)
    }

    /// Whether `rel` is a directory in the image.
    pub fn is_dir(&self, rel: &str) -> bool {
        self.stat(rel)
            .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    /// Resolves the symlinks of a destination path inside the image (as a
    /// container would see them, never leaving its root): `usr/bin/x` for
    /// `bin/x` when `/bin` links to `usr/bin`. The last component is kept
    /// as is when `keep_last`.
    pub fn resolve(&self, rel: &str, keep_last: bool) -> Result<String, CopyError> {
        self.0
            .resolve_in_root(rel.as_bytes(), !keep_last)
            .map(|p| {
                if p.is_root() {
                    String::new()
                } else {
                    p.to_string()
                }
            })
            .map_err(|err| CopyError::Resolve {
                rel: rel.to_string(),
                err,
            })
    }

    /// The content of the regular file `rel` in the image, symlinks of
    /// its path followed inside the image; empty when there is none.
    pub fn read(&self, rel: &str) -> String {
        self.0
            .read_file(rel.as_bytes())
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// Writes the items as a layer tar to `w`, preceded by the parent
/// directories they need (with the image's metadata when the image has
/// them, `lowers` top first; else 0755 root). Nothing touches the disk
/// but the sources' reads: the store extracts the stream once.
pub fn write_tar<W: Write>(w: W, image: &ImageTree, items: &[Item]) -> Result<(), CopyError> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let fail = |op: &'static str, p: &str, err: std::io::Error| CopyError::Entry {
        op,
        path: p.to_string(),
        err,
    };
    for it in items {
        let segs: Vec<&str> = it.dst.split('/').filter(|s| !s.is_empty()).collect();
        let mut cur = String::new();
        for s in segs.iter().take(segs.len().saturating_sub(1)) {
            cur = rel_join(&cur, s);
            if dirs.contains(&cur) {
                continue;
            }
            let (mode, uid, gid, mtime) = match image.stat(&cur) {
                Some(m) if m.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                    (m.st_mode & 0o7777, m.st_uid, m.st_gid, m.st_mtime)
                }
                _ => (0o755, 0, 0, now_secs()),
            };
            let mut h = header(tar::EntryType::Directory, mode, uid, gid, mtime, 0);
            b.append_data(&mut h, format!("{cur}/"), std::io::empty())
                .map_err(|e| fail("write", &cur, e))?;
            dirs.insert(cur.clone());
        }
        if it.dst.is_empty() {
            continue;
        }
        // The item's own metadata, for a given entry type and size.
        let own = |kind, size| header(kind, it.mode, it.uid, it.gid, it.mtime, size);
        match &it.kind {
            Kind::Dir => {
                if dirs.insert(it.dst.clone()) {
                    let mut h = own(tar::EntryType::Directory, 0);
                    b.append_data(&mut h, format!("{}/", it.dst), std::io::empty())
                        .map_err(|e| fail("write", &it.dst, e))?;
                }
            }
            Kind::File(src) => {
                let f = fs::File::open(src).map_err(|e| fail("open", &src.to_string_lossy(), e))?;
                let len = f
                    .metadata()
                    .map_err(|e| fail("stat", &src.to_string_lossy(), e))?
                    .len();
                let mut h = own(tar::EntryType::Regular, len);
                b.append_data(&mut h, &it.dst, f.take(len))
                    .map_err(|e| fail("copy", &src.to_string_lossy(), e))?;
            }
            Kind::Inline(c) => {
                let mut h = own(tar::EntryType::Regular, c.len() as u64);
                b.append_data(&mut h, &it.dst, &c[..])
                    .map_err(|e| fail("write", &it.dst, e))?;
            }
            Kind::Symlink(t) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, it.uid, it.gid, it.mtime, 0);
                b.append_link(&mut h, &it.dst, t)
                    .map_err(|e| fail("write", &it.dst, e))?;
            }
            Kind::Tar(src) => {
                dirs.insert(it.dst.clone());
                append_archive(&mut b, src, &it.dst)?;
            }
        }
    }
    b.into_inner().map_err(CopyError::Finish)?;
    Ok(())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn header(
    kind: tar::EntryType,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid.into());
    h.set_gid(gid.into());
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(size);
    h
}

/// ADD of a local archive: its entries, moved under `dest` (plain or
/// gzip-compressed tar).
fn append_archive<W: Write>(
    b: &mut tar::Builder<W>,
    src: &Path,
    dest: &str,
) -> Result<(), CopyError> {
    let fail = |err: std::io::Error| CopyError::Archive {
        archive: src.to_path_buf(),
        err,
    };
    let f = fs::File::open(src).map_err(fail)?;
    let mut r = std::io::BufReader::new(f);
    let gz = {
        use std::io::BufRead;
        let head = r.fill_buf().map_err(fail)?;
        head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b
    };
    let input: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(r))
    } else {
        Box::new(r)
    };
    // Extension headers bounded as in a layer: the tar crate reads PAX
    // and GNU long-name data whole.
    let mut a = tar::Archive::new(strata_layerdb::BoundedTarReader::new(input));
    for e in a.entries().map_err(fail)? {
        let mut e = e.map_err(fail)?;
        let path = e.path().map_err(fail)?.to_string_lossy().into_owned();
        let rel = ignore::clean(&path);
        if rel.starts_with("..") {
            return Err(CopyError::ArchiveEscape {
                archive: src.to_path_buf(),
                entry: path,
            });
        }
        let target = rel_join(dest, &rel);
        let mut h = e.header().clone();
        match h.entry_type() {
            tar::EntryType::Directory => {
                b.append_data(&mut h, format!("{target}/"), std::io::empty())
                    .map_err(fail)?;
            }
            tar::EntryType::Symlink => {
                let t = e
                    .link_name()
                    .map_err(fail)?
                    .unwrap_or_default()
                    .into_owned();
                b.append_link(&mut h, &target, t).map_err(fail)?;
            }
            tar::EntryType::Link => {
                let t = e.link_name().map_err(fail)?.unwrap_or_default();
                let t = rel_join(dest, &ignore::clean(&t.to_string_lossy()));
                b.append_link(&mut h, &target, t).map_err(fail)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, &target, &mut e).map_err(fail)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                b.append_data(&mut h, &target, std::io::empty())
                    .map_err(fail)?;
            }
            _ => {} // PAX and GNU records are applied by the reader
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_follow_the_image_symlinks_inside_its_root() {
        let d = tempfile::tempdir().unwrap();
        let (top, base) = (d.path().join("top"), d.path().join("base"));
        fs::create_dir_all(base.join("usr/bin")).unwrap();
        fs::create_dir_all(&top).unwrap();
        std::os::unix::fs::symlink("usr/bin", base.join("bin")).unwrap();
        std::os::unix::fs::symlink("/../../etc", top.join("esc")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/tool", top.join("last")).unwrap();
        let image = ImageTree::open(&[top, base]).unwrap();
        let r = |p: &str, keep_last: bool| image.resolve(p, keep_last).unwrap();
        assert_eq!(r("bin/x", false), "usr/bin/x");
        assert_eq!(r("esc/passwd", false), "etc/passwd");
        assert_eq!(r("last", false), "usr/bin/tool");
        assert_eq!(r("last", true), "last");
        assert_eq!(r("new/dir", false), "new/dir");
    }
}
