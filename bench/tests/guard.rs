//! The mount guard: a panic while Strata is mounted still unmounts and
//! reaps the FUSE server. Runs as root with `strata-mount` built next to
//! `strata-bench`.

use std::path::PathBuf;

use strata_bench::dataset::{DataSet, Sizes, StackId};
use strata_bench::driver::{DriverSpec, MountRequest, NativeSetup};
use strata_bench::process::{is_mountpoint, pids_with_arg_under, process_alive};

#[test]
fn a_panic_while_mounted_unmounts_and_stops_the_server() {
    assert!(nix::unistd::geteuid().is_root(), "run as root");
    let strata = PathBuf::from(env!("CARGO_BIN_EXE_strata-bench")).with_file_name("strata-mount");
    assert!(
        strata.exists(),
        "build strata-mount first: cargo build -p strata-fs"
    );
    let tmp = tempfile::Builder::new()
        .prefix("strata-bench-guard")
        .tempdir_in("/var/tmp")
        .unwrap();
    let data = DataSet::new(tmp.path(), Sizes::quick());
    let stack = data.stack(StackId::L1, &mut |_| {}).expect("generate l1");
    let driver = "strata"
        .parse::<DriverSpec>()
        .unwrap()
        .resolve(&strata)
        .unwrap();
    let scratch = tmp.path().join("run");
    std::fs::create_dir(&scratch).unwrap();

    let mut seen = None;
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let guard = driver
            .mount(&MountRequest {
                stack: &stack,
                scratch: &scratch,
                native: NativeSetup::Shared,
            })
            .expect("mount strata");
        assert!(is_mountpoint(guard.root()));
        assert!(!guard.servers().is_empty(), "no server found for the mount");
        seen = Some((guard.root().to_path_buf(), guard.servers().to_vec()));
        panic!("a workload panics");
    }));
    assert!(caught.is_err());
    let (mnt, servers) = seen.expect("mounted");
    assert!(!is_mountpoint(&mnt), "{} is still mounted", mnt.display());
    for pid in servers {
        assert!(!process_alive(pid), "server {pid} outlived its mount");
    }
    assert!(pids_with_arg_under(tmp.path()).is_empty());
    assert!(
        !scratch.exists(),
        "the guard removes the run's scratch directory"
    );
}
