//! The mount program contract that podman, buildah and dockerd's
//! fuse-overlayfs driver rely on (issue 3, item 3), tested on the program
//! under test (`$STRATA_MOUNT`, default strata-mount).

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use strata_tests::mount::{
    escape_colon, is_mountpoint, mount_fstype, pids_with_arg, run_program_for, strata_program,
    wait_process_gone, Outcome, PROCESS_TIMEOUT,
};
use strata_tests::{Backend, Layers, Mounted};

/// Runs the program on `m` with this option string, from `cwd` (default:
/// the stack's root), and hands whatever it mounted to `m`'s guard.
fn run_on(m: &mut Mounted, opts: &str, cwd: Option<&Path>) -> Outcome {
    run_on_for(m, opts, cwd, PROCESS_TIMEOUT)
}

fn run_on_for(m: &mut Mounted, opts: &str, cwd: Option<&Path>, timeout: Duration) -> Outcome {
    let prog = strata_program();
    let args: Vec<OsString> = vec!["-o".into(), opts.into(), m.path().into()];
    let cwd = cwd.unwrap_or(m.root()).to_path_buf();
    let out = run_program_for(&prog, &args, &cwd, &m.root().join("prog.stderr"), timeout);
    let servers = pids_with_arg(m.path());
    m.adopt(Backend::Program(prog), servers);
    out
}

fn two_lowers() -> Layers {
    Layers::new()
        .lower(|l| {
            l.file("bottom", "bottom\n")
                .file("both", "from bottom\n")
                .file("d/x", "x\n")
                .dir("e")
        })
        .lower(|l| l.file("top", "top\n").file("both", "from top\n"))
}

fn assert_mounted_ok(m: &Mounted, out: &Outcome) {
    assert!(
        out.success(),
        "mount program failed: {:?}, stderr: {}",
        out.status,
        out.stderr.trim()
    );
    let parent = fs::metadata(m.root()).expect("stat parent").dev();
    let mnt =
        fs::metadata(m.path()).expect("stat of the mountpoint right after the program exited");
    assert_ne!(
        mnt.dev(),
        parent,
        "right after exit 0 the mountpoint must be a live mount (st_dev differs)"
    );
    assert!(is_mountpoint(m.path()), "not in mountinfo after exit 0");
    fs::read_dir(m.path()).expect("list the mount root");
}

#[test]
fn version_prints_a_line() {
    let out = Command::new(strata_program())
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .expect("run --version");
    assert!(
        out.status.success(),
        "--version exit status {:?}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("");
    assert!(
        !first.trim().is_empty(),
        "--version printed no line (stdout {text:?})"
    );
}

/// Exit 0 only once the mount is live; the program exits, a server stays;
/// after `fusermount3 -u` the server exits by itself.
#[test]
fn daemonizes_and_exits_after_fusermount_u() {
    let mut m = two_lowers().materialize(false);
    let opts = m.program_options();
    let out = run_on(&mut m, &opts, None);
    assert_mounted_ok(&m, &out);
    assert_eq!(
        mount_fstype(m.path()).map(|t| t.starts_with("fuse")),
        Some(true),
        "a FUSE mount"
    );
    let servers = pids_with_arg(m.path());
    assert!(
        !servers.is_empty(),
        "no server process left running (looked for {} in /proc/*/cmdline)",
        m.path().display()
    );
    assert!(
        !servers.contains(&out.pid),
        "the program itself must have exited"
    );
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(m.path())
        .status()
        .expect("fusermount3");
    assert!(st.success(), "fusermount3 -u failed");
    for pid in servers {
        assert!(
            wait_process_gone(pid, PROCESS_TIMEOUT),
            "server {pid} still runs {PROCESS_TIMEOUT:?} after fusermount3 -u"
        );
    }
    assert!(!is_mountpoint(m.path()));
}

/// Two lowers mounted by running the program; the mount and its servers.
fn two_lowers_by_program() -> (Mounted, Vec<i32>) {
    let mut m = two_lowers().materialize(false);
    let opts = m.program_options();
    let out = run_on(&mut m, &opts, None);
    assert_mounted_ok(&m, &out);
    let servers = pids_with_arg(m.path());
    assert!(!servers.is_empty(), "no server process");
    (m, servers)
}

/// After `umount2(MNT_DETACH)` (what podman does) the server exits too.
#[test]
fn exits_after_lazy_umount() {
    let (m, servers) = two_lowers_by_program();
    umount2(m.path(), MntFlags::MNT_DETACH).expect("umount2 MNT_DETACH");
    for pid in servers {
        assert!(
            wait_process_gone(pid, PROCESS_TIMEOUT),
            "server {pid} still runs after umount2(MNT_DETACH)"
        );
    }
}

/// SIGTERM, SIGINT or SIGHUP to the server unmounts cleanly and it exits.
#[test]
fn sigterm_unmounts() {
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        let (m, servers) = two_lowers_by_program();
        // Served by the forked server before the signal.
        assert_eq!(
            fs::read(m.path().join("both")).expect("read"),
            b"from top\n"
        );
        for &pid in &servers {
            kill(Pid::from_raw(pid), sig).expect("kill");
        }
        for pid in servers {
            assert!(
                wait_process_gone(pid, PROCESS_TIMEOUT),
                "server {pid} still runs after {sig}"
            );
        }
        assert!(
            !is_mountpoint(m.path()),
            "still mounted after the server exited on {sig}"
        );
    }
}

/// Two lowers and no upperdir: a read-only view; every write is EROFS.
#[test]
fn read_only_mount_without_upperdir() {
    let m = two_lowers().read_only().mount_strata();
    assert_eq!(fs::read(m.join("both")).expect("read"), b"from top\n");
    assert_eq!(fs::read(m.join("bottom")).expect("read"), b"bottom\n");
    let erofs = |what: &str, r: Result<(), Errno>| assert_eq!(r, Err(Errno::EROFS), "{what}");
    let io = |r: std::io::Result<()>| r.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)));
    erofs("create", io(fs::write(m.join("new"), "x")));
    erofs(
        "open for write",
        io(fs::OpenOptions::new()
            .write(true)
            .open(m.join("top"))
            .map(drop)),
    );
    erofs("mkdir", io(fs::create_dir(m.join("newdir"))));
    erofs("unlink", io(fs::remove_file(m.join("top"))));
    erofs("rmdir", io(fs::remove_dir(m.join("e"))));
    erofs("rename", io(fs::rename(m.join("top"), m.join("top2"))));
    erofs(
        "chmod",
        io(fs::set_permissions(
            m.join("top"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )),
    );
    erofs(
        "setxattr",
        strata_tests::sys::lsetxattr(&m.join("top"), "user.x", b"x"),
    );
    erofs("symlink", io(symlink("t", m.join("sl"))));
}

const PODMAN_EXTRA: &str =
    ",,volatile,fsync=0,noatime,nodev,context=\"system_u:object_r:container_file_t:s0\"";

/// podman's option string with uid/gid mappings. containers/storage writes
/// each mapping as `ContainerID:HostID:Size` (joined by `:`, hence the
/// leading colon podman 4.3 was seen passing): layer files hold container
/// ids and the mount shows host ids, so disk uid N shows as 100000+N, and a
/// chown to host id 100003 through the mount stores 3 on disk (what
/// fuse-overlayfs does, and what a container process running as host uid
/// 100000 needs to own its files).
#[test]
fn podman_options_with_id_mappings() {
    let layers = Layers::new()
        .lower(|l| {
            l.file("root_owned", "r\n")
                .file("owned57", "5\n")
                .owner("owned57", 5, 7)
        })
        .lower(|l| l.file("top", "t\n"));
    let mut m = layers.materialize(false);
    let opts = format!(
        "{}{PODMAN_EXTRA},uidmapping=:0:100000:65536,gidmapping=:0:100000:65536",
        m.program_options()
    );
    let out = run_on(&mut m, &opts, None);
    assert_mounted_ok(&m, &out);
    let owner = |p: &Path| {
        let md = fs::symlink_metadata(p).expect("lstat");
        (md.uid(), md.gid())
    };
    assert_eq!(
        owner(&m.join("root_owned")),
        (100_000, 100_000),
        "disk 0:0 shows as host 100000:100000"
    );
    assert_eq!(
        owner(&m.join("owned57")),
        (100_005, 100_007),
        "disk 5:7 shows as host 100005:100007"
    );
    assert_eq!(owner(&m.join("top")), (100_000, 100_000));
    fs::write(m.join("new"), "n").expect("write through a podman-style mount");
    nix::unistd::chown(
        &m.join("new"),
        Some(nix::unistd::Uid::from_raw(100_003)),
        Some(nix::unistd::Gid::from_raw(100_004)),
    )
    .expect("chown through the mount");
    assert_eq!(
        owner(&m.join("new")),
        (100_003, 100_004),
        "owner seen through the mount"
    );
    m.unmount();
    assert_eq!(
        owner(&m.upper().join("new")),
        (3, 4),
        "owner stored in the upper layer"
    );
}

#[test]
fn podman_options_plain() {
    let mut m = two_lowers().materialize(false);
    let opts = format!("{}{PODMAN_EXTRA}", m.program_options());
    let out = run_on(&mut m, &opts, None);
    assert_mounted_ok(&m, &out);
    fs::write(m.join("new"), "n").expect("write");
    assert_eq!(fs::read(m.upper().join("new")).expect("upper"), b"n");
}

#[test]
fn squash_options_accepted() {
    let mut m = two_lowers().materialize(false);
    let opts = format!(
        "{},squash_to_uid=1000,squash_to_gid=1001",
        m.program_options()
    );
    let out = run_on(&mut m, &opts, None);
    assert_mounted_ok(&m, &out);
    let md = fs::symlink_metadata(m.join("top")).expect("lstat");
    assert_eq!(
        (md.uid(), md.gid()),
        (1000, 1001),
        "squash_to_uid/gid change the owners users see"
    );
}

#[test]
fn squash_to_root_accepted() {
    let layers = Layers::new()
        .lower(|l| l.file("owned", "o\n").owner("owned", 1000, 1000))
        .lower(|l| l.file("top", "t\n"));
    let mut m = layers.materialize(false);
    let opts = format!("{},squash_to_root", m.program_options());
    let out = run_on(&mut m, &opts, None);
    assert_mounted_ok(&m, &out);
    let md = fs::symlink_metadata(m.join("owned")).expect("lstat");
    assert_eq!(
        (md.uid(), md.gid()),
        (0, 0),
        "squash_to_root shows every owner as root"
    );
}

#[test]
fn unknown_options_do_not_fail() {
    let mut m = two_lowers().materialize(false);
    let opts = format!(
        "{},strata_no_such_option=1,another_unknown,,",
        m.program_options()
    );
    let out = run_on(&mut m, &opts, None);
    assert_mounted_ok(&m, &out);
}

/// `\:` escapes a colon inside a lowerdir path.
#[test]
fn escaped_colon_in_lowerdir() {
    let mut m = two_lowers().materialize(false);
    let colon = m.root().join("with:colon");
    fs::create_dir(&colon).expect("mkdir");
    fs::write(colon.join("from_colon_dir"), "c\n").expect("write");
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        escape_colon(&colon.to_string_lossy()),
        escape_colon(&m.lowers()[0].to_string_lossy()),
        m.upper().display(),
        m.work().display()
    );
    let out = run_on(&mut m, &opts, None);
    assert_mounted_ok(&m, &out);
    assert_eq!(
        fs::read(m.join("from_colon_dir")).expect("read from the lower with a colon"),
        b"c\n"
    );
}

/// podman runs the program with cwd at the storage root and may pass
/// relative layer paths.
#[test]
fn relative_paths_from_cwd() {
    let mut m = two_lowers().materialize(false);
    let opts = "lowerdir=l/0:l/1,upperdir=u,workdir=w".to_string();
    let root = m.root().to_path_buf();
    let out = run_on(&mut m, &opts, Some(&root));
    assert_mounted_ok(&m, &out);
    fs::write(m.join("new"), "n").expect("write");
    assert_eq!(fs::read(m.upper().join("new")).expect("upper"), b"n");
}

/// lowerdir entries may be symlinks to the layer directories (podman's
/// `l/` short names).
#[test]
fn symlinked_lowerdir_entries() {
    let mut m = two_lowers().materialize(false);
    let links = m.root().join("links");
    fs::create_dir(&links).expect("mkdir");
    symlink(&m.lowers()[0], links.join("A")).expect("symlink");
    symlink("../l/1", links.join("B")).expect("symlink");
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        links.join("A").display(),
        links.join("B").display(),
        m.upper().display(),
        m.work().display()
    );
    let out = run_on(&mut m, &opts, None);
    assert_mounted_ok(&m, &out);
    assert_eq!(fs::read(m.join("bottom")).expect("read"), b"bottom\n");
}

/// All of stdin, stdout and stderr on /dev/null.
#[test]
fn all_stdio_on_dev_null() {
    let mut m = two_lowers().materialize(false);
    let prog = strata_program();
    let mut child = Command::new(&prog)
        .arg("-o")
        .arg(m.program_options())
        .arg(m.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let status = (0..PROCESS_TIMEOUT.as_millis() / 10)
        .find_map(|_| {
            let s = child.try_wait().expect("wait");
            if s.is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
            s
        })
        .unwrap_or_else(|| {
            let _ = child.kill();
            child.wait().expect("wait")
        });
    m.adopt(Backend::Program(prog), pids_with_arg(m.path()));
    assert!(status.success(), "status {status:?}");
    assert!(is_mountpoint(m.path()));
    assert_eq!(fs::read(m.join("top")).expect("read"), b"top\n");
}

fn assert_refused(m: &mut Mounted, opts: &str, what: &str) {
    let out = run_on_for(m, opts, None, Duration::from_secs(20));
    let servers = pids_with_arg(m.path());
    let mounted = is_mountpoint(m.path());
    if out.status.is_none() || mounted {
        // A hung server: kill it first so cleanup cannot block on it.
        for &pid in &servers {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = umount2(m.path(), MntFlags::MNT_DETACH);
    }
    assert!(
        out.status.is_some(),
        "{what}: the program hung (killed after 20 s)"
    );
    assert!(
        !out.success(),
        "{what}: must be refused with a non-zero exit"
    );
    assert!(!mounted, "{what}: refused, yet something is mounted");
    assert!(
        servers.is_empty(),
        "{what}: a server process was left running: {servers:?}"
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: one line on stderr, got {:?}",
        out.stderr
    );
}

/// A lower or upper that is the mountpoint or inside it is refused (it
/// hangs fuse-overlayfs) with a one-line reason, and nothing is mounted.
#[test]
fn layer_inside_mountpoint_is_refused() {
    for case in ["lower is mnt", "lower inside mnt", "upper inside mnt"] {
        let mut m = two_lowers().materialize(false);
        let inside = m.path().join("inside");
        fs::create_dir(&inside).expect("mkdir inside the mountpoint");
        let mnt = m.path().display().to_string();
        let (l0, u, w) = (
            m.lowers()[0].display().to_string(),
            m.upper().display().to_string(),
            m.work().display().to_string(),
        );
        let opts = match case {
            "lower is mnt" => format!("lowerdir={mnt}:{l0},upperdir={u},workdir={w}"),
            "lower inside mnt" => format!(
                "lowerdir={l0}:{},upperdir={u},workdir={w}",
                inside.display()
            ),
            _ => format!("lowerdir={l0},upperdir={},workdir={w}", inside.display()),
        };
        assert_refused(&mut m, &opts, case);
    }
}

/// Runs the program with `opts` on the mountpoint `mnt` (not `m`'s), at
/// most 20 s; whatever it mounted is killed and detached at once. Returns
/// the outcome and whether `mnt` was mounted.
fn run_at(m: &Mounted, opts: &str, mnt: &Path) -> (Outcome, bool) {
    let prog = strata_program();
    let args: Vec<OsString> = vec!["-o".into(), opts.into(), mnt.into()];
    let out = run_program_for(
        &prog,
        &args,
        m.root(),
        &m.root().join("second.stderr"),
        Duration::from_secs(20),
    );
    let mounted = is_mountpoint(mnt);
    for pid in pids_with_arg(mnt) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    if mounted {
        let _ = umount2(mnt, MntFlags::MNT_DETACH);
    }
    (out, mounted)
}

/// Asserts that a run of [`run_at`] was refused: exited non-zero, nothing
/// mounted, one line on stderr that contains `reason`.
fn assert_refused_with(what: &str, (out, mounted): (Outcome, bool), reason: &str) {
    assert!(
        out.status.is_some(),
        "{what}: the program hung (killed after 20 s)"
    );
    assert!(
        !out.success(),
        "{what}: must be refused with a non-zero exit"
    );
    assert!(!mounted, "{what}: refused, yet something is mounted");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        lines.len() == 1 && lines[0].contains(reason),
        "{what}: one line on stderr saying {reason:?}, got {:?}",
        out.stderr
    );
}

/// Issue 15: a mountpoint inside one of its own layers (lower, upper or
/// workdir) was accepted, and the first listing of the mount hung (the
/// server looked itself up through the layer). Refused at mount time.
#[test]
fn mountpoint_inside_a_layer_is_refused() {
    let m = two_lowers().materialize(false);
    let (l0, l1, u, w) = (
        m.lowers()[0].clone(),
        m.lowers()[1].clone(),
        m.upper().to_path_buf(),
        m.work().to_path_buf(),
    );
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        l0.display(),
        l1.display(),
        u.display(),
        w.display()
    );
    for (what, inside) in [
        ("mountpoint inside the top lower", l0.join("mnt")),
        ("mountpoint deep inside the bottom lower", l1.join("e/mnt")),
        ("mountpoint inside the upper", u.join("mnt")),
        ("mountpoint inside the workdir", w.join("mnt")),
    ] {
        fs::create_dir_all(&inside).expect("mkdir the mountpoint");
        assert_refused_with(what, run_at(&m, &opts, &inside), "inside");
        fs::remove_dir(&inside).expect("rmdir the mountpoint");
    }
}

/// Issue 15: two live mounts sharing an upper or a work directory corrupt
/// each other (each empties the other's work directory, each caches the
/// upper); the kernel refuses the second ("upperdir is in-use"). The first
/// mount's forked server holds the lock for the mount's life (the program
/// that mounted has exited), and releases it when it exits: the same
/// directories mount again after an unmount.
#[test]
fn second_mount_sharing_upper_or_work_is_refused() {
    let (mut m, servers) = two_lowers_by_program();
    let (u, w) = (m.upper().to_path_buf(), m.work().to_path_buf());
    let (u2, w2, mnt2) = (
        m.root().join("u2"),
        m.root().join("w2"),
        m.root().join("m2"),
    );
    for d in [&u2, &w2, &mnt2] {
        fs::create_dir(d).expect("mkdir");
    }
    let lowers = format!("lowerdir={}", m.lowers()[1].display());
    for (what, upper, work, reason) in [
        ("same upper and work", &u, &w, "upperdir"),
        ("same upper, another work", &u, &w2, "upperdir"),
        ("another upper, same work", &u2, &w, "workdir"),
        ("work is the first mount's upper", &u2, &u, "workdir"),
    ] {
        let opts = format!(
            "{lowers},upperdir={},workdir={}",
            upper.display(),
            work.display()
        );
        assert_refused_with(what, run_at(&m, &opts, &mnt2), reason);
    }
    fs::write(m.join("still_served"), "yes\n").expect("the first mount still works");
    m.unmount();
    for pid in servers {
        assert!(
            wait_process_gone(pid, PROCESS_TIMEOUT),
            "server {pid} after unmount"
        );
    }
    let opts = format!("{lowers},upperdir={},workdir={}", u.display(), w.display());
    let (out, mounted) = run_at(&m, &opts, &mnt2);
    assert!(
        out.success() && mounted,
        "the same upper and work again after the first mount ended: {:?} {}",
        out.status,
        out.stderr.trim()
    );
}

/// Issue 15: `\,` escapes a comma in layer paths, as in the kernel and
/// fuse-overlayfs. strata-mount's own look for the `debug` option split
/// the `-o` string on every comma, so a path such as `x\,debug` made the
/// program stay in the foreground (the caller hung).
#[test]
fn escaped_comma_in_layer_paths() {
    let mut m = two_lowers().materialize(false);
    let esc = |p: &Path| escape_colon(&p.to_string_lossy()).replace(',', "\\,");
    let (a, b, u, w) = (
        m.root().join("x,debug"),
        m.root().join("y:z,w"),
        m.root().join("u,1"),
        m.root().join("w,1"),
    );
    for d in [&a, &b, &u, &w] {
        fs::create_dir(d).expect("mkdir");
    }
    fs::write(a.join("from_a"), "a\n").expect("write");
    fs::write(b.join("from_b"), "b\n").expect("write");
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        esc(&b),
        esc(&a),
        esc(&u),
        esc(&w)
    );
    let out = run_on_for(&mut m, &opts, None, Duration::from_secs(20));
    assert_mounted_ok(&m, &out);
    assert_eq!(
        fs::read(m.join("from_a")).expect("read from x,debug"),
        b"a\n"
    );
    assert_eq!(fs::read(m.join("from_b")).expect("read from y:z,w"), b"b\n");
    fs::write(m.join("new"), "n").expect("write");
    assert_eq!(fs::read(u.join("new")).expect("in the upper u,1"), b"n");
}

/// Issue 15: the server must be gone soon after the mount is unmounted,
/// also right after `ls -l` and `rm -rf` of a directory with 5000 entries
/// (thousands of nodes, whiteouts and a cached directory to let go). A liveness check, not a timing assert: the server must exit, polled
/// for at most 5 s; the time it took is printed.
#[test]
fn server_exits_after_unmount_following_big_directories() {
    const N: usize = 5000;
    let mut m = Layers::new().lower(|l| l.dir("big")).materialize(false);
    for i in 0..N {
        fs::write(m.lowers()[0].join(format!("big/f{i:05}")), "x").expect("write");
    }
    m.mount_again(Backend::strata(), false);
    let servers = m.servers().to_vec();
    assert!(!servers.is_empty(), "no server process");
    let out = Command::new("ls")
        .arg("-l")
        .arg(m.join("big"))
        .stdout(Stdio::null())
        .status()
        .expect("ls");
    assert!(out.success(), "ls -l");
    let out = Command::new("rm")
        .arg("-rf")
        .arg(m.join("big"))
        .status()
        .expect("rm -rf");
    assert!(out.success(), "rm -rf");
    let start = std::time::Instant::now();
    umount2(m.path(), MntFlags::MNT_DETACH).expect("umount2 MNT_DETACH");
    for &pid in &servers {
        assert!(
            wait_process_gone(pid, Duration::from_secs(5)),
            "server {pid} still runs 5 s after the unmount"
        );
    }
    eprintln!("the server exited {:?} after the unmount", start.elapsed());
}

/// A missing lower directory: non-zero exit, one line on stderr, nothing
/// mounted, no server left.
#[test]
fn missing_lowerdir_fails_cleanly() {
    let mut m = two_lowers().materialize(false);
    let opts = format!(
        "lowerdir={}/nonexistent,upperdir={},workdir={}",
        m.root().display(),
        m.upper().display(),
        m.work().display()
    );
    assert_refused(&mut m, &opts, "missing lowerdir");
}

/// Mounting the same upper and work directories again after an unmount
/// shows what was written before.
#[test]
fn remount_same_upper_after_unmount() {
    let mut m = two_lowers().mount_strata();
    fs::write(m.join("new"), "persisted\n").expect("write");
    m.unmount();
    m.mount_again(Backend::strata(), false);
    assert_eq!(
        fs::read(m.join("new")).expect("read after remount"),
        b"persisted\n"
    );
}

/// Polls until every thread of `pid` is stopped (state `T`), at most
/// `timeout`; returns whether they all are.
fn all_threads_stopped(pid: i32, timeout: Duration) -> bool {
    let start = std::time::Instant::now();
    loop {
        let stopped = fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().all(|t| {
                    fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                        st.rsplit(')')
                            .next()
                            .and_then(|r| r.split_whitespace().next())
                            == Some("T")
                    })
                })
            })
            .unwrap_or(false);
        if stopped {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The harness's hang guard: a server that stops answering is killed by
/// the mount's watchdog, so the blocked call fails instead of hanging the
/// suite.
#[test]
fn harness_watchdog_unblocks_a_hung_server() {
    let mut m = two_lowers().mount_strata();
    let servers = m.servers().to_vec();
    assert!(!servers.is_empty(), "no server process");
    m.set_hang_timeout(Duration::from_secs(2));
    for &pid in &servers {
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP the server");
    }
    // kill(2) returns before every thread has stopped: a worker still
    // running on a busy machine could answer the call below.
    for &pid in &servers {
        assert!(
            all_threads_stopped(pid, PROCESS_TIMEOUT),
            "server {pid} did not stop on SIGSTOP"
        );
    }
    let r = fs::read(m.join("never_looked_up"));
    let errno = r.as_ref().err().and_then(|e| e.raw_os_error());
    assert!(
        matches!(errno, Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)),
        "a call into a hung server after the watchdog fired: {r:?}"
    );
}

/// `noxattrs=1` (fuse-overlayfs's option): every xattr call fails with
/// EOPNOTSUPP, while the files themselves work; a lower file's xattrs still
/// travel with its copy-up into the upper layer.
#[test]
fn noxattrs_turns_extended_attributes_off() {
    use strata_tests::sys::{lgetxattr, llistxattr, lremovexattr, lsetxattr};
    let layers = Layers::new().lower(|l| l.file("f", "f\n").xattr("f", "user.k", b"v"));
    let mut m = layers.materialize(false);
    m.set_extra_options(Some("noxattrs=1"));
    m.mount_again(Backend::strata(), false);
    let f = m.join("f");
    assert_eq!(lsetxattr(&f, "user.k", b"w"), Err(Errno::EOPNOTSUPP));
    assert_eq!(lgetxattr(&f, "user.k"), Err(Errno::EOPNOTSUPP));
    assert_eq!(llistxattr(&f).map(|_| ()), Err(Errno::EOPNOTSUPP));
    assert_eq!(lremovexattr(&f, "user.k"), Err(Errno::EOPNOTSUPP));
    fs::write(&f, "changed\n").expect("write");
    assert_eq!(fs::read(&f).expect("read"), b"changed\n");
    assert_eq!(
        strata_tests::sys::lgetxattr(&m.upper().join("f"), "user.k"),
        Ok(b"v".to_vec()),
        "the copy-up carries the lower file's xattr"
    );
}

/// Runs `args` as the unprivileged user 65534 in `dir`.
fn as_nobody(dir: &Path, args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv")
}

/// A user without the right to mount: the setuid fusermount3 mounts for
/// strata-mount (whose stderr, a pipe here, must still reach EOF), the user
/// works in the mount, and both `fusermount3 -u` and SIGTERM unmount it.
#[test]
fn unprivileged_user_mounts_through_fusermount3() {
    let _open = strata_tests::sys::DevicesOpen::fuse();
    let root = strata_tests::mount::temp_root();
    let dir = root.path();
    for d in ["lower", "upper", "work", "merged"] {
        fs::create_dir(dir.join(d)).expect("mkdir");
    }
    fs::write(dir.join("lower/a"), "a\n").expect("write");
    fs::write(dir.join("lower/b"), "b\n").expect("write");
    Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(dir)
        .status()
        .expect("chown");
    let prog = strata_program();
    let mnt = dir.join("merged");
    let mount = || {
        let out = as_nobody(
            dir,
            &[
                prog.as_os_str(),
                "-o".as_ref(),
                "lowerdir=lower,upperdir=upper,workdir=work".as_ref(),
                "merged".as_ref(),
            ],
        );
        assert!(
            out.status.success() && is_mountpoint(&mnt),
            "mount as nobody: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Other mounts may have a "merged" argument too (another test run on
        // this machine): only the servers working in this test's directory.
        let servers: Vec<i32> = pids_with_arg(Path::new("merged"))
            .into_iter()
            .filter(|pid| fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir))
            .collect();
        assert!(!servers.is_empty(), "no server");
        servers
    };
    let servers = mount();
    let sh = |script: &str| as_nobody(dir, &["sh".as_ref(), "-c".as_ref(), script.as_ref()]);
    let out = sh("cat merged/a && rm merged/b && echo new > merged/c && ls merged");
    let listing = String::from_utf8_lossy(&out.stdout);
    let cleanup = |servers: &[i32]| {
        let _ = umount2(&mnt, MntFlags::MNT_DETACH);
        for &pid in servers {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    };
    if !out.status.success() || listing != "a\na\nc\n" {
        cleanup(&servers);
        panic!(
            "work as nobody: {listing:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(fs::read(dir.join("upper/c")).expect("upper/c"), b"new\n");
    let out = sh("fusermount3 -u merged");
    assert!(
        out.status.success(),
        "fusermount3 -u: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for &pid in &servers {
        assert!(
            wait_process_gone(pid, PROCESS_TIMEOUT),
            "server {pid} after fusermount3 -u"
        );
    }
    let servers = mount();
    for &pid in &servers {
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
    }
    for &pid in &servers {
        if !wait_process_gone(pid, PROCESS_TIMEOUT) {
            cleanup(&servers);
            panic!("server {pid} still runs after SIGTERM");
        }
    }
    let deadline = std::time::Instant::now() + PROCESS_TIMEOUT;
    while is_mountpoint(&mnt) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_mountpoint(&mnt) {
        cleanup(&servers);
        panic!("still mounted after SIGTERM");
    }
}

/// Unmounts a test's own filesystem on drop.
struct FsGuard(std::path::PathBuf);

impl Drop for FsGuard {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

/// An upper filesystem in which nothing can be created (here a read-only
/// tmpfs) is refused at mount with a one-line reason, never accepted and
/// then failing on the first change.
#[test]
fn an_upper_that_accepts_nothing_is_refused_at_mount() {
    let mut m = two_lowers().materialize(false);
    let ro = m.root().join("ro");
    fs::create_dir(&ro).expect("mkdir ro");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&ro)
        .status()
        .expect("run mount")
        .success();
    assert!(ok, "mount a tmpfs");
    let _guard = FsGuard(ro.clone());
    for d in ["upper", "work/work"] {
        fs::create_dir_all(ro.join(d)).expect("mkdir on the tmpfs");
    }
    let ok = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&ro)
        .status()
        .expect("run mount")
        .success();
    assert!(ok, "remount the tmpfs read-only");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        m.lowers()[0].display(),
        ro.join("upper").display(),
        ro.join("work").display()
    );
    assert_refused(&mut m, &opts, "read-only upper");
}

/// A tmpfs mounted at `dir` holding the file `f`, unmounted on drop.
fn tmpfs_lower(dir: &Path) -> FsGuard {
    fs::create_dir_all(dir).expect("mkdir the lower's mountpoint");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(dir)
        .status()
        .expect("run mount")
        .success();
    assert!(ok, "mount a tmpfs at {}", dir.display());
    fs::write(dir.join("f"), "lower\n").expect("write on the tmpfs");
    FsGuard(dir.to_path_buf())
}

/// Regression: right after `umount` of a strata mount returned, its server
/// still held the layer directories open for a few milliseconds, so
/// unmounting the lower filesystem at once failed with EBUSY (2 in 100
/// cycles on a debug build; fuse-overlayfs 0). The layers are opened on
/// detached copies of their mounts, as the kernel's overlayfs holds them.
#[test]
fn the_lower_filesystem_unmounts_right_after_the_union() {
    for cycle in 0..20 {
        let mut m = two_lowers().materialize(false);
        let lower = m.root().join("lt");
        let guard = tmpfs_lower(&lower);
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            m.upper().display(),
            m.work().display()
        );
        let out = run_on(&mut m, &opts, None);
        assert_mounted_ok(&m, &out);
        assert_eq!(fs::read(m.join("f")).expect("read f"), b"lower\n");
        umount2(m.path(), MntFlags::empty()).expect("umount the union");
        let lower_gone = umount2(&lower, MntFlags::empty());
        assert_eq!(
            lower_gone,
            Ok(()),
            "cycle {cycle}: umount of the lower tmpfs right after the union's umount returned \
             (the server still held the lower busy)"
        );
        drop(guard);
    }
}

/// A lower filesystem can be unmounted while the union over it is mounted,
/// and the union still reads it, as with the kernel's overlayfs (which
/// holds private copies of its layers' mounts): the server's fds hold the
/// filesystem, not the mount.
#[test]
fn a_lower_filesystem_unmounts_while_the_union_is_live() {
    for backend in [Backend::Kernel, Backend::strata()] {
        let mut m = Layers::new()
            .lower(|l| l.file("a", "a\n"))
            .materialize(false);
        // `l/1`: the kernel's mount names its lowers relative to `l`.
        let lower = m.root().join("l/1");
        let _guard = tmpfs_lower(&lower);
        m.push_lower(&lower);
        m.mount_again(backend.clone(), false);
        assert_eq!(fs::read(m.join("f")).expect("read f"), b"lower\n");
        let lower_gone = umount2(&lower, MntFlags::empty());
        assert_eq!(
            lower_gone,
            Ok(()),
            "{}: umount of a live union's lower",
            backend.name()
        );
        assert_eq!(
            fs::read(m.join("f")).expect("read f after the lower's umount"),
            b"lower\n",
            "{}",
            backend.name()
        );
        m.unmount();
    }
}

/// The same for the upper's filesystem: upper and work directories are
/// held on one private copy of their mount, so it unmounts while the union
/// is live, and the union still writes to it.
#[test]
fn the_upper_filesystem_unmounts_while_the_union_is_live() {
    let mut m = two_lowers().materialize(false);
    let ut = m.root().join("ut");
    let _guard = tmpfs_lower(&ut);
    for d in ["u", "w"] {
        fs::create_dir(ut.join(d)).expect("mkdir on the tmpfs");
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        m.lowers()[1].display(),
        ut.join("u").display(),
        ut.join("w").display()
    );
    let out = run_on(&mut m, &opts, None);
    assert_mounted_ok(&m, &out);
    fs::write(m.join("new"), "new\n").expect("write through the union");
    assert_eq!(
        umount2(&ut, MntFlags::empty()),
        Ok(()),
        "umount of a live union's upper filesystem"
    );
    fs::write(m.join("d/x"), "changed\n").expect("copy-up after the upper's umount");
    assert_eq!(fs::read(m.join("new")).expect("read new"), b"new\n");
    assert_eq!(fs::read(m.join("d/x")).expect("read d/x"), b"changed\n");
    m.unmount();
}
