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
        let forms = crate::overlay::upper_forms(&stack, &opts).unwrap();
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
    let r = root(&ov);
    ov.rename(
        &r,
        OsStr::new("d"),
        &r,
        OsStr::new("e"),
        fuser::RenameFlags::empty(),
    )
    .unwrap();
    assert_eq!(names(&ov, ""), ["e"]);
    assert_eq!(names(&ov, "e"), ["sub", "x"]);
    assert_eq!(names(&ov, "e/sub"), ["y"]);
    assert_eq!(find(&ov, "d").err(), Some(Errno::ENOENT));
    let bad = fuser::RenameFlags::RENAME_EXCHANGE | fuser::RenameFlags::RENAME_NOREPLACE;
    assert_eq!(
        ov.rename(&r, OsStr::new("e"), &r, OsStr::new("f"), bad),
        Err(Errno::EINVAL)
    );
}
