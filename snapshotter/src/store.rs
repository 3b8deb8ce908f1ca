//! The metadata: one record per snapshot, kept in memory and on disk in one
//! JSON file, `ROOT/metadata.json`.
//!
//! Invariant: the file is only ever replaced whole (written to
//! `metadata.json.tmp`, fsynced, renamed over the old one, and the directory
//! fsynced), so after a crash at any instant it holds either the state
//! before an operation or the state after it. A snapshot's directory
//! (`ROOT/snapshots/ID`) is made before its record is saved and deleted
//! after its record is gone, so every record has its directory; a directory
//! without a record is a leftover of a crash, removed by Cleanup.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::crash;
use crate::error::{Error, IoContext, Result};

/// The metadata file's name under the root.
pub const METADATA_FILE: &str = "metadata.json";
const METADATA_TMP: &str = "metadata.json.tmp";
/// The format written; a newer one is refused rather than misread.
const FORMAT_VERSION: u32 = 1;

/// A snapshot's number, which names its directory `ROOT/snapshots/ID`. Never
/// reused: a key removed and prepared again gets a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SnapshotId(pub u64);

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A directory name that is not a snapshot id.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a snapshot id (a number, no leading zeros)")]
pub struct BadSnapshotId(String);

impl FromStr for SnapshotId {
    type Err = BadSnapshotId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the canonical form: "007" is not a snapshot directory.
        let canonical = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && !(s.len() > 1 && s.starts_with('0'));
        match s.parse() {
            Ok(n) if canonical => Ok(SnapshotId(n)),
            _ => Err(BadSnapshotId(s.to_string())),
        }
    }
}

/// What a snapshot is, as containerd's `snapshots.Kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, made by View; never committed.
    View,
    /// Writable, made by Prepare; can be committed.
    Active,
    /// Read-only and the parent of others; made by Commit.
    Committed,
}

impl Kind {
    /// The name containerd's filters use (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A point in time, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Time {
    /// The current time.
    pub fn now() -> Time {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Time {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }
}

/// Disk use of a snapshot's own directory, as containerd's `snapshots.Usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes allocated (blocks × 512), each inode counted once.
    pub size: i64,
    /// Inodes, each counted once however many names it has.
    pub inodes: i64,
}

/// One snapshot's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Its directory's number.
    pub id: SnapshotId,
    /// View, active or committed.
    pub kind: Kind,
    /// The key of the committed snapshot it is built on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Labels, as containerd gave them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When it was made (for a committed snapshot: when it was committed).
    pub created: Time,
    /// When its labels last changed.
    pub updated: Time,
    /// Disk use, measured once at commit (committed snapshots never change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// An active snapshot that containerd is unpacking a layer into: its
    /// mounts name the upper directory for containerd's applier to write
    /// into directly (see `mounts.rs`). Decided once, at Prepare.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extraction: bool,
}

/// Every snapshot, by key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The file's format.
    pub version: u32,
    /// The number the next snapshot gets.
    pub next_id: u64,
    /// The records, by key.
    pub snapshots: BTreeMap<String, Record>,
}

impl Metadata {
    /// Reads `ROOT/metadata.json`; an absent file is an empty store. A
    /// temporary file left by a crash is removed: it never replaced the
    /// real one.
    pub fn load(root: &Path) -> Result<Metadata> {
        let tmp = root.join(METADATA_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {
                tracing::info!(path = %tmp.display(), "removed metadata left half-written by a crash")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).ctx("remove", tmp),
        }
        let path = root.join(METADATA_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Metadata {
                    version: FORMAT_VERSION,
                    next_id: 1,
                    snapshots: BTreeMap::new(),
                })
            }
            Err(e) => return Err(e).ctx("read", path),
        };
        let md: Metadata = serde_json::from_slice(&bytes).map_err(|e| Error::CorruptMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if md.version != FORMAT_VERSION {
            return Err(Error::CorruptMetadata {
                path,
                reason: format!(
                    "format version {} is not {FORMAT_VERSION}, the one this strata-snapshotter reads",
                    md.version
                ),
            });
        }
        md.check()
            .map_err(|reason| Error::CorruptMetadata { path, reason })?;
        Ok(md)
    }

    /// Replaces `ROOT/metadata.json` with this state, atomically and
    /// durably (temp + fsync + rename + fsync of the directory).
    pub fn save(&self, root: &Path) -> Result<()> {
        let tmp = root.join(METADATA_TMP);
        let path = root.join(METADATA_FILE);
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Io {
            op: "serialize",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx("create", &tmp)?;
        f.write_all(&bytes).ctx("write", &tmp)?;
        f.sync_all().ctx("fsync", &tmp)?;
        drop(f);
        crash::point("save-temp");
        fs::rename(&tmp, &path).ctx("rename into place", &path)?;
        sync_dir(root)
    }

    /// The record of `key`.
    pub fn get(&self, key: &str) -> Result<&Record> {
        self.snapshots
            .get(key)
            .ok_or_else(|| Error::NotFound(key.to_string()))
    }

    /// The directories under a snapshot, topmost (its parent) first.
    pub fn parent_ids(&self, rec: &Record) -> Vec<SnapshotId> {
        let mut ids = Vec::new();
        let mut next = rec.parent.as_deref();
        while let Some(p) = next {
            // `check` made sure every parent exists and the chain ends.
            let Some(r) = self.snapshots.get(p) else {
                break;
            };
            ids.push(r.id);
            next = r.parent.as_deref();
        }
        ids
    }

    /// How many snapshots have `key` as their parent.
    pub fn children(&self, key: &str) -> usize {
        self.snapshots
            .values()
            .filter(|r| r.parent.as_deref() == Some(key))
            .count()
    }

    /// Checks what the rest of the code relies on: every parent exists and
    /// is committed, ids are unique and below `next_id`, chains end.
    fn check(&self) -> std::result::Result<(), String> {
        let mut ids = std::collections::HashSet::new();
        for (key, r) in &self.snapshots {
            if !ids.insert(r.id) {
                return Err(format!("snapshot {key:?}: id {} is used twice", r.id));
            }
            if r.id.0 >= self.next_id {
                return Err(format!(
                    "snapshot {key:?}: id {} is not below next_id",
                    r.id
                ));
            }
            if let Some(p) = &r.parent {
                match self.snapshots.get(p) {
                    Some(pr) if pr.kind == Kind::Committed => {}
                    Some(_) => {
                        return Err(format!("snapshot {key:?}: parent {p:?} is not committed"))
                    }
                    None => return Err(format!("snapshot {key:?}: parent {p:?} is missing")),
                }
            }
        }
        // Every chain ends: a walk longer than the number of snapshots loops.
        for (key, r) in &self.snapshots {
            let mut steps = 0;
            let mut next = r.parent.as_deref();
            while let Some(p) = next {
                steps += 1;
                if steps > self.snapshots.len() {
                    return Err(format!("snapshot {key:?}: its parents form a loop"));
                }
                next = self.snapshots.get(p).and_then(|r| r.parent.as_deref());
            }
        }
        Ok(())
    }
}

/// fsyncs a directory, so that entries just made or renamed in it survive a
/// power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).ctx("fsync", dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, kind: Kind, parent: Option<&str>) -> Record {
        Record {
            id: SnapshotId(id),
            kind,
            parent: parent.map(str::to_string),
            labels: BTreeMap::new(),
            created: Time::now(),
            updated: Time::now(),
            usage: None,
            extraction: false,
        }
    }

    #[test]
    fn save_then_load_round_trips_and_ignores_a_stale_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut md = Metadata::load(dir.path()).unwrap();
        assert_eq!((md.next_id, md.snapshots.len()), (1, 0));
        md.snapshots
            .insert("a".into(), rec(1, Kind::Committed, None));
        md.snapshots
            .insert("b".into(), rec(2, Kind::Active, Some("a")));
        md.next_id = 3;
        md.save(dir.path()).unwrap();
        fs::write(dir.path().join(METADATA_TMP), b"{half").unwrap();
        let back = Metadata::load(dir.path()).unwrap();
        assert_eq!(back, md);
        assert!(!dir.path().join(METADATA_TMP).exists());
        assert_eq!(back.parent_ids(back.get("b").unwrap()), vec![SnapshotId(1)]);
        assert_eq!(back.children("a"), 1);
    }

    #[test]
    fn corrupt_metadata_is_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(METADATA_FILE), b"{\"version\":1,").unwrap();
        let e = Metadata::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("metadata.json"), "{e}");
        let mut md = Metadata {
            version: 1,
            next_id: 5,
            snapshots: BTreeMap::new(),
        };
        md.snapshots
            .insert("x".into(), rec(1, Kind::Committed, Some("y")));
        md.snapshots
            .insert("y".into(), rec(2, Kind::Committed, Some("x")));
        md.save(dir.path()).unwrap();
        let e = Metadata::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("loop"), "{e}");
    }

    #[test]
    fn snapshot_ids_parse_only_in_canonical_form() {
        assert_eq!("12".parse::<SnapshotId>().unwrap(), SnapshotId(12));
        assert!("012".parse::<SnapshotId>().is_err());
        assert!("rm-12".parse::<SnapshotId>().is_err());
        assert_eq!("0".parse::<SnapshotId>().unwrap(), SnapshotId(0));
    }
}
