//! Merged directory listings read in several `getdents64` calls: stable
//! offsets while the directory changes, seeking back to a returned offset,
//! and `d_ino`/`d_type` agreeing with `lstat`. Each runs on the kernel's
//! overlayfs (`NAME::kernel`) and on the program under test
//! (`NAME::strata`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use nix::unistd::{lseek, Whence};
use strata_tests::sys::{getdents64, Dirent};
use strata_tests::{on_both, Backend, Layers};

/// Three lowers and an upper all holding `d`: names unique to each layer,
/// names shared by all, and whiteouts in the top lower for some bottom
/// names. 60 entries per layer, ~250 merged.
fn merged_dir() -> Layers {
    Layers::new()
        .lowers(3, |i, l| {
            let mut l = (0..60).fold(l.dir("d"), |l, k| {
                l.file(format!("d/l{i}_{k:02}"), format!("{i} {k}"))
            });
            l = (0..20).fold(l, |l, k| {
                l.file(format!("d/s{k:02}"), format!("shared from {i}"))
            });
            if i == 2 {
                l = (0..10).fold(l, |l, k| l.whiteout(format!("d/l0_{k:02}")));
            }
            l
        })
        .upper(|u| (0..40).fold(u.dir("d"), |u, k| u.file(format!("d/u{k:02}"), "upper")))
}

fn open_dir(path: &std::path::Path) -> File {
    File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn real(d: &Dirent) -> bool {
    d.name != b"." && d.name != b".."
}

fn name(d: &Dirent) -> String {
    String::from_utf8_lossy(&d.name).into_owned()
}

/// The names `read_dir` gives for `d`.
fn names(d: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(d)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// Lists a directory with a small buffer while entries are created and
/// removed between the calls: no entry may appear twice, every entry that
/// existed throughout must appear once, nothing else may appear.
fn readdir_small_buffer_while_changing(backend: &Backend) {
    let m = merged_dir().mount(backend);
    let d = m.join("d");
    let initial = names(&d);
    assert_eq!(initial.len(), 3 * 60 - 10 + 20 + 40, "merged entries");
    // Remove every 5th name, in an order that mixes layers.
    let victims: Vec<String> = initial.iter().step_by(5).cloned().collect();
    let dir = open_dir(&d);
    let mut seen: Vec<String> = Vec::new();
    let (mut created, mut deleted) = (BTreeSet::new(), BTreeSet::new());
    let mut step = 0;
    loop {
        let batch = getdents64(dir.as_fd(), 200).expect("getdents64");
        if batch.is_empty() {
            break;
        }
        seen.extend(batch.iter().filter(|e| real(e)).map(name));
        for _ in 0..2 {
            if let Some(v) = victims.get(step) {
                fs::remove_file(d.join(v)).expect("unlink during listing");
                deleted.insert(v.clone());
            }
            let new = format!("new{step:03}");
            fs::write(d.join(&new), "new").expect("create during listing");
            created.insert(new);
            step += 1;
        }
        assert!(step < 10_000, "listing does not end");
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &seen {
        *counts.entry(n).or_default() += 1;
    }
    let repeated: Vec<_> = counts
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(n, c)| format!("{n} x{c}"))
        .collect();
    let missing: Vec<_> = initial
        .iter()
        .filter(|n| !deleted.contains(*n) && !counts.contains_key(n.as_str()))
        .collect();
    let unknown: Vec<_> = counts
        .keys()
        .filter(|n| !initial.contains(**n) && !created.contains(**n))
        .collect();
    assert!(
        repeated.is_empty() && missing.is_empty() && unknown.is_empty(),
        "listing {} entries in {} calls while changing it: repeated {repeated:?}, vanished {missing:?}, unknown {unknown:?}",
        initial.len(),
        step / 2
    );
}
on_both!(
    readdir_small_buffer_while_changing,
    readdir_small_buffer_while_changing
);

/// Two listings of one directory at once, one restarting from the top and
/// the directory changing between their calls: the first still sees every
/// entry that stayed exactly once (offsets belong to names, not to a
/// snapshot of one open).
fn readdir_two_listers_interleaved(backend: &Backend) {
    let m = merged_dir().mount(backend);
    let d = m.join("d");
    let initial = names(&d);
    let victims: Vec<String> = initial.iter().skip(3).step_by(7).cloned().collect();
    let a = open_dir(&d);
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..3 {
        seen.extend(
            getdents64(a.as_fd(), 300)
                .expect("getdents64")
                .iter()
                .filter(|e| real(e))
                .map(name),
        );
    }
    let mut deleted = BTreeSet::new();
    let mut next_victim = victims.iter();
    let mut round = 0;
    loop {
        // Another listing from the top, with changes between its calls.
        let b = open_dir(&d);
        let mut step = 0;
        while !getdents64(b.as_fd(), 500).expect("getdents64").is_empty() {
            if let Some(v) = next_victim.next() {
                fs::remove_file(d.join(v)).expect("unlink");
                deleted.insert(v.clone());
            }
            // Few enough that the first listing keeps ahead of them (a
            // name lands anywhere in hash order, as on ext4).
            if step < 2 {
                fs::write(d.join(format!("b{round:02}_{step:03}")), "b").expect("create");
            }
            step += 1;
        }
        let batch = getdents64(a.as_fd(), 300).expect("getdents64");
        if batch.is_empty() {
            break;
        }
        seen.extend(batch.iter().filter(|e| real(e)).map(name));
        round += 1;
        assert!(round < 1000, "listing does not end");
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &seen {
        *counts.entry(n).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, &c)| c > 1).collect();
    let missing: Vec<_> = initial
        .iter()
        .filter(|n| !deleted.contains(*n) && !counts.contains_key(n.as_str()))
        .collect();
    assert!(
        repeated.is_empty() && missing.is_empty(),
        "interleaved listings: repeated {repeated:?}, vanished {missing:?}"
    );
}
on_both!(
    readdir_two_listers_interleaved,
    readdir_two_listers_interleaved
);

/// Every `d_off` returned is a cookie to resume after that entry: seeking
/// to it continues with the next entry, seeking to 0 restarts.
fn readdir_seek_to_returned_offset(backend: &Backend) {
    let m = merged_dir().mount(backend);
    let dir = open_dir(&m.join("d"));
    let mut all: Vec<Dirent> = Vec::new();
    loop {
        let batch = getdents64(dir.as_fd(), 300).expect("getdents64");
        if batch.is_empty() {
            break;
        }
        all.extend(batch);
    }
    for k in [0, 1, 7, all.len() / 2, all.len() - 2] {
        lseek(dir.as_fd(), all[k].off, Whence::SeekSet).expect("lseek to d_off");
        let next = getdents64(dir.as_fd(), 300).expect("getdents64 after lseek");
        assert_eq!(
            next.first().map(name),
            Some(name(&all[k + 1])),
            "after seeking to the d_off of entry {k} ({}), the next entry",
            name(&all[k])
        );
    }
    lseek(dir.as_fd(), 0, Whence::SeekSet).expect("rewind");
    let mut again = Vec::new();
    loop {
        let batch = getdents64(dir.as_fd(), 300).expect("getdents64");
        if batch.is_empty() {
            break;
        }
        again.extend(batch.iter().map(name));
    }
    assert_eq!(
        again,
        all.iter().map(name).collect::<Vec<_>>(),
        "listing after rewinddir"
    );
}
on_both!(
    readdir_seek_to_returned_offset,
    readdir_seek_to_returned_offset
);

fn dtype_of(ft: std::fs::FileType) -> u8 {
    if ft.is_dir() {
        libc::DT_DIR
    } else if ft.is_symlink() {
        libc::DT_LNK
    } else if ft.is_fifo() {
        libc::DT_FIFO
    } else if ft.is_char_device() {
        libc::DT_CHR
    } else {
        libc::DT_REG
    }
}

/// `d_ino` and `d_type` from readdir agree with `lstat` for entries from
/// every layer, including copied-up ones.
fn readdir_d_ino_and_type_match_stat(backend: &Backend) {
    let m = Layers::new()
        .lower(|l| {
            l.file("d/lo", "x")
                .dir("d/sub")
                .symlink("d/sl", "lo")
                .fifo("d/fifo")
                .file("d/cu", "to copy up")
        })
        .lower(|l| l.file("d/top", "t").file("d/lo2", "y"))
        .upper(|u| u.file("d/up", "u"))
        .mount(backend);
    fs::write(m.join("d/cu"), "copied up").expect("copy up");
    let dir = open_dir(&m.join("d"));
    let mut bad = Vec::new();
    loop {
        let batch = getdents64(dir.as_fd(), 4096).expect("getdents64");
        if batch.is_empty() {
            break;
        }
        for e in batch.iter().filter(|e| real(e)) {
            let md = fs::symlink_metadata(m.join("d").join(name(e))).expect("lstat");
            if e.ino != md.ino() || e.kind != dtype_of(md.file_type()) {
                bad.push(format!(
                    "{}: d_ino {} d_type {}, lstat ino {} type {}",
                    name(e),
                    e.ino,
                    e.kind,
                    md.ino(),
                    dtype_of(md.file_type())
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "readdir disagrees with lstat:\n{}",
        bad.join("\n")
    );
}
on_both!(
    readdir_d_ino_and_type_match_stat,
    readdir_d_ino_and_type_match_stat
);
