//! The benchmark's CI check: `strata-bench --quick` runs every workload at
//! tiny sizes with every driver available here, and leaves no mount or FUSE
//! server behind. Runs as root (it mounts kernel overlayfs and drops caches)
//! and needs `strata-mount` built next to `strata-bench`
//! (`cargo build --workspace` does that).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_bench::process::{mounts_under, pids_with_arg_under};
use strata_bench::workload::Workload;

fn bench_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata-bench"))
}

fn require_setup() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "strata-bench's tests mount filesystems: run them as root"
    );
    let strata = bench_exe().with_file_name("strata-mount");
    assert!(
        strata.exists(),
        "{} is missing: build it first (cargo build -p strata-fs, or cargo build --workspace)",
        strata.display()
    );
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strata-bench-test")
        .tempdir_in("/var/tmp")
        .expect("temporary directory in /var/tmp")
}

fn assert_nothing_left(data: &Path) {
    let mounts = mounts_under(data);
    assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
    let pids = pids_with_arg_under(data);
    assert!(pids.is_empty(), "processes left behind: {pids:?}");
}

#[test]
fn quick_mode_runs_every_workload_with_every_driver_and_cleans_up() {
    require_setup();
    let tmp = scratch();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    let run = Command::new(bench_exe())
        .arg("--quick")
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run strata-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "strata-bench --quick failed:\n{stderr}"
    );
    assert_nothing_left(&data);

    // Every workload has a sample from strata on each FUSE transport, the
    // kernel and native (and from fuse-overlayfs when it is installed).
    let csv = std::fs::read_to_string(out.join("samples.csv")).expect("samples.csv");
    let ran: BTreeSet<(String, String)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[1].to_string())
        })
        .collect();
    let mut drivers = vec!["strata+uring=off", "strata+uring=on", "kernel", "native"];
    if Path::new("/usr/bin/fuse-overlayfs").exists() {
        drivers.push("fuse-overlayfs");
    }
    for w in Workload::ALL {
        for d in &drivers {
            assert!(
                ran.contains(&(w.name().to_string(), d.to_string())),
                "{w} has no sample from {d}:\n{csv}\n{stderr}"
            );
        }
    }
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(
        md.contains("| workload | strata+uring=off | strata+uring=on | kernel |"),
        "{md}"
    );
    let svg = std::fs::read_to_string(out.join("ratios.svg")).expect("ratios.svg");
    assert!(svg.contains("<title>mount1 strata+uring=on:"), "{svg}");
}

#[test]
fn a_mount_program_that_fails_is_reported_and_leaves_nothing_behind() {
    require_setup();
    let tmp = scratch();
    let data = tmp.path().join("data");
    let run = Command::new(bench_exe())
        .args(["--quick", "--workloads", "mount1,find_cold_l1"])
        .args(["--drivers", "prog:/bin/false,native"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("out"))
        .output()
        .expect("run strata-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "a failing driver must fail --quick");
    assert!(
        stderr.contains("mount1 with prog:/bin/false failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mount1 did not run with prog:/bin/false"),
        "{stderr}"
    );
    assert_nothing_left(&data);
}
