//! Shared helpers for Strata's integration tests: layer-stack fixtures
//! ([`fixture`]), mount guards for the kernel's overlayfs and for a
//! fuse-overlayfs-compatible mount program ([`mount`]), tree snapshots and
//! their comparison ([`tree`]), and scripted operations with the
//! differential driver ([`ops`]).
//!
//! The program under test is `$STRATA_MOUNT`, else the workspace's built
//! `strata-mount` (run `cargo build -p strata-fs` first). The tests mount,
//! so they run as root.

pub mod fixture;
pub mod mount;
pub mod ops;
pub mod pattern;
pub mod random;
pub mod stats;
pub mod sys;
pub mod transport;
pub mod tree;
pub mod upperfs;
pub mod users;

pub use fixture::{Layer, Layers, OpaqueForm, FIXTURE_MTIME};
pub use mount::{Backend, Mounted};
pub use ops::{differential, Op, OpResult, Out};
pub use tree::{diff, snapshot, SnapOpts, Snapshot};

/// Defines a module `$name` with two tests, `kernel` and `strata`, each
/// calling `$check(&Backend)`: the kernel run validates the test itself
/// against the reference, the strata run tests the program under test.
#[macro_export]
macro_rules! on_both {
    ($name:ident, $check:ident) => {
        mod $name {
            #[test]
            fn kernel() {
                // The reference run is the same in a `_uring` binary (the
                // kernel's overlayfs has no FUSE transport): done once, in
                // the classic binary.
                if !$crate::transport::uring() {
                    super::$check(&$crate::Backend::Kernel)
                }
            }
            #[test]
            fn strata() {
                super::$check(&$crate::Backend::strata())
            }
        }
    };
}

/// The entries of directory `dir` with the inode numbers its listing gives
/// (`d_ino`), sorted by name.
pub fn listed_inos(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
            (
                e.file_name().to_string_lossy().into_owned(),
                std::os::unix::fs::DirEntryExt::ino(&e),
            )
        })
        .collect();
    out.sort();
    out
}
