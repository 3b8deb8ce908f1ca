//! The escape suite: what a container must not be able to do to its host,
//! checked from inside containers started by the `strata` binary, with
//! docker's defaults (capabilities, seccomp, read-only /proc/sys, device
//! rules, a network namespace of its own, cgroup limits), and what the
//! host side must never do (follow a container's or a build context's
//! symlinks to a host path).

mod common;

use std::path::Path;

use common::Env;

/// Runs `sh -c SCRIPT` in a fresh busybox container with `flags`.
fn sh(env: &Env, flags: &[&str], script: &str) -> common::Run {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["busybox", "sh", "-c", script]);
    env.run(&args)
}

fn status_field(env: &Env, flags: &[&str], field: &str) -> String {
    let r = sh(env, flags, "cat /proc/self/status");
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {}", r.stdout))
        .trim()
        .to_string()
}

/// docker's 14 default capabilities as a mask: CHOWN(0) DAC_OVERRIDE(1)
/// FOWNER(3) FSETID(4) KILL(5) SETGID(6) SETUID(7) SETPCAP(8)
/// NET_BIND_SERVICE(10) NET_RAW(13) SYS_CHROOT(18) MKNOD(27)
/// AUDIT_WRITE(29) SETFCAP(31).
const DOCKER_CAPS: &str = "00000000a80425fb";

#[test]
fn capabilities_are_dockers_default_set() {
    let env = Env::new();
    for f in ["CapBnd", "CapPrm", "CapEff"] {
        assert_eq!(status_field(&env, &[], f), DOCKER_CAPS, "{f}");
    }
    // --cap-drop ALL --cap-add KILL leaves KILL (5) alone.
    let one = status_field(&env, &["--cap-drop", "ALL", "--cap-add", "KILL"], "CapBnd");
    assert_eq!(one, "0000000000000020");
    // --cap-add adds to the default set; --cap-drop takes away.
    let admin = status_field(
        &env,
        &["--cap-add", "SYS_ADMIN", "--cap-drop", "CHOWN"],
        "CapBnd",
    );
    assert_eq!(
        u64::from_str_radix(&admin, 16).unwrap(),
        (u64::from_str_radix(DOCKER_CAPS, 16).unwrap() | 1 << 21) & !1
    );
}

#[test]
fn seccomp_filters_and_mount_fails() {
    let env = Env::new();
    assert_eq!(status_field(&env, &[], "Seccomp"), "2");
    let r = sh(&env, &[], "mount -t tmpfs t /tmp");
    assert_ne!(r.code, 0, "mount worked in the container: {r:?}");
    // Blocked calls return EPERM (unshare is not allowed without
    // CAP_SYS_ADMIN; busybox reports the errno).
    let r = sh(&env, &[], "unshare -U true");
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("Operation not permitted"), "{r:?}");
    assert_eq!(
        status_field(&env, &["--security-opt", "seccomp=unconfined"], "Seccomp"),
        "0"
    );
    assert_eq!(
        status_field(&env, &["--security-opt", "no-new-privileges"], "NoNewPrivs"),
        "1"
    );
    // A profile of one's own: everything allowed but mkdir.
    let profile = env.dir.path().join("profile.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let r = sh(
        &env,
        &["--security-opt", &opt],
        "mkdir /made || echo refused",
    );
    assert_eq!(r.stdout.trim(), "refused", "{r:?}");
    // --privileged: all capabilities, no filter, mount works.
    let r = sh(
        &env,
        &["--privileged"],
        "mount -t tmpfs t /tmp && echo mounted",
    );
    assert_eq!(r.stdout.trim(), "mounted", "{r:?}");
}

#[test]
fn device_nodes_made_inside_do_not_open() {
    let env = Env::new();
    // MKNOD is a default capability, as in docker: the node can be made,
    // but the device cgroup refuses to open it (1:11 is /dev/kmsg).
    let r = sh(
        &env,
        &[],
        "mknod /dev/k c 1 11 && echo made; (exec 3</dev/k) && echo opened; \
         (exec 3</dev/null) && echo null",
    );
    assert!(r.stdout.contains("made"), "{r:?}");
    assert!(!r.stdout.contains("opened"), "{r:?}");
    assert!(r.stdout.contains("null"), "{r:?}");
    // Only the standard nodes.
    let r = sh(&env, &[], "ls /dev");
    let devs: Vec<&str> = r.stdout.split_whitespace().collect();
    for d in devs {
        assert!(
            [
                "console", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm",
                "stderr", "stdin", "stdout", "tty", "urandom", "zero"
            ]
            .contains(&d),
            "unexpected /dev/{d}"
        );
    }
}

#[test]
fn proc_sys_and_sys_are_read_only_and_masked_paths_hidden() {
    let env = Env::new();
    // ns_last_pid belongs to the container's own PID namespace: writing it
    // harms nothing if the mount were writable.
    let r = sh(
        &env,
        &[],
        "echo 100 > /proc/sys/kernel/ns_last_pid && echo wrote; \
         touch /sys/kernel/x 2>/dev/null && echo touched; \
         wc -c < /proc/timer_list",
    );
    assert!(!r.stdout.contains("wrote"), "{r:?}");
    assert!(!r.stdout.contains("touched"), "{r:?}");
    // Masked: /dev/null bound over it.
    assert_eq!(r.stdout.trim(), "0", "{r:?}");
}

#[test]
fn the_network_namespace_is_the_containers_own() {
    let env = Env::new();
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    let host = host.to_string_lossy();
    let r = sh(
        &env,
        &["--network", "none"],
        "readlink /proc/self/ns/net; ip link",
    );
    assert_eq!(r.code, 0, "{r:?}");
    let mut lines = r.stdout.lines();
    assert_ne!(lines.next().unwrap(), host, "{r:?}");
    // Only lo, and it is up.
    assert!(r.stdout.contains("lo: <LOOPBACK,UP"), "{r:?}");
    assert_eq!(r.stdout.matches(": <").count(), 1, "{r:?}");
    let r = sh(&env, &["--network", "host"], "readlink /proc/self/ns/net");
    assert_eq!(r.stdout.trim(), host, "{r:?}");
}

#[test]
fn memory_and_pids_limits_reach_the_cgroup() {
    let env = Env::new();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let script = if v2 {
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max"
    } else {
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"
    };
    let r = sh(&env, &["--memory", "64m", "--pids-limit", "50"], script);
    assert_eq!(r.code, 0, "{r:?}");
    let v: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(v, ["67108864", "50"], "{r:?}");
    // And inspect shows them.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "lim",
        "--memory",
        "64m",
        "--pids-limit",
        "50",
        "--cpus",
        "0.5",
        "busybox",
        "sleep",
        "60",
    ]);
    assert_eq!(env.inspect("lim", "{{.HostConfig.Memory}}"), "67108864");
    assert_eq!(env.inspect("lim", "{{.HostConfig.PidsLimit}}"), "50");
    assert_eq!(env.inspect("lim", "{{.HostConfig.NanoCpus}}"), "500000000");
    let stats = env.ok(&["stats", "--no-stream", "lim"]);
    let mut lines = stats.lines();
    assert!(lines.next().unwrap().starts_with("CONTAINER ID"), "{stats}");
    let row = lines.next().unwrap();
    assert!(row.contains("lim") && row.contains("64MiB"), "{stats}");
    env.ok(&["rm", "-f", "lim"]);
}

#[test]
fn exec_without_t_has_no_controlling_terminal() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "e", "busybox", "sleep", "60"]);
    // The caller runs in a session whose controlling terminal is a pty.
    let pty = nix::pty::openpty(None, None).unwrap();
    let out = std::process::Command::new("setsid")
        .arg("-c")
        .arg(env!("CARGO_BIN_EXE_strata"))
        .arg("--root")
        .arg(&env.root)
        .args(["exec", "e", "cat", "/proc/self/stat"])
        .stdin(pty.slave.try_clone().unwrap())
        .stderr(pty.slave.try_clone().unwrap())
        .output()
        .unwrap();
    drop(pty);
    let stat = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stat}");
    // Fields after "(comm) ": state ppid pgrp session tty_nr.
    let after = stat.rsplit_once(") ").unwrap().1;
    let tty_nr = after.split(' ').nth(4).unwrap();
    assert_eq!(tty_nr, "0", "{stat}");
    env.ok(&["rm", "-f", "e"]);
}

/// A host directory and a container whose symlinks name it.
fn planted(env: &Env) -> (std::path::PathBuf, String) {
    let host = env.dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("victim"), "host").unwrap();
    let h = host.to_str().unwrap().to_string();
    env.ok(&["run", "-d", "--name", "p", "busybox", "sleep", "60"]);
    // The same absolute path exists inside the container, with its own
    // content; /file and /dir are symlinks to it.
    let r = env.run(&[
        "exec",
        "p",
        "sh",
        "-c",
        &format!(
            "mkdir -p {h} && echo ctr > {h}/victim && ln -s {h}/victim /file && ln -s {h} /dir \
             && ln -s /etc/shadow /tmp/x"
        ),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    (host, h)
}

#[test]
fn cp_onto_planted_symlinks_writes_inside_the_container() {
    let env = Env::new();
    let (host, h) = planted(&env);
    let src = env.dir.path().join("src");
    std::fs::write(&src, "new\n").unwrap();
    let s = src.to_str().unwrap();
    env.ok(&["cp", s, "p:/file"]);
    env.ok(&["cp", s, "p:/dir/victim"]);
    env.ok(&["cp", s, "p:/tmp/x"]);
    assert_eq!(
        std::fs::read_to_string(host.join("victim")).unwrap(),
        "host"
    );
    let r = env.ok(&[
        "exec",
        "p",
        "sh",
        "-c",
        &format!("cat {h}/victim /etc/shadow"),
    ]);
    assert_eq!(r, "new\nnew\n");
    // A directory copied through a directory symlink lands inside too.
    let d = env.dir.path().join("d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("f"), "in-dir\n").unwrap();
    env.ok(&["cp", d.to_str().unwrap(), "p:/dir"]);
    assert!(!host.join("d").exists());
    assert_eq!(
        env.ok(&["exec", "p", "cat", &format!("{h}/d/f")]),
        "in-dir\n"
    );
    env.ok(&["rm", "-f", "p"]);
}

#[test]
fn cp_from_planted_symlinks_never_reads_a_host_path() {
    let env = Env::new();
    let (_host, _h) = planted(&env);
    let out = env.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // Through a directory symlink: the container's file.
    env.ok(&["cp", "p:/dir/victim", out.join("a").to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "ctr\n");
    // A file symlink is copied as a symlink, not as what it names.
    env.ok(&["cp", "p:/file", out.join("b").to_str().unwrap()]);
    assert!(std::fs::symlink_metadata(out.join("b"))
        .unwrap()
        .file_type()
        .is_symlink());
    // A directory symlink's content, named with a trailing component.
    env.ok(&["cp", "p:/dir/.", out.join("c").to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(out.join("c/victim")).unwrap(),
        "ctr\n"
    );
    env.ok(&["rm", "-f", "p"]);
}

#[test]
fn copy_through_a_context_symlink_that_leaves_the_context_fails() {
    let env = Env::new();
    let ctx = env.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let outside = env.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "host secret").unwrap();
    std::os::unix::fs::symlink(&outside, ctx.join("abs")).unwrap();
    std::os::unix::fs::symlink("../outside", ctx.join("rel")).unwrap();
    for src in ["abs/secret", "rel/secret"] {
        std::fs::write(
            ctx.join("Containerfile"),
            format!("FROM busybox\nCOPY {src} /s\n"),
        )
        .unwrap();
        let r = env.run(&["build", "-t", "esc", ctx.to_str().unwrap()]);
        assert_ne!(r.code, 0, "{src}: {r:?}");
        assert!(r.stderr.contains("outside the build context"), "{r:?}");
    }
    // A RUN step runs with the same isolation as `run`, in a network
    // namespace of its own unless --network host.
    std::fs::write(
        ctx.join("Containerfile"),
        "FROM busybox\nRUN grep -E 'CapBnd|Seccomp:' /proc/self/status > /caps; \
         readlink /proc/self/ns/net >> /caps\n",
    )
    .unwrap();
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    let host = host.to_str().unwrap();
    env.ok(&["build", "-t", "caps", ctx.to_str().unwrap()]);
    let r = env.ok(&["run", "--rm", "caps", "cat", "/caps"]);
    assert!(r.contains(DOCKER_CAPS) && r.contains("Seccomp:\t2"), "{r}");
    assert!(!r.contains(host), "{r}");
    let c = ctx.to_str().unwrap();
    env.ok(&["build", "--no-cache", "--network", "host", "-t", "caps", c]);
    let r = env.ok(&["run", "--rm", "caps", "cat", "/caps"]);
    assert!(r.contains(host), "{r}");
}

fn mount_options(dir: &str) -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dir))
        .unwrap_or_else(|| panic!("{dir} is not mounted"))
        .split(' ')
        .nth(5)
        .unwrap()
        .to_string()
}

#[test]
fn image_and_container_mounts_are_nosuid_nodev() {
    let env = Env::new();
    let dir = env.ok(&["image", "mount", "busybox"]).trim().to_string();
    let o = mount_options(&dir);
    assert!(o.contains("nosuid") && o.contains("nodev"), "{o}");
    env.ok(&["image", "unmount", "busybox"]);
    env.ok(&["create", "--name", "m", "busybox", "true"]);
    let dir = env.ok(&["mount", "m"]).trim().to_string();
    let o = mount_options(&dir);
    assert!(o.contains("nosuid") && o.contains("nodev"), "{o}");
    env.ok(&["umount", "m"]);
    env.ok(&["rm", "m"]);
}

#[test]
fn volume_targets_resolve_inside_the_container() {
    let env = Env::new();
    let host = env.dir.path().join("hostdir");
    std::fs::create_dir_all(&host).unwrap();
    let h = host.to_str().unwrap().to_string();
    let src = env.dir.path().join("vol");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "vol\n").unwrap();
    // An image whose /v is a symlink to the host directory's path (which
    // exists in the image too).
    let script = format!("mkdir -p {h} && ln -s {h} /v");
    env.ok(&["run", "--name", "mk", "busybox", "sh", "-c", &script]);
    env.ok(&["commit", "mk", "linked"]);
    let vol = format!("{}:/v/x", src.display());
    let r = env.run(&[
        "run",
        "--rm",
        "-v",
        &vol,
        "linked",
        "sh",
        "-c",
        "readlink /v; cat /v/x/f",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    // The image's symlink stays, and the volume is mounted where it leads
    // inside the container; nothing is made on the host.
    assert_eq!(r.stdout, format!("{h}\nvol\n"), "{r:?}");
    assert!(!host.join("x").exists());
    env.ok(&["rm", "mk"]);
}
