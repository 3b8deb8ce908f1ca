//! The benchmark's CI check: `strata-bench --quick` runs every workload at
//! tiny sizes with every driver available here, and leaves no mount or FUSE
//! server behind. Runs as root (it mounts kernel overlayfs and drops caches)
//! and needs `strata-mount` built next to `strata-bench`
//! (`cargo build --workspace` does that).

mod common;

use std::path::Path;

use common::{assert_nothing_left, quick, samples, scratch, strata_mount};
use strata_bench::workload::Workload;

#[test]
fn quick_mode_runs_every_workload_with_every_driver_and_cleans_up() {
    strata_mount();
    let tmp = scratch();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    let run = quick(&[], &data, &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "strata-bench --quick failed:\n{stderr}"
    );
    assert_nothing_left(&data);

    // Every workload has a sample from strata on each FUSE transport, the
    // kernel and native (and from fuse-overlayfs when it is installed).
    let ran = samples(&out);
    let mut drivers = vec!["strata+uring=off", "strata+uring=on", "kernel", "native"];
    if Path::new("/usr/bin/fuse-overlayfs").exists() {
        drivers.push("fuse-overlayfs");
    }
    for w in Workload::ALL {
        for d in &drivers {
            assert!(
                ran.contains(&(w.name().to_string(), d.to_string())),
                "{w} has no sample from {d}: {ran:?}\n{stderr}"
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
    strata_mount();
    let tmp = scratch();
    let data = tmp.path().join("data");
    let run = quick(
        &[
            "--workloads",
            "mount1,find_cold_l1",
            "--drivers",
            "prog:/bin/false,native",
        ],
        &data,
        &tmp.path().join("out"),
    );
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
