//! Regression-style tests from issue 3, each run on the kernel's overlayfs
//! (validating the test) and on the program under test: `NAME::kernel` and
//! `NAME::strata`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use strata_tests::pattern::{check_pattern_file, write_pattern_file, MIB};
use strata_tests::{on_both, Backend, Layers};

fn read_all(path: &std::path::Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn pread_all(f: &File) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read_at(&mut buf, out.len() as u64).expect("pread");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The contents of generation `g` of the rewritten file: a length that
/// changes with g, no zero bytes, and a byte pattern unique to g.
fn generation(g: usize) -> Vec<u8> {
    let len = 3000 + (g % 5) * 2100 + (g % 3) * 333;
    (0..len)
        .map(|i| b'!' + ((i * 7 + g * 13) % 90) as u8)
        .collect()
}

/// Checks one read taken while generations `lo..=hi` may have been
/// current: every byte must come from one of them (never a zero from
/// padding, never a byte no generation had there). Returns a description of
/// the first bad byte.
fn plausible(data: &[u8], lo: usize, hi: usize, gens: &[Vec<u8>]) -> Result<(), String> {
    let max = gens[lo..=hi].iter().map(Vec::len).max().unwrap_or(0);
    if data.len() > max {
        return Err(format!(
            "read {} bytes, but no generation {lo}..={hi} is longer than {max}",
            data.len()
        ));
    }
    for (i, &b) in data.iter().enumerate() {
        if !gens[lo..=hi].iter().any(|g| g.get(i) == Some(&b)) {
            return Err(format!(
                "byte {i} of {} is {b:#04x}, which no generation {lo}..={hi} has there{}",
                data.len(),
                if b == 0 {
                    " (zero padding)"
                } else {
                    " (stale or mixed data)"
                }
            ));
        }
    }
    Ok(())
}

/// fuse-overlayfs issue 475: rewriting a file inherited from a lower layer
/// (O_TRUNC, a different length) while others read it produced stale bytes
/// and zero padding. A read that overlaps no rewrite must see exactly the
/// current generation; a read that overlaps one only bytes some generation
/// had; a fd opened before the first copy-up follows every rewrite.
fn issue_475_rewrite_while_reading(backend: &Backend) {
    const GENERATIONS: usize = 200;
    let gens: Arc<Vec<Vec<u8>>> = Arc::new((0..GENERATIONS).map(generation).collect());
    let m = Layers::new()
        .lower(|l| l.file("etc/f", &gens[0]))
        .mount(backend);
    let path = m.join("etc/f");
    let held = File::open(&path).expect("open the lower file before copy-up");
    // seq is even while generation seq/2 is current and stable, odd while
    // a rewrite is in progress.
    let seq = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let held = Arc::new(held);
    let mut readers = Vec::new();
    for r in 0..3 {
        let (seq, done, failures, gens, path, held) = (
            seq.clone(),
            done.clone(),
            failures.clone(),
            gens.clone(),
            path.clone(),
            held.clone(),
        );
        readers.push(std::thread::spawn(move || {
            let mut reads = 0u64;
            while !done.load(Ordering::SeqCst) {
                let s1 = seq.load(Ordering::SeqCst);
                let (data, size) = if r == 0 {
                    (pread_all(&held), held.metadata().expect("fstat").len())
                } else {
                    let mut v = Vec::new();
                    let mut f = File::open(&path).expect("open");
                    f.read_to_end(&mut v).expect("read");
                    let size = f.metadata().expect("fstat").len();
                    (v, size)
                };
                let s2 = seq.load(Ordering::SeqCst);
                reads += 1;
                let verdict = if s1 == s2 && s1 % 2 == 0 {
                    let g = (s1 / 2) as usize;
                    if data == gens[g] && size == data.len() as u64 {
                        Ok(())
                    } else {
                        Err(format!(
                            "no rewrite overlapped, generation {g} ({} bytes) was current, got {} bytes, fstat size {size}; {}",
                            gens[g].len(),
                            data.len(),
                            plausible(&data, g, g, &gens).err().unwrap_or_default()
                        ))
                    }
                } else {
                    let lo = (s1 / 2) as usize;
                    let hi = (s2.div_ceil(2) as usize).min(gens.len() - 1);
                    plausible(&data, lo, hi, &gens)
                };
                if let Err(e) = verdict {
                    let mut f = failures.lock().expect("lock");
                    if f.len() < 10 {
                        f.push(format!("reader {r} ({}): {e}", if r == 0 { "fd held from before copy-up" } else { "fresh open" }));
                    }
                }
            }
            reads
        }));
    }
    for g in gens.iter().skip(1) {
        seq.fetch_add(1, Ordering::SeqCst);
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .expect("open O_TRUNC");
        f.write_all(g).expect("write");
        drop(f);
        seq.fetch_add(1, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    let reads: u64 = readers
        .into_iter()
        .map(|t| t.join().expect("reader thread"))
        .sum();
    let last = &gens[GENERATIONS - 1];
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} reads, bad ones:\n{}",
        reads,
        failures.join("\n")
    );
    assert_eq!(&read_all(&path), last, "final contents through a new fd");
    assert_eq!(
        &pread_all(&held),
        last,
        "final contents through the fd held from before the copy-up"
    );
    assert_eq!(
        &read_all(&m.upper().join("etc/f")),
        last,
        "final contents in the upper layer"
    );
    assert_eq!(
        read_all(&m.lowers()[0].join("etc/f")),
        gens[0],
        "the lower layer must not change"
    );
}
on_both!(
    issue_475_rewrite_while_reading,
    issue_475_rewrite_while_reading
);

/// The passthrough trap: a lower file opened read-only (with passthrough,
/// bound to the lower file), then written through other fds (O_TRUNC,
/// pwrite, append, truncate). The held fd, a new fd and the upper file must
/// all see the new data, and the lower layer must be unchanged.
fn passthrough_trap(backend: &Backend) {
    let original = b"original lower content, quite long\n".to_vec();
    let m = Layers::new()
        .lower(|l| l.file("f", &original).file("g", &original))
        .mount(backend);
    let path = m.join("f");
    let held = File::open(&path).expect("open read-only");
    assert_eq!(pread_all(&held), original);
    let mut expected = b"rewritten\n".to_vec();
    let check = |what: &str, expected: &[u8]| {
        assert_eq!(
            pread_all(&held),
            expected,
            "{what}: the read-only fd held from before the copy-up"
        );
        assert_eq!(read_all(&path), expected, "{what}: a new fd");
        assert_eq!(
            read_all(&m.upper().join("f")),
            expected,
            "{what}: the upper file"
        );
        assert_eq!(
            read_all(&m.lowers()[0].join("f")),
            original,
            "{what}: the lower file must not change"
        );
    };

    let mut w = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("open O_TRUNC");
    w.write_all(&expected).expect("write");
    w.sync_all().expect("fsync");
    drop(w);
    check("after O_TRUNC + write", &expected);

    let w = OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open O_WRONLY");
    w.write_all_at(b"PW", 3).expect("pwrite");
    w.sync_all().expect("fsync");
    drop(w);
    expected[3..5].copy_from_slice(b"PW");
    check("after pwrite", &expected);

    let mut w = OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open O_APPEND");
    w.write_all(b"appended\n").expect("append");
    w.sync_all().expect("fsync");
    drop(w);
    expected.extend_from_slice(b"appended\n");
    check("after append", &expected);

    // The same through truncate(2) of a second file with a held fd.
    let g = m.join("g");
    let held_g = File::open(&g).expect("open g read-only");
    assert_eq!(pread_all(&held_g), original);
    nix::unistd::truncate(&g, 8).expect("truncate g");
    assert_eq!(
        pread_all(&held_g),
        &original[..8],
        "held fd after truncate(2)"
    );
    assert_eq!(
        read_all(&m.upper().join("g")),
        &original[..8],
        "upper after truncate(2)"
    );
    assert_eq!(
        read_all(&m.lowers()[0].join("g")),
        original,
        "lower after truncate(2)"
    );
}
on_both!(passthrough_trap, passthrough_trap);

/// A read-write fd keeps working after its name is unlinked (lower-only,
/// upper-only, shadowed and newly created files): fstat says nlink 0, reads
/// and writes work, the name is gone, until close.
fn open_unlinked_files(backend: &Backend) {
    let m = Layers::new()
        .lower(|l| l.file("lower", "lower data\n").file("shadowed", "bottom\n"))
        .upper(|u| u.file("upper", "upper data\n").file("shadowed", "shadow\n"))
        .mount(backend);
    fs::write(m.join("new"), "new data\n").expect("create");
    for name in ["lower", "upper", "shadowed", "new"] {
        let path = m.join(name);
        let before = read_all(&path);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open O_RDWR");
        fs::remove_file(&path).expect("unlink");
        let st = f.metadata().expect("fstat");
        assert_eq!(st.nlink(), 0, "{name}: fstat nlink after unlink");
        assert_eq!(
            st.len(),
            before.len() as u64,
            "{name}: fstat size after unlink"
        );
        f.seek(SeekFrom::End(0)).expect("seek");
        f.write_all(b"more\n").expect("write after unlink");
        let mut expected = before.clone();
        expected.extend_from_slice(b"more\n");
        assert_eq!(
            pread_all(&f),
            expected,
            "{name}: read after unlink and write"
        );
        assert_eq!(
            f.metadata().expect("fstat").len(),
            expected.len() as u64,
            "{name}: size after write"
        );
        assert_eq!(
            fs::symlink_metadata(&path)
                .map_err(|e| e.raw_os_error())
                .err(),
            Some(Some(libc::ENOENT)),
            "{name}: the name is gone"
        );
        assert!(
            !fs::read_dir(m.path())
                .expect("readdir")
                .any(|e| e.expect("entry").file_name() == name),
            "{name}: listed after unlink"
        );
        f.set_len(2).expect("ftruncate after unlink");
        assert_eq!(pread_all(&f), &before[..2], "{name}: after ftruncate");
        drop(f);
        assert!(
            fs::symlink_metadata(&path).is_err(),
            "{name}: still gone after close"
        );
    }
    let names: Vec<_> = fs::read_dir(m.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(names.is_empty(), "leftovers in the merged root: {names:?}");
}
on_both!(open_unlinked_files, open_unlinked_files);

/// Two names of one file, one unlinked while open: a write through that fd
/// shows in the other name's size and data at once. (In strata each name is
/// a node of its own; the kernel must not keep the other name's size.)
fn write_through_an_unlinked_hard_link(backend: &Backend) {
    let m = Layers::new().lower(|l| l.dir("d")).mount(backend);
    fs::write(m.join("a"), "a").unwrap();
    fs::hard_link(m.join("a"), m.join("b")).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("b"))
        .unwrap();
    fs::remove_file(m.join("b")).unwrap();
    assert_eq!(fs::symlink_metadata(m.join("a")).unwrap().len(), 1);
    f.write_all_at(&[b'x'; 1000], 0).unwrap();
    assert_eq!(
        fs::symlink_metadata(m.join("a")).unwrap().len(),
        1000,
        "{}: the size of the other name after a write through the unlinked one",
        m.backend().name()
    );
    assert_eq!(fs::read(m.join("a")).unwrap(), vec![b'x'; 1000]);
    drop(f);
}
on_both!(
    write_through_an_unlinked_hard_link,
    write_through_an_unlinked_hard_link
);

/// mmap of a lower file (read-only, and read-write which copies up) and of
/// an upper file: the mapping shows the data, stores reach the file and the
/// upper layer, never the lower one.
fn mmap_lower_and_upper(backend: &Backend) {
    let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| b'a' + (i % 26) as u8).collect();
    let m = Layers::new()
        .lower(|l| l.file("lower_ro", &data).file("lower_rw", &data))
        .upper(|u| u.file("upper_rw", &data))
        .mount(backend);

    let f = File::open(m.join("lower_ro")).expect("open");
    // SAFETY: the file is not truncated while mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.expect("mmap read-only");
    assert_eq!(&map[..], &data[..], "read-only mapping of a lower file");
    drop(map);

    for (name, in_lower) in [("lower_rw", true), ("upper_rw", false)] {
        let path = m.join(name);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open O_RDWR");
        // SAFETY: the file is not truncated while mapped.
        let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.expect("mmap shared read-write");
        assert_eq!(&map[..], &data[..], "{name}: mapping before stores");
        map[5000..5005].copy_from_slice(b"MMAP!");
        map.flush().expect("msync");
        drop(map);
        let mut expected = data.clone();
        expected[5000..5005].copy_from_slice(b"MMAP!");
        assert_eq!(
            pread_all(&f),
            expected,
            "{name}: read through the same fd after msync"
        );
        drop(f);
        assert_eq!(read_all(&path), expected, "{name}: read through a new fd");
        assert_eq!(
            read_all(&m.upper().join(name)),
            expected,
            "{name}: the upper file"
        );
        if in_lower {
            assert_eq!(
                read_all(&m.lowers()[0].join(name)),
                data,
                "{name}: the lower file must not change"
            );
        }
    }
}
on_both!(mmap_lower_and_upper, mmap_lower_and_upper);

/// Four writers hit the same lower file at once (racing copy-ups) at
/// disjoint regions, and their own files, while readers read the shared
/// file: every read byte is the old or the new value of its region, and in
/// the end every region holds its writer's data.
fn concurrent_writers_and_readers(backend: &Backend) {
    const WRITERS: usize = 4;
    const REGION: usize = 64 * 1024;
    let old: Vec<u8> = vec![b'o'; WRITERS * REGION];
    let m = Layers::new()
        .lower(|l| {
            (0..WRITERS).fold(l.file("shared", &old), |l, w| {
                l.file(format!("own{w}"), format!("writer {w}\n"))
            })
        })
        .mount(backend);
    let shared = m.join("shared");
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (shared, done) = (shared.clone(), done.clone());
        readers.push(std::thread::spawn(move || -> Result<(), String> {
            while !done.load(Ordering::SeqCst) {
                let data = read_all(&shared);
                if data.len() != WRITERS * REGION {
                    return Err(format!("shared file read as {} bytes", data.len()));
                }
                for (i, &b) in data.iter().enumerate() {
                    let new = b'0' + (i / REGION) as u8;
                    if b != b'o' && b != new {
                        return Err(format!(
                            "byte {i} is {b:#04x}, neither old 'o' nor new {:?}",
                            new as char
                        ));
                    }
                }
            }
            Ok(())
        }));
    }
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (shared, own) = (shared.clone(), m.join(format!("own{w}")));
            std::thread::spawn(move || {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&shared)
                    .expect("open shared for write");
                let chunk = vec![b'0' + w as u8; 4096];
                for k in 0..REGION / 4096 {
                    f.write_all_at(&chunk, (w * REGION + k * 4096) as u64)
                        .expect("pwrite");
                }
                let mut o = OpenOptions::new()
                    .append(true)
                    .open(&own)
                    .expect("open own");
                for k in 0..100 {
                    writeln!(o, "line {k}").expect("append");
                }
            })
        })
        .collect();
    for t in writers {
        t.join().expect("writer thread");
    }
    done.store(true, Ordering::SeqCst);
    for t in readers {
        t.join().expect("reader thread").expect("concurrent read");
    }
    let data = read_all(&shared);
    for w in 0..WRITERS {
        assert!(
            data[w * REGION..(w + 1) * REGION]
                .iter()
                .all(|&b| b == b'0' + w as u8),
            "region {w} lost writes"
        );
        let own = String::from_utf8(read_all(&m.join(format!("own{w}")))).expect("utf8");
        let expected: String =
            format!("writer {w}\n") + &(0..100).map(|k| format!("line {k}\n")).collect::<String>();
        assert_eq!(own, expected, "own{w}");
    }
    assert_eq!(
        read_all(&m.upper().join("shared")),
        data,
        "upper copy of the shared file"
    );
    assert_eq!(
        read_all(&m.lowers()[0].join("shared")),
        old,
        "the lower file must not change"
    );
}
on_both!(
    concurrent_writers_and_readers,
    concurrent_writers_and_readers
);

fn ino(path: &std::path::Path) -> u64 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
        .ino()
}

fn drop_dentry_caches() {
    // Makes the kernel forget its dentries and inodes, so a FUSE server gets
    // FORGETs and must answer later lookups with the same inode numbers.
    fs::write("/proc/sys/vm/drop_caches", "2").expect("drop caches");
}

/// Inode numbers stay the same across copy-up (chmod, write, chown, xattr),
/// across a rename of a file, and after the kernel forgot the inodes.
fn inode_numbers_stable_across_copy_up(backend: &Backend) {
    let m = Layers::new()
        .lower(|l| {
            l.file("a", "a")
                .file("b", "b")
                .file("c", "c")
                .file("d/e", "e")
                .symlink("s", "a")
                .file("r", "r")
                .dir("dd")
        })
        .lower(|l| l.file("d/top", "top"))
        .mount(backend);
    let names = ["a", "b", "c", "d", "d/e", "s", "r", "dd", "d/top"];
    let before: Vec<u64> = names.iter().map(|n| ino(&m.join(n))).collect();
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &m.join("a"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .expect("chmod a");
    OpenOptions::new()
        .append(true)
        .open(m.join("b"))
        .and_then(|mut f| f.write_all(b"+"))
        .expect("append b");
    nix::unistd::chown(&m.join("c"), Some(nix::unistd::Uid::from_raw(7)), None).expect("chown c");
    strata_tests::sys::lsetxattr(&m.join("d/e"), "user.x", b"x").expect("setxattr d/e");
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &m.join("s"),
        Some(nix::unistd::Uid::from_raw(7)),
        None,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .expect("lchown s");
    fs::write(m.join("dd/new"), "new").expect("create in dd");
    OpenOptions::new()
        .append(true)
        .open(m.join("d/top"))
        .and_then(|mut f| f.write_all(b"+"))
        .expect("append");
    let after: Vec<u64> = names.iter().map(|n| ino(&m.join(n))).collect();
    assert_eq!(
        before, after,
        "inode numbers of {names:?} before and after copy-up"
    );
    fs::rename(m.join("r"), m.join("r2")).expect("rename r");
    assert_eq!(ino(&m.join("r2")), before[6], "inode number after rename");
    drop_dentry_caches();
    let again: Vec<u64> = names
        .iter()
        .map(|n| ino(&m.join(n.replace('r', "r2"))))
        .collect();
    assert_eq!(
        before, again,
        "inode numbers after the kernel dropped its dentry cache"
    );
}
on_both!(
    inode_numbers_stable_across_copy_up,
    inode_numbers_stable_across_copy_up
);

/// Inode numbers are unique within the mount, across layers, for entries
/// that are not hard links of each other, and stat agrees with readdir's
/// d_ino.
fn inode_numbers_unique(backend: &Backend) {
    let m = Layers::new()
        .lowers(4, |i, l| {
            (0..50).fold(l.dir(format!("d{i}")), |l, k| {
                l.file(format!("d{i}/f{k}"), "x")
                    .file(format!("shared/l{i}_{k}"), "y")
            })
        })
        .upper(|u| (0..50).fold(u, |u, k| u.file(format!("shared/u{k}"), "u")))
        .mount(backend);
    fs::write(m.join("shared/new"), "n").expect("create");
    fs::write(m.join("d0/f0"), "copied up").expect("copy-up");
    let mut seen: std::collections::HashMap<u64, String> = std::collections::HashMap::new();
    let mut stack = vec![m.path().to_path_buf()];
    let mut dups = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("readdir") {
            let e = e.expect("entry");
            let md = fs::symlink_metadata(e.path()).expect("lstat");
            if md.is_dir() {
                stack.push(e.path());
            }
            let rel = e
                .path()
                .strip_prefix(m.path())
                .expect("prefix")
                .display()
                .to_string();
            if let Some(other) = seen.insert(md.ino(), rel.clone()) {
                dups.push(format!("{rel} and {other} share inode {}", md.ino()));
            }
        }
    }
    assert!(
        dups.is_empty(),
        "inode numbers not unique:\n{}",
        dups.join("\n")
    );
    assert_eq!(
        seen.len(),
        4 + 4 * 50 + 1 + 4 * 50 + 50 + 1,
        "entries walked"
    );
}
on_both!(inode_numbers_unique, inode_numbers_unique);

/// Copy-up of a 256 MiB file: writing one byte in the middle leaves all
/// other bytes intact in the merged view and in the upper.
fn big_file_copy_up(backend: &Backend) {
    const SIZE_MIB: usize = 256;
    let mut m = Layers::new()
        .lower(|l| l.dir("big"))
        .materialize(backend.is_kernel());
    write_pattern_file(&m.lowers()[0].join("big/file"), SIZE_MIB);
    m.mount_again(backend.clone(), false);
    let path = m.join("big/file");
    let off = SIZE_MIB * MIB / 2 + 12345;
    let f = OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open for write (copy-up)");
    f.write_all_at(b"\0", off as u64).expect("pwrite");
    drop(f);
    check_pattern_file(&path, SIZE_MIB, &[(off, 0)]).expect("merged view");
    check_pattern_file(&m.upper().join("big/file"), SIZE_MIB, &[(off, 0)]).expect("upper");
    check_pattern_file(&m.lowers()[0].join("big/file"), SIZE_MIB, &[]).expect("lower unchanged");
}
on_both!(big_file_copy_up, big_file_copy_up);

/// A hard link made through the mount is the same file under both names at
/// once: right after link(2), lstat of the old name shows nlink 2, and a
/// write through one name shows through a mapping of the other.
fn hard_link_made_through_the_mount_is_one_inode(backend: &Backend) {
    let m = Layers::new()
        .lower(|l| l.file("lower", "lower data\n"))
        .mount(backend);
    fs::write(m.join("new"), "first version\n").expect("create");
    for name in ["new", "lower"] {
        let old = m.join(name);
        let link = m.join(format!("{name}_link"));
        let before = fs::symlink_metadata(&old).expect("lstat"); // caches the attributes
        fs::hard_link(&old, &link).expect("link");
        let (a, b) = (
            fs::symlink_metadata(&old).expect("lstat"),
            fs::symlink_metadata(&link).expect("lstat"),
        );
        assert_eq!(
            (a.nlink(), b.nlink()),
            (2, 2),
            "{name}: nlink of the old and new name right after link"
        );
        assert_eq!(a.ino(), b.ino(), "{name}: one inode number");
        assert_eq!(
            a.ino(),
            before.ino(),
            "{name}: inode number kept across link (and its copy-up)"
        );
        let f = File::open(&old).expect("open old name");
        // SAFETY: the file is not truncated while mapped.
        let map = unsafe { memmap2::Mmap::map(&f) }.expect("mmap the old name");
        let w = OpenOptions::new()
            .write(true)
            .open(&link)
            .expect("open new name");
        w.write_all_at(b"XY", 0)
            .expect("pwrite through the new name");
        drop(w);
        assert_eq!(
            &map[..2],
            b"XY",
            "{name}: a mapping of the old name sees a write through the new name"
        );
        assert_eq!(
            &read_all(&old)[..2],
            b"XY",
            "{name}: read through the old name"
        );
    }
}
on_both!(
    hard_link_made_through_the_mount_is_one_inode,
    hard_link_made_through_the_mount_is_one_inode
);

/// Paths deeper than PATH_MAX inside the mount: reached through relative
/// lookups (as pjdfstest's */03.t do), every operation must work and the
/// server must not answer ENAMETOOLONG for a path it builds itself. Strata
/// once joined the whole path onto the layer root and failed past 4 KiB.
fn paths_deeper_than_path_max(backend: &Backend) {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::Mode;
    let m = Layers::new()
        .lower(|l| l.file("lower/f", "f\n"))
        .mount(backend);
    let name = "d".repeat(250);
    let mut dir = open(
        &m.join("lower"),
        OFlag::O_PATH | OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .expect("open lower");
    // 20 levels of 250 bytes: 5 KiB below the mount root.
    for level in 0..20 {
        nix::sys::stat::mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o755))
            .unwrap_or_else(|e| panic!("mkdir at level {level}: {e}"));
        dir = openat(
            &dir,
            name.as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap_or_else(|e| panic!("open at level {level}: {e}"));
    }
    let f = openat(
        &dir,
        "file",
        OFlag::O_CREAT | OFlag::O_WRONLY,
        Mode::from_bits_truncate(0o640),
    )
    .expect("create deep");
    nix::unistd::write(&f, b"deep\n").expect("write deep");
    drop(f);
    nix::unistd::symlinkat("file", &dir, "link").expect("symlink deep");
    nix::fcntl::renameat(&dir, "file", &dir, "file2").expect("rename deep");
    nix::unistd::linkat(&dir, "file2", &dir, "file3", nix::fcntl::AtFlags::empty())
        .expect("link deep");
    let st = nix::sys::stat::fstatat(&dir, "file2", nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .expect("stat deep");
    assert_eq!(
        (st.st_size, st.st_nlink),
        (5, 2),
        "size and links of the deep file"
    );
    let target = nix::fcntl::readlinkat(&dir, "link").expect("readlink deep");
    assert_eq!(target.to_str(), Some("file"));
    nix::unistd::unlinkat(&dir, "file3", nix::unistd::UnlinkatFlags::NoRemoveDir)
        .expect("unlink deep");
    nix::sys::stat::fchmodat(
        &dir,
        "file2",
        Mode::from_bits_truncate(0o600),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .expect("chmod deep");
}

on_both!(paths_deeper_than_path_max, paths_deeper_than_path_max);

/// After a copy-up and a dentry-cache drop (so the server forgot the
/// node), readdir must give the copied-up file the inode number stat
/// shows: the origin's. Strata once listed the upper file's own number.
fn readdir_ino_of_copied_up_file_matches_stat(backend: &Backend) {
    let m = Layers::new()
        .lower(|l| l.file("d/f", "f\n").file("d/g", "g\n"))
        .mount(backend);
    let before = ino(&m.join("d/f"));
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &m.join("d/f"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .expect("chmod copies up");
    drop_dentry_caches();
    let listed: Vec<(String, u64)> = fs::read_dir(m.join("d"))
        .expect("readdir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::os::unix::fs::DirEntryExt::ino(&e),
            )
        })
        .collect();
    for (name, d_ino) in listed {
        assert_eq!(
            d_ino,
            ino(&m.join("d").join(&name)),
            "d_ino of {name} against lstat"
        );
    }
    assert_eq!(
        ino(&m.join("d/f")),
        before,
        "inode number kept across copy-up"
    );
}

on_both!(
    readdir_ino_of_copied_up_file_matches_stat,
    readdir_ino_of_copied_up_file_matches_stat
);

/// xattrs of the mount's root directory: set, read, listed, removed (they
/// once reached the procfs magic link instead of the layer's root: EPERM
/// on set, EOPNOTSUPP on read, which made `ls -l` stop asking for ACLs).
fn xattrs_on_the_mount_root(backend: &Backend) {
    let m = Layers::new().lower(|l| l.file("f", "x")).mount(backend);
    let root = m.path();
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let p = c(root.to_str().unwrap());
    let name = c("user.rootattr");
    // SAFETY: valid C strings and buffers throughout.
    unsafe {
        assert_eq!(
            libc::lsetxattr(p.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0),
            0,
            "setxattr on the root: {}",
            std::io::Error::last_os_error()
        );
        let mut buf = [0u8; 16];
        let n = libc::lgetxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
        assert_eq!(
            n,
            1,
            "getxattr on the root: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(buf[0], b'v');
        let other = c("security.selinux");
        let n = libc::lgetxattr(
            p.as_ptr(),
            other.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA),
            "a missing xattr of the root"
        );
        let mut list = [0u8; 256];
        let n = libc::llistxattr(p.as_ptr(), list.as_mut_ptr().cast(), list.len());
        assert!(
            n > 0,
            "listxattr on the root: {}",
            std::io::Error::last_os_error()
        );
        assert!(list[..n as usize]
            .split(|b| *b == 0)
            .any(|s| s == b"user.rootattr"));
        assert_eq!(libc::lremovexattr(p.as_ptr(), name.as_ptr()), 0);
    }
}
on_both!(xattrs_on_the_mount_root, xattrs_on_the_mount_root);

/// POSIX ACLs count, as in the kernel's overlayfs: an ACL entry grants
/// another user access the mode bits do not, `setfacl` and `chmod` work
/// through the mount, and a directory's default ACL decides a new entry's
/// mode instead of the umask.
fn posix_acls_are_enforced_and_inherited(backend: &Backend) {
    use std::process::Command;
    let m = Layers::new()
        .lower(|l| l.file("secret", "s\n").mode("secret", 0o600).dir("shared"))
        .mount(backend);
    let run = |cmd: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(m.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let as_user = |uid: u32, cmd: &str| {
        run(&format!(
            "setpriv --reuid={uid} --regid={uid} --clear-groups sh -c '{cmd}'"
        ))
    };
    assert!(
        !as_user(4321, "cat secret").0,
        "mode 600: uid 4321 may not read"
    );
    assert!(
        run("setfacl -m u:4321:r secret").0,
        "setfacl through the mount"
    );
    assert_eq!(
        as_user(4321, "cat secret"),
        (true, "s\n".to_string()),
        "the ACL grants read"
    );
    assert!(!as_user(4322, "cat secret").0, "nobody else");
    assert!(run("chmod 600 secret").0);
    assert!(!as_user(4321, "cat secret").0, "chmod narrows the ACL mask");
    assert!(run("setfacl -d -m u:4321:rwx shared").0);
    assert!(run("umask 077; touch shared/new plain; mkdir shared/sub").0);
    let modes = run("stat -c '%A %n' shared/new shared/sub plain").1;
    assert_eq!(
        modes, "-rw-rw-r-- shared/new\ndrwxrwxr-x shared/sub\n-rw------- plain\n",
        "a default ACL rules instead of the umask; elsewhere the umask applies"
    );
    assert!(
        as_user(4321, "echo w > shared/new").0,
        "the inherited ACL grants write"
    );
}
on_both!(
    posix_acls_are_enforced_and_inherited,
    posix_acls_are_enforced_and_inherited
);

/// Copied-up files moved or linked into a new directory keep the inode
/// numbers they had below, in `stat` and in the directory's listing
/// (`d_ino`, read after a remount so that no name is looked up first),
/// which the kernel's overlayfs fixes up in "impure" directories.
fn moved_copied_up_files_list_their_inode_numbers(backend: &Backend) {
    let mut m = Layers::new()
        .lower(|l| l.file("a/f", "f\n").file("a/g", "g\n"))
        .mount(backend);
    let ino = |m: &strata_tests::Mounted, p: &str| fs::symlink_metadata(m.join(p)).unwrap().ino();
    let (f, g) = (ino(&m, "a/f"), ino(&m, "a/g"));
    fs::create_dir(m.join("n")).unwrap();
    fs::rename(m.join("a/f"), m.join("n/f")).unwrap();
    fs::hard_link(m.join("a/g"), m.join("n/h")).unwrap();
    m.unmount();
    m.mount_again(backend.clone(), false);
    let listed = strata_tests::listed_inos(&m.join("n"));
    let name = m.backend().name();
    assert_eq!(listed, [("f".into(), f), ("h".into(), g)], "{name}: d_ino");
    assert_eq!((ino(&m, "n/f"), ino(&m, "n/h")), (f, g), "{name}: st_ino");
}
on_both!(
    moved_copied_up_files_list_their_inode_numbers,
    moved_copied_up_files_list_their_inode_numbers
);

/// The data extents of `f` as `SEEK_DATA`/`SEEK_HOLE` report them.
fn data_extents(f: &File) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    let len = f.metadata().expect("fstat").len() as i64;
    let mut out = Vec::new();
    let mut off = 0i64;
    while off < len {
        let data = match lseek(f, off, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => panic!("SEEK_DATA at {off}: {e}"),
        };
        let hole = lseek(f, data, Whence::SeekHole).expect("SEEK_HOLE");
        out.push((data as u64, hole as u64));
        off = hole;
    }
    out
}

/// Issue 15: copy-up filled holes. A sparse file (a VM image, a database)
/// became fully allocated in the upper layer, and `SEEK_DATA`/`SEEK_HOLE`
/// then answered differently than before the copy-up. After a copy-up
/// (opened for writing, nothing written; with `metacopy=on` a chmod first,
/// then the data) the upper file uses the lower's blocks and the merged
/// file reports the lower's extents. The extents are whole MiB at MiB
/// offsets, the granularity at which the kernel's overlayfs skips holes.
fn copy_up_keeps_holes(backend: &Backend) {
    const LEN: u64 = 64 * MIB as u64;
    let chunk = vec![0x5au8; MIB];
    for metacopy in [false, true] {
        let mut m = Layers::new()
            .lower(|l| l.dir("img"))
            .materialize(backend.is_kernel());
        if metacopy {
            m.set_extra_options(Some("metacopy=on"));
        }
        let lower = m.lowers()[0].join("img/disk");
        let f = File::create(&lower).expect("create the sparse lower file");
        f.set_len(LEN).expect("set_len");
        for at in [0, 31, 40] {
            f.write_all_at(&chunk, at * MIB as u64).expect("pwrite");
        }
        f.sync_all().expect("fsync");
        drop(f);
        let want = data_extents(&File::open(&lower).expect("open lower"));
        let lower_blocks = fs::metadata(&lower).expect("stat lower").blocks();
        assert_eq!(want.len(), 3, "the lower file has three data extents");
        m.mount_again(backend.clone(), false);
        let name = format!("{} (metacopy={metacopy})", m.backend().name());
        let path = m.join("img/disk");
        if metacopy {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        drop(
            OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open for write"),
        );
        let upper = m.upper().join("img/disk");
        let md = fs::metadata(&upper).expect("stat upper");
        assert_eq!(md.len(), LEN, "{name}: size of the copy");
        assert_eq!(
            md.blocks(),
            lower_blocks,
            "{name}: blocks of the upper copy (the lower file has {lower_blocks})"
        );
        let merged = File::open(&path).expect("open merged");
        assert_eq!(
            data_extents(&merged),
            want,
            "{name}: extents through the mount"
        );
        assert_eq!(
            pread_all(&merged),
            fs::read(&lower).expect("read lower"),
            "{name}: the data"
        );
        drop(merged);
        m.unmount();
        assert_eq!(
            data_extents(&File::open(&upper).expect("open upper")),
            want,
            "{name}: extents of the upper copy"
        );
    }
}
on_both!(copy_up_keeps_holes, copy_up_keeps_holes);
