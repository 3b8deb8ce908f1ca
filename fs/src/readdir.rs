//! The merged directory listing, with stable offsets.
//!
//! A listing merges a directory's layers (names from higher layers win;
//! whiteouts, opaque directories and `.wh.*` names hide). Each name's
//! offset is a keyed hash of the name itself (as ext4's htree offsets), and
//! a listing is handed out in offset order: an entry's offset does not
//! depend on what else the directory holds, so a listing read in several
//! calls never repeats or skips an entry that stays, however the directory
//! changes meanwhile, and without any per-open state. That is what lets
//! Strata answer OPENDIR with ENOSYS: the kernel then never sends OPENDIR
//! or RELEASEDIR, two round trips less for every directory read.
//!
//! Reading from offset 0 (a new listing, rewinddir) merges anew; later
//! calls reuse that merge, dropped when the listing is read to its end.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use nix::errno::Errno;

use crate::dircache::read_layer_dir;
use crate::layers::LayerIdx;
use crate::nodes::{Kind, Node};
use crate::overlay::{Overlay, Res};
use crate::path::RelPath;

/// A visible entry of one layer's directory: name, layer, real inode
/// number, kind.
pub type LayerEntry = (Vec<u8>, LayerIdx, u64, Kind);

/// One entry of a merged listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    /// Its name.
    pub name: OsString,
    /// Its inode number as users see it, unless `renumber` says otherwise.
    pub ino: u64,
    /// Its kind.
    pub kind: Kind,
    /// An upper entry of a merged directory with no live node: it may be a
    /// copied-up file (numbered as its origin) or a merged directory
    /// (numbered as its lower one), so [`Overlay::entry_ino`] resolves it
    /// when it is handed out without a lookup.
    pub renumber: bool,
}

/// A merged listing in offset order: `(offset, entry)`.
#[derive(Debug, Default)]
pub struct Listing {
    entries: Vec<(u64, DirEntry)>,
}

impl Listing {
    /// The entries after `offset`.
    pub fn after(&self, offset: u64) -> &[(u64, DirEntry)] {
        let i = self.entries.partition_point(|(o, _)| *o <= offset);
        &self.entries[i..]
    }

    /// Orders `entries` (`.` and `..` first) by their offsets: 1 and 2 for
    /// the dots, a keyed hash of the name, at least 3, for the others (a
    /// collision, never seen in practice, takes the next free value).
    fn new(entries: Vec<DirEntry>, keys: &std::hash::RandomState) -> Listing {
        use std::hash::BuildHasher;
        let mut out: Vec<(u64, DirEntry)> = Vec::with_capacity(entries.len());
        let mut rest = Vec::with_capacity(entries.len());
        for e in entries {
            match e.name.as_bytes() {
                b"." => out.push((1, e)),
                b".." => out.push((2, e)),
                n => rest.push((3 + (keys.hash_one(n) >> 2), e)),
            }
        }
        rest.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        for i in 1..rest.len() {
            if rest[i].0 <= rest[i - 1].0 {
                rest[i].0 = rest[i - 1].0 + 1;
            }
        }
        out.sort_unstable_by_key(|(o, _)| *o);
        out.extend(rest);
        Listing { entries: out }
    }
}

impl Overlay {
    /// The listing of the directory `node` to read from `offset`: merged
    /// anew at offset 0, else the merge of the listing in progress.
    pub fn listing(&self, node: &Node, offset: u64) -> Res<Arc<Listing>> {
        if offset != 0 {
            if let Some(l) = self.nodes.listings.get(&node.id) {
                return Ok(l.clone());
            }
        }
        let l = Arc::new(Listing::new(self.list_dir(node)?, &self.cookie_keys));
        self.nodes.listings.insert(node.id, l.clone());
        Ok(l)
    }

    /// A listing of `node` was read to its end: its merge can go.
    pub fn listing_done(&self, node: &Node) {
        self.nodes.listings.remove(&node.id);
    }

    /// Lists the merged directory `node`, including `.` and `..`.
    pub fn list_dir(&self, node: &Node) -> Res<Vec<DirEntry>> {
        let s = node.state();
        if s.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let path = self.nodes.path(node)?;
        let parent_ino = match self.parent_of(node) {
            Ok(p) => p.ino,
            Err(_) => node.ino,
        };
        let dot = |name: &str, ino| DirEntry {
            name: name.into(),
            ino,
            kind: Kind::Dir,
            renumber: false,
        };
        let mut out = vec![dot(".", node.ino), dot("..", parent_ino)];
        let entries = self.merged_entries(&path, &s.layers)?;
        let children = node.children_snapshot();
        // Upper entries of a merged or impure directory may be copied-up
        // entries, numbered as their origins.
        let merged =
            s.layers.len() > 1 || (self.stack.is_upper(s.layers[0]) && self.is_impure(&path));
        for (name, layer, d_ino, kind) in entries {
            let name = OsString::from_vec(name);
            let live = children.get(&name).and_then(|id| self.nodes.get(*id).ok());
            out.push(DirEntry {
                ino: live
                    .as_ref()
                    .map_or_else(|| self.stack.ino(layer, d_ino), |c| c.ino),
                renumber: live.is_none() && merged && self.stack.is_upper(layer),
                name,
                kind,
            });
        }
        Ok(out)
    }

    /// The inode number of a listed entry of `dir`, as lookup gives it.
    pub fn entry_ino(&self, dir: &Node, e: &DirEntry) -> u64 {
        if !e.renumber {
            return e.ino;
        }
        let (Ok(path), layers) = (self.nodes.path(dir), dir.state().layers) else {
            return e.ino;
        };
        match self.resolve(&path, &layers, e.name.as_bytes()) {
            Ok(Some(r)) => {
                let p = path.join(e.name.as_bytes());
                self.ino_for(r.layers[0], &p, &r.stat, r.kind, &r.layers)
            }
            _ => e.ino,
        }
    }

    /// The visible entries of the directory `path` merged from `layers`:
    /// (name, layer it comes from, real inode number, kind), upper first.
    /// Lower directories come from the cache; the upper one is read anew.
    pub fn merged_entries(&self, path: &RelPath, layers: &[LayerIdx]) -> Res<Vec<LayerEntry>> {
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut out = Vec::new();
        for &l in layers {
            let dir = if self.stack.is_upper(l) {
                Arc::new(read_layer_dir(&self.stack, l, path)?)
            } else {
                self.dircache.get(&self.stack, l, path)?
            };
            for (name, e) in dir.entries.iter() {
                if seen.insert(name.to_vec()) && !e.whiteout {
                    out.push((name.to_vec(), l, e.ino, e.kind));
                }
            }
            // `.wh.NAME` hides NAME in the layers below, not beside it.
            seen.extend(dir.wh.iter().map(|n| n.to_vec()));
        }
        Ok(out)
    }

    /// Whether the merged directory is empty (only whiteouts below it).
    pub fn dir_is_empty(&self, path: &RelPath, layers: &[LayerIdx]) -> Res<bool> {
        Ok(self.merged_entries(path, layers)?.is_empty())
    }
}

/// One entry of a READDIRPLUS reply.
pub struct PlusEntry<'a> {
    /// The node the kernel links to the name (and counts a lookup of), or
    /// `None`: the name only, node id 0, no entry linked.
    pub node: Option<crate::nodes::NodeId>,
    /// The entry's offset.
    pub offset: u64,
    /// Its name.
    pub name: &'a std::ffi::OsStr,
    /// How long the kernel may keep the entry and its attributes.
    pub ttl: std::time::Duration,
    /// Its attributes (only the type and inode number without a node).
    pub attr: fuser::FileAttr,
}

impl Overlay {
    /// Answers READDIRPLUS from `offset`: `add` puts one entry into the
    /// reply and says whether the reply is full.
    ///
    /// The policy: an entry carries a node and full attributes only when
    /// the kernel will use them and does not hold them yet. `.` and `..`
    /// never do; a name the kernel already holds a node for neither: its
    /// cached attributes are right (every change goes through this mount),
    /// and relinking would make the kernel drop the ACLs it cached, which
    /// `ls -l` then asks again; nor does a file while nobody stats the
    /// listed files (`find`, `ls -f`: no attributes to read from disk; see
    /// [`Overlay::stat_heavy`]).
    pub fn readdirplus(
        &self,
        dir: &Arc<Node>,
        offset: u64,
        mut add: impl FnMut(PlusEntry<'_>) -> bool,
    ) -> Res<()> {
        let with_file_attrs = self.stat_heavy();
        let listing = self.listing(dir, offset)?;
        let entries = listing.after(offset);
        if entries.is_empty() {
            self.listing_done(dir);
        }
        for (off, e) in entries {
            let dots = e.name == "." || e.name == "..";
            let name_only = dots
                || (e.kind != Kind::Dir && !with_file_attrs)
                || self.nodes.child(dir, &e.name).is_some();
            let full = if name_only {
                if !dots {
                    dir.listed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let mut attr =
                    crate::overlay::attr_of(&crate::overlay::zero_stat(), self.entry_ino(dir, e));
                attr.kind = e.kind.fuse();
                add(PlusEntry {
                    node: None,
                    offset: *off,
                    name: &e.name,
                    ttl: std::time::Duration::ZERO,
                    attr,
                })
            } else {
                // Each entry is a lookup the kernel will count, unless
                // the reply is full and the entry is not sent.
                let Ok((node, attr)) = self.lookup_for(dir, &e.name, true) else {
                    continue;
                };
                let full = add(PlusEntry {
                    node: Some(node.id),
                    offset: *off,
                    name: &e.name,
                    ttl: self.ttl_for(&attr),
                    attr,
                });
                if full {
                    self.nodes.forget(node.id, 1);
                }
                full
            };
            if full {
                break;
            }
        }
        Ok(())
    }
}
