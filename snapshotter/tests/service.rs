//! The snapshotter's gRPC service driven directly (no containerd): every
//! operation and its errors, a chain of 130 layers mounted the way
//! containerd mounts it (`mount.fuse3 ... -t strata-mount`), label updates
//! with field paths, List filters, and SIGKILL at each crash point followed
//! by a restart and Cleanup.

// tonic::Status, what every call answers, is large; these are test helpers.
#![allow(clippy::result_large_err)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_snapshotter::proto::containerd::services::snapshots::v1 as pb;
use strata_snapshotter::proto::containerd::types::Mount;
use support::{have, runtime, temp_dir, Snapshotter};
use tonic::transport::Channel;
use tonic::Code;

type Client = pb::snapshots_client::SnapshotsClient<Channel>;

/// A client with blocking calls.
struct Sn {
    rt: tokio::runtime::Runtime,
    c: Client,
}

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Sn {
    fn new(s: &Snapshotter) -> Sn {
        let rt = runtime();
        let c = s.client(&rt);
        Sn { rt, c }
    }
    fn prepare(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
        self.prepare_labelled(key, parent, &[])
    }
    fn prepare_labelled(
        &mut self,
        key: &str,
        parent: &str,
        l: &[(&str, &str)],
    ) -> Result<Vec<Mount>, tonic::Status> {
        let req = pb::PrepareSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            labels: labels(l),
            ..Default::default()
        };
        self.rt
            .block_on(self.c.prepare(req))
            .map(|r| r.into_inner().mounts)
    }
    fn view(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
        let req = pb::ViewSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            ..Default::default()
        };
        self.rt
            .block_on(self.c.view(req))
            .map(|r| r.into_inner().mounts)
    }
    fn commit(&mut self, name: &str, key: &str) -> Result<(), tonic::Status> {
        let req = pb::CommitSnapshotRequest {
            name: name.into(),
            key: key.into(),
            ..Default::default()
        };
        self.rt.block_on(self.c.commit(req)).map(|_| ())
    }
    fn remove(&mut self, key: &str) -> Result<(), tonic::Status> {
        let req = pb::RemoveSnapshotRequest {
            key: key.into(),
            ..Default::default()
        };
        self.rt.block_on(self.c.remove(req)).map(|_| ())
    }
    fn stat(&mut self, key: &str) -> Result<pb::Info, tonic::Status> {
        let req = pb::StatSnapshotRequest {
            key: key.into(),
            ..Default::default()
        };
        self.rt
            .block_on(self.c.stat(req))
            .map(|r| r.into_inner().info.unwrap())
    }
    fn update(
        &mut self,
        key: &str,
        l: &[(&str, &str)],
        paths: &[&str],
    ) -> Result<pb::Info, tonic::Status> {
        let req = pb::UpdateSnapshotRequest {
            info: Some(pb::Info {
                name: key.into(),
                labels: labels(l),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            ..Default::default()
        };
        self.rt
            .block_on(self.c.update(req))
            .map(|r| r.into_inner().info.unwrap())
    }
    fn usage(&mut self, key: &str) -> pb::UsageResponse {
        let req = pb::UsageRequest {
            key: key.into(),
            ..Default::default()
        };
        self.rt.block_on(self.c.usage(req)).unwrap().into_inner()
    }
    fn list(&mut self, filters: &[&str]) -> Result<Vec<String>, tonic::Status> {
        let req = pb::ListSnapshotsRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        };
        self.rt.block_on(async {
            let mut stream = self.c.list(req).await?.into_inner();
            let mut names = Vec::new();
            while let Some(batch) = stream.message().await? {
                names.extend(batch.info.into_iter().map(|i| i.name));
            }
            names.sort();
            Ok(names)
        })
    }
    fn cleanup(&mut self) {
        self.rt
            .block_on(self.c.cleanup(pb::CleanupRequest::default()))
            .unwrap();
    }
}

/// The directory a writer of this snapshot writes into: a bind mount's
/// source, or the union's `upperdir=`.
fn upper(mounts: &[Mount]) -> PathBuf {
    let m = &mounts[0];
    if m.r#type == "bind" {
        return PathBuf::from(&m.source);
    }
    let u = m
        .options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .unwrap_or_else(|| panic!("no upperdir in {m:?}"));
    PathBuf::from(u)
}

/// Unmounts on drop.
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Mounts `m` at `target` exactly as containerd 1.6 does
/// (mount/mount_linux.go, `mountWithHelper`): `mount.fuse3 SOURCE TARGET
/// -o OPT... -t strata-mount`, with strata-mount found in `PATH`.
fn mount_like_containerd(m: &Mount, target: &Path) -> Mounted {
    let ty = m.r#type.strip_prefix("fuse3.").expect("a fuse3 mount");
    let mut cmd = Command::new("mount.fuse3");
    cmd.arg(&m.source).arg(target);
    for o in &m.options {
        cmd.arg("-o").arg(o);
    }
    cmd.arg("-t").arg(ty);
    let bin = support::strata_mount().parent().unwrap().to_path_buf();
    cmd.env(
        "PATH",
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "mount.fuse3: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Mounted(target.to_path_buf())
}

#[test]
fn operations_and_their_errors() {
    let dir = temp_dir();
    let s = Snapshotter::start(dir.path());
    let mut sn = Sn::new(&s);

    let m = sn.prepare("a", "").unwrap();
    assert_eq!(
        (m[0].r#type.as_str(), m[0].options[0].as_str()),
        ("bind", "rw")
    );
    std::fs::write(upper(&m).join("f"), vec![0u8; 100_000]).unwrap();
    assert_eq!(sn.prepare("a", "").unwrap_err().code(), Code::AlreadyExists);
    assert_eq!(
        sn.prepare("b", "a").unwrap_err().code(),
        Code::InvalidArgument,
        "parent not committed"
    );
    assert_eq!(
        sn.prepare("b", "nothing").unwrap_err().code(),
        Code::NotFound
    );
    let active = sn.usage("a");
    assert_eq!(active.inodes, 2);
    assert!(active.size >= 100_000, "{active:?}");
    sn.commit("A", "a").unwrap();
    assert_eq!(sn.stat("a").unwrap_err().code(), Code::NotFound);
    let info = sn.stat("A").unwrap();
    assert_eq!(
        (info.kind, info.parent.as_str()),
        (pb::Kind::Committed as i32, "")
    );
    assert_eq!(sn.usage("A").size, active.size);

    // A view of one parent is a read-only bind of it.
    let v = sn.view("v", "A").unwrap();
    assert_eq!(v[0].r#type, "bind");
    assert_eq!(v[0].options, ["ro", "rbind"]);
    assert_eq!(
        PathBuf::from(&v[0].source),
        upper(&sn.prepare("tmp", "").unwrap())
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("1/fs")
    );
    sn.remove("tmp").unwrap();
    assert_eq!(
        sn.commit("V", "v").unwrap_err().code(),
        Code::FailedPrecondition,
        "commit of a view"
    );
    assert_eq!(
        sn.remove("A").unwrap_err().code(),
        Code::FailedPrecondition,
        "remove with children"
    );
    let b = sn.prepare("b", "A").unwrap();
    assert_eq!(b[0].r#type, "fuse3.strata-mount");
    assert_eq!(sn.commit("A", "b").unwrap_err().code(), Code::AlreadyExists);

    // Labels: with field paths, one by one; without, all at once.
    sn.prepare_labelled("l", "", &[("a", "1"), ("b", "2")])
        .unwrap();
    let i = sn
        .update(
            "l",
            &[("a", "x"), ("c", "3")],
            &["labels.a", "labels.c", "labels.b"],
        )
        .unwrap();
    assert_eq!(i.labels, labels(&[("a", "x"), ("c", "3")]));
    let i = sn.update("l", &[("z", "1")], &[]).unwrap();
    assert_eq!(i.labels, labels(&[("z", "1")]));
    assert_eq!(sn.stat("l").unwrap().labels, labels(&[("z", "1")]));
    let i = sn.update("l", &[("y", "2")], &["labels"]).unwrap();
    assert_eq!(i.labels, labels(&[("y", "2")]));
    assert_eq!(
        sn.update("l", &[], &["parent"]).unwrap_err().code(),
        Code::InvalidArgument
    );
    let big = "x".repeat(5000);
    assert_eq!(
        sn.update("l", &[("k", &big)], &[]).unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        sn.update("nothing", &[], &[]).unwrap_err().code(),
        Code::NotFound
    );

    // List with filters, as ctr, CRI and containerd's metadata layer ask.
    assert_eq!(sn.list(&[]).unwrap(), ["A", "b", "l", "v"]);
    assert_eq!(sn.list(&["parent==A"]).unwrap(), ["b", "v"]);
    assert_eq!(sn.list(&["parent==A,kind==view"]).unwrap(), ["v"]);
    assert_eq!(
        sn.list(&["kind==committed", "labels.y"]).unwrap(),
        ["A", "l"]
    );
    assert_eq!(sn.list(&[r#"labels."y"==2"#]).unwrap(), ["l"]);
    assert_eq!(sn.list(&["name==b"]).unwrap(), ["b"]);
    assert_eq!(
        sn.list(&["kind=="]).unwrap_err().code(),
        Code::InvalidArgument
    );

    // Metadata survives a restart.
    drop(sn);
    let mut s = s;
    s.kill9();
    s.spawn(None);
    let mut sn = Sn::new(&s);
    assert_eq!(sn.list(&[]).unwrap(), ["A", "b", "l", "v"]);
    assert_eq!(sn.stat("l").unwrap().labels, labels(&[("y", "2")]));
    for k in ["b", "v", "l", "A"] {
        sn.remove(k).unwrap();
    }
    assert_eq!(s.dirs(), Vec::<String>::new());
}

#[test]
fn a_chain_of_130_layers_mounts_as_containerd_mounts_it() {
    if !have("mount.fuse3", "fuse3") {
        return;
    }
    let dir = temp_dir();
    let s = Snapshotter::start(dir.path());
    let mut sn = Sn::new(&s);
    let mut parent = String::new();
    for i in 0..130 {
        let key = format!("a{i}");
        let m = sn.prepare(&key, &parent).unwrap();
        let up = upper(&m);
        std::fs::write(up.join(format!("l{i}")), format!("{i}")).unwrap();
        std::fs::write(up.join("top"), format!("{i}")).unwrap();
        if i == 100 {
            // An overlay whiteout, as containerd's applier writes them.
            nix::sys::stat::mknod(
                &up.join("l50"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                0,
            )
            .unwrap();
        }
        let name = format!("c{i}");
        sn.commit(&name, &key).unwrap();
        parent = name;
    }
    let m = sn.prepare("top", "c129").unwrap();
    assert_eq!(m[0].r#type, "fuse3.strata-mount");
    let lowers = m[0].options[0]
        .strip_prefix("lowerdir=")
        .unwrap()
        .split(':')
        .count();
    assert_eq!(lowers, 130);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    {
        let _g = mount_like_containerd(&m[0], &mnt);
        assert_eq!(std::fs::read_to_string(mnt.join("l0")).unwrap(), "0");
        assert_eq!(std::fs::read_to_string(mnt.join("l129")).unwrap(), "129");
        assert_eq!(std::fs::read_to_string(mnt.join("top")).unwrap(), "129");
        assert!(
            !mnt.join("l50").exists(),
            "the whiteout in layer 100 hides l50"
        );
        std::fs::write(mnt.join("new"), "n").unwrap();
    }
    assert_eq!(std::fs::read_to_string(upper(&m).join("new")).unwrap(), "n");

    // A view of many parents is a read-only union.
    let v = sn.view("v", "c129").unwrap();
    assert_eq!(v[0].r#type, "fuse3.strata-mount");
    assert!(
        v[0].options.iter().all(|o| o.starts_with("lowerdir=")),
        "{:?}",
        v[0].options
    );
    {
        let _g = mount_like_containerd(&v[0], &mnt);
        assert_eq!(std::fs::read_to_string(mnt.join("l1")).unwrap(), "1");
        let e = std::fs::write(mnt.join("x"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
    assert_eq!(sn.list(&[]).unwrap().len(), 132, "List streams in batches");
    assert_eq!(sn.list(&["parent==c128"]).unwrap(), ["c129"]);
    assert_eq!(sn.usage("c7").inodes, 3, "fs, l7, top");
}

/// An operation to crash in, and what must hold after the restart.
struct Case {
    point: &'static str,
    op: fn(&mut Sn) -> Result<(), tonic::Status>,
    /// Keys that must exist afterwards, and keys that must not.
    present: &'static [&'static str],
    absent: &'static [&'static str],
}

#[test]
fn sigkill_at_every_crash_point_then_cleanup_leaves_nothing_behind() {
    let dir = temp_dir();
    let mut s = Snapshotter::start(dir.path());
    {
        let mut sn = Sn::new(&s);
        let m = sn.prepare("base-work", "").unwrap();
        std::fs::write(upper(&m).join("f"), "base").unwrap();
        sn.commit("base", "base-work").unwrap();
        sn.prepare("victim", "base").unwrap();
        sn.prepare("victim2", "base").unwrap();
    }
    let cases = [
        Case {
            point: "prepare-dir",
            op: |sn| sn.prepare("p1", "base").map(|_| ()),
            present: &[],
            absent: &["p1"],
        },
        Case {
            point: "prepare-renamed",
            op: |sn| sn.prepare("p2", "base").map(|_| ()),
            present: &[],
            absent: &["p2"],
        },
        Case {
            point: "save-temp",
            op: |sn| sn.prepare("p3", "base").map(|_| ()),
            present: &[],
            absent: &["p3"],
        },
        Case {
            point: "prepare-saved",
            op: |sn| sn.prepare("p4", "base").map(|_| ()),
            present: &["p4"],
            absent: &[],
        },
        Case {
            point: "save-temp",
            op: |sn| sn.commit("c4", "p4"),
            present: &["p4"],
            absent: &["c4"],
        },
        Case {
            point: "commit-saved",
            op: |sn| sn.commit("c4", "p4"),
            present: &["c4"],
            absent: &["p4"],
        },
        Case {
            point: "remove-saved",
            op: |sn| sn.remove("victim"),
            present: &[],
            absent: &["victim"],
        },
        Case {
            point: "remove-renamed",
            op: |sn| sn.remove("victim2"),
            present: &[],
            absent: &["victim2"],
        },
        Case {
            point: "save-temp",
            op: |sn| sn.remove("c4"),
            present: &["c4"],
            absent: &[],
        },
    ];
    for case in &cases {
        s.kill9();
        s.spawn(Some(case.point));
        let r = (case.op)(&mut Sn::new(&s));
        assert!(
            r.is_err(),
            "{}: the operation finished before the crash point",
            case.point
        );
        s.wait_crashed();
        s.spawn(None);
        let mut sn = Sn::new(&s);
        for k in case.present {
            sn.stat(k)
                .unwrap_or_else(|e| panic!("{}: {k} is missing: {e}", case.point));
        }
        for k in case.absent {
            assert_eq!(
                sn.stat(k).unwrap_err().code(),
                Code::NotFound,
                "{}: {k}",
                case.point
            );
        }
        // Every record has its directory; Cleanup leaves exactly those.
        let ids = s.recorded_ids();
        let dirs = s.dirs();
        assert!(
            ids.iter().all(|i| dirs.contains(i)),
            "{}: records {ids:?}, dirs {dirs:?}",
            case.point
        );
        sn.cleanup();
        assert_eq!(s.dirs(), ids, "{}: after Cleanup", case.point);
        assert!(!s.root.join("metadata.json.tmp").exists());
        assert_eq!(
            std::fs::read_to_string(s.root.join(format!("snapshots/{}/fs/f", ids[0]))).unwrap(),
            "base"
        );
    }
    // What did not happen can be done now.
    let mut sn = Sn::new(&s);
    for k in ["p1", "p2", "p3"] {
        sn.prepare(k, "base").unwrap();
    }
    sn.remove("c4").unwrap();
    assert_eq!(sn.list(&[]).unwrap(), ["base", "p1", "p2", "p3"]);
}

#[test]
fn strata_mount_takes_the_mount_helper_form() {
    // `strata-mount SOURCE MOUNTPOINT -o OPTIONS`, as mount.fuse3 runs it,
    // with mount(8)'s generic options it has no use for.
    let dir = temp_dir();
    let (lower, mnt) = (dir.path().join("l"), dir.path().join("m"));
    std::fs::create_dir_all(&lower).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(lower.join("f"), "x").unwrap();
    let prog = support::strata_mount();
    let o = Command::new(&prog)
        .arg("overlay")
        .arg(&mnt)
        .arg("-o")
        .arg(format!(
            "lowerdir={},rw,dev,suid,exec,nofail,auto",
            lower.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _g = Mounted(mnt.clone());
    assert_eq!(std::fs::read_to_string(mnt.join("f")).unwrap(), "x");
    drop(_g);
    let o = Command::new(&prog)
        .args(["a", "b", "c", "-o"])
        .arg(format!("lowerdir={}", lower.display()))
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "three paths: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_second_snapshotter_on_the_same_root_is_refused() {
    let dir = temp_dir();
    let s = Snapshotter::start(dir.path());
    let o = Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"))
        .arg("--root")
        .arg(&s.root)
        .arg("--address")
        .arg(dir.path().join("other.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("locked by another strata-snapshotter"),
        "{err}"
    );
    // And one cannot take over a socket that is being served.
    let o = Command::new(env!("CARGO_BIN_EXE_strata-snapshotter"))
        .arg("--root")
        .arg(dir.path().join("other-root"))
        .arg("--address")
        .arg(&s.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("served by another process"), "{err}");
}
