//! Directory tree → layer tar → directory tree: commit and export keep
//! modes, owners, times, xattrs, hard links, symlinks, devices, whiteouts
//! and opaque directories.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use strata_layerdb::{export_dir, CommitMeta, ImportOptions};

fn setxattr(p: &Path, k: &str, v: &[u8]) {
    xattr_set(p, k, v).unwrap();
}

fn xattr_set(p: &Path, k: &str, v: &[u8]) -> std::io::Result<()> {
    let p = CString::new(p.as_os_str().as_bytes()).unwrap();
    let k = CString::new(k).unwrap();
    // SAFETY: valid C strings and buffer.
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::llistxattr(cp.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0);
    buf.truncate(n as usize);
    let mut out = BTreeMap::new();
    for k in buf.split(|b| *b == 0).filter(|k| !k.is_empty()) {
        let ck = CString::new(k).unwrap();
        let mut v = vec![0u8; 4096];
        // SAFETY: valid C strings and buffer.
        let m =
            unsafe { libc::lgetxattr(cp.as_ptr(), ck.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(m >= 0);
        v.truncate(m as usize);
        out.insert(String::from_utf8_lossy(k).into_owned(), v);
    }
    out
}

fn set_mtime(p: &Path, secs: i64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    // SAFETY: valid C string and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0);
}

fn mknod(p: &Path, mode: u32, dev: u64) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(rc, 0, "mknod {}", p.display());
}

/// A tree with one of everything. Returns whether user xattrs work here.
fn build_tree(root: &Path, with_overlay_forms: bool) -> bool {
    fs::create_dir_all(root.join("etc/sub")).unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/big"), vec![7u8; 70_000]).unwrap();
    fs::set_permissions(root.join("etc/big"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(root.join("etc/passwd"), Some(1000), Some(2000)).unwrap();
    fs::hard_link(root.join("etc/passwd"), root.join("etc/sub/passwd.link")).unwrap();
    symlink("/proc/mounts", root.join("etc/mtab")).unwrap();
    symlink("../passwd", root.join("etc/sub/rel")).unwrap();
    let long = "d".repeat(120);
    fs::create_dir_all(root.join(&long)).unwrap();
    fs::write(root.join(&long).join("f".repeat(150)), "long").unwrap();
    mknod(
        &root.join("etc/null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    mknod(&root.join("etc/fifo"), libc::S_IFIFO | 0o644, 0);
    let user_xattrs = xattr_set(&root.join("etc/passwd"), "user.note", b"hello\0bin").is_ok();
    setxattr(
        &root.join("etc/big"),
        "security.capability",
        &[
            1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    setxattr(&root.join("etc/sub"), "trusted.note", b"t");
    if with_overlay_forms {
        // A whiteout, an opaque dir, and a private xattr that must not leak.
        mknod(&root.join("etc/gone"), libc::S_IFCHR, 0);
        fs::create_dir(root.join("opq")).unwrap();
        fs::write(root.join("opq/kept"), "k").unwrap();
        setxattr(&root.join("opq"), "trusted.overlay.opaque", b"y");
        setxattr(&root.join("etc/passwd"), "trusted.overlay.origin", b"x");
    }
    for p in [
        "etc/passwd",
        "etc/big",
        "etc/sub/rel",
        "etc/mtab",
        "etc/null",
        "etc/fifo",
        "etc/sub",
        "etc",
    ] {
        set_mtime(&root.join(p), 1_650_000_000);
    }
    user_xattrs
}

fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link->{}", fs::read_link(&p).unwrap().display())
            } else if ft.is_char_device() {
                format!("chr {}", md.rdev())
            } else if ft.is_fifo() {
                "fifo".into()
            } else {
                format!("file {:x}", md5ish(&fs::read(&p).unwrap()))
            };
            let mtime = if ft.is_dir() { 0 } else { md.mtime() };
            out.insert(
                rel,
                format!(
                    "{kind} mode={:o} {}:{} mtime={mtime} nlink={} xattrs={:?}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    if ft.is_dir() { 0 } else { md.nlink() },
                    xattrs(&p)
                ),
            );
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn md5ish(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100000001b3)
    })
}

#[test]
fn commit_turns_overlay_forms_into_a_layer_and_back() {
    let (d, store) = store();
    let upper = d.path().join("upper");
    fs::create_dir(&upper).unwrap();
    build_tree(&upper, true);
    let meta = CommitMeta {
        created_by: Some("/bin/sh -c make".into()),
        comment: Some("first".into()),
        author: Some("tester".into()),
        created: Some("2024-05-01T00:00:00Z".into()),
        ..Default::default()
    };
    let id = store.commit(None, &upper, &meta, Some("tree")).unwrap();
    let info = store.inspect("tree").unwrap();
    assert_eq!(info.id, id);
    let layer = &info.layers[0].path;
    // Whiteout and opaque come back in overlay form; private xattrs do not leak.
    let md = fs::symlink_metadata(layer.join("etc/gone")).unwrap();
    assert!(md.file_type().is_char_device() && md.rdev() == 0);
    assert_eq!(
        xattrs(&layer.join("opq"))
            .get("trusted.overlay.opaque")
            .map(|v| &v[..]),
        Some(&b"y"[..])
    );
    assert!(!xattrs(&layer.join("etc/passwd")).contains_key("trusted.overlay.origin"));
    // Everything else is identical.
    let want = describe(&upper);
    let got = describe(layer);
    for (k, v) in &want {
        let v = v.replace("\"trusted.overlay.origin\": [120], ", "");
        assert_eq!(Some(&v), got.get(k), "{k}");
    }
    assert_eq!(want.len(), got.len());
    // A child commit inherits the config and extends history.
    let upper2 = d.path().join("upper2");
    fs::create_dir(&upper2).unwrap();
    fs::write(upper2.join("new"), "n").unwrap();
    let meta2 = CommitMeta {
        comment: Some("second".into()),
        changes: vec!["ENV A=1".parse().unwrap()],
        ..Default::default()
    };
    store
        .commit(Some("tree"), &upper2, &meta2, Some("tree:2"))
        .unwrap();
    let child = store.inspect("tree:2").unwrap();
    assert_eq!(child.layers.len(), 2);
    assert_eq!(child.config.author.as_deref(), Some("tester"));
    assert_eq!(
        child.config.config.unwrap().env,
        Some(vec!["A=1".to_string()])
    );
    let h = store.history("tree:2").unwrap();
    assert_eq!(h[0].comment.as_deref(), Some("second"));
    assert_eq!(h[1].comment.as_deref(), Some("first"));
    assert_eq!(h[1].created_by.as_deref(), Some("/bin/sh -c make"));
}

#[test]
fn export_then_import_gives_the_same_tree() {
    let (d, store) = store();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src, false);
    let mut tar = Vec::new();
    export_dir(&src, &mut tar).unwrap();
    // Deterministic.
    let mut tar2 = Vec::new();
    export_dir(&src, &mut tar2).unwrap();
    assert_eq!(tar, tar2);
    // GNU-compatible: the independent tar crate reads it.
    let n = tar::Archive::new(&tar[..]).entries().unwrap().count();
    assert!(n >= 10);
    store
        .import(
            &mut &tar[..],
            &ImportOptions {
                name: Some("exp".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let info = store.inspect("exp").unwrap();
    assert_eq!(describe(&src), describe(&info.layers[0].path));
}

#[test]
fn unprivileged_store_writes_wh_files_and_user_opaque() {
    let d = tempfile::tempdir().unwrap();
    let store = strata_layerdb::Store::open_with(
        d.path().join("root"),
        &strata_layerdb::StoreOptions { unprivileged: true },
    )
    .unwrap();
    let tar = TarBuilder::new()
        .dir("a/")
        .file("a/.wh..wh..opq", b"")
        .file(".wh.gone", b"")
        .file("a/x", b"x")
        .build();
    let id = store
        .import(&mut &tar[..], &ImportOptions::default())
        .unwrap();
    let info = store.inspect(&id.to_string()).unwrap();
    let root = &info.layers[0].path;
    assert!(root.join(".wh.gone").is_file());
    assert!(!root.join("gone").exists());
    let x = xattrs(&root.join("a"));
    // tmpfs may not support user xattrs; if it does, the opaque form is there.
    if !x.is_empty() {
        assert_eq!(
            x.get("user.overlay.opaque").map(|v| &v[..]),
            Some(&b"y"[..])
        );
    }
}

/// An upper written with `metacopy=on` holds sparse files marked
/// `trusted.overlay.metacopy` whose data is in the image's layers (at the
/// same path, or where `trusted.overlay.redirect` points): commit writes
/// whole files with the upper's metadata.
#[test]
fn commit_of_metacopy_files_writes_whole_files() {
    let (d, store) = store();
    let base = d.path().join("base");
    fs::create_dir_all(base.join("bin")).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(base.join("bin/tool"), &data).unwrap();
    fs::write(base.join("bin/old"), b"moved data").unwrap();
    fs::set_permissions(base.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    store
        .commit(None, &base, &CommitMeta::default(), Some("base"))
        .unwrap();

    let upper = d.path().join("upper");
    fs::create_dir_all(upper.join("bin")).unwrap();
    for (name, len) in [("tool", data.len()), ("new", 10)] {
        let f = fs::File::create(upper.join("bin").join(name)).unwrap();
        f.set_len(len as u64).unwrap();
        setxattr(
            &upper.join("bin").join(name),
            "trusted.overlay.metacopy",
            b"",
        );
    }
    fs::set_permissions(upper.join("bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    setxattr(
        &upper.join("bin/new"),
        "trusted.overlay.redirect",
        b"/bin/old",
    );
    store
        .commit(Some("base"), &upper, &CommitMeta::default(), Some("child"))
        .unwrap();
    let layer = &store.inspect("child").unwrap().layers[1].path;
    assert_eq!(fs::read(layer.join("bin/tool")).unwrap(), data);
    let md = fs::metadata(layer.join("bin/tool")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o700, "the upper's metadata wins");
    assert_eq!(fs::read(layer.join("bin/new")).unwrap(), b"moved data");
    assert!(!xattrs(&layer.join("bin/tool")).contains_key("trusted.overlay.metacopy"));

    // A metacopy file whose data is nowhere is an error, not an empty file.
    let bad = d.path().join("bad");
    fs::create_dir(&bad).unwrap();
    fs::File::create(bad.join("ghost"))
        .unwrap()
        .set_len(5)
        .unwrap();
    setxattr(&bad.join("ghost"), "trusted.overlay.metacopy", b"");
    let err = store
        .commit(Some("base"), &bad, &CommitMeta::default(), Some("bad"))
        .unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    assert!(store.inspect("bad").is_err());
}
