//! What a snapshot's mounts are: the answer to Prepare, View and Mounts.
//!
//! | snapshot | mount |
//! | --- | --- |
//! | active, no parent | bind of its `fs` directory, read-write |
//! | view, no parent | bind of its own (empty) `fs` directory, read-only |
//! | view of one parent | bind of the parent's `fs`, read-only |
//! | view of several parents | `fuse3.strata-mount`, `lowerdir=` only: read-only |
//! | active with parents | `fuse3.strata-mount`, `lowerdir=`, `upperdir=`, `workdir=` |
//! | active with parents, being unpacked | `overlay` naming `upperdir=` (see below) |
//!
//! containerd mounts a `fuse3.strata-mount` mount by running
//! `mount.fuse3 overlay TARGET -o OPTION... -t strata-mount`, which runs
//! `strata-mount overlay TARGET -o OPTIONS`: `strata-mount` must be in the
//! `PATH` of containerd (and of its shims).
//!
//! Unpacking never goes through FUSE. For a snapshot containerd is
//! unpacking a layer into (key `extract-…`, label
//! `containerd.io/snapshot.ref`), the answer is one mount of type
//! `overlay` whose options name `upperdir=`: containerd's applier
//! (diff/apply/apply_linux.go, in 1.6 and 2.x) recognises exactly that
//! shape and writes the layer straight into the upper directory, turning
//! the tar's whiteouts into overlay whiteouts (0/0 character devices,
//! `trusted.overlay.opaque`), which strata-fs reads. It never mounts it.
//! Were it ever mounted, it would be a valid kernel overlay mount of the
//! same directories. The first layer (no parent) is a bind mount, written
//! through the kernel's bind mount.

use std::path::{Path, PathBuf};

use crate::proto::containerd::types::Mount;
use crate::store::{Kind, SnapshotId};

/// The mount type of Strata mounts: `mount.fuse3` runs `strata-mount`.
pub const STRATA_MOUNT_TYPE: &str = "fuse3.strata-mount";

/// Where a snapshot's directories are: `ROOT/snapshots/ID/{fs,work}`.
#[derive(Debug, Clone)]
pub struct Layout {
    snapshots: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: &Path) -> Layout {
        Layout {
            snapshots: root.join("snapshots"),
        }
    }
    /// `ROOT/snapshots`: one directory per snapshot, and leftovers of crashes.
    pub fn snapshots(&self) -> &Path {
        &self.snapshots
    }
    /// `ROOT/snapshots/ID`.
    pub fn dir(&self, id: SnapshotId) -> PathBuf {
        self.snapshots.join(id.to_string())
    }
    /// `ROOT/snapshots/ID/fs`: the snapshot's files (the upper directory).
    pub fn fs(&self, id: SnapshotId) -> PathBuf {
        self.dir(id).join("fs")
    }
    /// `ROOT/snapshots/ID/work`: the union filesystem's scratch directory.
    pub fn work(&self, id: SnapshotId) -> PathBuf {
        self.dir(id).join("work")
    }
}

/// The shape of a snapshot's mount, before it is spelled as options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A bind mount of one directory.
    Bind { dir: PathBuf, writable: bool },
    /// A Strata union: read-only without an upper directory.
    Union {
        lowers: Vec<PathBuf>,
        upper: Option<(PathBuf, PathBuf)>,
    },
    /// An overlay naming the upper directory, for containerd's applier.
    Extraction {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
}

impl Plan {
    /// The plan for a snapshot of `kind` in directory `id` over `parents`
    /// (topmost first).
    pub fn new(
        layout: &Layout,
        kind: Kind,
        id: SnapshotId,
        parents: &[SnapshotId],
        extraction: bool,
    ) -> Plan {
        let lowers = || parents.iter().map(|p| layout.fs(*p)).collect::<Vec<_>>();
        match (kind, parents) {
            (Kind::View, []) | (Kind::Committed, []) => Plan::Bind {
                dir: layout.fs(id),
                writable: false,
            },
            (Kind::View, [only]) => Plan::Bind {
                dir: layout.fs(*only),
                writable: false,
            },
            // A committed snapshot is never mounted by containerd; should a
            // client ask, it gets a read-only view of itself over its parents.
            (Kind::Committed, _) => Plan::Union {
                lowers: std::iter::once(layout.fs(id)).chain(lowers()).collect(),
                upper: None,
            },
            (Kind::View, _) => Plan::Union {
                lowers: lowers(),
                upper: None,
            },
            (Kind::Active, []) => Plan::Bind {
                dir: layout.fs(id),
                writable: true,
            },
            (Kind::Active, _) if extraction => Plan::Extraction {
                lowers: lowers(),
                upper: layout.fs(id),
                work: layout.work(id),
            },
            (Kind::Active, _) => Plan::Union {
                lowers: lowers(),
                upper: Some((layout.fs(id), layout.work(id))),
            },
        }
    }

    /// The mount containerd is given.
    pub fn to_mount(&self) -> Mount {
        let lowerdir = |lowers: &[PathBuf]| {
            let joined: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
            format!("lowerdir={}", joined.join(":"))
        };
        match self {
            Plan::Bind { dir, writable } => Mount {
                r#type: "bind".into(),
                source: dir.display().to_string(),
                target: String::new(),
                options: vec![if *writable { "rw" } else { "ro" }.into(), "rbind".into()],
            },
            Plan::Union { lowers, upper } => {
                let mut options = vec![lowerdir(lowers)];
                if let Some((upper, work)) = upper {
                    options.push(format!("upperdir={}", upper.display()));
                    options.push(format!("workdir={}", work.display()));
                }
                Mount {
                    r#type: STRATA_MOUNT_TYPE.into(),
                    source: "overlay".into(),
                    target: String::new(),
                    options,
                }
            }
            Plan::Extraction {
                lowers,
                upper,
                work,
            } => Mount {
                r#type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec![
                    format!("workdir={}", work.display()),
                    format!("upperdir={}", upper.display()),
                    lowerdir(lowers),
                ],
            },
        }
    }
}

/// Whether an active snapshot is one containerd unpacks a layer into: its
/// key (after containerd's `NAMESPACE/N/` prefix) starts with `extract-`
/// (`snapshots.UnpackKeyPrefix`), or it carries the label the unpacker sets,
/// `containerd.io/snapshot.ref`.
pub fn is_extraction(key: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
    let own = key.splitn(3, '/').nth(2).unwrap_or(key);
    own.starts_with("extract-")
        || key.starts_with("extract-")
        || labels.contains_key(SNAPSHOT_REF_LABEL)
}

/// The label containerd's unpacker puts on the snapshots it unpacks into,
/// naming the chain ID the layer will be committed as.
pub const SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn layout() -> Layout {
        Layout::new(Path::new("/r"))
    }

    #[test]
    fn each_kind_gets_the_mount_containerd_expects() {
        let l = layout();
        let m = Plan::new(&l, Kind::Active, SnapshotId(1), &[], false).to_mount();
        assert_eq!(
            (m.r#type.as_str(), m.source.as_str()),
            ("bind", "/r/snapshots/1/fs")
        );
        assert_eq!(m.options, ["rw", "rbind"]);

        let m = Plan::new(&l, Kind::View, SnapshotId(3), &[SnapshotId(2)], false).to_mount();
        assert_eq!(
            (m.r#type.as_str(), m.source.as_str()),
            ("bind", "/r/snapshots/2/fs")
        );
        assert_eq!(m.options, ["ro", "rbind"]);

        let m = Plan::new(
            &l,
            Kind::View,
            SnapshotId(4),
            &[SnapshotId(3), SnapshotId(2)],
            false,
        )
        .to_mount();
        assert_eq!(
            (m.r#type.as_str(), m.source.as_str()),
            (STRATA_MOUNT_TYPE, "overlay")
        );
        assert_eq!(m.options, ["lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs"]);

        let m = Plan::new(
            &l,
            Kind::Active,
            SnapshotId(5),
            &[SnapshotId(3), SnapshotId(2)],
            false,
        )
        .to_mount();
        assert_eq!(m.r#type, STRATA_MOUNT_TYPE);
        assert_eq!(
            m.options,
            [
                "lowerdir=/r/snapshots/3/fs:/r/snapshots/2/fs",
                "upperdir=/r/snapshots/5/fs",
                "workdir=/r/snapshots/5/work"
            ]
        );
    }

    #[test]
    fn extraction_gets_an_overlay_naming_the_upper_dir() {
        let l = layout();
        let m = Plan::new(&l, Kind::Active, SnapshotId(7), &[SnapshotId(6)], true).to_mount();
        assert_eq!(m.r#type, "overlay");
        assert!(m
            .options
            .contains(&"upperdir=/r/snapshots/7/fs".to_string()));
        assert!(m
            .options
            .contains(&"lowerdir=/r/snapshots/6/fs".to_string()));
        // The first layer has nothing below: a plain writable bind.
        let m = Plan::new(&l, Kind::Active, SnapshotId(8), &[], true).to_mount();
        assert_eq!((m.r#type.as_str(), m.options[0].as_str()), ("bind", "rw"));
    }

    #[test]
    fn extraction_is_recognised_by_key_or_label() {
        let none = BTreeMap::new();
        assert!(is_extraction("default/12/extract-123-abc sha256:00", &none));
        assert!(is_extraction("extract-1 sha256:00", &none));
        assert!(!is_extraction("default/12/my-extract-", &none));
        assert!(!is_extraction("default/3/ctr1", &none));
        let labelled = BTreeMap::from([(SNAPSHOT_REF_LABEL.to_string(), "sha256:00".to_string())]);
        assert!(is_extraction("default/3/x", &labelled));
    }
}
