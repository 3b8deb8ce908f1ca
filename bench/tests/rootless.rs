//! The rootless drivers (`@userns`): strata-mount, fuse-overlayfs and the
//! kernel's overlayfs (with `userxattr`) mount in a user namespace of their
//! own, a workload runs there, and nothing is left mounted or running.
//! Runs as root with `strata-mount` built next to `strata-bench`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{assert_nothing_left, quick, samples, scratch, strata_mount};

#[test]
fn rootless_drivers_mount_in_their_own_user_namespace_run_and_clean_up() {
    let strata = strata_mount();
    let tmp = scratch();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    // strata-mount behind a script that notes the user namespace and the
    // id map it runs with.
    let seen = tmp.path().join("seen");
    let wrapper = tmp.path().join("strata-mount-probe");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n{{ readlink /proc/self/ns/user; cat /proc/self/uid_map; }} >> '{}'\nexec '{}' \"$@\"\n",
            seen.display(),
            strata.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut drivers = vec![
        "strata@userns+uring=off".to_string(),
        "kernel@userns".to_string(),
        format!("prog:{}@userns", wrapper.display()),
    ];
    if Path::new("/usr/bin/fuse-overlayfs").exists() {
        drivers.push("fuse-overlayfs@userns".to_string());
    }
    // rmlower: whiteouts and opaque directories in the forms a user
    // namespace allows.
    let drivers_arg = drivers.join(",");
    let run = quick(
        &[
            "--no-progress",
            "--workloads",
            "rmlower",
            "--drivers",
            &drivers_arg,
        ],
        &data,
        &out,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "strata-bench --quick failed:\n{stderr}"
    );
    assert_nothing_left(&data);

    let ran = samples(&out);
    for d in &drivers {
        assert!(
            ran.contains(&("rmlower".to_string(), d.clone())),
            "rmlower has no sample from {d}: {ran:?}\n{stderr}"
        );
    }
    let seen = std::fs::read_to_string(&seen).expect("the probe ran");
    let mine = std::fs::read_link("/proc/self/ns/user").unwrap();
    let mut lines = seen.lines();
    let ns = lines.next().expect("the probe's user namespace");
    assert_ne!(
        ns,
        mine.to_string_lossy(),
        "strata-mount ran in the test's user namespace"
    );
    let map: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(map, ["0", "0", "65536"], "{seen}");

    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(md.contains("ratio to kernel@userns"), "{md}");
}

#[test]
fn a_mount_program_failing_in_a_user_namespace_is_reported_and_leaves_nothing() {
    strata_mount();
    let tmp = scratch();
    let data = tmp.path().join("data");
    let run = quick(
        &[
            "--no-progress",
            "--workloads",
            "mount1,find_cold_l1",
            "--drivers",
            "prog:/bin/false@userns,kernel@userns",
        ],
        &data,
        &tmp.path().join("out"),
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "a failing driver must fail --quick");
    assert!(
        stderr.contains("find_cold_l1 with prog:/bin/false@userns failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("mount1 did not run with prog:/bin/false@userns"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("did not run with kernel@userns"),
        "{stderr}"
    );
    assert_nothing_left(&data);
}
