//! Snapshots of directory trees — a merged view or a layer directory — and a
//! readable comparison of two snapshots.
//!
//! A merged snapshot records what users see: names, types, permission bits,
//! owners, sizes, contents, symlink targets, device numbers, xattrs (without
//! the overlay-private ones) and, for non-directories, nlink and a
//! classified mtime. A layer snapshot additionally reads the on-disk
//! conventions: any whiteout form becomes [`Kind::Whiteout`] and any opaque
//! marker becomes `Dir { opaque: Some(true) }`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use strata_ovl::names::{self, EntryName};
use strata_ovl::{Xattr, XattrNs};

use crate::fixture::FIXTURE_MTIME;
use crate::sys;

/// Whether an xattr name is overlay-private (hidden from users, not
/// compared).
pub fn is_private_xattr(name: &str) -> bool {
    strata_ovl::is_private_xattr(name.as_bytes())
}

/// The type of an entry, with what identifies its contents.
#[derive(Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file: size, a hash of the contents and their first bytes.
    File { size: u64, hash: u64, head: Vec<u8> },
    /// A directory; `opaque` is known only for layer snapshots.
    Dir { opaque: Option<bool> },
    /// A symlink and its target.
    Symlink(Vec<u8>),
    /// A fifo.
    Fifo,
    /// A character device (major, minor).
    Char(u32, u32),
    /// A block device (major, minor).
    Block(u32, u32),
    /// A socket.
    Socket,
    /// A whiteout, in any form (layer snapshots only).
    Whiteout,
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::File { size, hash, head } => {
                write!(f, "file {size}B {:?}", String::from_utf8_lossy(head))?;
                if *size as usize > head.len() {
                    write!(f, "... #{hash:016x}")?;
                }
                Ok(())
            }
            Kind::Dir { opaque: Some(true) } => write!(f, "dir (opaque)"),
            Kind::Dir { .. } => write!(f, "dir"),
            Kind::Symlink(t) => write!(f, "symlink -> {:?}", String::from_utf8_lossy(t)),
            Kind::Fifo => write!(f, "fifo"),
            Kind::Char(a, b) => write!(f, "chardev {a}:{b}"),
            Kind::Block(a, b) => write!(f, "blockdev {a}:{b}"),
            Kind::Socket => write!(f, "socket"),
            Kind::Whiteout => write!(f, "whiteout"),
        }
    }
}

/// A modification time, classified: a fixture's fixed time (kept from a
/// layer or set by a test) compares exactly, any later time is just "recent".
#[derive(Clone, PartialEq, Eq)]
pub enum Mtime {
    /// Seconds since the epoch, before 2020.
    Fixed(i64),
    /// Set by an operation during the test.
    Recent,
}

impl fmt::Debug for Mtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mtime::Fixed(s) if *s == FIXTURE_MTIME => write!(f, "fixture"),
            Mtime::Fixed(s) => write!(f, "{s}"),
            Mtime::Recent => write!(f, "recent"),
        }
    }
}

/// One entry of a snapshot.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// Type and contents.
    pub kind: Kind,
    /// Permission bits (07777).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count (non-directories, when compared).
    pub nlink: Option<u64>,
    /// Modification time (non-directories, when compared).
    pub mtime: Option<Mtime>,
    /// Extended attributes other than overlay-private ones.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == Kind::Whiteout {
            return write!(f, "whiteout");
        }
        write!(
            f,
            "{:?} mode {:04o} owner {}:{}",
            self.kind, self.mode, self.uid, self.gid
        )?;
        if let Some(n) = self.nlink {
            write!(f, " nlink {n}")?;
        }
        if let Some(m) = &self.mtime {
            write!(f, " mtime {m:?}")?;
        }
        for (k, v) in &self.xattrs {
            write!(f, " {k}={:?}", String::from_utf8_lossy(v))?;
        }
        Ok(())
    }
}

/// What a snapshot records and how it reads the tree.
#[derive(Debug, Clone, Copy)]
pub struct SnapOpts {
    /// Read whiteout and opaque conventions (for layer directories).
    pub layer: bool,
    /// Record mtimes of non-directories.
    pub mtime: bool,
    /// Record link counts of non-directories.
    pub nlink: bool,
}

impl SnapOpts {
    /// For a merged view: everything.
    pub const MERGED: SnapOpts = SnapOpts {
        layer: false,
        mtime: true,
        nlink: true,
    };
    /// For an upper or lower layer directory: everything, with whiteout and
    /// opaque conventions read.
    pub const LAYER: SnapOpts = SnapOpts {
        layer: true,
        mtime: true,
        nlink: true,
    };
}

/// A tree: relative path ("" is the root) to entry.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Snapshot(pub BTreeMap<String, Entry>);

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (p, e) in &self.0 {
            writeln!(f, "  /{p}: {e:?}")?;
        }
        Ok(())
    }
}

fn major_minor(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

fn hash_bytes(data: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

fn read_xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let names =
        sys::llistxattr(path).unwrap_or_else(|e| panic!("listxattr {}: {e}", path.display()));
    for name in names {
        if is_private_xattr(&name) {
            continue;
        }
        match sys::lgetxattr(path, &name) {
            Ok(v) => {
                out.insert(name, v);
            }
            Err(e) => {
                out.insert(name, format!("<getxattr error {e}>").into_bytes());
            }
        }
    }
    out
}

fn is_opaque_marked(path: &Path) -> bool {
    names::OPAQUE_XATTRS
        .iter()
        .any(|n| sys::lgetxattr(path, n.to_str().expect("ascii")).is_ok_and(|v| v == b"y"))
        || path
            .join(OsStr::from_bytes(names::OPAQUE_MARKER))
            .symlink_metadata()
            .is_ok()
}

fn entry_at(path: &Path, opts: SnapOpts) -> Entry {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let whiteout = Entry {
        kind: Kind::Whiteout,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: None,
        mtime: None,
        xattrs: BTreeMap::new(),
    };
    if opts.layer {
        if ft.is_char_device() && md.rdev() == 0 {
            return whiteout;
        }
        let xattr_whiteout = [XattrNs::Trusted, XattrNs::User].into_iter().any(|ns| {
            sys::lgetxattr(path, Xattr::Whiteout.name(ns).to_str().expect("ascii")).is_ok()
        });
        if ft.is_file() && md.len() == 0 && xattr_whiteout {
            return whiteout;
        }
    }
    let kind = if ft.is_file() {
        let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        Kind::File {
            size: md.len(),
            hash: hash_bytes(&data),
            head: data[..data.len().min(40)].to_vec(),
        }
    } else if ft.is_dir() {
        Kind::Dir {
            opaque: opts.layer.then(|| is_opaque_marked(path)),
        }
    } else if ft.is_symlink() {
        let t = fs::read_link(path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()));
        Kind::Symlink(t.into_os_string().into_encoded_bytes())
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        let (a, b) = major_minor(md.rdev());
        Kind::Char(a, b)
    } else if ft.is_block_device() {
        let (a, b) = major_minor(md.rdev());
        Kind::Block(a, b)
    } else {
        Kind::Socket
    };
    let is_dir = ft.is_dir();
    Entry {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        nlink: (opts.nlink && !is_dir).then(|| md.nlink()),
        mtime: (opts.mtime && !is_dir).then(|| {
            if md.mtime() < 1_577_836_800 {
                Mtime::Fixed(md.mtime())
            } else {
                Mtime::Recent
            }
        }),
        xattrs: read_xattrs(path),
    }
}

fn walk(root: &Path, rel: &str, opts: SnapOpts, out: &mut BTreeMap<String, Entry>) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    for name in names {
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if opts.layer {
            let hidden = match EntryName::of(name.as_bytes()) {
                EntryName::OpaqueMarker | EntryName::AufsMeta => continue, // the parent's opacity
                EntryName::Whiteout(hidden) => Some(String::from_utf8_lossy(hidden).into_owned()),
                EntryName::Plain => None,
            };
            if let Some(hidden) = hidden {
                let hidden_rel = if rel.is_empty() {
                    hidden.to_string()
                } else {
                    format!("{rel}/{hidden}")
                };
                out.insert(
                    hidden_rel,
                    Entry {
                        kind: Kind::Whiteout,
                        mode: 0,
                        uid: 0,
                        gid: 0,
                        nlink: None,
                        mtime: None,
                        xattrs: BTreeMap::new(),
                    },
                );
                continue;
            }
        }
        let entry = entry_at(&root.join(&child_rel), opts);
        let descend = matches!(entry.kind, Kind::Dir { .. });
        out.insert(child_rel.clone(), entry);
        if descend {
            walk(root, &child_rel, opts, out);
        }
    }
}

/// Snapshots the tree under `root`.
pub fn snapshot(root: &Path, opts: SnapOpts) -> Snapshot {
    let mut map = BTreeMap::new();
    map.insert(String::new(), entry_at(root, opts));
    walk(root, "", opts, &mut map);
    Snapshot(map)
}

/// The differences between two snapshots, one line per differing path, or
/// None if they are the same.
pub fn diff(a_name: &str, a: &Snapshot, b_name: &str, b: &Snapshot) -> Option<String> {
    let keys: BTreeSet<&String> = a.0.keys().chain(b.0.keys()).collect();
    let mut lines = Vec::new();
    for k in keys {
        match (a.0.get(k), b.0.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => lines.push(format!(
                "  /{k}:\n    {a_name:>8}: {x:?}\n    {b_name:>8}: {y:?}"
            )),
            (Some(x), None) => lines.push(format!("  /{k}: only in {a_name}: {x:?}")),
            (None, Some(y)) => lines.push(format!("  /{k}: only in {b_name}: {y:?}")),
            (None, None) => unreachable!(),
        }
    }
    if lines.is_empty() {
        None
    } else {
        let n = lines.len();
        if n > 60 {
            lines.truncate(60);
            lines.push(format!("  ... and {} more", n - 60));
        }
        Some(lines.join("\n"))
    }
}

fn children_index(snap: &Snapshot) -> HashMap<&str, Vec<&str>> {
    let mut idx: HashMap<&str, Vec<&str>> = HashMap::new();
    for p in snap.0.keys() {
        if p.is_empty() {
            continue;
        }
        let parent = p.rfind('/').map_or("", |i| &p[..i]);
        idx.entry(parent).or_default().push(p.as_str());
    }
    idx
}

/// What a stack of layer snapshots (topmost first) shows when merged: each
/// visible path and whether it is a directory. Whiteouts hide, opaque
/// directories and non-directories stop the merge, the topmost entry wins.
pub fn lower_view(lowers: &[Snapshot]) -> BTreeMap<String, bool> {
    let idx: Vec<_> = lowers.iter().map(children_index).collect();
    let mut out = BTreeMap::new();
    out.insert(String::new(), true);
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let mut decided: BTreeMap<String, bool> = BTreeMap::new(); // name -> visible
        for (layer, children) in lowers.iter().zip(&idx) {
            match layer.0.get(dir.as_str()) {
                Some(Entry {
                    kind: Kind::Dir { opaque },
                    ..
                }) => {
                    for c in children.get(dir.as_str()).into_iter().flatten() {
                        if decided.contains_key(*c) {
                            continue;
                        }
                        let e = &layer.0[*c];
                        let visible = e.kind != Kind::Whiteout;
                        decided.insert(c.to_string(), visible);
                        if visible {
                            let is_dir = matches!(e.kind, Kind::Dir { .. });
                            out.insert(c.to_string(), is_dir);
                            if is_dir {
                                stack.push(c.to_string());
                            }
                        }
                    }
                    if *opaque == Some(true) {
                        break;
                    }
                }
                Some(_) => break, // a whiteout or non-directory ends the merge
                None => {}
            }
        }
    }
    out
}

/// Rewrites an upper-directory snapshot into a canonical form, so that two
/// uppers that give the same merged view over `lowers` (topmost first)
/// compare equal: a directory counts as opaque when it hides a non-empty
/// lower directory, either by a marker or by whiting out every lower entry;
/// whiteouts that hide nothing are dropped.
pub fn normalize_upper(upper: &mut Snapshot, lowers: &[Snapshot]) {
    let view = lower_view(lowers);
    let view_children = {
        let mut m: HashMap<&str, Vec<&str>> = HashMap::new();
        for p in view.keys().filter(|p| !p.is_empty()) {
            m.entry(p.rfind('/').map_or("", |i| &p[..i]))
                .or_default()
                .push(p.as_str());
        }
        m
    };
    let mut eff_opaque: HashMap<String, bool> = HashMap::new();
    // Whether the lower entry at p still shows through the upper's ancestors.
    let relevant = |p: &str, eff: &HashMap<String, bool>, upper: &Snapshot| -> bool {
        if !view.contains_key(p) {
            return false;
        }
        let mut a = p;
        while let Some(i) = a.rfind('/') {
            a = &a[..i];
            if !ancestor_passes(a, eff, upper) {
                return false;
            }
        }
        p.is_empty() || ancestor_passes("", eff, upper)
    };
    let paths: Vec<String> = upper.0.keys().cloned().collect();
    for p in &paths {
        if let Kind::Dir { opaque } = &upper.0[p].kind {
            let lower_dir = view.get(p.as_str()) == Some(&true) && relevant(p, &eff_opaque, upper);
            let kids = view_children
                .get(p.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let all_whited = kids
                .iter()
                .all(|c| upper.0.get(*c).is_some_and(|e| e.kind == Kind::Whiteout));
            let eff = lower_dir && !kids.is_empty() && (*opaque == Some(true) || all_whited);
            eff_opaque.insert(p.clone(), eff);
        }
    }
    let keep: Vec<bool> = paths
        .iter()
        .map(|p| upper.0[p].kind != Kind::Whiteout || relevant(p, &eff_opaque, upper))
        .collect();
    for (p, k) in paths.iter().zip(keep) {
        if !k {
            upper.0.remove(p);
        } else if let Some(Entry {
            kind: Kind::Dir { opaque },
            ..
        }) = upper.0.get_mut(p)
        {
            *opaque = Some(eff_opaque[p]);
        }
    }
}

/// Whether lower entries below the upper path `a` still show: `a` is absent
/// from the upper, or a directory that is not (effectively) opaque.
fn ancestor_passes(a: &str, eff: &HashMap<String, bool>, upper: &Snapshot) -> bool {
    match upper.0.get(a) {
        None => true,
        Some(Entry {
            kind: Kind::Dir { .. },
            ..
        }) => !eff.get(a).copied().unwrap_or(false),
        Some(_) => false,
    }
}
