//! Differential tests: the same layers and the same script on the kernel's
//! overlayfs and on the program under test (`$STRATA_MOUNT`, default
//! strata-mount). Op results (errnos included), merged trees before and
//! after, and the resulting upper directories must agree.
//!
//! Where strata deliberately does better than the kernel (renaming lower
//! directories, writing through a hard-linked lower file) the tests are in
//! better_than_kernel.rs, not here.

use nix::fcntl::RenameFlags;
use std::os::unix::fs::OpenOptionsExt;
use strata_tests::ops::s;
use strata_tests::sys;
use strata_tests::{differential, Layers, Op, OpaqueForm, Out};

const NONE: RenameFlags = RenameFlags::empty();
const NOREPLACE: RenameFlags = RenameFlags::RENAME_NOREPLACE;
const EXCHANGE: RenameFlags = RenameFlags::RENAME_EXCHANGE;

/// Two lowers and an upper with every kind of entry: lower-only (`lo`,
/// `lo_top`), upper-only (`up`), shadowed (`sh` in all three, `shl` in both
/// lowers), whiteouts in all forms, opaque directories in all forms, a merged
/// directory (`dm`), owners, modes, xattrs, hard links, a fifo, a device.
fn base() -> Layers {
    Layers::new()
        .lower(|l| {
            l.file("lo", "lower only\n")
                .file("sh", "shadowed: bottom\n")
                .file("shl", "shadowed lowers: bottom layer, longer\n")
                .file("gone_dev", "hidden by a device whiteout\n")
                .file("gone_wh", "hidden by a .wh. file\n")
                .file("gone_up", "hidden by a whiteout in the upper\n")
                .file("dlo/a", "a\n")
                .file("dlo/sub/b", "b\n")
                .symlink("dlo/s", "a")
                .file("dm/bottom", "bottom\n")
                .file("dm/both", "both: bottom\n")
                .file("dm/hidden_by_upper", "x\n")
                .file("op_t/hidden", "hidden\n")
                .file("op_w/hidden", "hidden\n")
                .file("op_u/hidden", "hidden\n")
                .file("op_f/hidden", "hidden\n")
                .file("op_up/hidden", "hidden by an opaque upper dir\n")
                .file("op_up2/hidden", "hidden by an opaque upper dir\n")
                .file("owned", "owned by 1000\n")
                .owner("owned", 1000, 1001)
                .mode("owned", 0o640)
                .file("suid", "setuid\n")
                .mode("suid", 0o4755)
                .dir("downed")
                .owner("downed", 1000, 1000)
                .mode("downed", 0o700)
                .file("downed/f", "in an owned dir\n")
                .file("hl_a", "hard linked\n")
                .hardlink("hl_a", "hl_b")
                .fifo("fifo_lo")
                .chardev("null_lo", 1, 3)
                .symlink("slo", "lo")
                .file("xa", "with xattrs\n")
                .xattr("xa", "user.one", "1")
                .xattr("xa", "user.two", "2")
                .xattr("xa", "trusted.t", "t")
                .xattr("dlo", "user.dir", "d")
        })
        .lower(|l| {
            l.file("sh", "shadowed: top lower\n")
                .file("shl", "shadowed lowers: top\n")
                .file("lo_top", "top lower only\n")
                .whiteout("gone_dev")
                .wh_file("gone_wh")
                .file("dm/top", "top\n")
                .file("dm/both", "both: top\n")
                .opaque("op_t")
                .file("op_t/seen", "seen\n")
                .opaque_wh("op_w")
                .file("op_w/seen", "seen\n")
                .opaque_as("op_u", OpaqueForm::UserXattr)
                .file("op_u/seen", "seen\n")
                .opaque_as("op_f", OpaqueForm::FuseOverlayXattr)
                .file("op_f/seen", "seen\n")
        })
        .upper(|u| {
            u.file("up", "upper only\n")
                .file("sh", "shadowed: upper\n")
                .file("dup/u", "u\n")
                .file("dm/upper", "upper\n")
                .wh_file("dm/hidden_by_upper")
                .whiteout("gone_up")
                .symlink("sup", "up")
                .opaque_as("op_up", OpaqueForm::FuseOverlayXattr)
                .file("op_up/u", "upper in an opaque dir\n")
                .opaque_wh("op_up2")
                .file("xu", "upper with xattr\n")
                .xattr("xu", "user.u", "u")
        })
}

/// Files of every origin: lower-only (bottom, top), upper-only, shadowed in
/// all layers, shadowed in the lowers, in a lower subdirectory.
const FILES: [&str; 7] = ["lo", "lo_top", "up", "sh", "shl", "dlo/sub/b", "owned"];

#[test]
fn initial_view() {
    differential(
        &base(),
        &[
            Op::List(""),
            Op::List("dm"),
            Op::List("op_t"),
            Op::List("op_w"),
            Op::List("op_u"),
            Op::List("op_f"),
            Op::List("op_up"),
            Op::List("op_up2"),
            Op::Stat("gone_dev"),
            Op::Stat("gone_wh"),
            Op::Stat("gone_up"),
            Op::Stat(".wh.gone_wh"),
            Op::Stat("op_w/.wh..wh..opq"),
            Op::Stat("dm/hidden_by_upper"),
            Op::Read("sh"),
            Op::Read("shl"),
            Op::ListXattr("xa"),
            Op::ListXattr("op_t"),
            Op::ListXattr("op_u"),
            Op::GetXattr("op_t", "trusted.overlay.opaque"),
        ],
    );
}

#[test]
fn write_at_offset() {
    let ops: Vec<Op> = FILES
        .iter()
        .flat_map(|f| [Op::Write(f, 3, b"WRITE"), Op::Read(f)])
        .collect();
    differential(&base(), &ops);
}

#[test]
fn write_past_end_makes_a_hole() {
    differential(
        &base(),
        &[
            Op::Write("lo", 100, b"after a hole"),
            Op::Read("lo"),
            Op::Stat("lo"),
        ],
    );
}

#[test]
fn append() {
    let ops: Vec<Op> = FILES
        .iter()
        .flat_map(|f| [Op::Append(f, b"+appended"), Op::Read(f)])
        .collect();
    differential(&base(), &ops);
}

#[test]
fn truncate_shorter_longer_zero() {
    let mut ops = Vec::new();
    for (i, f) in FILES.iter().enumerate() {
        ops.push(Op::Truncate(f, [0, 4, 100][i % 3]));
        ops.push(Op::Read(f));
    }
    differential(&base(), &ops);
}

#[test]
fn rewrite_with_o_trunc() {
    let ops: Vec<Op> = FILES
        .iter()
        .flat_map(|f| {
            [
                Op::Rewrite(f, b"short"),
                Op::Read(f),
                Op::Rewrite(f, b"a much longer replacement text\n"),
            ]
        })
        .collect();
    differential(&base(), &ops);
}

#[test]
fn write_keeps_xattrs_mode_owner_suid() {
    differential(
        &base(),
        &[
            Op::Append("xa", b"more"),
            Op::ListXattr("xa"),
            Op::Append("owned", b"more"),
            Op::Stat("owned"),
            Op::Append("suid", b"more"),
            Op::Stat("suid"),
            Op::Create("downed/new", 0o600, b"new in an owned dir"),
            Op::Stat("downed"),
        ],
    );
}

#[test]
fn chmod() {
    let mut ops: Vec<Op> = FILES.iter().map(|f| Op::Chmod(f, 0o604)).collect();
    ops.extend([
        Op::Chmod("dlo", 0o711),
        Op::Chmod("dm", 0o750),
        Op::Chmod("dup", 0o700),
        Op::Chmod("dlo/sub", 0o777),
        Op::Chmod("suid", 0o755),
        Op::Chmod("gone_dev", 0o644),
        Op::Chmod("", 0o711),
    ]);
    differential(&base(), &ops);
}

#[test]
fn chown() {
    let mut ops: Vec<Op> = FILES.iter().map(|f| Op::Chown(f, 1234, 5678)).collect();
    ops.extend([
        Op::Chown("dlo", 7, 8),
        Op::Chown("dm", 7, 8),
        Op::Chown("sup", 9, 9),
        Op::Chown("suid", 0, 0),
        Op::Chown("gone_wh", 1, 1),
    ]);
    differential(&base(), &ops);
}

#[test]
fn utimes() {
    let mut ops: Vec<Op> = FILES
        .iter()
        .map(|f| Op::Utimes(f, 1_300_000_000, 1_400_000_000))
        .collect();
    ops.extend([Op::Utimes("dlo", 1_300_000_000, 1_400_000_003)]);
    differential(&base(), &ops);
}

#[test]
fn xattrs() {
    let mut ops = Vec::new();
    for f in FILES {
        ops.push(Op::SetXattr(f, "user.new", b"value"));
        ops.push(Op::GetXattr(f, "user.new"));
        ops.push(Op::ListXattr(f));
    }
    ops.extend([
        Op::RemoveXattr("xa", "user.one"),
        Op::SetXattr("xa", "user.two", b"replaced"),
        Op::SetXattr("xa", "trusted.t2", b"t2"),
        Op::SetXattr("xa", "security.strata_test", b"sec"),
        Op::ListXattr("xa"),
        Op::GetXattr("xa", "user.one"),
        Op::RemoveXattr("xa", "user.missing"),
        Op::RemoveXattr("xu", "user.u"),
        Op::SetXattr("dlo", "user.dir2", b"d2"),
        Op::RemoveXattr("dlo", "user.dir"),
        Op::ListXattr("dlo"),
        Op::SetXattr("dm", "user.merged", b"m"),
        Op::GetXattr("lo", "user.none"),
        Op::SetXattr("gone_dev", "user.x", b"x"),
    ]);
    differential(&base(), &ops);
}

#[test]
fn overlay_private_xattrs_cannot_be_set_or_seen() {
    differential(
        &base(),
        &[
            Op::GetXattr("op_t", "trusted.overlay.opaque"),
            Op::GetXattr("dm", "trusted.overlay.origin"),
            Op::ListXattr("op_t"),
            Op::ListXattr("dm"),
        ],
    );
}

/// A client's overlay xattrs are escaped, as the kernel's overlayfs does
/// since Linux 6.7 ("Nesting overlayfs mounts"): `trusted.overlay.X` set
/// through the mount is stored as `trusted.overlay.overlay.X` (the upper
/// trees are compared too) and read back as set, never taken for the
/// mount's own (a directory a client marks opaque still merges, an empty
/// file marked a whiteout still shows); a layer's escaped xattr is shown
/// with one `overlay.` less. (In a user namespace `trusted.*` is refused
/// on both sides.)
#[test]
fn overlay_xattrs_of_clients_are_escaped() {
    let layers = Layers::new().lower(|l| {
        l.file("esc", "")
            .xattr("esc", "trusted.overlay.overlay.whiteout", "y")
            .file("dir/x", "x\n")
            .file("empty", "")
    });
    differential(
        &layers,
        &[
            Op::Stat("esc"),
            Op::ListXattr("esc"),
            Op::GetXattr("esc", "trusted.overlay.whiteout"),
            Op::GetXattr("esc", "trusted.overlay.overlay.whiteout"),
            Op::SetXattr("dir", "trusted.overlay.opaque", b"y"),
            Op::List("dir"),
            Op::GetXattr("dir", "trusted.overlay.opaque"),
            Op::ListXattr("dir"),
            Op::SetXattr("empty", "trusted.overlay.whiteout", b"y"),
            Op::Stat("empty"),
            Op::ListXattr("empty"),
            Op::SetXattr("empty", "trusted.overlay.overlay.deeper", b"2"),
            Op::GetXattr("empty", "trusted.overlay.overlay.deeper"),
            Op::ListXattr("empty"),
            Op::RemoveXattr("dir", "trusted.overlay.opaque"),
            Op::ListXattr("dir"),
            Op::List(""),
        ],
    );
}

#[test]
fn unlink() {
    let mut ops = Vec::new();
    for f in FILES.iter().chain(&["sup", "xa", "dlo/s"]) {
        ops.push(Op::Unlink(f));
        ops.push(Op::Stat(f));
        ops.push(Op::Unlink(f));
    }
    ops.extend([
        Op::Unlink("dlo"),
        Op::Unlink("gone_dev"),
        Op::Stat("hl_b"),
        Op::Read("hl_b"),
        Op::List(""),
        Op::List("dlo"),
        Op::List("dlo/sub"),
    ]);
    differential(&base(), &ops);
}

#[test]
fn recreate_after_unlink() {
    differential(
        &base(),
        &[
            Op::Unlink("lo"),
            Op::Create("lo", 0o600, b"recreated"),
            Op::Unlink("sh"),
            Op::Mkdir("sh", 0o755),
            Op::List("sh"),
            Op::Unlink("lo_top"),
            Op::Symlink("target", "lo_top"),
            Op::Create("gone_dev", 0o644, b"over a device whiteout"),
            Op::Create("gone_wh", 0o644, b"over a .wh. whiteout"),
            Op::Create("gone_up", 0o644, b"over an upper whiteout"),
            Op::List(""),
        ],
    );
}

#[test]
fn rmdir() {
    differential(
        &base(),
        &[
            Op::Rmdir("dlo"),
            Op::Rmdir("dlo/sub"),
            Op::Unlink("dlo/sub/b"),
            Op::Rmdir("dlo/sub"),
            Op::Rmdir("dlo/sub"),
            Op::Rmdir("dup"),
            Op::Unlink("dup/u"),
            Op::Rmdir("dup"),
            Op::Rmdir("dm"),
            Op::Unlink("dm/bottom"),
            Op::Unlink("dm/both"),
            Op::Unlink("dm/top"),
            Op::Unlink("dm/upper"),
            Op::Rmdir("dm"),
            Op::Unlink("op_t/seen"),
            Op::Rmdir("op_t"),
            Op::Rmdir("lo"),
            Op::Rmdir("gone_dev"),
            Op::List(""),
        ],
    );
}

#[test]
fn mkdir_over_whiteouts_is_opaque() {
    differential(
        &base(),
        &[
            Op::Mkdir("gone_dev", 0o755),
            Op::Mkdir("gone_wh", 0o700),
            Op::Mkdir("gone_up", 0o755),
            Op::RmRf("dlo"),
            Op::Mkdir("dlo", 0o755),
            Op::List("dlo"),
            Op::Create("dlo/new", 0o644, b"new"),
            Op::List("dlo"),
            Op::RmRf("dm"),
            Op::Mkdir("dm", 0o755),
            Op::List("dm"),
            Op::Mkdir("dm", 0o755),
            Op::Mkdir("lo", 0o755),
        ],
    );
}

#[test]
fn create_nodes() {
    differential(
        &base(),
        &[
            Op::Create("new", 0o640, b"new file"),
            Op::Create("dlo/new", 0o600, b"in a lower dir"),
            Op::Create("dlo/sub/new", 0o600, b"deeper"),
            Op::Create("dm/new", 0o644, b"in a merged dir"),
            Op::Create("op_t/new", 0o644, b"in an opaque dir"),
            Op::Create("lo", 0o644, b"exists"),
            Op::Create("nodir/new", 0o644, b"no parent"),
            Op::Create("lo/new", 0o644, b"parent is a file"),
            Op::Mkdir("dlo/sub/newdir", 0o750),
            Op::Mkdir("dlo", 0o755),
            Op::Symlink("../lo", "dlo/newlink"),
            Op::Symlink("x", "lo"),
            Op::Mkfifo("dm/fifo", 0o620),
            Op::Mknod("dlo/null", 0o666, 1, 3),
            Op::Mknod("zero", 0o640, 1, 5),
            Op::Stat("dlo/newlink"),
            Op::Stat("dm/fifo"),
            Op::Stat("zero"),
        ],
    );
}

#[test]
fn link() {
    differential(
        &base(),
        &[
            Op::Link("lo", "lo_link"),
            Op::Link("up", "dlo/up_link"),
            Op::Link("sh", "dm/sh_link"),
            Op::Link("lo", "up"),
            Op::Link("missing", "x"),
            Op::Link("dlo", "dlo_link"),
            Op::Stat("lo"),
            Op::Stat("lo_link"),
            Op::Append("lo_link", b"through the link"),
            Op::Read("lo"),
            Op::Stat("up"),
            Op::Unlink("lo"),
            Op::Stat("lo_link"),
        ],
    );
}

#[test]
fn rename_files() {
    differential(
        &base(),
        &[
            Op::Rename("lo", "lo2", NONE),
            Op::Rename("up", "up2", NONE),
            Op::Rename("sh", "sh2", NONE),
            Op::Rename("lo_top", "shl", NONE),
            Op::Rename("up2", "dlo/up", NONE),
            Op::Rename("dlo/a", "dm/a", NONE),
            Op::Rename("lo2", "gone_dev", NONE),
            Op::Rename("owned", "gone_wh", NONE),
            Op::Rename("missing", "x", NONE),
            Op::Rename("xa", "xa2", NONE),
            Op::ListXattr("xa2"),
            Op::Rename("gone_dev", "gone_dev", NONE),
            Op::Rename("dm/a", "dlo", NONE),
            Op::List(""),
            Op::List("dlo"),
            Op::List("dm"),
        ],
    );
}

#[test]
fn rename_noreplace() {
    differential(
        &base(),
        &[
            Op::Rename("lo", "sh", NOREPLACE),
            Op::Rename("up", "lo", NOREPLACE),
            Op::Rename("lo", "gone_dev", NOREPLACE),
            Op::Rename("up", "gone_up", NOREPLACE),
            Op::Rename("lo_top", "brand_new", NOREPLACE),
            Op::Rename("dup", "dm", NOREPLACE),
            Op::List(""),
        ],
    );
}

#[test]
fn rename_exchange() {
    differential(
        &base(),
        &[
            Op::Rename("lo", "up", EXCHANGE),
            Op::Rename("sh", "lo_top", EXCHANGE),
            Op::Rename("dlo/a", "dm/top", EXCHANGE),
            Op::Rename("lo", "gone_dev", EXCHANGE),
            Op::Rename("lo", "missing", EXCHANGE),
            Op::Mkdir("nd1", 0o755),
            Op::Mkdir("nd2", 0o700),
            Op::Create("nd1/x", 0o644, b"x"),
            Op::Rename("nd1", "nd2", EXCHANGE),
            Op::Rename("nd1", "up", EXCHANGE),
            Op::Read("lo"),
            Op::Read("up"),
            Op::Read("sh"),
            Op::Read("lo_top"),
            Op::List(""),
            Op::List("nd2"),
        ],
    );
}

#[test]
fn rename_upper_only_dirs() {
    differential(
        &base(),
        &[
            Op::Rename("dup", "dup2", NONE),
            Op::Mkdir("newd", 0o755),
            Op::Create("newd/f", 0o644, b"f"),
            Op::Rename("newd", "dlo/newd", NONE),
            Op::Rename("dlo/newd", "dm/newd", NONE),
            Op::Mkdir("empty", 0o755),
            Op::Rename("dup2", "empty", NONE),
            Op::Rename("dm/newd", "dup2", NONE),
            Op::Rename("dup2", "lo", NONE),
            Op::Rename("lo", "dup2", NONE),
            Op::Mkdir("nd3", 0o755),
            Op::Create("nd3/x", 0o644, b"x"),
            Op::Rename("nd3", "gone_dev", NONE),
            Op::List("gone_dev"),
            Op::Mkdir("nd4", 0o755),
            Op::Rename("nd4", "gone_wh", NONE),
            Op::Mkdir("nd5", 0o755),
            Op::Rename("nd5", "gone_up", NOREPLACE),
            Op::List(""),
            Op::List("empty"),
        ],
    );
}

#[test]
fn rename_dir_over_emptied_merged_dir() {
    differential(
        &base(),
        &[
            Op::Unlink("dm/bottom"),
            Op::Unlink("dm/both"),
            Op::Unlink("dm/top"),
            Op::Unlink("dm/upper"),
            Op::List("dm"),
            Op::Rename("dup", "dm", NONE),
            Op::List("dm"),
            Op::Rename("dlo/sub/b", "dup", NONE),
        ],
    );
}

#[test]
fn rm_rf_lower_trees() {
    differential(
        &base(),
        &[
            Op::RmRf("dlo"),
            Op::RmRf("dm"),
            Op::RmRf("op_t"),
            Op::RmRf("op_w"),
            Op::RmRf("downed"),
            Op::List(""),
            Op::Stat("dlo"),
            Op::Mkdir("dm", 0o755),
            Op::List("dm"),
        ],
    );
}

#[test]
fn rm_rf_everything() {
    let ops: Vec<Op> = [
        "lo", "lo_top", "up", "sh", "shl", "dlo", "dm", "dup", "op_t", "op_w", "op_u", "op_f",
        "owned", "suid", "downed", "hl_a", "hl_b", "fifo_lo", "null_lo", "slo", "sup", "xa", "xu",
    ]
    .into_iter()
    .map(Op::RmRf)
    .chain([Op::List("")])
    .collect();
    differential(&base(), &ops);
}

fn deep_path(depth: usize) -> String {
    (0..depth)
        .map(|i| format!("d{i}"))
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn deep_tree() {
    let deep = deep_path(40);
    let layers = Layers::new()
        .lower(|l| {
            l.file(format!("{deep}/f"), "deep bottom\n")
                .file(format!("{}/g", deep_path(20)), "middle\n")
        })
        .lower(|l| {
            l.file(format!("{deep}/top"), "deep top\n")
                .whiteout(format!("{}/g", deep_path(20)))
        });
    differential(
        &layers,
        &[
            Op::Read(s(format!("{deep}/f"))),
            Op::Stat(s(format!("{}/g", deep_path(20)))),
            Op::Append(s(format!("{deep}/f")), b"+"),
            Op::Chmod(s(deep_path(30)), 0o700),
            Op::Create(s(format!("{}/new", deep_path(35))), 0o644, b"new"),
            Op::Rename(
                s(format!("{deep}/top")),
                s(format!("{}/top", deep_path(10))),
                NONE,
            ),
            Op::RmRf(s(deep_path(25))),
            Op::Mkdir(s(deep_path(25)), 0o755),
            Op::List(s(deep_path(24))),
            Op::List(s(deep_path(25))),
        ],
    );
}

/// 128 lowers: every layer adds its own file and a file in a shared
/// directory and overrides `common`; every tenth layer whites out its
/// lower neighbour's file; layer 100 makes `o` opaque.
fn many_lowers() -> Layers {
    Layers::new().lowers(128, |i, l| {
        let mut l = l
            .file(format!("f{i}"), format!("layer {i}\n"))
            .file("common", format!("common from layer {i}\n"))
            .file(format!("d/e{i}"), format!("e{i}\n"))
            .file(format!("o/x{i}"), format!("x{i}\n"));
        if i % 10 == 5 {
            l = l
                .whiteout(format!("f{}", i - 1))
                .wh_file(format!("d/e{}", i - 2));
        }
        if i == 100 {
            l = l.opaque("o");
        }
        l
    })
}

#[test]
fn many_lowers_128() {
    differential(
        &many_lowers(),
        &[
            Op::Read("common"),
            Op::List(""),
            Op::List("d"),
            Op::List("o"),
            Op::Read("f0"),
            Op::Stat("f4"),
            Op::Stat("d/e3"),
            Op::Append("f0", b"+ appended"),
            Op::Unlink("f127"),
            Op::Unlink("f64"),
            Op::Rename("f1", "d/f1", NONE),
            Op::RmRf("d"),
            Op::Mkdir("d", 0o755),
            Op::Create("o/x0", 0o644, b"x0 again"),
            Op::List(""),
            Op::List("o"),
        ],
    );
}

#[test]
fn enametoolong_for_256_byte_names() {
    let name_255 = s("n".repeat(255));
    let n256 = s("n".repeat(256));
    let in_lower = s(format!("dlo/{n256}"));
    let long_path = s(format!("dlo/{}", ["a"; 2100].join("/")));
    differential(
        &base(),
        &[
            Op::Create(name_255, 0o644, b"255 is fine"),
            Op::Stat(name_255),
            Op::Create(n256, 0o644, b"too long"),
            Op::Stat(n256),
            Op::Stat(in_lower),
            Op::Read(in_lower),
            Op::Mkdir(n256, 0o755),
            Op::Mkdir(in_lower, 0o755),
            Op::Rename("lo", n256, NONE),
            Op::Rename("lo", in_lower, NONE),
            Op::Link("lo", n256),
            Op::Symlink("t", n256),
            Op::Mkfifo(in_lower, 0o644),
            Op::Unlink(n256),
            Op::Rmdir(in_lower),
            Op::SetXattr(in_lower, "user.x", b"x"),
            Op::Stat(long_path),
            Op::Create(long_path, 0o644, b"x"),
            Op::List(""),
        ],
    );
}

/// Symlinks keep target, owner and mtime through copy-up.
#[test]
fn symlinks() {
    differential(
        &base(),
        &[
            Op::Stat("slo"),
            Op::Read("slo"),
            Op::Read("dlo/s"),
            Op::Append("slo", b"+ through the symlink"),
            Op::Read("lo"),
            Op::Chown("slo", 9, 9),
            Op::Link("dlo/s", "s_link"),
            Op::Rename("sup", "dlo/sup", NONE),
            Op::Utimes("dlo/sub", 1_300_000_000, 1_400_000_001),
            Op::Symlink("/etc/passwd", "abs"),
            Op::Symlink("../../../../../../../etc/passwd", "dlo/sub/escape"),
            Op::Stat("abs"),
            Op::Read("dlo/sub/escape"),
            Op::SetXattr("slo", "user.x", b"x"),
        ],
    );
}

/// Fifos and device nodes stay fifos and devices through copy-up (chmod,
/// chown, utimes, link, rename).
#[test]
fn fifos_and_devices_copy_up() {
    differential(
        &base(),
        &[
            Op::Chmod("null_lo", 0o600),
            Op::Chown("fifo_lo", 5, 5),
            Op::Stat("fifo_lo"),
            Op::Stat("null_lo"),
            Op::Utimes("fifo_lo", 1_300_000_000, 1_400_000_002),
            Op::Rename("null_lo", "dlo/null", NONE),
            Op::Link("fifo_lo", "fifo_link"),
            Op::Mkfifo("dm/fifo", 0o620),
            Op::Rename("dm/fifo", "dlo/fifo", NONE),
            Op::Rename("slo", "fifo_lo", EXCHANGE),
        ],
    );
}

/// A device node in a layer is usable through the mount (the kernel's
/// overlay mount is not nodev).
#[test]
fn device_nodes_are_usable() {
    differential(
        &base(),
        &[
            Op::Read("null_lo"),
            Op::Append("null_lo", b"into /dev/null"),
            Op::Mknod("zero", 0o666, 1, 5),
            Op::Custom("read 4 bytes of zero", |root| {
                let mut buf = [1u8; 4];
                let mut f = std::fs::File::open(root.join("zero")).map_err(|e| errno_of(&e))?;
                std::io::Read::read_exact(&mut f, &mut buf).map_err(|e| errno_of(&e))?;
                Ok(Out::Data(buf.to_vec()))
            }),
        ],
    );
}

/// Issue 15: mknod of a character device 0/0 through the mount succeeded;
/// such a node is a whiteout, and would hide the lower file of that name
/// after a remount. The kernel's overlayfs refuses it with EPERM, on a new
/// name, in a lower directory and over a whiteout alike; other devices are
/// made as before.
#[test]
fn mknod_of_a_whiteout_device_is_refused() {
    differential(
        &base(),
        &[
            Op::Mknod("wh_new", 0o644, 0, 0),
            Op::Mknod("dlo/wh_new", 0o600, 0, 0),
            Op::Mknod("gone_dev", 0o644, 0, 0),
            Op::Mknod("gone_wh", 0o644, 0, 0),
            Op::Unlink("lo"),
            Op::Mknod("lo", 0o644, 0, 0),
            Op::Mknod("dm/null", 0o644, 1, 3),
            Op::List(""),
            Op::List("dlo"),
            Op::Stat("dm/null"),
        ],
    );
}

fn errno_of(e: &std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The kernel's xattr whiteouts (Linux 6.7+): an empty file with
/// `trusted.overlay.whiteout` in a directory marked `trusted.overlay.opaque=x`
/// (and, in the older form, `trusted.overlay.whiteouts`) hides the name below.
/// (Kernel 6.18 quirk, not scripted here: `rm -rf xw` there ends in ENOTEMPTY,
/// its emptiness check still sees the xattr whiteout.)
#[test]
fn xattr_whiteouts_in_lowers() {
    let layers = Layers::new()
        .lower(|l| {
            l.file("xw/keep", "kept\n")
                .file("xw/gone", "hidden by an xattr whiteout\n")
                .file("xw/sub/f", "f")
        })
        .lower(|l| l.xwhiteout("xw/gone").file("xw/top", "top\n"));
    differential(
        &layers,
        &[
            Op::List("xw"),
            Op::Stat("xw/gone"),
            Op::Read("xw/sub/f"),
            Op::ListXattr("xw"),
            Op::Create("xw/gone", 0o644, b"over an xattr whiteout"),
            Op::Read("xw/gone"),
            Op::Unlink("xw/keep"),
            Op::List("xw"),
        ],
    );
}

/// fallocate and fsync on lower, upper and shadowed files; statfs' name
/// length limit.
#[test]
fn fallocate_fsync_statfs() {
    fn fallocate(root: &std::path::Path, name: &str) -> strata_tests::OpResult {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join(name))
            .map_err(|e| errno_of(&e))?;
        nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, 10_000)?;
        f.sync_all().map_err(|e| errno_of(&e))?;
        Ok(Out::Unit)
    }
    differential(
        &base(),
        &[
            Op::Custom("fallocate lo to 10000 bytes", |r| fallocate(r, "lo")),
            Op::Custom("fallocate up to 10000 bytes", |r| fallocate(r, "up")),
            Op::Custom("fallocate sh to 10000 bytes", |r| fallocate(r, "sh")),
            Op::Custom("fsync a read-only fd of lo_top", |r| {
                let f = std::fs::File::open(r.join("lo_top")).map_err(|e| errno_of(&e))?;
                f.sync_all().map_err(|e| errno_of(&e))?;
                Ok(Out::Unit)
            }),
            Op::Custom("statfs f_namemax", |r| {
                let st = nix::sys::statvfs::statvfs(r)?;
                Ok(Out::Meta(format!("namemax {}", st.name_max())))
            }),
            Op::Stat("lo"),
            Op::Stat("lo_top"),
        ],
    );
}

/// Runs `sh -c script` as uid:gid 1000:1000 with no supplementary groups,
/// from the mount root; the result is its exit status.
fn as_user(root: &std::path::Path, script: &str) -> strata_tests::OpResult {
    use std::os::unix::process::CommandExt;
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(root)
        .uid(1000)
        .gid(1000)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| errno_of(&e))?;
    Ok(Out::Meta(format!("exit {:?}", st.code())))
}

/// Permission checks for an unprivileged user, and the owner of what that
/// user creates (a FUSE server running as root must create files as the
/// caller, not as root).
#[test]
fn unprivileged_user_permissions_and_ownership() {
    let layers = Layers::new()
        .lower(|l| {
            l.file("secret", "root only\n")
                .mode("secret", 0o600)
                .file("pub", "everyone reads\n")
                .file("ro_dir/f", "f\n")
                .dir("user_dir")
                .owner("user_dir", 1000, 1000)
                .file("user_dir/rootf", "root's file in the user's dir\n")
                .file("user_file", "the user's\n")
                .owner("user_file", 1000, 1000)
                .dir("sticky")
                .mode("sticky", 0o1777)
                .file("sticky/rootf", "root's file in a sticky dir\n")
        })
        .lower(|l| l.file("pub2", "top lower\n"));
    differential(
        &layers,
        &[
            Op::Custom("user: cat secret", |r| as_user(r, "cat secret")),
            Op::Custom("user: cat pub", |r| as_user(r, "cat pub")),
            Op::Custom("user: append to pub", |r| as_user(r, "echo x >> pub")),
            Op::Custom("user: append to user_file", |r| {
                as_user(r, "echo x >> user_file")
            }),
            Op::Custom("user: create in ro_dir", |r| {
                as_user(r, "echo x > ro_dir/new")
            }),
            Op::Custom("user: create in user_dir", |r| {
                as_user(r, "echo x > user_dir/new")
            }),
            Op::Custom("user: mkdir in user_dir", |r| {
                as_user(r, "mkdir user_dir/sub")
            }),
            Op::Custom("user: symlink in user_dir", |r| {
                as_user(r, "ln -s target user_dir/sl")
            }),
            Op::Custom("user: rm root's file in user_dir", |r| {
                as_user(r, "rm -f user_dir/rootf")
            }),
            Op::Custom("user: rm root's file in sticky dir", |r| {
                as_user(r, "rm -f sticky/rootf")
            }),
            Op::Custom("user: create in sticky dir", |r| {
                as_user(r, "echo x > sticky/mine")
            }),
            Op::Custom("user: chmod pub", |r| as_user(r, "chmod 777 pub")),
            Op::Custom("user: rename user_file into ro_dir", |r| {
                as_user(r, "mv user_file ro_dir/x")
            }),
            Op::Custom("user: rm pub2", |r| as_user(r, "rm -f pub2")),
            Op::Custom("user: touch -m user_file", |r| {
                as_user(r, "touch -d @1400000000 user_file")
            }),
        ],
    );
}

/// A version 2 `security.capability` value granting CAP_NET_BIND_SERVICE.
const CAP_NET_BIND_SERVICE: &[u8] = &[0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// What the kernel does to setuid/setgid bits and file capabilities on
/// write, truncate and chown, through copy-up.
#[test]
fn privilege_bits_on_write_and_chown() {
    let layers = Layers::new().lower(|l| {
        l.file("suid_w", "setuid\n")
            .mode("suid_w", 0o6755)
            .file("suid_c", "setuid\n")
            .mode("suid_c", 0o6755)
            .file("suid_t", "setuid\n")
            .mode("suid_t", 0o4755)
            .file("cap_w", "capable\n")
            .mode("cap_w", 0o755)
            .xattr("cap_w", "security.capability", CAP_NET_BIND_SERVICE)
            .file("cap_c", "capable\n")
            .mode("cap_c", 0o755)
            .xattr("cap_c", "security.capability", CAP_NET_BIND_SERVICE)
            .file("cap_keep", "capable\n")
            .mode("cap_keep", 0o755)
            .xattr("cap_keep", "security.capability", CAP_NET_BIND_SERVICE)
    });
    differential(
        &layers,
        &[
            Op::Append("suid_w", b"+"),
            Op::Stat("suid_w"),
            Op::Chown("suid_c", 1000, 1000),
            Op::Stat("suid_c"),
            Op::Truncate("suid_t", 2),
            Op::Stat("suid_t"),
            Op::Append("cap_w", b"+"),
            Op::ListXattr("cap_w"),
            Op::Chown("cap_c", 1000, 1000),
            Op::ListXattr("cap_c"),
            Op::Chmod("cap_keep", 0o750),
            Op::GetXattr("cap_keep", "security.capability"),
        ],
    );
}

/// An unprivileged write drops setuid, and setgid with group execute, also
/// when the file is open elsewhere: on strata that open makes the writer's
/// I/O go through the server (direct I/O), which must drop them itself.
#[test]
fn unprivileged_write_drops_setuid_while_the_file_is_open() {
    use std::os::unix::fs::MetadataExt;
    let layers = Layers::new().lower(|l| {
        l.file("suid_rw", "setuid, writable by all\n")
            .mode("suid_rw", 0o6777)
            .file("sgid_nox", "setgid without group execute\n")
            .mode("sgid_nox", 0o2766)
    });
    fn write_while_held(r: &std::path::Path, name: &str) -> strata_tests::OpResult {
        let held = std::fs::File::open(r.join(name)).map_err(|e| errno_of(&e))?;
        let out = as_user(r, &format!("echo x >> {name}"))?;
        let mode = std::fs::symlink_metadata(r.join(name))
            .map_err(|e| errno_of(&e))?
            .mode();
        drop(held);
        Ok(Out::Meta(format!("{out:?}, mode {mode:o}")))
    }
    differential(
        &layers,
        &[
            Op::Custom("user appends to suid_rw, root holds it open", |r| {
                write_while_held(r, "suid_rw")
            }),
            Op::Stat("suid_rw"),
            Op::Custom("user appends to sgid_nox, root holds it open", |r| {
                write_while_held(r, "sgid_nox")
            }),
            Op::Stat("sgid_nox"),
        ],
    );
}

/// Sockets in a lower layer (copy-up keeps them sockets) and new ones
/// bound through the mount.
#[test]
fn sockets() {
    let layers = Layers::new().lower(|l| l.socket("sock_lo").file("d/f", "f\n"));
    differential(
        &layers,
        &[
            Op::Stat("sock_lo"),
            Op::Chmod("sock_lo", 0o700),
            Op::Chown("sock_lo", 3, 4),
            Op::Stat("sock_lo"),
            Op::Custom("bind a unix socket at d/new.sock", |r| {
                std::os::unix::net::UnixListener::bind(r.join("d/new.sock"))
                    .map_err(|e| errno_of(&e))?;
                Ok(Out::Unit)
            }),
            Op::Stat("d/new.sock"),
            Op::Rename("sock_lo", "d/sock2", NONE),
            Op::Link("d/new.sock", "sock_link"),
        ],
    );
}

/// Large and many xattrs, a too-small buffer (ERANGE), a missing name
/// (ENODATA), XATTR_CREATE on an existing name (EEXIST).
#[test]
fn xattr_sizes_and_errors() {
    let layers = Layers::new().lower(|l| {
        (0..40).fold(l.file("many", "m\n"), |l, i| {
            l.xattr("many", &format!("user.n{i:02}"), format!("value {i}"))
        })
    });
    differential(
        &layers,
        &[
            Op::ListXattr("many"),
            Op::SetXattr("many", "user.big", &[b'x'; 60_000]),
            Op::GetXattr("many", "user.big"),
            Op::Custom("getxattr user.n01 with a 2-byte buffer", |r| {
                sys::lgetxattr_len(&r.join("many"), "user.n01", 2)
                    .map(|n| Out::Meta(format!("{n} bytes")))
            }),
            Op::Custom("listxattr with a 4-byte buffer", |r| {
                sys::llistxattr_len(&r.join("many"), 4).map(|n| Out::Meta(format!("{n} bytes")))
            }),
            Op::Custom("setxattr XATTR_CREATE on an existing name", |r| {
                sys::lsetxattr_flags(&r.join("many"), "user.n02", b"x", libc::XATTR_CREATE)
                    .map(|()| Out::Unit)
            }),
            Op::Custom("setxattr XATTR_REPLACE on a missing name", |r| {
                sys::lsetxattr_flags(&r.join("many"), "user.none", b"x", libc::XATTR_REPLACE)
                    .map(|()| Out::Unit)
            }),
            Op::GetXattr("many", "user.none"),
        ],
    );
}

/// O_TMPFILE in a lower directory, then linked into the tree.
#[test]
fn o_tmpfile() {
    differential(
        &base(),
        &[
            Op::Custom("O_TMPFILE in dlo, write, linkat to dlo/linked", |r| {
                use std::os::fd::AsRawFd;
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_TMPFILE)
                    .mode(0o640)
                    .open(r.join("dlo"))
                    .map_err(|e| errno_of(&e))?;
                std::io::Write::write_all(&mut &f, b"from a tmpfile").map_err(|e| errno_of(&e))?;
                let proc_path = format!("/proc/self/fd/{}", f.as_raw_fd());
                nix::unistd::linkat(
                    nix::fcntl::AT_FDCWD,
                    proc_path.as_str(),
                    nix::fcntl::AT_FDCWD,
                    &r.join("dlo/linked"),
                    nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                )?;
                Ok(Out::Unit)
            }),
            Op::Read("dlo/linked"),
            Op::List("dlo"),
        ],
    );
}

/// A directory of a few thousand entries across layers, with whiteouts.
#[test]
fn big_directory() {
    let layers = Layers::new()
        .lower(|l| (0..3000).fold(l.dir("big"), |l, i| l.file(format!("big/f{i:04}"), "")))
        .lower(|l| {
            (0..3000)
                .step_by(3)
                .fold(l.dir("big"), |l, i| l.whiteout(format!("big/f{i:04}")))
                .file("big/top", "t")
        })
        .upper(|u| (0..500).fold(u.dir("big"), |u, i| u.file(format!("big/u{i:03}"), "")));
    differential(
        &layers,
        &[
            Op::List("big"),
            Op::Stat("big/f0000"),
            Op::Stat("big/f0001"),
            Op::Unlink("big/f0001"),
            Op::Unlink("big/u000"),
            Op::Create("big/f0000", 0o644, b"back"),
            Op::List("big"),
        ],
    );
}

/// A POSIX ACL granting uid 1000 read access, as `system.posix_acl_access`
/// stores it: version 2, then (tag, perm, id) entries.
fn acl_bytes() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// POSIX ACLs survive copy-up and are honored for other users.
#[test]
fn posix_acls() {
    let acl = acl_bytes();
    let layers = Layers::new().lower(|l| {
        l.file("acl_file", "acl\n")
            .mode("acl_file", 0o640)
            .xattr("acl_file", "system.posix_acl_access", &acl)
            .file("acl_keep", "acl\n")
            .mode("acl_keep", 0o640)
            .xattr("acl_keep", "system.posix_acl_access", &acl)
            .dir("acl_dir")
            .xattr("acl_dir", "system.posix_acl_default", &acl)
    });
    differential(
        &layers,
        &[
            Op::Custom("user 1000: cat acl_keep (allowed by the ACL)", |r| {
                as_user(r, "cat acl_keep")
            }),
            Op::Append("acl_file", b"+"),
            Op::ListXattr("acl_file"),
            Op::Custom("user 1000: cat acl_file after copy-up", |r| {
                as_user(r, "cat acl_file")
            }),
            Op::Create("acl_dir/new", 0o666, b"inherits the default ACL"),
            Op::ListXattr("acl_dir/new"),
            Op::Stat("acl_dir/new"),
        ],
    );
}

/// No upper: a read-only stack of two lowers; every change is EROFS.
#[test]
fn read_only_stack() {
    differential(
        &base().read_only(),
        &[
            Op::List(""),
            Op::Read("sh"),
            Op::Create("new", 0o644, b"x"),
            Op::Write("lo", 0, b"x"),
            Op::Truncate("lo", 0),
            Op::Mkdir("newdir", 0o755),
            Op::Unlink("lo"),
            Op::Rmdir("op_t"),
            Op::Rename("lo", "lo2", NONE),
            Op::Link("lo", "lo2"),
            Op::Symlink("t", "sl"),
            Op::Chmod("lo", 0o600),
            Op::Chown("lo", 1, 1),
            Op::Utimes("lo", 1, 1),
            Op::SetXattr("lo", "user.x", b"x"),
            Op::RemoveXattr("xa", "user.one"),
            Op::ListXattr("xa"),
        ],
    );
}
