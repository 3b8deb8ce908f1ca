//! `-o metacopy=on`: a change of metadata (chmod, chown, utimes, xattrs)
//! copies up only metadata, as the kernel's overlayfs does with the same
//! option; data follows on the first write, truncate, link or rename.
//! Compared with the kernel (`metacopy=on,redirect_dir=on`) step by step;
//! the upper must stay readable by the kernel.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use strata_tests::{diff, snapshot, Backend, Layers, Mounted, SnapOpts};

fn has_xattr(p: &Path, name: &str) -> bool {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    // SAFETY: valid C strings; a null buffer of size 0 asks for the size.
    unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

fn big() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn layers() -> Layers {
    Layers::new().lower(|l| {
        l.file("bin/tool", big())
            .mode("bin/tool", 0o755)
            .file("etc/conf", "key=value\n")
            .file("etc/moved", "data that moves\n")
            .file("etc/linked", "linked data\n")
            .file("d/x", "x data\n")
    })
}

fn mount(backend: &Backend) -> Mounted {
    let mut m = layers().materialize(backend.is_kernel());
    m.set_extra_options(Some("metacopy=on"));
    m.mount_again(backend.clone(), false);
    m
}

/// Runs `step` on both mounts, then compares the merged views and uppers.
fn both(k: &Mounted, s: &Mounted, what: &str, step: impl Fn(&Mounted)) {
    step(k);
    step(s);
    let (mk, ms) = (
        snapshot(k.path(), SnapOpts::MERGED),
        snapshot(s.path(), SnapOpts::MERGED),
    );
    if let Some(d) = diff("kernel", &mk, "strata", &ms) {
        panic!("after {what}: merged views differ:\n{d}");
    }
    let (uk, us) = (
        snapshot(k.upper(), SnapOpts::LAYER),
        snapshot(s.upper(), SnapOpts::LAYER),
    );
    if let Some(d) = diff("kernel upper", &uk, "strata upper", &us) {
        panic!("after {what}: uppers differ:\n{d}");
    }
}

/// Whether the upper file at `rel` is a metacopy file: marked, sparse, the
/// right size; checked the same on both.
fn metacopy_state(m: &Mounted, rel: &str) -> bool {
    let p = m.upper().join(rel);
    let marked = has_xattr(&p, "trusted.overlay.metacopy");
    let md = fs::metadata(&p).unwrap();
    let merged = fs::metadata(m.join(rel)).unwrap();
    assert_eq!(md.len(), merged.len(), "{rel}: upper size");
    if marked {
        assert!(
            md.blocks() * 512 < md.len().max(4096) + 4096,
            "{rel}: a metacopy file must not hold its data ({} blocks)",
            md.blocks()
        );
        assert!(
            merged.blocks() > 0 || merged.len() == 0,
            "{rel}: blocks of the data"
        );
    }
    marked
}

#[test]
fn metacopy_copies_metadata_only_then_data_on_write_like_the_kernel() {
    let k = mount(&Backend::Kernel);
    let s = mount(&Backend::strata());
    both(&k, &s, "chmod and chown", |m| {
        fs::set_permissions(m.join("bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::lchown(m.join("etc/conf"), Some(12), Some(34)).unwrap();
        fs::set_permissions(m.join("etc/moved"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(m.join("etc/linked"), fs::Permissions::from_mode(0o600)).unwrap();
    });
    for rel in ["bin/tool", "etc/conf", "etc/moved", "etc/linked"] {
        assert!(metacopy_state(&k, rel), "kernel: {rel} should be metacopy");
        assert!(metacopy_state(&s, rel), "strata: {rel} should be metacopy");
    }
    assert_eq!(fs::read(s.join("bin/tool")).unwrap(), big());

    both(&k, &s, "append to a metacopy file", |m| {
        let mut f = OpenOptions::new()
            .append(true)
            .open(m.join("etc/conf"))
            .unwrap();
        f.write_all(b"more=1\n").unwrap();
    });
    assert!(!metacopy_state(&s, "etc/conf"));
    assert_eq!(
        fs::read(s.join("etc/conf")).unwrap(),
        b"key=value\nmore=1\n"
    );

    both(&k, &s, "truncate", |m| {
        OpenOptions::new()
            .write(true)
            .open(m.join("bin/tool"))
            .unwrap()
            .set_len(1000)
            .unwrap();
    });
    assert_eq!(fs::read(s.join("bin/tool")).unwrap(), big()[..1000]);

    // Rename and link: the kernel keeps a metacopy with a redirect; strata
    // brings the data up. What users see is the same.
    for m in [&k, &s] {
        fs::rename(m.join("etc/moved"), m.join("d/moved")).unwrap();
        fs::hard_link(m.join("etc/linked"), m.join("d/link2")).unwrap();
        assert_eq!(fs::read(m.join("d/moved")).unwrap(), b"data that moves\n");
        assert_eq!(fs::read(m.join("d/link2")).unwrap(), b"linked data\n");
        assert!(fs::metadata(m.join("etc/moved")).is_err());
    }
    assert!(!metacopy_state(&s, "d/moved"));
    let (mk, ms) = (
        snapshot(k.path(), SnapOpts::MERGED),
        snapshot(s.path(), SnapOpts::MERGED),
    );
    if let Some(d) = diff("kernel", &mk, "strata", &ms) {
        panic!("after rename and link: merged views differ:\n{d}");
    }
}

#[test]
fn metacopy_upper_survives_a_remount_and_reads_in_the_kernel() {
    let mut s = mount(&Backend::strata());
    fs::set_permissions(s.join("bin/tool"), fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(s.join("d/x"), fs::Permissions::from_mode(0o600)).unwrap();
    assert!(metacopy_state(&s, "bin/tool"));
    let want = snapshot(s.path(), SnapOpts::MERGED);
    s.unmount();
    s.mount_again(Backend::strata(), false);
    let again = snapshot(s.path(), SnapOpts::MERGED);
    if let Some(d) = diff("before", &want, "after remount", &again) {
        panic!("strata remount of a metacopy upper:\n{d}");
    }
    assert_eq!(fs::read(s.join("bin/tool")).unwrap(), big());
    s.unmount();
    s.mount_again(Backend::Kernel, true);
    let kernel = snapshot(s.path(), SnapOpts::MERGED);
    if let Some(d) = diff("strata", &want, "kernel metacopy=on", &kernel) {
        panic!("the kernel reads strata's metacopy upper differently:\n{d}");
    }
}

#[test]
fn metacopy_off_by_default_copies_whole_files() {
    let mut s = layers().mount_strata();
    fs::set_permissions(s.join("bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    let p = s.upper().join("bin/tool");
    assert_eq!(
        fs::read(&p).unwrap(),
        big(),
        "the upper holds the whole file"
    );
    // Marked metacopy until a syncfs made the data durable (at the latest
    // at unmount; see fs/src/copyup.rs), then a plain file.
    s.unmount();
    assert!(!has_xattr(&p, "trusted.overlay.metacopy"));
    assert_eq!(fs::read(&p).unwrap(), big());
}

/// With metacopy off, the copy-ups of a burst of chmods are marked until
/// one syncfs has made their data durable (fs/src/copyup.rs); the server's
/// sync thread removes the marks by itself, while the mount stays up, and
/// the files keep their data and new modes.
#[test]
fn marked_chmod_copy_ups_are_synced_and_unmarked_in_the_background() {
    const N: usize = 300;
    let data = |i: usize| format!("file {i}\n").repeat(100);
    let mut s = Layers::new()
        .lower(|mut l| {
            for i in 0..N {
                l = l.file(format!("c/f{i:03}"), data(i));
            }
            l
        })
        .materialize(false);
    // On: the test's directory may be on a filesystem that does not order
    // metadata (ext4 without a journal), where auto would not mark.
    s.set_extra_options(Some("batch_sync=on"));
    s.mount_again(Backend::strata(), false);

    for i in 0..N {
        fs::set_permissions(
            s.join(format!("c/f{i:03}")),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let marked = || {
        (0..N)
            .filter(|i| {
                has_xattr(
                    &s.upper().join(format!("c/f{i:03}")),
                    "trusted.overlay.metacopy",
                )
            })
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while marked() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {N} copy-ups still marked after 30 s",
            marked()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for i in 0..N {
        let p = s.upper().join(format!("c/f{i:03}"));
        assert_eq!(fs::read_to_string(&p).unwrap(), data(i), "{}", p.display());
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o600);
    }
}
