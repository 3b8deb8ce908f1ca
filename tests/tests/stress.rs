//! fsstress-style concurrency: threads make random changes to a small set
//! of names at once (create, write, unlink, mkdir, rmdir, rename, exchange,
//! link, symlink, truncate, chmod, xattrs) while others stat, list and read
//! them. Nothing may fail in a way a local filesystem never does (EIO,
//! ESTALE, ENXIO, or EINVAL outside renames), and afterwards the kernel's
//! overlayfs, mounted on the same layers, must show the same tree Strata
//! showed: what Strata left in its upper directory is what it said.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use strata_tests::random::Rng;
use strata_tests::{diff, snapshot, Backend, Layers, SnapOpts};

const RUN: Duration = Duration::from_secs(4);
const THREADS: u64 = 4;

fn names() -> Vec<String> {
    let mut v = Vec::new();
    for d in ["", "a/", "b/", "a/c/", "lo/", "lo/sub/"] {
        for n in ["x", "y", "z", "a", "b", "c", "sub"] {
            v.push(format!("{d}{n}"));
        }
    }
    v
}

fn one_op(root: &Path, rng: &mut Rng, names: &[String]) -> (&'static str, Result<(), Errno>) {
    let a = root.join(&names[rng.below(names.len())]);
    let b = root.join(&names[rng.below(names.len())]);
    let io = |r: std::io::Result<()>| r.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)));
    match rng.below(15) {
        0 => ("create", {
            io(fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o644)
                .open(&a)
                .and_then(|mut f| f.write_all(&vec![b'd'; rng.below(9000)])))
        }),
        1 => ("write", {
            let len = 1 + rng.below(70_000);
            let off = rng.below(50_000) as u64;
            io(fs::OpenOptions::new()
                .write(true)
                .open(&a)
                .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &vec![b'w'; len], off)))
        }),
        2 => ("unlink", io(fs::remove_file(&a))),
        3 => ("mkdir", io(fs::create_dir(&a))),
        4 => ("rmdir", io(fs::remove_dir(&a))),
        5 => ("rename", io(fs::rename(&a, &b))),
        6 => ("exchange", {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &a,
                nix::fcntl::AT_FDCWD,
                &b,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
        }),
        7 => ("link", io(fs::hard_link(&a, &b))),
        8 => ("symlink", io(std::os::unix::fs::symlink("target", &a))),
        9 => ("truncate", {
            let len = rng.below(100_000) as u64;
            io(fs::OpenOptions::new()
                .write(true)
                .open(&a)
                .and_then(|f| f.set_len(len)))
        }),
        10 => ("stat", io(fs::symlink_metadata(&a).map(|_| ()))),
        11 => ("list", {
            io(fs::read_dir(&a).and_then(|rd| {
                for e in rd {
                    let _ = e?.metadata();
                }
                Ok(())
            }))
        }),
        12 => ("read", io(fs::read(&a).map(|_| ()))),
        13 => ("chmod", {
            use std::os::unix::fs::PermissionsExt;
            let mode = [0o600, 0o755, 0o644][rng.below(3)];
            io(fs::set_permissions(&a, fs::Permissions::from_mode(mode)))
        }),
        _ => ("setxattr", {
            strata_tests::sys::lsetxattr(&a, "user.k", &vec![b'v'; 1 + rng.below(99)])
        }),
    }
}

/// Errors a local filesystem can give these operations on these names.
fn expected(op: &str, e: Errno) -> bool {
    match e {
        Errno::EIO | Errno::ESTALE | Errno::ENXIO | Errno::EFAULT | Errno::ENOTCONN => false,
        // Renaming a directory into itself, exchanging a directory with its
        // own descendant.
        Errno::EINVAL => matches!(op, "rename" | "exchange"),
        _ => true,
    }
}

#[test]
fn concurrent_changes_keep_the_view_consistent() {
    run(None);
}

/// The same with metadata-only copy-up: chmod and xattr changes leave
/// metacopy files that the writers and renames then bring up.
#[test]
fn concurrent_changes_with_metacopy() {
    run(Some("metacopy=on"));
}

fn run(extra: Option<&str>) {
    let layers = Layers::new().lower(|mut l| {
        for n in ["x", "y", "z", "a", "b"] {
            l = l
                .file(format!("lo/{n}"), "lower\n")
                .file(format!("lo/sub/{n}"), "lower\n")
                .file(format!("a/{n}"), "lower\n");
        }
        l.symlink("lo/s", "x")
    });
    let mut m = layers.materialize(false);
    m.set_extra_options(extra);
    m.mount_again(Backend::strata(), false);
    let names = names();
    let unexpected = Mutex::new(BTreeMap::<String, usize>::new());
    let ops = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (m, names, unexpected, ops) = (&m, &names, &unexpected, &ops);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                let end = Instant::now() + RUN;
                while Instant::now() < end {
                    let (op, res) = one_op(m.path(), &mut rng, names);
                    ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Err(e) = res {
                        if !expected(op, e) {
                            *unexpected
                                .lock()
                                .unwrap()
                                .entry(format!("{op}: {e}"))
                                .or_default() += 1;
                        }
                    }
                }
            });
        }
    });
    let unexpected = unexpected.into_inner().unwrap();
    assert!(
        unexpected.is_empty(),
        "errors no local filesystem gives, in {} operations: {unexpected:?}",
        ops.into_inner()
    );

    let strata_view = snapshot(m.path(), SnapOpts::MERGED);
    m.unmount();
    m.mount_again(Backend::Kernel, true);
    let kernel_view = snapshot(m.path(), SnapOpts::MERGED);
    m.unmount();
    if let Some(d) = diff(
        "strata",
        &strata_view,
        "kernel on strata's upper",
        &kernel_view,
    ) {
        panic!("the upper directory does not hold what strata showed:\n{d}");
    }
}
