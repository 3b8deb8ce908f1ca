//! COPY and ADD: which files a step copies (with the metadata they will
//! have in the image), the digest that is their cache key, and writing
//! them into a fresh upper directory that [`strata_layerdb::Store::commit`]
//! turns into a layer.
//!
//! The digest covers each entry's destination path, type, mode, owner
//! (after `--chown`/`--chmod`) and content (or link target), never its
//! mtime, as Docker documents: a `touch` is still a cache hit.
//!
//! Parent directories of a destination that exist in the image are
//! written with the image's mode and owner, as a copy-up would; new ones
//! are 0755 root.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

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
    fn walk(&self, rel: &str, out: &mut Vec<(String, fs::Metadata)>) -> Result<(), String> {
        let dir = self.dir.join(rel);
        let rd = fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let child = rel_join(rel, &n.to_string_lossy());
            let p = self.dir.join(&child);
            let md = fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
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
    pub fn resolve(&self, src: &str) -> Result<Vec<(String, fs::Metadata)>, String> {
        let rel = ignore::clean(src);
        if rel == ".." || rel.starts_with("../") {
            return Err(format!("{src} is outside the build context"));
        }
        if ignore::has_glob(&rel) {
            let mut all = Vec::new();
            self.walk("", &mut all)?;
            let hits: Vec<_> = all
                .into_iter()
                .filter(|(p, _)| ignore::matches_path(&rel, p))
                .collect();
            if hits.is_empty() {
                return Err(format!("no source files match {src}"));
            }
            return Ok(hits);
        }
        let p = self.dir.join(&rel);
        match fs::symlink_metadata(&p) {
            Ok(_) if !rel.is_empty() && self.excluded(&rel) => Err(format!(
                "{src} is excluded by the ignore file (.dockerignore/.containerignore)"
            )),
            Ok(md) => Ok(vec![(rel, md)]),
            Err(_) => Err(format!("{src}: no such file or directory")),
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
    ) -> Result<(), String> {
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

fn hash_file(p: &Path, h: &mut Sha256) -> Result<(), String> {
    let mut f = fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// The digest of what a COPY writes: paths, types, modes, owners and
/// contents; not mtimes.
pub fn digest(items: &[Item]) -> Result<String, String> {
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

/// Looks a path up in a stack of layer directories (top first): the
/// metadata of the entry that wins, or `None` when it is absent or
/// whited out.
pub fn lower_meta(lowers: &[PathBuf], rel: &str) -> Option<fs::Metadata> {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return lowers.first().and_then(|l| fs::metadata(l).ok());
    }
    let (parent, name) = match rel.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", rel),
    };
    for l in lowers {
        if let Ok(m) = fs::symlink_metadata(l.join(rel)) {
            let whiteout = m.file_type().is_char_device() && m.rdev() == 0;
            return (!whiteout).then_some(m);
        }
        if l.join(parent).join(format!(".wh.{name}")).exists() {
            return None;
        }
    }
    None
}

/// Writes items into `upper` (a fresh directory), creating the parents
/// they need with the image's metadata (`lowers`, top first).
pub fn materialize(upper: &Path, lowers: &[PathBuf], items: &[Item]) -> Result<(), String> {
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    let mut dirs: Vec<(PathBuf, i64)> = Vec::new();
    for it in items {
        ensure_parents(upper, lowers, &it.dst)?;
        let p = upper.join(&it.dst);
        match &it.kind {
            Kind::Dir => {
                if !p.is_dir() {
                    fs::create_dir(&p).map_err(|e| io("mkdir", &p, e))?;
                }
                dirs.push((p.clone(), it.mtime));
            }
            Kind::File(src) => {
                let _ = fs::remove_file(&p);
                fs::copy(src, &p).map_err(|e| io("copy to", &p, e))?;
            }
            Kind::Inline(c) => {
                let _ = fs::remove_file(&p);
                fs::write(&p, c).map_err(|e| io("write", &p, e))?;
            }
            Kind::Symlink(t) => {
                let _ = fs::remove_file(&p);
                std::os::unix::fs::symlink(t, &p).map_err(|e| io("symlink", &p, e))?;
            }
            Kind::Tar(src) => {
                fs::create_dir_all(&p).map_err(|e| io("mkdir", &p, e))?;
                let f = fs::File::open(src).map_err(|e| io("open", src, e))?;
                let mut r = std::io::BufReader::new(f);
                let gz = {
                    use std::io::BufRead;
                    let b = r.fill_buf().map_err(|e| io("read", src, e))?;
                    b.len() >= 2 && b[0] == 0x1f && b[1] == 0x8b
                };
                let input: Box<dyn Read> = if gz {
                    Box::new(flate2::read::GzDecoder::new(r))
                } else {
                    Box::new(r)
                };
                let mut a = tar::Archive::new(input);
                a.set_preserve_permissions(true);
                a.set_preserve_ownerships(true);
                a.set_overwrite(true);
                a.unpack(&p).map_err(|e| io("extract into", &p, e))?;
                continue;
            }
        }
        std::os::unix::fs::lchown(&p, Some(it.uid), Some(it.gid))
            .map_err(|e| io("chown", &p, e))?;
        if !matches!(it.kind, Kind::Symlink(_)) {
            fs::set_permissions(&p, fs::Permissions::from_mode(it.mode))
                .map_err(|e| io("chmod", &p, e))?;
        }
        set_mtime(&p, it.mtime);
    }
    // Directory times last: writing into a directory changes its mtime.
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, t) in dirs {
        set_mtime(&p, t);
    }
    Ok(())
}

fn set_mtime(p: &Path, secs: i64) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(secs, 0);
    let _ = utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    );
}

fn ensure_parents(upper: &Path, lowers: &[PathBuf], rel: &str) -> Result<(), String> {
    let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    let mut cur = String::new();
    for s in segs.iter().take(segs.len().saturating_sub(1)) {
        cur = rel_join(&cur, s);
        let p = upper.join(&cur);
        if p.is_dir() {
            continue;
        }
        fs::create_dir(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
        let (mode, uid, gid) = match lower_meta(lowers, &cur) {
            Some(m) if m.is_dir() => (m.mode() & 0o7777, m.uid(), m.gid()),
            _ => (0o755, 0, 0),
        };
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", p.display()))?;
    }
    Ok(())
}
