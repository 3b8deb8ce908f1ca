//! Crash safety (issue 3): kill -9 the FUSE server in the middle of a
//! copy-up of a large file, clean up the dead mount, remount the same upper
//! and work directories, and check that the file shows either all of the
//! old content or all of the new, never a torn copy, and that no temporary
//! file shows in the merged view.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use strata_tests::mount::{wait_process_gone, PROCESS_TIMEOUT};
use strata_tests::pattern::{check_pattern_file, write_pattern_file, MIB};
use strata_tests::{Backend, Layers};

const SIZE_MIB: usize = 256;

/// A regular file under `dir` that holds some but not all of `full` bytes
/// (by size or by allocated blocks): a copy in progress.
fn partial_copy_under(dir: &Path, full: u64) -> Option<String> {
    let rd = fs::read_dir(dir).ok()?;
    for e in rd.flatten() {
        let Ok(md) = e.path().symlink_metadata() else {
            continue;
        };
        if md.is_dir() {
            if let Some(p) = partial_copy_under(&e.path(), full) {
                return Some(p);
            }
        } else if md.is_file() {
            let allocated = md.blocks() * 512;
            if (md.len() > 0 && md.len() < full) || (allocated > 0 && allocated < full) {
                return Some(e.path().display().to_string());
            }
        }
    }
    None
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The files copied up at once: a top-level one and one whose parents
/// must be copied up too.
const FILES: [&str; 2] = ["big/file", "deep/er/file2"];

#[test]
fn kill_9_during_copy_up_leaves_no_torn_file() {
    let mut m = Layers::new()
        .lower(|l| {
            l.dir("big")
                .dir("deep/er")
                .file("small", "small\n")
                .file("deep/er/small", "s\n")
        })
        .materialize(false);
    for f in FILES {
        write_pattern_file(&m.lowers()[0].join(f), SIZE_MIB);
    }
    m.mount_again(Backend::strata(), false);
    let servers = m.servers().to_vec();
    assert!(
        !servers.is_empty(),
        "no server process found for {}",
        m.path().display()
    );

    let off = SIZE_MIB * MIB / 2 + 777;
    let writers: Vec<_> = FILES
        .iter()
        .map(|f| {
            let path = m.join(f);
            std::thread::spawn(move || -> std::io::Result<()> {
                let file = OpenOptions::new().write(true).open(&path)?;
                file.write_all_at(b"\0", off as u64)
            })
        })
        .collect();
    let full = (SIZE_MIB * MIB) as u64;
    let start = Instant::now();
    let caught = loop {
        if let Some(p) =
            partial_copy_under(m.work(), full).or_else(|| partial_copy_under(m.upper(), full))
        {
            break Some(p);
        }
        if writers.iter().all(|w| w.is_finished()) {
            break None;
        }
        assert!(
            start.elapsed() < PROCESS_TIMEOUT,
            "the copy-ups neither finished nor showed progress"
        );
        std::hint::spin_loop();
    };
    for &pid in &servers {
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9 the server");
    }
    for &pid in &servers {
        assert!(
            wait_process_gone(pid, PROCESS_TIMEOUT),
            "server {pid} survived SIGKILL"
        );
    }
    match &caught {
        Some(p) => eprintln!("killed the server while {p} was a partial copy"),
        None => eprintln!(
            "the copy-ups finished before a partial copy was seen; killed the server after them"
        ),
    }
    // A writer sees its copy-up fail (ENOTCONN/ECONNABORTED) or succeed.
    let results: Vec<std::io::Result<()>> = writers
        .into_iter()
        .map(|w| w.join().expect("writer thread"))
        .collect();
    eprintln!("writers: {results:?}");
    m.forget_servers();
    m.unmount(); // fusermount3 -u, or a lazy umount, of the dead mount

    m.mount_again(Backend::strata(), false);
    for (f, result) in FILES.iter().zip(&results) {
        let merged = m.join(f);
        let old = check_pattern_file(&merged, SIZE_MIB, &[]);
        let new = check_pattern_file(&merged, SIZE_MIB, &[(off, 0)]);
        assert!(
            old.is_ok() || new.is_ok(),
            "after a crash {f} is neither the old nor the new content:\n  as old: {}\n  as new: {}",
            old.unwrap_err(),
            new.unwrap_err()
        );
        if result.is_ok() {
            assert!(
                new.is_ok(),
                "the write to {f} returned success before the crash, but is lost: {}",
                new.unwrap_err()
            );
        }
        let upper_file = m.upper().join(f);
        if upper_file.exists() {
            assert_eq!(
                fs::metadata(&upper_file).expect("stat").len(),
                full,
                "a torn copy of {f} sits in the upper layer"
            );
        }
        // The file is usable: writing now copies up cleanly.
        let file = OpenOptions::new()
            .write(true)
            .open(&merged)
            .expect("open after remount");
        file.write_all_at(b"\x01", 5).expect("write after remount");
        drop(file);
        let mut changed = vec![(5, 1u8)];
        if new.is_ok() {
            changed.push((off, 0));
        }
        check_pattern_file(&merged, SIZE_MIB, &changed)
            .expect("after a write following the remount");
    }
    assert_eq!(
        names(m.path()),
        ["big", "deep", "small"],
        "merged root after the crash"
    );
    assert_eq!(
        names(&m.join("big")),
        ["file"],
        "merged big/ after the crash"
    );
    assert_eq!(
        names(&m.join("deep/er")),
        ["file2", "small"],
        "merged deep/er/ after the crash"
    );
}
