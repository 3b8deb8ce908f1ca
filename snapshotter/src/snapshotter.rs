//! The snapshots: containerd's Snapshotter operations over the metadata
//! (`store.rs`) and the snapshot directories.
//!
//! ```text
//! ROOT/lock                 flock: one snapshotter per root
//! ROOT/metadata.json        every snapshot's record (store.rs)
//! ROOT/snapshots/ID/fs      a snapshot's files: the upper directory of its mounts
//! ROOT/snapshots/ID/work    the union filesystem's scratch directory
//! ROOT/snapshots/new-ID     a directory being made (Prepare, View)
//! ROOT/snapshots/rm-ID      a directory being deleted (Remove)
//! ```
//!
//! Order of work, so that a crash (kill -9) at any instant leaves metadata
//! that is consistent and only directories Cleanup can tell are leftovers:
//! Prepare makes `new-ID`, renames it to `ID`, then saves the record; Remove
//! saves the metadata without the record, renames `ID` to `rm-ID`, then
//! deletes it. Ids are never reused (on start, `next_id` goes past every
//! number found on disk). So a directory whose number has no record, and
//! every `new-` and `rm-` directory, is a leftover; Cleanup deletes them.
//!
//! One mutex guards the metadata; it is held across a change and its save,
//! never across measuring or deleting a tree.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::fcntl::{Flock, FlockArg};

use crate::crash;
use crate::error::{Error, IoContext, Result};
use crate::filter::{Fields, Filters};
use crate::mounts::{is_extraction, Layout, Plan};
use crate::proto::containerd::types::Mount;
use crate::store::{sync_dir, Kind, Metadata, Record, SnapshotId, Time, Usage};
use crate::usage::disk_usage;

/// The most a label's key and value may hold together, as containerd.
pub const MAX_LABEL_BYTES: usize = 4096;

/// What Stat, Update and List tell about a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// Its key.
    pub name: String,
    /// The key of its parent.
    pub parent: Option<String>,
    /// View, active or committed.
    pub kind: Kind,
    /// When it was made (or committed).
    pub created: Time,
    /// When its labels last changed.
    pub updated: Time,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

impl Info {
    fn new(key: &str, r: &Record) -> Info {
        Info {
            name: key.to_string(),
            parent: r.parent.clone(),
            kind: r.kind,
            created: r.created,
            updated: r.updated,
            labels: r.labels.clone(),
        }
    }
}

impl Fields for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first()?.as_str() {
            "name" => Some(self.name.clone()),
            "parent" => Some(self.parent.clone().unwrap_or_default()),
            "kind" => Some(self.kind.as_str().to_string()),
            "labels" => self.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}

/// What Cleanup did.
#[derive(Debug, Default)]
pub struct Cleaned {
    /// Leftover directories deleted.
    pub removed: Vec<PathBuf>,
    /// Leftovers left alone because something is mounted inside them.
    pub busy: Vec<PathBuf>,
}

/// The snapshots under one root.
pub struct Snapshotter {
    root: PathBuf,
    layout: Layout,
    md: Mutex<Metadata>,
    _lock: Flock<File>,
}

/// A directory under `ROOT/snapshots`, by its name.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    /// `ID`: a snapshot's, or a leftover if no record has the id.
    Snapshot(SnapshotId),
    /// `new-ID`: half made.
    New(SnapshotId),
    /// `rm-ID`: half deleted.
    Doomed(SnapshotId),
    /// Anything else: not ours, never touched.
    Foreign,
}

impl Entry {
    fn parse(name: &str) -> Entry {
        if let Ok(id) = name.parse() {
            Entry::Snapshot(id)
        } else if let Some(id) = name.strip_prefix("new-").and_then(|s| s.parse().ok()) {
            Entry::New(id)
        } else if let Some(id) = name.strip_prefix("rm-").and_then(|s| s.parse().ok()) {
            Entry::Doomed(id)
        } else {
            Entry::Foreign
        }
    }

    fn id(&self) -> Option<SnapshotId> {
        match self {
            Entry::Snapshot(id) | Entry::New(id) | Entry::Doomed(id) => Some(*id),
            Entry::Foreign => None,
        }
    }
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(Error::InvalidArgument(format!(
                "label {k:?}: key and value hold {} bytes, more than the {MAX_LABEL_BYTES} allowed",
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}

/// Characters a root may not hold: they would split mount options.
fn check_root(root: &Path) -> Result<()> {
    let s = root.to_string_lossy();
    if let Some(c) = s
        .chars()
        .find(|c| matches!(c, ':' | ',' | '\\' | '=') || c.is_whitespace())
    {
        return Err(Error::InvalidArgument(format!(
            "root {s:?} holds {c:?}, which mount options cannot carry; choose another --root"
        )));
    }
    Ok(())
}

impl Snapshotter {
    /// Opens (creating if need be) the snapshots under `root`, locking it
    /// against a second snapshotter.
    pub fn open(root: &Path) -> Result<Snapshotter> {
        let root = std::path::absolute(root).ctx("resolve", root)?;
        check_root(&root)?;
        let layout = Layout::new(&root);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(layout.snapshots())
            .ctx("create", layout.snapshots())?;
        let lock_path = root.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .ctx("open", &lock_path)?;
        let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                Error::Locked {
                    path: lock_path.clone(),
                }
            } else {
                Error::Io {
                    op: "lock",
                    path: lock_path.clone(),
                    source: e.into(),
                }
            }
        })?;
        let mut md = Metadata::load(&root)?;
        // Ids are never reused: skip past every number a crash left on disk.
        for e in fs::read_dir(layout.snapshots()).ctx("read directory", layout.snapshots())? {
            let e = e.ctx("read directory", layout.snapshots())?;
            if let Some(id) = Entry::parse(&e.file_name().to_string_lossy()).id() {
                md.next_id = md.next_id.max(id.0 + 1);
            }
        }
        Ok(Snapshotter {
            root,
            layout,
            md: Mutex::new(md),
            _lock: lock,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn md(&self) -> MutexGuard<'_, Metadata> {
        // A panic while holding the lock cannot leave the metadata half
        // changed: changes are made on a copy and swapped in after saving.
        self.md.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mounts_of(&self, md: &Metadata, key: &str) -> Result<Vec<Mount>> {
        let rec = md.get(key)?;
        let parents = md.parent_ids(rec);
        Ok(vec![Plan::new(
            &self.layout,
            rec.kind,
            rec.id,
            &parents,
            rec.extraction,
        )
        .to_mount()])
    }

    /// Prepare: a new active snapshot `key` on `parent` (none when empty).
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    /// View: a new read-only snapshot `key` of `parent`.
    pub fn view(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "a snapshot key must not be empty".into(),
            ));
        }
        validate_labels(&labels)?;
        let mut md = self.md();
        if md.snapshots.contains_key(key) {
            return Err(Error::AlreadyExists(key.to_string()));
        }
        let parent = (!parent.is_empty()).then(|| parent.to_string());
        let parent_id = match &parent {
            Some(p) => {
                let pr = md.get(p)?;
                if pr.kind != Kind::Committed {
                    return Err(Error::ParentNotCommitted(p.clone()));
                }
                Some(pr.id)
            }
            None => None,
        };
        let id = SnapshotId(md.next_id);
        let tmp = self.layout.snapshots().join(format!("new-{id}"));
        self.make_dirs(&tmp, parent_id)?;
        crash::point("prepare-dir");
        let dir = self.layout.dir(id);
        if let Err(e) = fs::rename(&tmp, &dir).ctx("rename into place", &dir) {
            let _ = remove_tree(&tmp);
            return Err(e);
        }
        if let Err(e) = sync_dir(self.layout.snapshots()) {
            let _ = remove_tree(&dir);
            return Err(e);
        }
        crash::point("prepare-renamed");
        let now = Time::now();
        let mut next = md.clone();
        next.next_id = id.0 + 1;
        let extraction = kind == Kind::Active && is_extraction(key, &labels);
        next.snapshots.insert(
            key.to_string(),
            Record {
                id,
                kind,
                parent,
                labels,
                created: now,
                updated: now,
                usage: None,
                extraction,
            },
        );
        if let Err(e) = next.save(&self.root) {
            let _ = remove_tree(&dir);
            return Err(e);
        }
        *md = next;
        crash::point("prepare-saved");
        tracing::debug!(key, %id, ?kind, extraction, "snapshot made");
        self.mounts_of(&md, key)
    }

    /// `DIR/fs` and `DIR/work`; `fs` owned like the parent's, as containerd's
    /// overlayfs snapshotter does, so the root of the container keeps its owner.
    fn make_dirs(&self, dir: &Path, parent: Option<SnapshotId>) -> Result<()> {
        let mk = |p: &Path, mode| fs::DirBuilder::new().mode(mode).create(p).ctx("create", p);
        mk(dir, 0o700)?;
        let fs_dir = dir.join("fs");
        mk(&fs_dir, 0o755)?;
        mk(&dir.join("work"), 0o700)?;
        if let Some(p) = parent {
            let pfs = self.layout.fs(p);
            let st = fs::metadata(&pfs).ctx("stat", &pfs)?;
            std::os::unix::fs::lchown(&fs_dir, Some(st.uid()), Some(st.gid()))
                .ctx("chown", &fs_dir)?;
        }
        Ok(())
    }

    /// Mounts: what to mount for `key` (the same answer Prepare or View gave).
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let md = self.md();
        self.mounts_of(&md, key)
    }

    /// Commit: the active snapshot `key` becomes the committed snapshot
    /// `name`, with `labels` (its old labels are not kept, as containerd).
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "a commit name must not be empty".into(),
            ));
        }
        validate_labels(&labels)?;
        let check = |md: &Metadata| -> Result<Record> {
            let rec = md.get(key)?;
            if rec.kind != Kind::Active {
                return Err(Error::NotActive(key.to_string()));
            }
            if md.snapshots.contains_key(name) {
                return Err(Error::AlreadyExists(name.to_string()));
            }
            Ok(rec.clone())
        };
        let id = check(&self.md())?.id;
        // Measured unlocked: a committed snapshot never changes again.
        let usage = disk_usage(&self.layout.fs(id))?;
        let mut md = self.md();
        let rec = check(&md)?;
        if rec.id != id {
            // Removed and made again while being measured.
            return Err(Error::NotFound(key.to_string()));
        }
        let now = Time::now();
        let mut next = md.clone();
        next.snapshots.remove(key);
        next.snapshots.insert(
            name.to_string(),
            Record {
                kind: Kind::Committed,
                labels,
                created: now,
                updated: now,
                usage: Some(usage),
                extraction: false,
                ..rec
            },
        );
        next.save(&self.root)?;
        *md = next;
        crash::point("commit-saved");
        tracing::debug!(key, name, %id, "snapshot committed");
        Ok(())
    }

    /// Remove: forgets `key` and deletes its directory. A snapshot with
    /// children cannot be removed.
    pub fn remove(&self, key: &str) -> Result<()> {
        let mut md = self.md();
        let id = md.get(key)?.id;
        let children = md.children(key);
        if children > 0 {
            return Err(Error::HasChildren {
                key: key.to_string(),
                children,
            });
        }
        let mut next = md.clone();
        next.snapshots.remove(key);
        next.save(&self.root)?;
        *md = next;
        crash::point("remove-saved");
        let dir = self.layout.dir(id);
        let doomed = self.layout.snapshots().join(format!("rm-{id}"));
        let renamed = fs::rename(&dir, &doomed);
        crash::point("remove-renamed");
        drop(md);
        tracing::debug!(key, %id, "snapshot removed");
        match renamed {
            Ok(()) => {
                if let Err(e) = remove_tree(&doomed) {
                    // The record is gone: Cleanup will finish the job.
                    tracing::warn!(%e, "could not delete a removed snapshot's directory; Cleanup retries");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(%e, dir = %dir.display(), "could not move a removed snapshot's directory away; Cleanup deletes it")
            }
        }
        Ok(())
    }

    /// Stat: what `key` is.
    pub fn stat(&self, key: &str) -> Result<Info> {
        let md = self.md();
        Ok(Info::new(key, md.get(key)?))
    }

    /// Update: changes the labels of `info.name`. With no field paths every
    /// label is replaced by `info.labels`; `labels` does the same, and
    /// `labels.KEY` sets (or, absent or empty in `info`, deletes) one label.
    /// Nothing else can change.
    pub fn update(&self, info: &Info, paths: &[String]) -> Result<Info> {
        let mut md = self.md();
        let mut rec = md.get(&info.name)?.clone();
        let mut labels = rec.labels.clone();
        if paths.is_empty() {
            labels = info.labels.clone();
        }
        for p in paths {
            if let Some(k) = p.strip_prefix("labels.") {
                match info.labels.get(k) {
                    Some(v) => labels.insert(k.to_string(), v.clone()),
                    None => labels.remove(k),
                };
            } else if p == "labels" {
                labels = info.labels.clone();
            } else {
                return Err(Error::InvalidArgument(format!(
                    "cannot update field {p:?} of snapshot {:?}: only labels can change",
                    info.name
                )));
            }
        }
        // An empty value deletes the label, as in containerd's stores.
        labels.retain(|_, v| !v.is_empty());
        validate_labels(&labels)?;
        rec.labels = labels;
        rec.updated = Time::now();
        let mut next = md.clone();
        next.snapshots.insert(info.name.clone(), rec);
        next.save(&self.root)?;
        *md = next;
        Ok(Info::new(&info.name, md.get(&info.name)?))
    }

    /// Usage: the disk use of `key`'s own directory (not its parents'):
    /// measured at commit for a committed snapshot, now for the others.
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let (id, stored) = {
            let md = self.md();
            let rec = md.get(key)?;
            (rec.id, rec.usage.filter(|_| rec.kind == Kind::Committed))
        };
        match stored {
            Some(u) => Ok(u),
            None => disk_usage(&self.layout.fs(id)),
        }
    }

    /// List: every snapshot matching `filters`, by key.
    pub fn list(&self, filters: &Filters) -> Vec<Info> {
        let md = self.md();
        md.snapshots
            .iter()
            .map(|(k, r)| Info::new(k, r))
            .filter(|i| filters.matches(i))
            .collect()
    }

    /// Cleanup: deletes what crashes left under `ROOT/snapshots` (see the
    /// module header), except a leftover with something mounted inside.
    pub fn cleanup(&self) -> Result<Cleaned> {
        let mut out = Cleaned::default();
        let mut doomed = Vec::new();
        {
            let md = self.md();
            let live: HashSet<SnapshotId> = md.snapshots.values().map(|r| r.id).collect();
            let mounted = mount_points()?;
            let dir = self.layout.snapshots();
            for e in fs::read_dir(dir).ctx("read directory", dir)? {
                let e = e.ctx("read directory", dir)?;
                let path = e.path();
                let leftover = match Entry::parse(&e.file_name().to_string_lossy()) {
                    Entry::Snapshot(id) => !live.contains(&id),
                    Entry::New(_) | Entry::Doomed(_) => true,
                    Entry::Foreign => {
                        tracing::warn!(path = %path.display(), "not a snapshot directory; left alone");
                        false
                    }
                };
                if !leftover {
                    continue;
                }
                if mounted.iter().any(|m| m.starts_with(&path)) {
                    tracing::warn!(path = %path.display(), "a leftover snapshot directory has a mount inside; left alone");
                    out.busy.push(path);
                } else {
                    doomed.push(path);
                }
            }
        }
        for path in doomed {
            remove_tree(&path)?;
            tracing::info!(path = %path.display(), "deleted a leftover snapshot directory");
            out.removed.push(path);
        }
        Ok(out)
    }
}

/// Deletes a tree that another deleter (Remove, Cleanup) may be deleting at
/// the same time: entries vanishing underneath are not errors.
fn remove_tree(path: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..5 {
        match fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(_) if fs::symlink_metadata(path).is_err() => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => last = Some(e),
            Err(e) => return Err(e).ctx("delete", path),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("gone and back"))).ctx("delete", path)
}

/// Every mount point of this mount namespace.
fn mount_points() -> Result<Vec<PathBuf>> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).ctx("read", path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .collect())
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}
