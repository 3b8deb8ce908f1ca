//! Real clients: podman 4.3 uses strata-mount as its overlay driver's
//! `mount_program` to run, commit and mount containers, and loads an image
//! that Strata's layer database saved.
//!
//! Each test has a podman store of its own (`--root`/`--runroot` in a temp
//! dir) and the containers.conf that works on this kind of machine (runc,
//! no network, low ulimits: see tests/fixtures/README.md). podman,
//! runc and skopeo come from scripts/setup; without podman the tests fail
//! under CI and are skipped with a message elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata_tests::mount::strata_program;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn podman_available() -> bool {
    let ok = Command::new("podman")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "podman is missing on CI: scripts/setup installs it"
        );
        println!(
            "SKIPPED: podman is not installed (Debian package podman; scripts/setup installs it)"
        );
    }
    ok
}

/// A podman with a private store whose overlay driver mounts through
/// strata-mount. Unmounts everything and removes the store on drop.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("strata-podman-")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        Podman::in_dir(dir, None)
    }

    /// A podman whose store (`root`, `run`) lives in `store`, not in its
    /// own directory.
    fn in_dir(dir: tempfile::TempDir, store: Option<&Path>) -> Podman {
        let base = store.unwrap_or(dir.path()).to_path_buf();
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\nnetns = \"none\"\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .expect("containers.conf");
        std::fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{run}\"\ngraphroot = \"{root}\"\n\n\
                 [storage.options.overlay]\nmount_program = \"{prog}\"\n",
                run = base.join("run").display(),
                root = base.join("root").display(),
                prog = strata_program().display()
            ),
        )
        .expect("storage.conf");
        Podman { dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("podman");
        cmd.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            )
            .args(args);
        cmd.output().expect("run podman")
    }

    /// Runs podman and returns its stdout, failing the test with its stderr.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "podman {args:?} failed ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af"]);
        let _ = self.run(&["image", "unmount", "-af"]);
        let _ = self.run(&["unmount", "-af"]);
        // Anything podman left mounted under the store goes lazily.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let base = self.dir.path().to_string_lossy().into_owned();
            for line in mounts.lines() {
                if let Some(mp) = line.split(' ').nth(1) {
                    if mp.starts_with(&base) {
                        let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
                    }
                }
            }
        }
    }
}

#[test]
fn podman_runs_commits_and_mounts_with_strata_as_mount_program() {
    if !podman_available() {
        return;
    }
    let p = Podman::new();
    let archive = fixtures().join("busybox-c1-docker-archive.tar");
    p.ok(&["load", "-q", "-i", archive.to_str().expect("utf-8 path")]);
    // The image's own whiteout (bin/.wh.vi) and files, seen in a container.
    let out = p.ok(&[
        "run",
        "--rm",
        "localhost/busybox-c1",
        "sh",
        "-c",
        "cat /root/file; ls /bin/vi 2>&1; ls -d /opt/d",
    ]);
    assert!(out.contains("data"), "file from the top layer: {out}");
    assert!(out.contains("No such file"), "bin/vi is whited out: {out}");
    assert!(
        out.contains("/opt/d"),
        "directory from the top layer: {out}"
    );
    // Changes in a container: copy-up, whiteout, new files; then commit.
    p.ok(&[
        "run",
        "--name",
        "c",
        "localhost/busybox-c1",
        "sh",
        "-c",
        "echo more >> /root/file && rm /bin/ls && mkdir -p /opt/new && echo n > /opt/new/f",
    ]);
    let diff = p.ok(&["diff", "c"]);
    assert!(
        diff.contains("/bin/ls"),
        "podman diff sees the whiteout: {diff}"
    );
    p.ok(&["commit", "-q", "c", "localhost/committed"]);
    let out = p.ok(&[
        "run",
        "--rm",
        "localhost/committed",
        "sh",
        "-c",
        "cat /root/file /opt/new/f; ls /bin/ls 2>&1; true",
    ]);
    assert!(out.contains("data\nmore\nn\n"), "committed changes: {out}");
    assert!(out.contains("No such file"), "committed whiteout: {out}");
    // A read-only image mount: two or more lowers, no upper.
    let mnt = p.ok(&["image", "mount", "localhost/committed"]);
    let mnt = Path::new(mnt.trim());
    assert_eq!(
        std::fs::read_to_string(mnt.join("opt/new/f")).expect("read through the image mount"),
        "n\n"
    );
    let err = std::fs::write(mnt.join("x"), "x").expect_err("an image mount is read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    p.ok(&["image", "unmount", "localhost/committed"]);
}

#[test]
fn podman_loads_an_image_saved_by_strata() {
    if !podman_available() {
        return;
    }
    let store_dir = tempfile::Builder::new()
        .prefix("strata-store-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    let store = strata_layerdb::Store::open(store_dir.path()).expect("open a store");
    let archive = fixtures().join("busybox-c1-docker-archive.tar");
    store
        .load(&archive, &Default::default())
        .expect("Strata loads podman's archive");
    let saved = store_dir.path().join("saved.tar");
    let mut out = std::fs::File::create(&saved).expect("create the archive");
    store
        .save(
            &["localhost/busybox-c1:latest"],
            strata_layerdb::SaveFormat::DockerArchive,
            &mut out,
        )
        .expect("Strata saves a docker-archive");
    let p = Podman::new();
    p.ok(&["load", "-q", "-i", saved.to_str().expect("utf-8 path")]);
    let out = p.ok(&["run", "--rm", "localhost/busybox-c1", "cat", "/root/file"]);
    assert_eq!(out, "data\n");
}

/// A kernel overlayfs mount of the test's own, unmounted on drop.
struct KernelOverlay(PathBuf);

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Nested containers: podman's store on a kernel overlayfs (as inside a
/// container whose own root is one), where the kernel refuses an overlayfs
/// upper and strata-mount writes `.wh.` whiteouts instead of devices.
/// Deleting, renaming and replacing image directories must still work,
/// and a commit must carry the changes.
#[test]
fn podman_with_its_store_on_a_kernel_overlayfs() {
    if !podman_available() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("strata-podman-nested-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    for d in ["ol", "ou", "ow", "om"] {
        std::fs::create_dir(dir.path().join(d)).expect("mkdir");
    }
    let om = dir.path().join("om");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        dir.path().join("ol").display(),
        dir.path().join("ou").display(),
        dir.path().join("ow").display()
    );
    nix::mount::mount(
        Some("overlay"),
        &om,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .expect("mount a kernel overlayfs for the store");
    let _overlay = KernelOverlay(om.clone());
    let conf_dir = tempfile::Builder::new()
        .prefix("strata-podman-conf-")
        .tempdir_in("/var/tmp")
        .expect("temp dir");
    let p = Podman::in_dir(conf_dir, Some(&om));
    let archive = fixtures().join("busybox-c1-docker-archive.tar");
    p.ok(&["load", "-q", "-i", archive.to_str().expect("utf-8 path")]);
    p.ok(&[
        "run",
        "--name",
        "n",
        "localhost/busybox-c1",
        "sh",
        "-c",
        "rm /bin/ls && mv /opt /opt2 && rm -rf /root && mkdir /root && echo x > /root/new",
    ]);
    p.ok(&["commit", "-q", "n", "localhost/nested"]);
    let out = p.ok(&[
        "run",
        "--rm",
        "localhost/nested",
        "sh",
        "-c",
        "ls /bin/ls 2>&1; ls -d /opt 2>&1; ls -d /opt2/d; ls /root",
    ]);
    assert!(out.contains("/bin/ls: No such file"), "{out}");
    assert!(out.contains("/opt: No such file"), "{out}");
    assert!(out.contains("/opt2/d\nnew\n"), "{out}");
    drop(p);
}
