//! What strata-mount writes into an upper directory on each filesystem of
//! the upper-filesystem matrix (issue 20), as root and inside a user
//! namespace: the forms it probed at mount (the `forms` line of its
//! `stats=` report), and that the whiteout of a removed lower file is
//! really written in that form. Prints the table README.md's "Nested in
//! containers" shows.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use strata_tests::mount::{strata_program, temp_root};
use strata_tests::sys::output_in_userns;
use strata_tests::upperfs::{scratch_or_skip, Kind, USERNS_MAP};

const DEVICE_TRUSTED: &str =
    "whiteouts device 0/0, opaque trusted.overlay.opaque, records trusted.overlay.*";
const DEVICE_USER: &str =
    "whiteouts device 0/0, opaque user.overlay.opaque, records user.overlay.*";
const WH_TRUSTED: &str =
    "whiteouts .wh.NAME, opaque trusted.overlay.opaque, records trusted.overlay.*";
const WH_USER: &str = "whiteouts .wh.NAME, opaque user.overlay.opaque, records user.overlay.*";
const XATTR_TRUSTED: &str =
    "whiteouts trusted.overlay.whiteout, opaque trusted.overlay.opaque, records trusted.overlay.*";
const XATTR_USER: &str =
    "whiteouts user.overlay.whiteout, opaque user.overlay.opaque, records user.overlay.*";

/// The forms expected on `kind`, as root or in a user namespace.
fn expected(kind: Kind, userns: bool) -> &'static str {
    match (kind, userns) {
        (Kind::Overlay, false) => WH_TRUSTED,
        (Kind::Overlay, true) => WH_USER,
        // strata-mount refuses 0/0 devices and `.wh.` names on its own
        // mount, and escapes overlay xattrs for a nested overlay: the
        // kernel's xattr whiteouts.
        (Kind::Fuse, false) => XATTR_TRUSTED,
        (Kind::Fuse, true) => XATTR_USER,
        (_, false) => DEVICE_TRUSTED,
        (_, true) => DEVICE_USER,
    }
}

/// Mounts strata-mount with its upper and work directories in `home`,
/// removes the lower file `f` (refused where the upper can hold no
/// whiteout: `no_whiteouts`), unmounts and waits for the report; prints
/// the `forms` line. As root, or in a user namespace.
fn probe(home: &Path, lower: &Path, userns: bool, no_whiteouts: bool) -> String {
    let (u, w, m, stats) = (
        home.join("u"),
        home.join("w"),
        home.join("m"),
        home.join("stats"),
    );
    let script = format!(
        "set -e; mkdir {u} {w} {m}; \
         {prog} -o lowerdir={lower},upperdir={u},workdir={w},uring=off,stats={stats} {m} 2>{err}; \
         if rm {m}/f 2>/dev/null; then echo removed; else echo refused; fi; \
         umount {m} || {{ umount -l {m}; exit 4; }}; \
         i=0; until grep -q '^forms' {stats} 2>/dev/null; do \
           i=$((i+1)); [ $i -lt 1200 ] || {{ echo 'no stats report' >&2; exit 3; }}; sleep 0.05; done; \
         sed -n 's/^forms *//p' {stats}",
        u = u.display(),
        w = w.display(),
        m = m.display(),
        stats = stats.display(),
        err = home.join("mount.err").display(),
        lower = lower.display(),
        prog = strata_program().display(),
    );
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "sh", "-c", &script]);
    let out = if userns {
        output_in_userns(cmd, USERNS_MAP).expect("run in a user namespace")
    } else {
        cmd.output().expect("run sh")
    };
    assert!(
        out.status.success(),
        "probe in {} failed ({}): {}",
        home.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (rm, forms) = stdout.trim().split_once('\n').expect("two lines");
    let forms = forms.to_string();
    // The whiteout of `f` is in the probed form.
    let dev = std::fs::symlink_metadata(u.join("f"))
        .is_ok_and(|md| md.file_type().is_char_device() && md.rdev() == 0);
    let wh = u.join(".wh.f").exists();
    let xattr_wh = std::fs::symlink_metadata(u.join("f"))
        .is_ok_and(|md| md.is_file() && md.len() == 0)
        && ["trusted", "user"].iter().any(|ns| {
            strata_tests::sys::lgetxattr(&u.join("f"), &format!("{ns}.overlay.whiteout")).is_ok()
        });
    if no_whiteouts {
        // fuse-overlayfs refuses `.wh.` names, 0/0 devices and overlay
        // xattrs through its mount: an upper inside one cannot hold any
        // whiteout.
        assert_eq!(
            rm,
            "refused",
            "{}: a lower file was removed on an upper that holds no whiteout",
            u.display()
        );
        assert!(!wh && !dev && !xattr_wh);
    } else if forms.starts_with("whiteouts device") {
        assert!(
            dev && !wh,
            "{}: forms {forms:?} but no 0/0 device for f",
            u.display()
        );
    } else if forms.starts_with("whiteouts .wh.") {
        assert!(wh && !dev, "{}: forms {forms:?} but no .wh.f", u.display());
    } else {
        assert!(
            xattr_wh && !wh && !dev,
            "{}: forms {forms:?} but no xattr whiteout f",
            u.display()
        );
    }
    if !no_whiteouts {
        assert_eq!(rm, "removed", "{}: rm of a lower file failed", u.display());
    }
    // Where no whiteout can be written, the mount says so.
    let said = std::fs::read_to_string(home.join("mount.err"))
        .unwrap_or_default()
        .contains("takes neither 0/0 devices nor .wh. names");
    assert_eq!(
        said,
        no_whiteouts,
        "{}: the warning about uppers without whiteouts {}",
        u.display(),
        if no_whiteouts {
            "is missing"
        } else {
            "is wrong"
        }
    );
    forms
}

#[test]
fn probe_per_filesystem() {
    let lower = temp_root();
    std::fs::write(lower.path().join("f"), "lower\n").unwrap();
    std::fs::set_permissions(
        lower.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut table = Vec::new();
    let mut wrong = Vec::new();
    for kind in Kind::ALL {
        let Some(scratch) = scratch_or_skip(kind) else {
            table.push(format!(
                "| {} | (unavailable) | (unavailable) |",
                kind.name()
            ));
            continue;
        };
        let mut row = vec![kind.name().to_string()];
        for userns in [false, true] {
            let home = tempfile::Builder::new()
                .prefix("st")
                .tempdir_in(scratch.path())
                .unwrap();
            let got = probe(home.path(), lower.path(), userns, false);
            if got != expected(kind, userns) {
                wrong.push(format!(
                    "{} {}: {got:?}, expected {:?}",
                    kind.name(),
                    if userns {
                        "in a user namespace"
                    } else {
                        "as root"
                    },
                    expected(kind, userns)
                ));
            }
            row.push(got);
        }
        table.push(format!("| {} |", row.join(" | ")));
    }
    eprintln!(
        "| upper filesystem | as root | in a user namespace |\n| --- | --- | --- |\n{}",
        table.join("\n")
    );
    assert!(wrong.is_empty(), "unexpected forms:\n{}", wrong.join("\n"));
}

/// Regression: strata-mount mounted an upper inside a FUSE overlay that
/// refuses `.wh.` names, 0/0 devices and overlay xattrs (fuse-overlayfs;
/// strata-mount itself until it escaped overlay xattrs) without a word, and
/// the first removal of a lower file failed with a bare EINVAL. It now
/// warns at mount (the probe asserts the warning where it is due and only
/// there).
#[test]
fn an_upper_that_can_hold_no_whiteout_is_said_at_mount() {
    let lower = temp_root();
    std::fs::write(lower.path().join("f"), "lower\n").unwrap();
    if let Some(scratch) = scratch_or_skip(Kind::Tmpfs) {
        let home = tempfile::Builder::new()
            .prefix("st")
            .tempdir_in(scratch.path())
            .unwrap();
        probe(home.path(), lower.path(), false, false);
    }
    let Some(outer) = FuseOverlayfs::mount() else {
        eprintln!("skipped the FUSE overlay upper: fuse-overlayfs is not installed");
        return;
    };
    probe(&outer.home(), lower.path(), false, true);
}

/// A fuse-overlayfs mount under a temporary directory, unmounted on drop.
struct FuseOverlayfs {
    root: tempfile::TempDir,
}

impl FuseOverlayfs {
    fn mount() -> Option<FuseOverlayfs> {
        let root = temp_root();
        for d in ["l", "u", "w", "m"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        let o = format!(
            "lowerdir={},upperdir={},workdir={}",
            root.path().join("l").display(),
            root.path().join("u").display(),
            root.path().join("w").display()
        );
        let ran = Command::new("fuse-overlayfs")
            .args(["-o", &o])
            .arg(root.path().join("m"))
            .status()
            .ok()?;
        assert!(ran.success(), "fuse-overlayfs failed to mount: {ran}");
        let home = root.path().join("m/home");
        std::fs::create_dir(&home).unwrap();
        Some(FuseOverlayfs { root })
    }

    fn home(&self) -> std::path::PathBuf {
        self.root.path().join("m/home")
    }
}

impl Drop for FuseOverlayfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(self.root.path().join("m"))
            .status();
    }
}

/// An upper written by strata-mount inside a strata-mount (whiteouts in
/// the kernel's xattr form, opaque xattrs, both escaped by the outer
/// mount) reads the same through the kernel's overlayfs, as a lower over
/// the same lower, as through the strata mount that wrote it: the kernel
/// (6.8+) reads the unescaped forms through the outer mount.
#[test]
fn a_nested_upper_reads_the_same_through_the_kernel() {
    use strata_tests::mount::{pids_with_arg, wait_process_gone, PROCESS_TIMEOUT};
    use strata_tests::tree::{diff, snapshot, SnapOpts};
    let Some(outer) = scratch_or_skip(Kind::Fuse) else {
        return;
    };
    let lower = temp_root();
    for f in ["d/a", "d/b", "gone", "r/x", "r/y", "keep", "o/z"] {
        let p = lower.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, f).unwrap();
    }
    let home = tempfile::Builder::new()
        .prefix("st")
        .tempdir_in(outer.path())
        .unwrap();
    let (u, w) = (home.path().join("u"), home.path().join("w"));
    let mnts = temp_root();
    let (m, k) = (mnts.path().join("m"), mnts.path().join("k"));
    for d in [&u, &w, &m, &k] {
        std::fs::create_dir(d).unwrap();
    }
    let o = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.path().display(),
        u.display(),
        w.display()
    );
    let ok = Command::new(strata_program())
        .args(["-o", &o])
        .arg(&m)
        .status()
        .unwrap()
        .success();
    let _unmount = Unmount(vec![k.clone(), m.clone()]);
    assert!(ok, "strata-mount inside strata-mount");
    let script = "set -e; rm gone d/a; mv r r2; rm r2/x; rm -r o; mkdir o; echo new > o/n; \
                  echo more >> keep";
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(&m)
        .output()
        .unwrap();
    let seen = snapshot(&m, SnapOpts::MERGED);
    let servers = pids_with_arg(&m);
    let _ = Command::new("umount").arg(&m).status();
    for pid in servers {
        assert!(
            wait_process_gone(pid, PROCESS_TIMEOUT),
            "the inner server exits"
        );
    }
    assert!(
        out.status.success(),
        "the script on the nested mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = format!("lowerdir={}:{}", u.display(), lower.path().display());
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &o])
        .arg(&k)
        .status()
        .unwrap()
        .success();
    assert!(ok, "the kernel's overlayfs over the nested upper");
    let kernel = snapshot(&k, SnapOpts::MERGED);
    let _ = Command::new("umount").arg(&k).status();
    if let Some(d) = diff("strata", &seen, "kernel", &kernel) {
        panic!("the nested upper reads differently through the kernel:\n{d}");
    }
}

/// Detaches these mounts on drop (each may be unmounted already).
struct Unmount(Vec<std::path::PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(m)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
