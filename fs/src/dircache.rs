//! The lookup cache of lower directories.
//!
//! Lower layers never change while mounted, so a lower directory is read
//! once (one `getdents` pass, plus a stat only for character devices and
//! possible xattr whiteouts) into a [`LowerDir`]: its names with their kinds
//! and inode numbers, the names its `.wh.` entries hide, and whether it is
//! opaque. Resolving a name in that layer is then a binary search, with no
//! syscall: at any depth of the stack, a lookup costs one probe per layer
//! and one `fstatat` of the entry that wins. Listing a merged directory
//! reuses the same records. Names are packed in one buffer per directory
//! with a 16-byte record each (about 24 bytes a name, against 120 for a
//! hash map of boxed names).
//!
//! The cache is an LRU bounded by the total number of names it holds, so
//! walking millions of files does not grow the server without limit.

use std::collections::HashSet;
use std::sync::Arc;

use lru::LruCache;
use nix::errno::Errno;
use parking_lot::Mutex;

use crate::layers::{LayerIdx, Stack};
use crate::nodes::Kind;
use crate::path::RelPath;
use crate::sys;
use strata_ovl::layer as whiteout;
use strata_ovl::names::EntryName;

/// Names held by the cache at most (all directories together).
pub const MAX_CACHED_NAMES: usize = 512 * 1024;

/// One name of a lower directory.
#[derive(Debug, Clone, Copy)]
pub struct LowerEntry {
    /// Its kind.
    pub kind: Kind,
    /// Its real inode number.
    pub ino: u64,
    /// It is a whiteout (device 0/0, or the kernel's xattr form).
    pub whiteout: bool,
}

/// The entries of a directory: names packed in one buffer, records sorted
/// by name.
#[derive(Debug, Default)]
pub struct Entries {
    names: Vec<u8>,
    recs: Vec<Rec>,
}

/// One packed entry: 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Rec {
    ino: u64,
    off: u32,
    len: u16,
    kind: Kind,
    whiteout: bool,
}

impl Entries {
    fn name(&self, r: &Rec) -> &[u8] {
        &self.names[r.off as usize..r.off as usize + r.len as usize]
    }

    fn entry(r: &Rec) -> LowerEntry {
        LowerEntry {
            kind: r.kind,
            ino: r.ino,
            whiteout: r.whiteout,
        }
    }

    /// Adds a name (call [`Entries::seal`] once all are in).
    fn push(&mut self, name: &[u8], e: LowerEntry) {
        self.recs.push(Rec {
            ino: e.ino,
            off: self.names.len() as u32,
            len: name.len() as u16,
            kind: e.kind,
            whiteout: e.whiteout,
        });
        self.names.extend_from_slice(name);
    }

    /// Sorts the records for lookups and drops spare capacity.
    fn seal(&mut self) {
        let mut recs = std::mem::take(&mut self.recs);
        recs.sort_unstable_by(|a, b| self.name(a).cmp(self.name(b)));
        recs.shrink_to_fit();
        self.recs = recs;
        self.names.shrink_to_fit();
    }

    /// The entry named `name`.
    pub fn get(&self, name: &[u8]) -> Option<LowerEntry> {
        self.recs
            .binary_search_by(|r| self.name(r).cmp(name))
            .ok()
            .map(|i| Self::entry(&self.recs[i]))
    }

    /// Every entry, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], LowerEntry)> {
        self.recs.iter().map(|r| (self.name(r), Self::entry(r)))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.recs.len()
    }
}

/// One directory of one lower layer, as read once.
#[derive(Debug, Default)]
pub struct LowerDir {
    /// The directory exists in that layer.
    pub exists: bool,
    /// It is opaque (hides the layers below).
    pub opaque: bool,
    /// Its entries, whiteouts included, `.wh.*` names excluded.
    pub entries: Entries,
    /// Names that `.wh.NAME` entries hide in the layers below.
    pub wh: HashSet<Box<[u8]>>,
}

impl LowerDir {
    fn size(&self) -> usize {
        1 + self.entries.len() + self.wh.len()
    }
}

/// The bounded cache of [`LowerDir`]s.
#[derive(Debug)]
pub struct DirCache {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    lru: LruCache<(LayerIdx, RelPath), Arc<LowerDir>>,
    names: usize,
}

impl Default for DirCache {
    fn default() -> Self {
        DirCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                names: 0,
            }),
        }
    }
}

impl DirCache {
    /// The directory `path` of lower layer `l`, read on first use.
    pub fn get(&self, stack: &Stack, l: LayerIdx, path: &RelPath) -> Result<Arc<LowerDir>, Errno> {
        let key = (l, path.clone());
        if let Some(d) = self.inner.lock().lru.get(&key) {
            return Ok(d.clone());
        }
        let d = Arc::new(read_layer_dir(stack, l, path)?);
        let mut inner = self.inner.lock();
        inner.names += d.size();
        if let Some(old) = inner.lru.put(key, d.clone()) {
            inner.names -= old.size();
        }
        while inner.names > MAX_CACHED_NAMES && inner.lru.len() > 1 {
            if let Some((_, old)) = inner.lru.pop_lru() {
                inner.names -= old.size();
            }
        }
        Ok(d)
    }
}

/// Reads the directory `path` of layer `l` (uncached: the upper layer's
/// directories are read this way each time, since they change).
pub fn read_layer_dir(stack: &Stack, l: LayerIdx, path: &RelPath) -> Result<LowerDir, Errno> {
    let fd = stack.fd(l);
    let dir = match sys::open_beneath(fd, path.c(), libc::O_RDONLY | libc::O_DIRECTORY, 0) {
        Ok(d) => d,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => {
            return Ok(LowerDir::default())
        }
        Err(e) => return Err(e),
    };
    let marks = whiteout::dir_marks(fd, path);
    let mut d = LowerDir {
        exists: true,
        opaque: marks.opaque,
        ..Default::default()
    };
    let xattr_whiteouts = marks.xattr_whiteouts;
    for (name, ino, dtype) in sys::read_dir_fd(dir)? {
        match EntryName::of(&name) {
            EntryName::OpaqueMarker => {
                d.opaque = true;
                continue;
            }
            EntryName::Whiteout(target) => {
                d.wh.insert(target.into());
                continue;
            }
            EntryName::AufsMeta => continue,
            EntryName::Plain => {}
        }
        let mut kind = Kind::from_dtype(dtype);
        let mut is_wh = false;
        let needs_stat = match kind {
            None | Some(Kind::CharDev) => true,
            Some(Kind::File) => xattr_whiteouts,
            _ => false,
        };
        if needs_stat {
            let p = path.join(&name);
            match sys::stat_at(fd, p.c()) {
                Ok(st) => {
                    is_wh = whiteout::is_whiteout(fd, &p, &st);
                    kind = Some(Kind::from_mode(st.st_mode));
                }
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e),
            }
        }
        d.entries.push(
            &name,
            LowerEntry {
                kind: kind.unwrap_or(Kind::File),
                ino,
                whiteout: is_wh,
            },
        );
    }
    d.entries.seal();
    Ok(d)
}
