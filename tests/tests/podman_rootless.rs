//! Rootless podman with strata-mount as its `mount_program`, end to end,
//! and fuse-overlayfs as the control on the same steps.
//!
//! The test makes an unprivileged user with subordinate id ranges, gives it
//! a private podman store and configuration, and runs podman as that user:
//! podman then runs the mount program as uid 0 of a user namespace, where
//! `trusted.*` xattrs are refused. Containers rename an image directory
//! holding a hard link, replace a directory (`rm -rf` then `mkdir`), link
//! image files, several run at once, a commit is run again, and the image
//! is mounted with `podman unshare`. Everything the test made (user, id
//! ranges, store, mounts, /dev/fuse's mode) is undone on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use strata_tests::mount::strata_program;
use strata_tests::users::TestUser;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn have(prog: &str, pkg: &str) -> bool {
    let ok = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(prog).is_file()));
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{prog} is missing on CI: scripts/setup installs {pkg}"
        );
        println!("SKIPPED: {prog} is not installed (Debian package {pkg})");
    }
    ok
}

/// An unprivileged user with subordinate uid and gid ranges, and a podman
/// of its own whose overlay driver mounts through `mount_program`.
struct RootlessPodman {
    user: TestUser,
}

impl RootlessPodman {
    fn new(mount_program: &Path, tag: &str) -> RootlessPodman {
        // A range of 65536 ids no other user of this machine has.
        let base =
            400_000 + (std::process::id() % 1000) * 131_072 + if tag == "s" { 0 } else { 65_536 };
        let p = RootlessPodman {
            user: TestUser::new("strl", tag, Some(base)),
        };
        // The mount program where the user can run it.
        let prog = p.user.dir.path().join("mount-program");
        std::fs::copy(mount_program, &prog).expect("copy the mount program");
        for d in ["home/.config/containers", "run", "root", "runroot"] {
            std::fs::create_dir_all(p.user.dir.path().join(d)).expect("mkdir");
        }
        std::fs::write(
            p.user.dir.path().join("containers.conf"),
            "[containers]\nnetns = \"none\"\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .expect("containers.conf");
        std::fs::write(
            p.user.dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n\n\
                 [storage.options.overlay]\nmount_program = \"{}\"\n",
                p.user.dir.path().join("runroot").display(),
                p.user.dir.path().join("root").display(),
                prog.display()
            ),
        )
        .expect("storage.conf");
        let archive = p.user.dir.path().join("image-oci.tar");
        std::fs::copy(fixtures().join("busybox-c1-oci-archive.tar"), &archive)
            .expect("copy the fixture");
        let ctx = p.user.dir.path().join("ctx");
        std::fs::create_dir(&ctx).expect("mkdir ctx");
        std::fs::write(
            ctx.join("Containerfile"),
            "FROM localhost/withdata\n\
             RUN mv /data /renamed && rm -rf /root && mkdir /root && ln /bin/busybox /root/bb\n\
             RUN rm /renamed/hl && echo built > /built\n",
        )
        .expect("Containerfile");
        for d in ["home", "run", "root", "runroot", "image-oci.tar", "ctx"] {
            let ok = Command::new("chown")
                .args(["-R", &format!("{0}:{0}", p.user.name)])
                .arg(p.user.dir.path().join(d))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown {d}");
        }
        p
    }

    fn podman(&self, args: &[&str]) -> Output {
        podman_as(&self.user.name, self.user.dir.path(), args)
    }

    fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.podman(args))
    }
}

/// Runs podman as `user` with the store and configuration in `dir`.
fn podman_as(user: &str, dir: &Path, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", user, "--", "env"])
        .arg(format!("HOME={}", dir.join("home").display()))
        .arg(format!("XDG_RUNTIME_DIR={}", dir.join("run").display()))
        .arg(format!(
            "CONTAINERS_CONF={}",
            dir.join("containers.conf").display()
        ))
        .arg(format!(
            "CONTAINERS_STORAGE_CONF={}",
            dir.join("storage.conf").display()
        ))
        .arg("podman")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run podman as the user")
}

/// The stdout of a podman run that must have succeeded.
fn succeeded(args: &[&str], o: Output) -> String {
    assert!(
        o.status.success(),
        "rootless podman {args:?} failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Drop for RootlessPodman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af"]);
        let _ = self.podman(&["unshare", "podman", "image", "unmount", "-af"]);
        let _ = self.podman(&["system", "reset", "-f"]);
        // Servers left by a failed step: whatever still runs as the user
        // (the user itself goes when `TestUser` drops, after this).
        self.user.kill_all();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let base = self.user.dir.path().to_string_lossy().into_owned();
            for mp in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
                if mp.starts_with(&base) {
                    let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
                }
            }
        }
    }
}

/// The steps, for one mount program.
fn steps(p: &RootlessPodman, control: bool) {
    // Pulled from an OCI layout (an oci-archive), as a registry would give it.
    let id = p.ok(&["pull", "-q", "oci-archive:image-oci.tar"]);
    let img = "localhost/busybox-c1";
    p.ok(&["tag", id.trim(), img]);
    // An image directory with a hard link inside, committed.
    p.ok(&[
        "run",
        "--name",
        "mk",
        img,
        "sh",
        "-c",
        "mkdir -p /data/sub && echo a > /data/sub/f && ln /data/sub/f /data/hl",
    ]);
    p.ok(&["commit", "-q", "mk", "localhost/withdata"]);
    p.ok(&["rm", "mk"]);
    // Rename it, replace a directory, link image files: each needs
    // whiteouts and opaque directories in the user namespace.
    let out = p.ok(&[
        "run",
        "--rm",
        "localhost/withdata",
        "sh",
        "-c",
        "mv /data /d2 && cat /d2/hl && test ! -e /data \
         && rm -rf /root && mkdir /root && test -z \"$(ls -A /root)\" \
         && ln /bin/busybox /bb2 && test /bb2 -ef /bin/busybox && test ! -e /bin/vi && echo done",
    ]);
    assert!(out.ends_with("a\ndone\n"), "{out:?}");
    // A commit of such changes runs again with them.
    p.ok(&[
        "run",
        "--name",
        "ch",
        "localhost/withdata",
        "sh",
        "-c",
        "mv /data /moved && rm -rf /root && mkdir /root && echo x > /root/new",
    ]);
    p.ok(&["commit", "-q", "ch", "localhost/changed"]);
    let out = p.ok(&[
        "run",
        "--rm",
        "localhost/changed",
        "sh",
        "-c",
        "test ! -e /data && cat /moved/sub/f /root/new && ls /root",
    ]);
    if control {
        // fuse-overlayfs 1.10 marks the replaced directory with its own
        // user.fuseoverlayfs.opaque, which podman 4.3 does not read when it
        // commits: the deleted /root/file comes back in the image. Strata
        // writes the kernel's user.overlay.opaque, which podman reads.
        assert!(
            out == "a\nx\nnew\n" || out == "a\nx\nfile\nnew\n",
            "{out:?}"
        );
    } else {
        assert_eq!(
            out, "a\nx\nnew\n",
            "better than fuse-overlayfs: the commit keeps /root replaced"
        );
    }
    // podman build: RUN steps that rename, delete and hard-link image files.
    p.ok(&[
        "build",
        "-q",
        "--network",
        "none",
        "-t",
        "localhost/built",
        "ctx",
    ]);
    let out = p.ok(&[
        "run",
        "--rm",
        "localhost/built",
        "sh",
        "-c",
        "test ! -e /data && cat /renamed/sub/f /built && test ! -e /renamed/hl \
         && cmp /root/bb /bin/busybox && ls /root",
    ]);
    // podman 4.3's build commits the hard link /root/bb as a copy with
    // either mount program (nlink 1 in the image, measured), so only the
    // content is compared; with fuse-overlayfs the replaced /root also
    // keeps the image's file (see above).
    if control {
        assert!(
            out == "a\nbuilt\nbb\n" || out == "a\nbuilt\nbb\nfile\n",
            "{out:?}"
        );
    } else {
        assert_eq!(
            out, "a\nbuilt\nbb\n",
            "better than fuse-overlayfs: /root stays replaced"
        );
    }
    // Several containers at once, each seeing only its own writes.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let args = [
                "run".to_string(),
                "--rm".into(),
                "localhost/withdata".into(),
                "sh".into(),
                "-c".into(),
                format!("echo {i} > /data/mine && sleep 0.3 && cat /data/mine && ls /data"),
            ];
            let (user, dir) = (p.user.name.clone(), p.user.dir.path().to_path_buf());
            std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                succeeded(&args, podman_as(&user, &dir, &args))
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().expect("thread"), format!("{i}\nhl\nmine\nsub\n"));
    }
    // The image mounted in podman's user namespace.
    let out = p.ok(&[
        "unshare",
        "sh",
        "-c",
        "m=$(podman image mount localhost/changed) && cat $m/root/new && ls $m/moved && podman image unmount localhost/changed >/dev/null",
    ]);
    assert_eq!(out, "x\nhl\nsub\n");
}

/// One test, so the two stores never share /dev/fuse's mode change.
#[test]
fn rootless_podman_with_strata_and_fuse_overlayfs_as_the_control() {
    if !have("podman", "podman") || !have("newuidmap", "uidmap") {
        return;
    }
    let _fuse = strata_tests::sys::DevicesOpen::fuse();
    {
        let p = RootlessPodman::new(&strata_program(), "s");
        steps(&p, false);
    }
    if have("fuse-overlayfs", "fuse-overlayfs") {
        let p = RootlessPodman::new(Path::new("/usr/bin/fuse-overlayfs"), "f");
        steps(&p, true);
    }
}
