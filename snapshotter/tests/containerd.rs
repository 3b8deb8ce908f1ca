//! strata-snapshotter under Debian's containerd (1.6): pull from a loopback
//! registry, run containers, `ctr snapshots` commands, the snapshotter
//! killed with SIGKILL mid-pull and while containers run, and the same
//! flows with containerd's own overlayfs snapshotter as the control. Each
//! test starts its own containerd, registry and snapshotter (tests/support).

mod support;

use std::os::unix::fs::FileTypeExt;

use support::{have_containerd_tools, temp_dir, wait_for, Containerd, Registry, Snapshotter};

/// The two-layer fixture: its second layer adds /root/file ("data"),
/// deletes /bin/vi (a `.wh.vi` whiteout) and makes /opt/d.
const IMAGE: &str = "busybox-c1";

/// Fields drop in order: containerd, the snapshotter and the registry
/// stop before their directory is removed.
struct Env {
    containerd: Containerd,
    snapshotter: Snapshotter,
    _registry: Registry,
    image: String,
    _dir: tempfile::TempDir,
}

fn env(ns: &str) -> Option<Env> {
    if !have_containerd_tools() {
        return None;
    }
    let dir = temp_dir();
    let registry = Registry::start(dir.path());
    let image = registry.push_fixture(IMAGE);
    let snapshotter = Snapshotter::start(dir.path());
    let containerd = Containerd::start(dir.path(), &snapshotter.socket, ns);
    Some(Env {
        _dir: dir,
        _registry: registry,
        snapshotter,
        containerd,
        image,
    })
}

fn pull(e: &Env, sn: &str) {
    e.containerd
        .ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            sn,
            &e.image,
        ])
        .ok();
}

/// The flows every snapshotter must pass: pull, run (output, exit code),
/// eight containers at once, and `ctr snapshots` commands.
fn flows(e: &Env, sn: &str) {
    let c = &e.containerd;
    pull(e, sn);

    // ctr snapshots first: containerd's garbage collector, which runs
    // after deletions (of containers, say), takes views (ctr makes them
    // without a gc.root label). Prepare on the image's top layer, write
    // through the mount ctr prints, commit, view, info, usage, label,
    // tree, rm.
    let top = top_layer(c, sn);
    c.snapshots(sn, &["prepare", "work", &top]).ok();
    let mnt = e._dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cmd = c
        .snapshots(sn, &["mounts", mnt.to_str().unwrap(), "work"])
        .ok();
    if sn == "strata" {
        assert!(
            cmd.starts_with("mount -t fuse3.strata-mount overlay "),
            "{cmd}"
        );
    }
    mount_like_containerd(c, &cmd);
    std::fs::write(mnt.join("added"), vec![1u8; 1 << 20]).unwrap();
    assert_eq!(
        std::fs::read_to_string(mnt.join("root/file")).unwrap(),
        "data\n"
    );
    std::fs::remove_file(mnt.join("root/file")).unwrap();
    sh(c, &format!("umount {}", mnt.display()));
    let usage = c.snapshots(sn, &["usage", "work"]).ok();
    assert!(usage.contains("MiB"), "1 MiB written, usage says {usage}");
    c.snapshots(sn, &["label", "work", "containerd.io/snapshot/test=yes"])
        .ok();
    c.snapshots(sn, &["commit", "done", "work"]).ok();
    let info = c.snapshots(sn, &["info", "done"]).ok();
    assert!(
        info.contains("\"Kind\": \"Committed\"") && info.contains(&top),
        "{info}"
    );
    view_kept(c, sn, "look", "done");
    let cmd = c
        .snapshots(sn, &["mounts", mnt.to_str().unwrap(), "look"])
        .ok();
    mount_like_containerd(c, &cmd);
    let seen = (
        std::fs::metadata(mnt.join("added")).map(|m| m.len()).ok(),
        mnt.join("root/file").exists(),
        std::fs::write(mnt.join("x"), b"x").is_err(),
    );
    sh(c, &format!("umount {}", mnt.display()));
    assert_eq!(
        seen,
        (Some(1 << 20), false, true),
        "(size of added, root/file exists, view is read-only)"
    );
    let tree = c.snapshots(sn, &["tree"]).ok();
    assert!(tree.contains("done") && tree.contains("look"), "{tree}");
    let r = c.snapshots(sn, &["rm", "done"]);
    assert_ne!(r.code, 0, "removed a snapshot that has a view on it");
    c.snapshots(sn, &["rm", "look"]).ok();
    c.snapshots(sn, &["rm", "done"]).ok();
    let ls = c.snapshots(sn, &["ls"]).ok();
    assert!(!ls.contains("done") && !ls.contains("work"), "{ls}");

    // Output and exit code; the second layer's file and whiteout.
    let r = c.ctr(&[
        "run", "--rm", "--snapshotter", sn, &e.image, "one",
        "sh", "-c", "cat /root/file; test -e /bin/vi || echo vi-gone; test -d /opt/d && echo d; echo out > /new; cat /new; exit 7",
    ]);
    assert_eq!(r.code, 7, "ctr run: {}\n{}", r.stderr, r.stdout);
    assert_eq!(r.stdout, "data\nvi-gone\nd\nout\n");
    let r = c.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        sn,
        &e.image,
        "two",
        "ls",
        "/new",
    ]);
    assert_ne!(r.code, 0, "a container saw another's file: {}", r.stdout);

    // Eight containers at once, each writing, then waiting (on a barrier
    // directory shared with the host) until all have written before
    // looking: each must see only its own writes.
    let sync = e._dir.path().join("sync");
    std::fs::create_dir(&sync).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/sync,options=rbind:rw",
        sync.display()
    );
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (mount, image, sock, ns, path) = (
                mount.clone(),
                e.image.clone(),
                c.socket.clone(),
                c.namespace.clone(),
                c.mount.path_env(),
            );
            let sn = sn.to_string();
            std::thread::spawn(move || {
                let script = format!(
                    "echo {i} > /own; echo {i} >> /root/file; touch /mark{i}; touch /sync/{i}; \
                     n=0; while [ $(ls /sync | wc -l) -lt 8 ]; do n=$((n+1)); [ $n -gt 1200 ] && exit 99; sleep 0.05; done; \
                     cat /own; cat /root/file; ls -d /mark*"
                );
                let o = std::process::Command::new("ctr")
                    .arg("--address").arg(&sock).args(["-n", &ns])
                    .args(["run", "--rm", "--snapshotter", &sn, "--mount", &mount, &image, &format!("many{i}"), "sh", "-c", &script])
                    .env("PATH", path)
                    .output()
                    .unwrap();
                (i, o)
            })
        })
        .collect();
    for h in handles {
        let (i, o) = h.join().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "container {i}: {}\n{out}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(out, format!("{i}\ndata\n{i}\n/mark{i}\n"), "container {i}");
    }
}

/// `ctr snapshots view KEY PARENT`, then a `containerd.io/gc.root` label so
/// that containerd's garbage collector keeps it: ctr makes views without
/// one, and a collection scheduled by an earlier deletion (or commit) may
/// take the view before it is labelled; then it is made again.
fn view_kept(c: &Containerd, sn: &str, key: &str, parent: &str) {
    for _ in 0..5 {
        c.snapshots(sn, &["view", key, parent]).ok();
        if c.snapshots(sn, &["label", key, "containerd.io/gc.root=test"])
            .code
            == 0
        {
            return;
        }
    }
    panic!("the view {key} was collected five times in a row");
}

/// The key of the image's top layer (the committed snapshot with a parent).
fn top_layer(c: &Containerd, sn: &str) -> String {
    let ls = c.snapshots(sn, &["ls"]).ok();
    ls.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 3 && f[2] == "Committed")
        .map(|f| f[0].to_string())
        .unwrap_or_else(|| panic!("no layer with a parent in:\n{ls}"))
}

/// Performs the mount `ctr snapshots mounts` prints (`mount -t TYPE SOURCE
/// TARGET -o OPTIONS`) as containerd does: a `fuse3.X` type through
/// `mount.fuse3 SOURCE TARGET -o OPTIONS -t X` (mount(8) would pass the
/// whole type on, which mount.fuse3 does not strip), others with mount(8).
fn mount_like_containerd(c: &Containerd, cmd: &str) {
    let w: Vec<&str> = cmd.split_whitespace().collect();
    match w.as_slice() {
        ["mount", "-t", ty, source, target, "-o", opts] if ty.starts_with("fuse3.") => sh(
            c,
            &format!(
                "mount.fuse3 {source} {target} -o {opts} -t {}",
                &ty["fuse3.".len()..]
            ),
        ),
        _ => sh(c, cmd),
    }
}

fn sh(c: &Containerd, cmd: &str) {
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("PATH", c.mount.path_env())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn strata_pull_run_many_and_snapshot_commands() {
    let Some(e) = env("strata-flows") else { return };
    flows(&e, "strata");
    let calls = e.containerd.mount.calls();
    // Unpacking did not go through FUSE: the first mount containerd asked
    // strata-mount for was a container's (or ctr's) root, never an
    // unpack, and every one came in the mount-helper form.
    assert!(!calls.is_empty(), "containers ran without strata-mount");
    // 11 containers and 2 `ctr snapshots` mounts; containerd 1.6's shim
    // mounts again after an ECHILD from its reaper (see the README).
    println!("{} mounts through strata-mount", calls.len());
    for call in &calls {
        assert!(
            call.starts_with("overlay /") && call.contains(" -o lowerdir="),
            "{call}"
        );
    }
    // The whiteout of the second layer was written by containerd's applier
    // straight into the upper directory, in overlay form.
    let root = e.snapshotter.root.join("snapshots");
    let whiteouts: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|d| std::fs::symlink_metadata(d.unwrap().path().join("fs/bin/vi")).ok())
        .filter(|m| m.file_type().is_char_device())
        .collect();
    assert_eq!(
        whiteouts.len(),
        1,
        "expected one overlay whiteout for bin/vi"
    );
    assert!(
        e.containerd.mounts_inside().is_empty(),
        "{:?}",
        e.containerd.mounts_inside()
    );
}

#[test]
fn overlayfs_control_pull_run_many_and_snapshot_commands() {
    let Some(e) = env("overlay-flows") else {
        return;
    };
    flows(&e, "overlayfs");
    assert!(e.containerd.mount.calls().is_empty());
}

#[test]
fn pull_goes_around_fuse() {
    // Pulling alone mounts nothing through FUSE: every layer but the first
    // is unpacked into its upper directory through the `overlay` mount.
    let Some(e) = env("strata-pull") else { return };
    pull(&e, "strata");
    assert_eq!(e.containerd.mount.calls(), Vec::<String>::new());
}

#[test]
fn snapshotter_killed_mid_pull_and_under_running_containers() {
    let Some(mut e) = env("strata-crash") else {
        return;
    };
    let sn = "strata";

    // A snapshot whose Usage tells when containerd reaches the snapshotter
    // (ctr snapshots ls reads containerd's own records only).
    e.containerd.snapshots(sn, &["prepare", "probe"]).ok();
    let reconnected = |c: &Containerd| {
        wait_for("containerd to reach the restarted snapshotter", 30, || {
            (c.snapshots(sn, &["usage", "probe"]).code == 0).then_some(())
        })
    };

    // SIGKILL mid-pull: the snapshotter dies while making the first
    // layer's snapshot (its directory in place, not yet recorded).
    e.snapshotter.kill9();
    e.snapshotter.spawn(Some("prepare-renamed"));
    reconnected(&e.containerd);
    let r = e.containerd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        sn,
        &e.image,
    ]);
    assert_ne!(r.code, 0, "the pull survived the snapshotter's death");
    e.snapshotter.wait_crashed();
    let (dirs, ids) = (e.snapshotter.dirs(), e.snapshotter.recorded_ids());
    assert_eq!(
        dirs.len(),
        ids.len() + 1,
        "the half-made snapshot: {dirs:?}, recorded {ids:?}"
    );

    // Restarted, it serves containerd again (containerd redials within
    // its backoff of at most 3 s); the pull completes and containers run.
    e.snapshotter.spawn(None);
    reconnected(&e.containerd);
    pull(&e, sn);
    let c = &e.containerd;
    let out = c
        .ctr(&[
            "run",
            "--rm",
            "--snapshotter",
            sn,
            &e.image,
            "after",
            "cat",
            "/root/file",
        ])
        .ok();
    assert_eq!(out, "data\n");

    // SIGKILL while a container runs: its mount belongs to containerd's
    // shim, and the container goes on reading and writing its files.
    c.ctr(&[
        "run",
        "-d",
        "--snapshotter",
        sn,
        &e.image,
        "long",
        "sleep",
        "600",
    ])
    .ok();
    e.snapshotter.kill9();
    let out = c
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            "x1",
            "long",
            "sh",
            "-c",
            "cat /root/file; echo w > /w; cat /w",
        ])
        .ok();
    assert_eq!(out, "data\nw\n");
    e.snapshotter.spawn(None);
    let c = &e.containerd;
    reconnected(c);
    c.ctr(&["task", "kill", "-s", "SIGKILL", "long"]).ok();
    wait_for("the container to stop", 30, || {
        let ls = c.ctr(&["task", "ls"]).ok();
        (!ls.contains("RUNNING")).then_some(())
    });
    c.ctr(&["task", "rm", "long"]).ok();
    c.ctr(&["containers", "rm", "long"]).ok();

    // Removing the image with a synchronous garbage collection removes
    // every snapshot and then calls Cleanup, which deletes the half-made
    // one: nothing is left, on disk or mounted.
    c.snapshots(sn, &["rm", "probe"]).ok();
    c.ctr(&["images", "rm", "--sync", &e.image]).ok();
    assert_eq!(e.snapshotter.recorded_ids(), Vec::<String>::new());
    assert_eq!(
        e.snapshotter.dirs(),
        Vec::<String>::new(),
        "{}",
        e.snapshotter.log_text()
    );
    assert!(c.mounts_inside().is_empty(), "{:?}", c.mounts_inside());
}

#[test]
fn opaque_directories_and_whiteouts_as_containerd_writes_them() {
    // Two layers over busybox: /data gets a, b and sub/x; then /data is
    // made opaque (`.wh..wh..opq`) with c, and /etc/group is whited out.
    // containerd's applier writes the opaque directory as an xattr and the
    // whiteout as a 0/0 device straight into the upper directories; the
    // containers must see what the overlayfs control sees.
    let Some(e) = env("strata-opaque") else {
        return;
    };
    use support::Entry::{Dir, File};
    let image = e._registry.push_layered(
        e._dir.path(),
        "busybox",
        "opaque",
        &[
            &[
                Dir("data"),
                File("data/a", "a"),
                File("data/b", "b"),
                Dir("data/sub"),
                File("data/sub/x", "x"),
            ],
            &[
                Dir("data"),
                File("data/.wh..wh..opq", ""),
                File("data/c", "c\n"),
                Dir("etc"),
                File("etc/.wh.group", ""),
            ],
        ],
    );
    let script =
        "ls -A /data; cat /data/c; test -e /etc/group || echo no-group; cat /etc/passwd | head -1";
    let mut outputs = Vec::new();
    for sn in ["strata", "overlayfs"] {
        let c = &e.containerd;
        c.ctr(&[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            sn,
            &image,
        ])
        .ok();
        let out = c
            .ctr(&[
                "run",
                "--rm",
                "--snapshotter",
                sn,
                &image,
                &format!("op-{sn}"),
                "sh",
                "-c",
                script,
            ])
            .ok();
        outputs.push(out);
    }
    assert_eq!(
        outputs[0],
        "c\nc\nno-group\nroot:x:0:0:root:/root:/bin/sh\n"
    );
    assert_eq!(outputs[0], outputs[1], "strata and overlayfs differ");
    assert_eq!(
        e.containerd
            .mount
            .calls()
            .iter()
            .filter(|c| c.contains("tmpmounts"))
            .count(),
        0,
        "an unpack went through FUSE"
    );
    // The opaque marker as the applier left it, in strata's upper directory.
    let opaque = std::fs::read_dir(e.snapshotter.root.join("snapshots"))
        .unwrap()
        .map(|d| d.unwrap().path().join("fs/data"))
        .filter(|p| p.join("c").exists())
        .map(|p| {
            let o = std::process::Command::new("getfattr")
                .args(["--only-values", "-n", "trusted.overlay.opaque"])
                .arg(&p)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        })
        .collect::<Vec<_>>();
    assert_eq!(opaque, ["y"]);
}
