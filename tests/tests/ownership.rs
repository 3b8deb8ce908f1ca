//! Owners and modes kept in xattrs: fuse-overlayfs' `xattr_permissions=1|2`
//! and containers/storage's `force_mask` (`user.containers.override_stat`).
//! A layer whose root carries an override xattr has its entries' overrides
//! presented as their owner and mode; chown and chmod through a mount with
//! `xattr_permissions=` write the override in the upper, never the inode;
//! the override xattrs are never visible through the mount. Debian's
//! fuse-overlayfs 1.10 is the control where it behaves the same (the
//! presentation of a lower layer, a chmod kept across a remount).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use strata_tests::mount::{pids_with_arg, strata_program, temp_root};
use strata_tests::sys::{lgetxattr, llistxattr, lsetxattr, output_in_userns};
use strata_tests::{Backend, Layers, Mounted};

const CONTAINERS: &str = "user.containers.override_stat";
const PRIVILEGED: &str = "security.fuseoverlayfs.override_stat";
const FUSE_OVERLAYFS: &str = "/usr/bin/fuse-overlayfs";

/// uid, gid and permission bits of `p` (not following symlinks).
fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (md.uid(), md.gid(), md.mode() & 0o7777)
}

/// The override value stored under `name` on `p`, as text.
fn stored(p: &Path, name: &str) -> String {
    let v = lgetxattr(p, name).unwrap_or_else(|e| panic!("{name} of {}: {e}", p.display()));
    String::from_utf8(v).unwrap()
}

/// A lower layer as containers/storage extracts one with `force_mask`:
/// real owner root and the masked mode, the layer's owners and modes in
/// `user.containers.override_stat`, also on its root (which makes it a
/// containers-mode layer).
fn force_mask_layers(name: &str) -> Layers {
    Layers::new().lower(|l| force_mask_layer(l, name))
}

/// The contents of [`force_mask_layers`]' layer, added to `l`.
fn force_mask_layer(l: strata_tests::Layer, name: &str) -> strata_tests::Layer {
    l.file("f", "data\n")
        .mode("f", 0o700)
        .dir("d")
        .mode("d", 0o700)
        .file("d/g", "g\n")
        .xattr("", name, "0:0:0755:dir")
        .xattr("f", name, "1000:1000:0640")
        .xattr("d", name, "1001:1002:0700:dir")
        .xattr("d/g", name, "1001:1002:0604:file")
        .xattr("f", "user.keep", "1")
}

fn mount_with(layers: &Layers, backend: &Backend, extra: Option<&str>) -> Mounted {
    let mut m = layers.materialize(false);
    m.set_extra_options(extra);
    m.mount_again(backend.clone(), false);
    m
}

fn fuse_overlayfs() -> Backend {
    Backend::Program(PathBuf::from(FUSE_OVERLAYFS))
}

/// The overrides of a containers-mode lower layer are what stat shows.
fn lower_overrides_presented(backend: &Backend) {
    let m = mount_with(&force_mask_layers(CONTAINERS), backend, None);
    assert_eq!(owner_mode(&m.join("f")), (1000, 1000, 0o640), "f");
    assert_eq!(owner_mode(&m.join("d")), (1001, 1002, 0o700), "d");
    assert_eq!(owner_mode(&m.join("d/g")), (1001, 1002, 0o604), "d/g");
    assert_eq!(owner_mode(m.path()), (0, 0, 0o755), "the root");
    // The listing's attributes (readdirplus) agree with lookup's.
    let listed: Vec<(String, u32)> = std::fs::read_dir(m.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().uid(),
            )
        })
        .filter(|(n, _)| n == "f" || n == "d")
        .collect();
    assert!(
        listed.contains(&("f".into(), 1000)) && listed.contains(&("d".into(), 1001)),
        "{listed:?}"
    );
}

mod lower_overrides_presented {
    #[test]
    fn strata() {
        super::lower_overrides_presented(&strata_tests::Backend::strata())
    }
    #[test]
    fn fuse_overlayfs() {
        super::lower_overrides_presented(&super::fuse_overlayfs())
    }
}

/// A chmod through a mount with `xattr_permissions=2` is kept across a
/// remount (what fuse-overlayfs 1.10 does too). Returns the mount.
fn chmod_kept_across_remount(backend: &Backend) -> Mounted {
    let mut m = mount_with(
        &force_mask_layers(CONTAINERS),
        backend,
        Some("xattr_permissions=2"),
    );
    std::fs::set_permissions(m.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(m.join("d"), std::fs::Permissions::from_mode(0o711)).unwrap();
    assert_eq!(owner_mode(&m.join("f")).2, 0o600);
    m.unmount();
    m.mount_again(backend.clone(), false);
    assert_eq!(owner_mode(&m.join("f")).2, 0o600, "f after a remount");
    assert_eq!(owner_mode(&m.join("d")).2, 0o711, "d after a remount");
    m
}

mod chmod_kept_across_remount {
    use super::owner_mode;

    #[test]
    fn strata() {
        let m = super::chmod_kept_across_remount(&strata_tests::Backend::strata());
        // Where fuse-overlayfs 1.10 differs: the owner of the lower's
        // override is kept (1.10 shows the real one), and the inode keeps
        // its real mode (1.10 copies up with 0755).
        assert_eq!(owner_mode(&m.join("f")), (1000, 1000, 0o600));
        assert_eq!(owner_mode(&m.upper().join("f")).2, 0o700, "the real mode");
    }
    #[test]
    fn fuse_overlayfs() {
        super::chmod_kept_across_remount(&super::fuse_overlayfs());
    }
}

#[test]
fn override_xattrs_are_private() {
    let m = force_mask_layers(CONTAINERS).mount_strata();
    let f = m.join("f");
    let names = llistxattr(&f).unwrap();
    assert!(names.iter().any(|n| n == "user.keep"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.contains("override_stat")),
        "{names:?}"
    );
    for name in [CONTAINERS, PRIVILEGED, "user.fuseoverlayfs.override_stat"] {
        assert_eq!(lgetxattr(&f, name), Err(Errno::ENODATA), "{name}");
        assert_eq!(lsetxattr(&f, name, b"0:0:777"), Err(Errno::EPERM), "{name}");
    }
    // Nothing copied up by the refused changes.
    assert!(!m.upper().join("f").exists());
    assert_eq!(owner_mode(&f), (1000, 1000, 0o640));
}

/// chown and chmod through a mount with `xattr_permissions=N` write the
/// override `name` in the upper; the inode keeps its real owner.
fn chown_chmod_write_the_override(name: &str, option: &str) {
    let layers = force_mask_layers(name);
    let mut m = mount_with(&layers, &Backend::strata(), Some(option));
    let f = m.join("f");
    // A chmod keeps the owner the lower's override says: copy-up carried it.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(owner_mode(&f), (1000, 1000, 0o600));
    std::os::unix::fs::lchown(&f, Some(2000), Some(3000)).unwrap();
    assert_eq!(owner_mode(&f), (2000, 3000, 0o600));
    let uf = m.upper().join("f");
    assert_eq!(stored(&uf, name), "2000:3000:600");
    assert_eq!(owner_mode(&uf), (0, 0, 0o700), "the real owner and mode");
    // A file made through the mount: its owner changes in the override.
    std::fs::write(m.join("new"), "n").unwrap();
    std::os::unix::fs::lchown(m.join("new"), Some(4000), None).unwrap();
    assert_eq!(owner_mode(&m.join("new")), (4000, 0, 0o644));
    assert_eq!(owner_mode(&m.upper().join("new")).0, 0);
    // A directory's type is kept in the override.
    std::os::unix::fs::lchown(m.join("d"), Some(5), Some(6)).unwrap();
    assert_eq!(stored(&m.upper().join("d"), name), "5:6:700:dir");
    m.unmount();
    m.mount_again(Backend::strata(), false);
    assert_eq!(
        owner_mode(&m.join("f")),
        (2000, 3000, 0o600),
        "f after a remount"
    );
    assert_eq!(
        owner_mode(&m.join("new")),
        (4000, 0, 0o644),
        "new after a remount"
    );
    assert_eq!(owner_mode(&m.join("d")), (5, 6, 0o700), "d after a remount");
}

#[test]
fn chown_chmod_write_the_containers_override() {
    chown_chmod_write_the_override(CONTAINERS, "xattr_permissions=2");
}

#[test]
fn chown_chmod_write_the_privileged_override() {
    chown_chmod_write_the_override(PRIVILEGED, "xattr_permissions=1");
}

/// An entry without an override in a containers-mode layer shows its real
/// owner and mode (fuse-overlayfs 1.10 fails its stat with ENODATA).
#[test]
fn entries_without_an_override_show_their_real_stat() {
    let layers = Layers::new().lower(|l| {
        force_mask_layer(l, CONTAINERS)
            .file("plain", "p\n")
            .owner("plain", 9, 9)
    });
    let m = layers.mount_strata();
    assert_eq!(owner_mode(&m.join("plain")), (9, 9, 0o644));
    assert_eq!(owner_mode(&m.join("f")), (1000, 1000, 0o640));
}

/// Without `xattr_permissions=`, an upper whose root carries no override
/// takes real chowns: a copy-up of an overridden lower file gets the
/// override's owner and mode for real.
#[test]
fn without_the_option_copy_up_makes_the_override_real() {
    let m = force_mask_layers(CONTAINERS).mount_strata();
    std::os::unix::fs::lchown(m.join("f"), None, Some(7)).unwrap();
    assert_eq!(owner_mode(&m.join("f")), (1000, 7, 0o640));
    let uf = m.upper().join("f");
    assert_eq!(owner_mode(&uf), (1000, 7, 0o640));
    assert_eq!(lgetxattr(&uf, CONTAINERS), Err(Errno::ENODATA));
}

/// Kills the FUSE servers of a mountpoint left behind by a failed script.
struct Servers(PathBuf);

impl Drop for Servers {
    fn drop(&mut self) {
        for pid in pids_with_arg(&self.0) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
}

/// Rootless: in a user namespace (ids 1.. mapped to a subordinate range,
/// as rootless podman's; 0 stays root so the server may open a 0600
/// `/dev/fuse`), with no capability in the initial namespace, a lower
/// layer extracted with `force_mask` shows its owners, and chown/chmod land
/// in the override (a `user.*` xattr, which such a mount may write), never
/// on the inode.
#[test]
fn rootless_force_mask_layer() {
    let root = temp_root();
    let r = root.path();
    std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["l", "u", "w", "m"] {
        std::fs::create_dir(r.join(d)).unwrap();
    }
    let l = r.join("l");
    std::fs::write(l.join("f"), "data\n").unwrap();
    std::fs::set_permissions(l.join("f"), std::fs::Permissions::from_mode(0o700)).unwrap();
    lsetxattr(&l, CONTAINERS, b"0:0:0755:dir").unwrap();
    lsetxattr(&l.join("f"), CONTAINERS, b"1000:1000:0640").unwrap();
    let _servers = Servers(r.join("m"));
    let script = format!(
        r#"set -e
cd {root}
trap 'umount m 2>/dev/null || true' EXIT INT TERM
{prog} -o lowerdir=l,upperdir=u,workdir=w,xattr_permissions=2 m
stat -c 'lower %u:%g %a' m/f
chmod 600 m/f
chown 2000:3000 m/f
stat -c 'changed %u:%g %a' m/f
stat -c 'upper %u:%g %a' u/f
mkdir m/x
chown 5:6 m/x
stat -c 'new %u:%g %a' m/x
if setfattr -n {CONTAINERS} -v 0:0:777 m/x 2>/dev/null; then echo set allowed; fi
if setfattr -n trusted.strata-test -v 1 u/x 2>/dev/null; then echo privileged; fi
umount m
{prog} -o lowerdir=l,upperdir=u,workdir=w,xattr_permissions=2 m
stat -c 'remounted %u:%g %a' m/f
"#,
        root = r.display(),
        prog = strata_program().display(),
    );
    let mut cmd = Command::new("timeout");
    cmd.args(["120", "sh", "-c", &script]);
    let out = output_in_userns(cmd, "0 0 1\n1 100001 65535\n").expect("run in a user namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "script failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status,
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "lower 1000:1000 640",
            "changed 2000:3000 600",
            "upper 0:0 700",
            "new 5:6 755",
            "remounted 2000:3000 600",
        ],
        "stderr:\n{stderr}"
    );
    // Seen from the host: the inode kept its real owner and mode.
    assert_eq!(owner_mode(&r.join("u/f")), (0, 0, 0o700));
    assert_eq!(stored(&r.join("u/f"), CONTAINERS), "2000:3000:600");
    assert_eq!(stored(&r.join("u/x"), CONTAINERS), "5:6:755");
}
