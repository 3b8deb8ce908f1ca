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

/// A lower layer, an upper and a work directory in a temp dir.
struct Union {
    dir: tempfile::TempDir,
}

impl Union {
    fn new(lower: impl Fn(&Path), upper: impl Fn(&Path)) -> Union {
        let dir = tempfile::tempdir().unwrap();
        for d in ["lower", "upper", "work"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        lower(&dir.path().join("lower"));
        upper(&dir.path().join("upper"));
        Union { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn mount(&self) -> Overlay {
        self.mount_with(None)
    }

    /// Mounts writing `forms` (default: what the probe of the workdir finds).
    fn mount_with(&self, forms: Option<strata_ovl::Forms>) -> Overlay {
        let o = format!(
            "lowerdir={},upperdir={},workdir={}",
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

#[test]
fn an_unlink_that_fails_half_way_changes_nothing() {
    let u = Union::new(|l| put(l, "d/a"), |up| put(up, "d/a"));
    fails_cleanly(&u, WH_FILES, &[("unlink.remove_upper", Errno::EIO)], |ov| {
        ov.unlink(&*find(ov, "d")?, OsStr::new("a"))
    });
    let u = Union::new(|l| put(l, "d/a"), |up| put(up, "d/a"));
    fails_cleanly(&u, DEVICES, &[("unlink.exchange", Errno::EIO)], |ov| {
        ov.unlink(&*find(ov, "d")?, OsStr::new("a"))
    });
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
    for forms in [WH_FILES, DEVICES] {
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
