//! One overlay format, five readers: a container's upper layer holding
//! every whiteout and opaque form (the kernel's device and xattr forms, its
//! `userxattr` form, fuse-overlayfs' and the AUFS/OCI ones) must read the
//! same through the mount, `strata diff`, `commit`, `export` and build's
//! `COPY --from`. Before strata-ovl owned the format, `diff` read two
//! opaque xattrs and no xattr whiteouts, and layers packed by `commit`
//! kept fuse-overlayfs' opaque marker as a plain xattr.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use common::Env;

/// The image's tree: directories that the upper layer makes opaque in
/// every form, and files that it whites out in every form.
const BASE: &[&str] = &[
    "d1/a", "d1/b", "d2/a", "d2/b", "d3/a", "d3/b", "d4/a", "d4/b", "w/dev", "w/wh", "w/keep",
    "e/g", "e/keep",
];

/// The top-level directories the comparison looks at (the mount also shows
/// the init layer: /etc/hosts, /proc...).
const TOPS: &[&str] = &["d1", "d2", "d3", "d4", "w", "e"];

/// What every reader must see.
const EXPECTED: &[&str] = &[
    "d1", "d1/new", "d2", "d2/new", "d3", "d3/new", "d4", "d4/new", "w", "w/keep", "e", "e/keep",
];

fn setxattr(path: &Path, name: &str, value: &str) {
    let ok = Command::new("setfattr")
        .args(["-h", "-n", name, "-v", value])
        .arg(path)
        .status()
        .expect("run setfattr (Debian package attr)")
        .success();
    assert!(ok, "setfattr {name} on {}", path.display());
}

/// A rootfs tarball of [`BASE`], imported as `fmt/base`.
fn import_base(env: &Env) {
    let tarball = env.dir.path().join("base.tar");
    let mut b = tar::Builder::new(fs::File::create(&tarball).unwrap());
    let mut dirs = BTreeSet::new();
    for p in BASE {
        let dir = p.split('/').next().unwrap();
        if dirs.insert(dir) {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_cksum();
            b.append_data(&mut h, format!("{dir}/"), std::io::empty())
                .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, p, &b"x"[..]).unwrap();
    }
    b.finish().unwrap();
    env.ok(&["import", tarball.to_str().unwrap(), "fmt/base"]);
}

/// Writes every form into the upper layer of the container `id`, as the
/// kernel's overlayfs, fuse-overlayfs or an OCI layer would have left it.
fn write_forms(upper: &Path) {
    let dir = |d: &str| {
        let p = upper.join(d);
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("new"), "n").unwrap();
        p
    };
    setxattr(&dir("d1"), "trusted.overlay.opaque", "y");
    setxattr(&dir("d2"), "user.overlay.opaque", "y");
    setxattr(&dir("d3"), "user.fuseoverlayfs.opaque", "y");
    fs::write(dir("d4").join(".wh..wh..opq"), "").unwrap();
    let w = upper.join("w");
    fs::create_dir_all(&w).unwrap();
    nix::sys::stat::mknod(
        &w.join("dev"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
    fs::write(w.join(".wh.wh"), "").unwrap();
    // The kernel's xattr whiteout (Linux 6.7+): an empty file carrying
    // `overlay.whiteout`, in a directory marked `overlay.whiteouts`.
    let e = upper.join("e");
    fs::create_dir_all(&e).unwrap();
    setxattr(&e, "trusted.overlay.whiteouts", "");
    setxattr(&e, "trusted.overlay.opaque", "x");
    fs::write(e.join("g"), "").unwrap();
    setxattr(&e.join("g"), "trusted.overlay.whiteout", "");
}

/// The paths under [`TOPS`] in a directory tree (no symlink followed).
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeSet<String>) {
        let Ok(rd) = fs::read_dir(root.join(rel)) else {
            return;
        };
        for e in rd {
            let e = e.unwrap();
            let p = format!("{rel}/{}", e.file_name().to_string_lossy());
            out.insert(p.clone());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    for t in TOPS {
        if root.join(t).is_dir() {
            out.insert(t.to_string());
            walk(root, t, &mut out);
        }
    }
    out.into_iter()
        .map(|p| p.trim_start_matches('/').to_string())
        .collect()
}

/// The paths under [`TOPS`] in a tar.
fn tar_tree(tarball: &Path) -> BTreeSet<String> {
    let mut ar = tar::Archive::new(fs::File::open(tarball).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            p.trim_start_matches("./").trim_end_matches('/').to_string()
        })
        .filter(|p| {
            TOPS.iter()
                .any(|t| p == t || p.starts_with(&format!("{t}/")))
        })
        .collect()
}

/// The tree an image shows when mounted.
fn image_tree(env: &Env, image: &str) -> BTreeSet<String> {
    let at = env.ok(&["image", "mount", image]).trim().to_string();
    let t = tree(Path::new(&at));
    env.ok(&["image", "unmount", image]);
    t
}

fn expected() -> BTreeSet<String> {
    EXPECTED.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_reader_sees_the_same_tree_for_every_form() {
    let env = Env::new();
    import_base(&env);
    let id = env
        .ok(&["create", "--name", "c", "fmt/base", "/bin/true"])
        .trim()
        .to_string();
    write_forms(&env.root.join("containers").join(&id).join("upper"));

    // 1. The mount.
    let at = env.ok(&["mount", "c"]).trim().to_string();
    let mounted = tree(Path::new(&at));
    env.ok(&["umount", "c"]);
    assert_eq!(mounted, expected(), "the mount");

    // 2. diff, applied to the image's tree.
    let mut from_diff: BTreeSet<String> = BASE
        .iter()
        .flat_map(|p| [p.split('/').next().unwrap().to_string(), p.to_string()])
        .collect();
    for line in env.ok(&["diff", "c"]).lines() {
        let (kind, path) = line.split_once(' ').unwrap();
        let path = path.trim_start_matches('/').to_string();
        match kind {
            "D" => from_diff.retain(|p| p != &path && !p.starts_with(&format!("{path}/"))),
            "A" | "C" => {
                from_diff.insert(path);
            }
            _ => panic!("diff line {line}"),
        }
    }
    assert_eq!(from_diff, expected(), "diff");

    // 3. export.
    let out = env.dir.path().join("c.tar");
    env.ok(&["export", "-o", out.to_str().unwrap(), "c"]);
    assert_eq!(tar_tree(&out), expected(), "export");

    // 4. commit: the new layer goes through a tar and back into the store.
    env.ok(&["commit", "c", "fmt/committed"]);
    assert_eq!(image_tree(&env, "fmt/committed"), expected(), "commit");

    // 5. COPY --from of the committed image.
    let ctx = env.dir.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Containerfile"),
        "FROM scratch\nCOPY --from=fmt/committed / /\n",
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", "fmt/copied", ctx.to_str().unwrap()]);
    assert_eq!(image_tree(&env, "fmt/copied"), expected(), "COPY --from");
}
