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
const WH_MARKER: &str = "whiteouts .wh.NAME, opaque .wh..wh..opq, records none";

/// The forms expected on `kind`, as root or in a user namespace.
fn expected(kind: Kind, userns: bool) -> &'static str {
    match (kind, userns) {
        (Kind::Overlay, false) => WH_TRUSTED,
        (Kind::Overlay, true) => WH_USER,
        // strata-mount hides and refuses every overlay xattr namespace and
        // 0/0 devices on its own mount: the marker forms only.
        (Kind::Fuse, _) => WH_MARKER,
        (_, false) => DEVICE_TRUSTED,
        (_, true) => DEVICE_USER,
    }
}

/// Mounts strata-mount with its upper and work directories in `home`,
/// removes the lower file `f` (refused on a FUSE upper), unmounts and waits for the report; prints
/// the `forms` line. As root, or in a user namespace.
fn probe(home: &Path, lower: &Path, userns: bool, fuse_upper: bool) -> String {
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
    if fuse_upper {
        // strata-mount refuses `.wh.` names (and 0/0 devices) through its
        // mount: an upper inside one cannot hold any whiteout.
        assert_eq!(
            rm,
            "refused",
            "{}: a lower file was removed on a FUSE upper",
            u.display()
        );
        assert!(!wh && !dev);
    } else if forms.starts_with("whiteouts device") {
        assert!(
            dev && !wh,
            "{}: forms {forms:?} but no 0/0 device for f",
            u.display()
        );
    } else {
        assert!(wh && !dev, "{}: forms {forms:?} but no .wh.f", u.display());
    }
    if !fuse_upper {
        assert_eq!(rm, "removed", "{}: rm of a lower file failed", u.display());
    }
    // Where no whiteout can be written, the mount says so.
    let said = std::fs::read_to_string(home.join("mount.err"))
        .unwrap_or_default()
        .contains("takes neither 0/0 devices nor .wh. names");
    assert_eq!(
        said,
        fuse_upper,
        "{}: the warning about uppers without whiteouts {}",
        u.display(),
        if fuse_upper { "is missing" } else { "is wrong" }
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
            let got = probe(home.path(), lower.path(), userns, kind == Kind::Fuse);
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

/// Regression: strata-mount mounted an upper inside another strata-mount
/// (which refuses `.wh.` names and 0/0 devices) without a word, and the
/// first removal of a lower file failed with a bare EINVAL. It now warns at
/// mount (the probe asserts the warning where it is due and only there).
#[test]
fn an_upper_that_can_hold_no_whiteout_is_said_at_mount() {
    let lower = temp_root();
    std::fs::write(lower.path().join("f"), "lower\n").unwrap();
    for kind in [Kind::Fuse, Kind::Tmpfs] {
        let Some(scratch) = scratch_or_skip(kind) else {
            continue;
        };
        let home = tempfile::Builder::new()
            .prefix("st")
            .tempdir_in(scratch.path())
            .unwrap();
        probe(home.path(), lower.path(), false, kind == Kind::Fuse);
    }
}
