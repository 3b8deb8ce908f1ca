//! What the benchmark's tests share: the programs, a scratch directory,
//! a `--quick` run, its samples, and the check that nothing is left.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata_bench::process::{mounts_under, pids_with_arg_under};

pub fn bench_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata-bench"))
}

/// The `strata-mount` next to `strata-bench`; the tests run as root.
pub fn strata_mount() -> PathBuf {
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
    strata
}

pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strata-bench-test")
        .tempdir_in("/var/tmp")
        .expect("temporary directory in /var/tmp")
}

/// `strata-bench --quick ARGS --data DATA --out OUT`.
pub fn quick(args: &[&str], data: &Path, out: &Path) -> Output {
    Command::new(bench_exe())
        .arg("--quick")
        .args(args)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run strata-bench")
}

pub fn assert_nothing_left(data: &Path) {
    let mounts = mounts_under(data);
    assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
    let pids = pids_with_arg_under(data);
    assert!(pids.is_empty(), "processes left behind: {pids:?}");
}

/// The `(workload, driver)` pairs of a run's samples.csv.
pub fn samples(out: &Path) -> BTreeSet<(String, String)> {
    let csv = std::fs::read_to_string(out.join("samples.csv")).expect("samples.csv");
    csv.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[1].to_string())
        })
        .collect()
}
