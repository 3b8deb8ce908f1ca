//! Several processes on one store, and kill -9 in the middle of work: the
//! store always opens and passes `check` (after repairing debris), and no
//! half layer is ever visible.
//!
//! Child processes are this test binary re-run on `child_worker` with
//! `STRATA_LAYERDB_CHILD` set; without it that test does nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use strata_layerdb::{CommitMeta, ImportOptions, LoadOptions, Store};

fn big_tar(seed: usize) -> Vec<u8> {
    let mut b = TarBuilder::new();
    for i in 0..400 {
        b = b.file(
            &format!("d{}/f{i}", i % 20),
            format!("{seed}-{i}").repeat(200).as_bytes(),
        );
    }
    b.build()
}

fn child(role: &str, root: &Path, k: usize) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "child_worker", "--nocapture", "--test-threads=1"])
        .env("STRATA_LAYERDB_CHILD", role)
        .env("STRATA_ROOT", root)
        .env("STRATA_CHILD_K", k.to_string())
        .stdout(Stdio::piped());
    c
}

#[test]
fn child_worker() {
    let Ok(role) = std::env::var("STRATA_LAYERDB_CHILD") else {
        return; // run as a normal test: nothing to do
    };
    let k: usize = std::env::var("STRATA_CHILD_K").unwrap().parse().unwrap();
    let store = Store::open_default().unwrap();
    match role.as_str() {
        "busy" => {
            println!("ready");
            for i in 0.. {
                let tar = big_tar(k * 100_000 + i);
                store
                    .import(
                        &mut &tar[..],
                        &ImportOptions {
                            name: Some(format!("busy:{i}")),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                store
                    .load(
                        &fixture("busybox-c1-oci-archive.tar"),
                        &LoadOptions::default(),
                    )
                    .unwrap();
                let upper = store.root().join(format!("../upper-{k}"));
                std::fs::create_dir_all(&upper).unwrap();
                std::fs::write(upper.join("x"), format!("{i}")).unwrap();
                store
                    .commit(
                        Some("busybox-c1"),
                        &upper,
                        &CommitMeta::default(),
                        Some("committed"),
                    )
                    .unwrap();
                store.remove(&format!("busy:{i}"), true).unwrap();
            }
        }
        "mixed" => {
            for i in 0..6 {
                let tar = big_tar(k * 1000 + i);
                let name = format!("w{k}:{i}");
                let id = store
                    .import(
                        &mut &tar[..],
                        &ImportOptions {
                            name: Some(name.clone()),
                            ..Default::default()
                        },
                    )
                    .unwrap();
                store.tag(&id.to_string(), "shared").unwrap();
                store
                    .load(
                        &fixture("busybox-docker-archive.tar"),
                        &LoadOptions::default(),
                    )
                    .unwrap();
                if i % 2 == 0 {
                    store.remove(&name, false).unwrap();
                }
                // Others remove busybox while we load it.
                let _ = store.remove("busybox", true);
                store
                    .load(
                        &fixture("busybox-c1-docker-archive.tar"),
                        &LoadOptions::default(),
                    )
                    .unwrap();
            }
            println!("done");
        }
        r => panic!("unknown role {r}"),
    }
}

fn assert_consistent(store: &Store) {
    let rep = store.check(true).unwrap();
    assert!(rep.is_clean(), "unrepairable: {:?}", rep.problems);
    let rep = store.check(false).unwrap();
    assert!(rep.problems.is_empty(), "after repair: {:?}", rep.problems);
    for img in store.images().unwrap() {
        let info = store.inspect(&img.id.to_string()).unwrap();
        for l in &info.layers {
            assert!(l.path.is_dir());
        }
    }
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn kill_9_during_import_load_commit_leaves_a_store_that_checks() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    Store::open(&root).unwrap();
    for (n, delay_ms) in [0u64, 5, 20, 60, 150, 400].into_iter().enumerate() {
        let mut c = child("busy", &root, n).spawn().unwrap();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("ready") {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "child exited before starting"
            );
        }
        // The kill lands at some point of the work; every point must be safe.
        std::thread::sleep(Duration::from_millis(delay_ms));
        c.kill().unwrap();
        c.wait().unwrap();
        let store = Store::open(&root).unwrap();
        assert_consistent(&store);
    }
}

#[test]
fn concurrent_processes_leave_a_consistent_store() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    Store::open(&root).unwrap();
    let children: Vec<_> = (0..4)
        .map(|k| child("mixed", &root, k).spawn().unwrap())
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let store = Store::open(&root).unwrap();
    let rep = store.check(false).unwrap();
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    // Each worker kept its odd-numbered images; "shared" names one of them.
    for k in 0..4 {
        for i in 0..6 {
            let r = store.resolve(&format!("w{k}:{i}"));
            assert_eq!(r.is_ok(), i % 2 == 1, "w{k}:{i}");
        }
    }
    store.resolve("shared").unwrap();
    store.resolve("busybox-c1").unwrap();
    assert_consistent(&store);
}
