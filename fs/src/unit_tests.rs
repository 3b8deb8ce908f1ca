//! Semantic checks of the union without FUSE: an [`Overlay`] over layers
//! in a temp directory, driven through the same functions the FUSE
//! switchboard calls, so they run in milliseconds. What users see through
//! a real mount is compared with the kernel's overlayfs in `tests/`.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;

use crate::layers::Stack;
use crate::nodes::{Node, NodeId};
use crate::options::MountOptions;
use crate::overlay::Overlay;

/// A lower layer, an upper and a work directory in a temp dir (or, in a
/// kill test's child, in its parent's).
struct Union {
    root: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Union {
    fn new(lower: impl Fn(&Path), upper: impl Fn(&Path)) -> Union {
        let dir = tempfile::tempdir().unwrap();
        for d in ["lower", "upper", "work"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        lower(&dir.path().join("lower"));
        upper(&dir.path().join("upper"));
        Union {
            root: dir.path().to_path_buf(),
            _dir: Some(dir),
        }
    }

    /// The union another process made in `root`, left in place on drop.
    fn at(root: &Path) -> Union {
        Union {
            root: root.to_path_buf(),
            _dir: None,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }

    fn mount(&self) -> Overlay {
        self.mount_with(None)
    }

    /// Mounts writing `forms` (default: what the probe of the workdir finds).
    fn mount_with(&self, forms: Option<strata_ovl::Forms>) -> Overlay {
        // batch_sync=on: the temp directory's filesystem may not order
        // metadata (ext4 without a journal), which would turn it off.
        self.mount_opts(forms, "batch_sync=on")
    }

    /// Mounts with `extra` options.
    fn mount_opts(&self, forms: Option<strata_ovl::Forms>, extra: &str) -> Overlay {
        let o = format!(
            "lowerdir={},upperdir={},workdir={},{extra}",
            self.path("lower").display(),
            self.path("upper").display(),
            self.path("work").display()
        );
        let opts = MountOptions::parse([o.as_str()]).unwrap();
        let stack = Stack::open(
            &[self.path("lower")],
            Some(&self.path("upper")),
            Some(&self.path("work")),
        )
        .unwrap();
        let forms = forms.unwrap_or_else(|| crate::overlay::upper_forms(&stack, &opts).unwrap());
        Overlay::new(stack, opts, forms).unwrap()
    }
}

fn put(root: &Path, p: &str) {
    let p = root.join(p);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, "x").unwrap();
}

fn root(ov: &Overlay) -> Arc<Node> {
    ov.nodes.get_used(NodeId::ROOT).unwrap()
}

fn find(ov: &Overlay, path: &str) -> Result<Arc<Node>, Errno> {
    let mut n = root(ov);
    for c in path.split('/') {
        n = ov.lookup(&n, OsStr::new(c))?.0;
    }
    Ok(n)
}

/// Renames `from` to `to`, both in the root.
fn rename_in_root(ov: &Overlay, from: &str, to: &str) -> Result<(), Errno> {
    let r = root(ov);
    let flags = fuser::RenameFlags::empty();
    ov.rename(&r, OsStr::new(from), &r, OsStr::new(to), flags)
}

fn names(ov: &Overlay, dir: &str) -> Vec<String> {
    let d = if dir.is_empty() {
        root(ov)
    } else {
        find(ov, dir).unwrap()
    };
    let mut v: Vec<String> = ov
        .list_dir(&d)
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    v.sort();
    v
}

#[test]
fn whiteouts_and_opaque_directories_hide_lower_entries() {
    let u = Union::new(
        |l| {
            for p in ["a", "b", "d/x", "keep"] {
                put(l, p);
            }
        },
        |up| {
            fs::write(up.join(".wh.b"), "").unwrap();
            fs::create_dir(up.join("d")).unwrap();
            fs::write(up.join("d/.wh..wh..opq"), "").unwrap();
            fs::write(up.join("d/y"), "y").unwrap();
        },
    );
    let ov = u.mount();
    assert_eq!(find(&ov, "b").err(), Some(Errno::ENOENT));
    assert_eq!(find(&ov, "d/x").err(), Some(Errno::ENOENT));
    assert_eq!(names(&ov, ""), ["a", "d", "keep"]);
    assert_eq!(names(&ov, "d"), ["y"]);
    assert_eq!(
        find(&ov, ".wh.b").err(),
        Some(Errno::ENOENT),
        "whiteout names never show"
    );
}

#[test]
fn unlinking_a_lower_file_writes_the_probed_whiteout() {
    let u = Union::new(|l| put(l, "a"), |_| {});
    let ov = u.mount();
    ov.unlink(&root(&ov), OsStr::new("a")).unwrap();
    assert_eq!(find(&ov, "a").err(), Some(Errno::ENOENT));
    assert!(names(&ov, "").is_empty());
    let on_disk = fs::symlink_metadata(u.path("upper/a"));
    let device = on_disk.is_ok_and(|m| m.file_type().is_char_device());
    let wh_file = u.path("upper/.wh.a").exists();
    assert!(device ^ wh_file, "exactly one whiteout form in the upper");
}

#[test]
fn rmdir_refuses_a_directory_with_lower_entries() {
    let u = Union::new(|l| put(l, "d/x"), |_| {});
    let ov = u.mount();
    assert_eq!(ov.rmdir(&root(&ov), OsStr::new("d")), Err(Errno::ENOTEMPTY));
    assert_eq!(ov.unlink(&root(&ov), OsStr::new("d")), Err(Errno::EISDIR));
    ov.unlink(&find(&ov, "d").unwrap(), OsStr::new("x"))
        .unwrap();
    ov.rmdir(&root(&ov), OsStr::new("d")).unwrap();
    assert!(names(&ov, "").is_empty());
}

#[test]
fn renaming_a_lower_directory_moves_its_tree() {
    let u = Union::new(
        |l| {
            put(l, "d/x");
            put(l, "d/sub/y");
        },
        |_| {},
    );
    let ov = u.mount();
    rename_in_root(&ov, "d", "e").unwrap();
    assert_eq!(names(&ov, ""), ["e"]);
    assert_eq!(names(&ov, "e"), ["sub", "x"]);
    assert_eq!(names(&ov, "e/sub"), ["y"]);
    assert_eq!(find(&ov, "d").err(), Some(Errno::ENOENT));
    let bad = fuser::RenameFlags::RENAME_EXCHANGE | fuser::RenameFlags::RENAME_NOREPLACE;
    assert_eq!(
        ov.rename(
            &root(&ov),
            OsStr::new("e"),
            &root(&ov),
            OsStr::new("f"),
            bad
        ),
        Err(Errno::EINVAL)
    );
}

/// Every file under the upper directory (names and types), to check that
/// a failed change left nothing behind.
fn upper_tree(u: &Union) -> Vec<String> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(root.join(rel)) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let t = e.file_type().unwrap();
            let kind = if t.is_dir() {
                "d"
            } else if t.is_char_device() {
                "c"
            } else {
                "f"
            };
            out.push(format!("{kind} {p}"));
            if t.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&u.path("upper"), "", &mut out);
    out.sort();
    out
}

/// The merged view: every path with its type, through the overlay.
fn view(ov: &Overlay) -> Vec<String> {
    fn walk(ov: &Overlay, dir: &str, out: &mut Vec<String>) {
        for n in names(ov, dir) {
            let p = if dir.is_empty() {
                n
            } else {
                format!("{dir}/{n}")
            };
            let is_dir = ov.list_dir(&find(ov, &p).unwrap()).is_ok();
            out.push(p.clone());
            if is_dir {
                walk(ov, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(ov, "", &mut out);
    out
}

/// Runs `change` with `points` armed to fail: it must fail with EIO, every
/// armed point must have been reached, and the view and the upper
/// directory must be as before; then the same change, unarmed, succeeds.
fn fails_cleanly(
    u: &Union,
    forms: strata_ovl::Forms,
    points: &[(&'static str, Errno)],
    change: impl Fn(&Overlay) -> Result<(), Errno>,
) {
    let ov = u.mount_with(Some(forms));
    let (before, upper_before) = (view(&ov), upper_tree(u));
    crate::faults::arm(points);
    assert_eq!(change(&ov), Err(Errno::EIO), "{points:?}");
    assert!(crate::faults::all_fired(), "{points:?} not all reached");
    crate::faults::arm(&[]);
    assert_eq!(view(&ov), before, "the view after {points:?}");
    assert_eq!(upper_tree(u), upper_before, "the upper after {points:?}");
    change(&ov).unwrap();
}

const WH_FILES: strata_ovl::Forms = strata_ovl::Forms::AUFS;
const DEVICES: strata_ovl::Forms = strata_ovl::Forms::KERNEL;
/// The forms on an upper that takes overlay xattrs but neither devices nor
/// `.wh.` names (a strata mount, for a nested one).
const XATTRS: strata_ovl::Forms = strata_ovl::Forms {
    whiteout: strata_ovl::WhiteoutForm::Xattr(strata_ovl::XattrNs::Trusted),
    ..strata_ovl::Forms::KERNEL
};

#[test]
fn an_unlink_that_fails_half_way_changes_nothing() {
    let u = Union::new(|l| put(l, "d/a"), |up| put(up, "d/a"));
    fails_cleanly(&u, WH_FILES, &[("unlink.remove_upper", Errno::EIO)], |ov| {
        ov.unlink(&*find(ov, "d")?, OsStr::new("a"))
    });
    for forms in [DEVICES, XATTRS] {
        let u = Union::new(|l| put(l, "d/a"), |up| put(up, "d/a"));
        fails_cleanly(&u, forms, &[("unlink.exchange", Errno::EIO)], |ov| {
            ov.unlink(&*find(ov, "d")?, OsStr::new("a"))
        });
    }
}

#[test]
fn a_rename_that_fails_half_way_changes_nothing() {
    let rename = |ov: &Overlay| rename_in_root(ov, "f", "g");
    let lower = |l: &Path| put(l, "f");
    fails_cleanly(
        &Union::new(lower, |up| put(up, "f")),
        WH_FILES,
        &[("rename.move", Errno::EIO)],
        rename,
    );
    // Where RENAME_WHITEOUT is refused, the entry moves and then its old
    // name gets a whiteout: if that fails, it moves back.
    fails_cleanly(
        &Union::new(lower, |up| put(up, "f")),
        DEVICES,
        &[
            ("rename.rename_whiteout", Errno::EINVAL),
            ("rename.whiteout", Errno::EIO),
        ],
        rename,
    );
}

/// Renames the lower directory `d` (holding `files`, of which `deleted`
/// was deleted through the mount first) to `e` with `points` armed, for
/// both whiteout forms: nothing may change.
fn lower_dir_rename_fails_cleanly(files: &[&str], deleted: &str, points: &[(&'static str, Errno)]) {
    for forms in [WH_FILES, DEVICES, XATTRS] {
        let u = Union::new(
            |l| {
                for f in files {
                    put(l, f);
                }
            },
            |_| {},
        );
        {
            let ov = u.mount_with(Some(forms));
            let (dir, name) = deleted.rsplit_once('/').unwrap();
            ov.unlink(&find(&ov, dir).unwrap(), OsStr::new(name))
                .unwrap();
        }
        fails_cleanly(&u, forms, points, |ov| rename_in_root(ov, "d", "e"));
    }
}

#[test]
fn renaming_a_lower_directory_that_fails_before_it_is_opaque_changes_nothing() {
    // Its whiteout must still hide the deleted entry after the failure,
    // though the copy-up had already removed it.
    let points = &[("materialize.opaque", Errno::EIO)];
    lower_dir_rename_fails_cleanly(&["d/x", "d/gone"], "d/gone", points);
}

#[test]
fn renaming_a_lower_tree_that_fails_during_its_copy_up_changes_nothing() {
    // The second file copy fails (ENOSPC, say), after a subdirectory was
    // copied up and made opaque: all of it is undone.
    use crate::faults::PASS;
    let points = &[
        ("materialize.copy_up", PASS),
        ("materialize.copy_up", Errno::EIO),
    ];
    lower_dir_rename_fails_cleanly(&["d/a/x", "d/a/gone", "d/b"], "d/a/gone", points);
}

/// Regression: renaming a lower directory whose tree holds two names of one
/// lower file failed with ENOTEMPTY: copying up the first name linked the
/// other up (with its parent directory), and the tree's copy then tried to
/// copy that directory up again over the one now there.
#[test]
fn renaming_a_lower_directory_with_hard_links_inside() {
    use std::os::unix::fs::MetadataExt;
    for (first, second) in [("d/hl", "d/sub/f"), ("d/sub/f", "d/hl")] {
        let u = Union::new(
            |l| {
                put(l, first);
                fs::create_dir_all(l.join(second).parent().unwrap()).unwrap();
                fs::hard_link(l.join(first), l.join(second)).unwrap();
            },
            |_| {},
        );
        let ov = u.mount();
        rename_in_root(&ov, "d", "e").unwrap();
        assert_eq!(names(&ov, "e"), ["hl", "sub"]);
        assert_eq!(names(&ov, "e/sub"), ["f"]);
        let a = fs::metadata(u.path("upper/e/hl")).unwrap();
        let b = fs::metadata(u.path("upper/e/sub/f")).unwrap();
        assert_eq!(a.ino(), b.ino(), "the two names still share their file");
    }
}

/// A lower directory `d` merged with an upper one: a file and a directory
/// only in the upper, a lower file deleted (its whiteout in `d/a`), a
/// lower hard link with both names in the tree.
fn merged_union(forms: strata_ovl::Forms) -> Union {
    let u = Union::new(
        |l| {
            for f in ["d/a/x", "d/a/gone", "d/b", "d/hl"] {
                put(l, f);
            }
            fs::create_dir(l.join("d/sub")).unwrap();
            fs::hard_link(l.join("d/hl"), l.join("d/sub/hl2")).unwrap();
        },
        |up| {
            put(up, "d/up");
            put(up, "d/new/y");
        },
    );
    let ov = u.mount_with(Some(forms));
    ov.unlink(&find(&ov, "d/a").unwrap(), OsStr::new("gone"))
        .unwrap();
    u
}

#[test]
fn renaming_a_merged_directory_that_fails_at_any_step_changes_nothing() {
    use crate::faults::PASS;
    let eio = Errno::EIO;
    let points: &[&[(&'static str, Errno)]] = &[
        &[("materialize.copy_up", eio)],
        &[("materialize.copy_up", PASS), ("materialize.copy_up", eio)],
        &[("materialize.link", eio)],
        &[("materialize.opaque", eio)],
        &[("materialize.opaque", PASS), ("materialize.opaque", eio)],
        &[("materialize.place", eio)],
    ];
    for forms in [WH_FILES, DEVICES, XATTRS] {
        for p in points {
            let u = merged_union(forms);
            fails_cleanly(&u, forms, p, |ov| rename_in_root(ov, "d", "e"));
            let ov = u.mount_with(Some(forms));
            assert_eq!(names(&ov, "e"), ["a", "b", "hl", "new", "sub", "up"]);
            assert_eq!(names(&ov, "e/a"), ["x"]);
        }
    }
}

/// The files left in the work directory (`WORKDIR/work`).
fn work_entries(u: &Union) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(u.path("work/work"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_replaced_upper_directory_left_in_the_work_directory_goes_at_the_next_mount() {
    let u = merged_union(DEVICES);
    let ov = u.mount_with(Some(DEVICES));
    crate::faults::arm(&[("materialize.clear", Errno::EIO)]);
    rename_in_root(&ov, "d", "e").unwrap();
    assert!(crate::faults::all_fired());
    let after = view(&ov);
    assert!(after.contains(&"e/new/y".to_string()), "{after:?}");
    let left: Vec<String> = work_entries(&u)
        .into_iter()
        .filter(|n| n.starts_with("#strata-"))
        .collect();
    assert_eq!(
        left.len(),
        1,
        "the old upper directory, in the work directory"
    );
    drop(ov);
    let ov = u.mount_with(Some(DEVICES));
    let left = work_entries(&u);
    assert!(
        left.iter().all(|n| !n.starts_with("#strata-")),
        "{left:?} after a new mount"
    );
    assert_eq!(view(&ov), after);
}

/// Where a kill test's child finds its union and what to do: the union's
/// directory, then `FORMS:POINT:NTH`.
const KILL_DIR: &str = "STRATA_TEST_KILL_DIR";
const KILL_AT: &str = "STRATA_TEST_KILL_AT";

/// The child of [`a_server_killed_mid_rename_leaves_the_old_tree_or_the_new_one`]:
/// renames `d` to `e` in the union at `dir`, killed by SIGKILL at the
/// `nth` hit of `point`; exits with 3 if the rename ends without reaching it.
fn kill_child(dir: &str, at: &str) -> ! {
    let mut it = at.split(':');
    let forms = if it.next() == Some("wh") {
        WH_FILES
    } else {
        DEVICES
    };
    let point: &'static str = Box::leak(it.next().unwrap().to_string().into_boxed_str());
    let nth: usize = it.next().unwrap().parse().unwrap();
    let u = Union::at(Path::new(dir));
    let ov = u.mount_with(Some(forms));
    crate::faults::arm_kill(point, nth);
    let r = rename_in_root(&ov, "d", "e");
    eprintln!("the rename ended ({r:?}) without reaching {point} #{nth}");
    std::process::exit(3)
}

/// A server killed at any step of renaming a merged lower directory (as by
/// SIGKILL or a crash) leaves the old tree in view; its leftovers are only
/// in the work directory, emptied at the next mount, and the same rename
/// then ends with the same upper layer as one never interrupted.
#[test]
fn a_server_killed_mid_rename_leaves_the_old_tree_or_the_new_one() {
    use std::os::unix::process::ExitStatusExt;
    if let (Ok(dir), Ok(at)) = (std::env::var(KILL_DIR), std::env::var(KILL_AT)) {
        kill_child(&dir, &at);
    }
    let kills: &[(&str, &str, usize)] = &[
        ("dev", "materialize.copy_up", 0),
        ("dev", "materialize.copy_up", 2),
        ("dev", "materialize.link", 1),
        ("dev", "materialize.opaque", 1),
        ("dev", "materialize.place", 0),
        ("dev", "materialize.clear", 0),
        ("wh", "materialize.copy_up", 1),
        ("wh", "materialize.place", 0),
        ("wh", "materialize.clear", 0),
        ("wh", "rename.move", 0),
    ];
    for &(form, point, nth) in kills {
        let forms = if form == "wh" { WH_FILES } else { DEVICES };
        let reference = merged_union(forms);
        let ov = reference.mount_with(Some(forms));
        rename_in_root(&ov, "d", "e").unwrap();
        let (view_done, upper_done) = (view(&ov), upper_tree(&reference));
        drop(ov);

        let u = merged_union(forms);
        let (view_before, upper_before) = (view(&u.mount_with(Some(forms))), upper_tree(&u));
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "unit_tests::a_server_killed_mid_rename_leaves_the_old_tree_or_the_new_one",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdout(std::process::Stdio::null())
            .env(KILL_DIR, &u.root)
            .env(KILL_AT, format!("{form}:{point}:{nth}"))
            .status()
            .unwrap();
        let at = format!("killed at {point} #{nth} ({form})");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{at}: {status}");
        let ov = u.mount_with(Some(forms));
        assert!(
            work_entries(&u).iter().all(|n| !n.starts_with("#strata-")),
            "{at}"
        );
        assert_eq!(view(&ov), view_before, "the view after being {at}");
        if point != "materialize.clear" && point != "rename.move" {
            assert_eq!(upper_tree(&u), upper_before, "the upper after being {at}");
        }
        rename_in_root(&ov, "d", "e").unwrap();
        assert_eq!(view(&ov), view_done, "the view when done after being {at}");
        assert_eq!(
            upper_tree(&u),
            upper_done,
            "the upper when done after being {at}"
        );
    }
}

/// On an upper that takes neither devices nor `.wh.` names, whiteouts are
/// empty files carrying `trusted.overlay.whiteout`: deleting, replacing and
/// renaming lower entries hides them, across a remount.
#[test]
fn xattr_whiteouts_hide_lower_entries() {
    let u = Union::new(
        |l| {
            for f in ["a", "b", "d/x", "e/y", "f"] {
                put(l, f);
            }
        },
        |_| {},
    );
    let ov = u.mount_with(Some(XATTRS));
    let r = root(&ov);
    ov.unlink(&r, OsStr::new("a")).unwrap();
    ov.unlink(&find(&ov, "d").unwrap(), OsStr::new("x"))
        .unwrap();
    ov.rmdir(&r, OsStr::new("d")).unwrap();
    rename_in_root(&ov, "e", "e2").unwrap();
    rename_in_root(&ov, "f", "a").unwrap();
    let after = view(&ov);
    assert_eq!(after, ["a", "b", "e2", "e2/y"]);
    let wh = fs::metadata(u.path("upper/d")).unwrap();
    assert!(
        wh.is_file() && wh.len() == 0,
        "d is an empty file in the upper"
    );
    assert!(xattr_names(&u.path("upper/d")).contains(&"trusted.overlay.whiteout".to_string()));
    assert!(!u.path("upper/.wh.d").exists());
    drop(ov);
    assert_eq!(view(&u.mount_with(Some(XATTRS))), after, "after a remount");
}

fn xattr_names(p: &Path) -> Vec<String> {
    let names = crate::sys::listxattr_vec(
        crate::sys::borrow(&fs::File::open(p.parent().unwrap()).unwrap()),
        &std::ffi::CString::new(p.file_name().unwrap().as_encoded_bytes()).unwrap(),
    )
    .unwrap();
    names
        .into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect()
}

/// A 64 KiB lower file `f` (the size of chmod1000's files) and its bytes.
fn union_with_data() -> (Union, Vec<u8>) {
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let d = data.clone();
    (
        Union::new(move |l| fs::write(l.join("f"), &d).unwrap(), |_| {}),
        data,
    )
}

fn chmod(ov: &Overlay, node: &Node, mode: u32) -> Result<(), Errno> {
    let ch = crate::setattr::AttrChange {
        mode: Some(mode),
        ..Default::default()
    };
    ov.setattr(node, ch).map(drop)
}

/// Whether the upper file at `path` carries the metacopy xattr.
fn marked(ov: &Overlay, u: &Union, path: &str) -> bool {
    let name = ov.xattr(strata_ovl::Xattr::Metacopy).unwrap();
    let p = std::ffi::CString::new(
        u.path("upper")
            .join(path)
            .into_os_string()
            .into_encoded_bytes(),
    );
    let dir = crate::sys::open_dir_path(std::path::Path::new("/")).unwrap();
    crate::sys::getxattr_at(dir.as_fd(), &p.unwrap(), name, &mut []).is_ok()
}

/// What reading `path` through the mount gives.
fn read_all(ov: &Overlay, path: &str) -> Vec<u8> {
    let node = find(ov, path).unwrap();
    let fh = ov.open(&node, libc::O_RDONLY, &no_backing).unwrap().fh;
    let v = ov.read_with(fh, 0, 1 << 20, |b| b.to_vec()).unwrap();
    ov.release(fh);
    v
}

use std::os::fd::AsFd;

/// A passthrough registration the kernel refused (no FUSE here).
fn no_backing(_: std::os::fd::BorrowedFd<'_>) -> std::io::Result<fuser::BackingId> {
    Err(std::io::Error::other("no passthrough without FUSE"))
}

/// A copy-up that a later change of data needs is synced before its
/// rename: with the fsync failing, nothing appears in the upper layer.
#[test]
fn a_copy_up_for_writing_is_synced_before_its_rename() {
    let (u, _) = union_with_data();
    let ov = u.mount();
    let node = find(&ov, "f").unwrap();
    crate::faults::arm(&[("copyup.fsync", Errno::EIO)]);
    assert_eq!(
        ov.open(&node, libc::O_WRONLY, &no_backing).map(drop),
        Err(Errno::EIO)
    );
    assert!(crate::faults::all_fired());
    assert!(!u.path("upper/f").exists(), "renamed into place unsynced");
}

/// A chmod of lower files (metacopy off) marks each copy-up instead of
/// syncing it; one flush syncs the burst and only then unmarks it, and a
/// failed syncfs leaves the marks.
#[test]
fn chmod_copy_ups_are_marked_until_one_syncfs() {
    let (u, data) = union_with_data();
    let ov = u.mount();
    assert!(!ov.metacopy_on());
    let node = find(&ov, "f").unwrap();
    // No fsync on this path: a failing one would fail the chmod.
    crate::faults::arm(&[("copyup.fsync", Errno::EIO)]);
    chmod(&ov, &node, 0o640).unwrap();
    assert!(!crate::faults::all_fired(), "a marked copy-up was fsynced");
    crate::faults::arm(&[]);
    assert!(
        fs::read(u.path("upper/f")).unwrap() == data,
        "the whole data"
    );
    assert!(marked(&ov, &u, "f"), "renamed into place without its mark");
    let p = ov.pending_sync.as_ref().unwrap();
    assert!(p.is_pending(node.id));
    crate::faults::arm(&[("copyup.syncfs", Errno::EIO)]);
    assert_eq!(p.flush(false), Err(Errno::EIO));
    assert!(marked(&ov, &u, "f"), "unmarked without a syncfs");
    assert!(p.is_pending(node.id));
    p.flush(false).unwrap();
    assert!(!marked(&ov, &u, "f"));
    assert_eq!(p.count(), 0);
    assert!(read_all(&ov, "f") == data, "reads the upper copy");
}

/// The crash the mark is for: the upper copy's data is lost (a crash
/// before the syncfs on a delayed-allocation filesystem) while its rename
/// and mark survived. The next mount reads the lower data, with the new
/// mode.
#[test]
fn a_marked_copy_up_whose_data_was_lost_reads_the_lower_data() {
    let (u, data) = union_with_data();
    let ov = u.mount();
    chmod(&ov, &find(&ov, "f").unwrap(), 0o640).unwrap();
    // The crash: no flush, no unmount; the data never reached the disk.
    std::mem::forget(ov);
    fs::OpenOptions::new()
        .write(true)
        .open(u.path("upper/f"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let ov = u.mount();
    assert!(read_all(&ov, "f") == data, "the lower data");
    let attr = ov.getattr(&find(&ov, "f").unwrap()).unwrap();
    assert_eq!(attr.perm & 0o7777, 0o640);
    assert_eq!(attr.size, data.len() as u64);
    // Its first write copies the data up again, synced, and unmarks it.
    let node = find(&ov, "f").unwrap();
    let fh = ov.open(&node, libc::O_WRONLY, &no_backing).unwrap().fh;
    ov.release(fh);
    assert!(!marked(&ov, &u, "f"));
    assert!(
        fs::read(u.path("upper/f")).unwrap() == data,
        "copied up again"
    );
}

/// New data never lands in a marked copy-up, and a marked file never moves
/// away from the path its data is found by: an open for writing, a
/// truncate, a rename and a link settle the burst first.
#[test]
fn writes_truncates_renames_and_links_settle_marked_copy_ups_first() {
    type Change = fn(&Overlay, &Node) -> Result<(), Errno>;
    let changes: [(&str, Change); 4] = [
        ("open for writing", |ov, n| {
            let n = ov.nodes.get_used(n.id)?;
            ov.open(&n, libc::O_RDWR, &no_backing)
                .map(|o| ov.release(o.fh))
        }),
        ("truncate", |ov, n| {
            let ch = crate::setattr::AttrChange {
                size: Some(10),
                ..Default::default()
            };
            ov.setattr(n, ch).map(drop)
        }),
        ("rename", |ov, _| rename_in_root(ov, "f", "g")),
        ("link", |ov, n| {
            ov.link(n, &root(ov), OsStr::new("h")).map(drop)
        }),
    ];
    for (what, change) in changes {
        let (u, _) = union_with_data();
        let ov = u.mount();
        let node = find(&ov, "f").unwrap();
        chmod(&ov, &node, 0o640).unwrap();
        assert!(marked(&ov, &u, "f"));
        // The settling syncfs fails: so does the change, and nothing moved.
        crate::faults::arm(&[("copyup.syncfs", Errno::EIO)]);
        assert_eq!(change(&ov, &node), Err(Errno::EIO), "{what}");
        assert!(marked(&ov, &u, "f"), "{what}");
        crate::faults::arm(&[]);
        change(&ov, &node).unwrap();
        assert_eq!(ov.pending_sync.as_ref().unwrap().count(), 0, "{what}");
        let now = if what == "rename" { "g" } else { "f" };
        assert!(!marked(&ov, &u, now), "{what} left its file marked");
    }
}

/// Where marks cannot be trusted (`batch_sync=off`, the choice for an
/// upper filesystem that does not commit metadata in order), a chmod's
/// copy-up is synced before its rename, unmarked.
#[test]
fn without_batch_sync_a_chmod_copy_up_is_synced_before_its_rename() {
    let (u, data) = union_with_data();
    let ov = u.mount_opts(None, "batch_sync=off");
    assert!(ov.pending_sync.is_none());
    let node = find(&ov, "f").unwrap();
    crate::faults::arm(&[("copyup.fsync", Errno::EIO)]);
    assert_eq!(chmod(&ov, &node, 0o640), Err(Errno::EIO));
    assert!(crate::faults::all_fired());
    assert!(!u.path("upper/f").exists(), "renamed into place unsynced");
    chmod(&ov, &node, 0o640).unwrap();
    assert!(!marked(&ov, &u, "f"));
    assert!(
        fs::read(u.path("upper/f")).unwrap() == data,
        "the whole data"
    );
}

/// `ls -l` asks for `security.selinux` of every entry, and the answer is
/// remembered when there is none: setting a label through the mount must
/// make the next read see it.
#[test]
fn a_label_set_through_the_mount_is_seen_after_its_absence_was_remembered() {
    let u = Union::new(|_| {}, |up| put(up, "f"));
    let ov = u.mount();
    let f = find(&ov, "f").unwrap();
    let label = OsStr::new("security.selinux");
    for _ in 0..2 {
        assert_eq!(ov.getxattr(&f, label, 0).err(), Some(Errno::ENODATA));
    }
    let value = b"system_u:object_r:container_file_t:s0";
    ov.setxattr(&f, label, value, 0).unwrap();
    assert_eq!(ov.getxattr(&f, label, 64).unwrap(), value);
}
