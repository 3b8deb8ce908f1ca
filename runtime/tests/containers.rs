//! End-to-end tests of containers, driving the `strata` binary as a user
//! does, as root, each with its own store (see `common.rs`).

mod common;

use std::io::Read;
use std::os::unix::fs::FileTypeExt;

use common::Env;

#[test]
fn run_passes_output_and_exit_codes_through() {
    let env = Env::new();
    let r = env.run(&["run", "--rm", "busybox", "echo", "hello"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "hello\n"), "{r:?}");
    assert_eq!(
        env.run(&["run", "--rm", "busybox", "sh", "-c", "exit 3"])
            .code,
        3
    );
    assert_eq!(env.run(&["run", "--rm", "busybox", "false"]).code, 1);
    assert_eq!(
        env.run(&["run", "--rm", "busybox", "sh", "-c", "exit 42"])
            .code,
        42
    );
    let r = env.run(&["run", "--rm", "busybox", "no-such-command"]);
    assert_eq!(r.code, 127, "{r:?}");
    assert!(
        r.stderr.starts_with("Error: ") && r.stderr.contains("no-such-command"),
        "{r:?}"
    );
    let r = env.run(&["run", "--rm", "busybox", "/etc/passwd"]);
    assert_eq!(r.code, 126, "{r:?}");
    let r = env.run(&["run", "--rm", "no-such-image"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("no-such-image"), "{r:?}");
    // --rm left nothing behind.
    assert!(env.ps().is_empty());
    assert!(env.mounts().is_empty(), "{:?}", env.mounts());
    let r = env.run_input(
        &["run", "--rm", "-i", "busybox", "sh"],
        b"echo from-stdin\nexit 4\n",
    );
    assert_eq!((r.code, r.stdout.as_str()), (4, "from-stdin\n"), "{r:?}");
}

#[test]
fn detached_container_runs_logs_and_stops() {
    let env = Env::new();
    let id = env.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "busybox",
        "sh",
        "-c",
        "echo started; while true; do sleep 1; done",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "{id}");
    assert!(env.status("web").starts_with("Up "), "{:?}", env.ps());
    let running = env.ok(&["ps", "-q"]);
    assert_eq!(running.trim(), &id[..12]);
    env.wait_until("the log line", || env.ok(&["logs", "web"]) == "started\n");
    // A unique prefix names the container too.
    assert_eq!(env.inspect(&id[..6], "{{.Name}}"), "web");
    env.ok(&["stop", "-t", "1", "web"]);
    let st = env.status("web");
    assert!(
        st.starts_with("Exited (143)") || st.starts_with("Exited (137)"),
        "{st}"
    );
    assert!(st.ends_with(" ago"), "{st}");
    assert!(env.mounts().is_empty(), "{:?}", env.mounts());
    // Restart runs it again.
    env.ok(&["restart", "-t", "1", "web"]);
    assert!(env.status("web").starts_with("Up "));
    env.wait_until("the second log line", || {
        env.ok(&["logs", "web"]) == "started\nstarted\n"
    });
    env.ok(&["rm", "-f", "web"]);
}

#[test]
fn kill_records_137() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "k", "busybox", "sleep", "1000"]);
    env.ok(&["kill", "k"]);
    let st = env.status("k");
    assert!(st.starts_with("Exited (137)"), "{st}");
    assert_eq!(
        env.inspect("k", "{{.State.ExitCode}} {{.State.Status}}"),
        "137 exited"
    );
    assert!(env.mounts().is_empty());
}

#[test]
fn exec_runs_in_the_container() {
    let env = Env::new();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "--hostname",
        "inbox",
        "busybox",
        "sh",
        "-c",
        "echo made > /tmp/mark; exec sleep 1000",
    ]);
    env.wait_until("the mark file", || {
        env.run(&["exec", "box", "cat", "/tmp/mark"]).stdout == "made\n"
    });
    let r = env.run(&["exec", "box", "sh", "-c", "hostname; echo $$; exit 7"]);
    assert_eq!(r.code, 7, "{r:?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "inbox");
    assert_ne!(lines[1], "1", "exec'd process is not the init");
    assert_eq!(env.run(&["exec", "box", "nope"]).code, 127);
    let r = env.run(&[
        "exec",
        "-e",
        "X=1",
        "-w",
        "/etc",
        "box",
        "sh",
        "-c",
        "echo $X $(pwd)",
    ]);
    assert_eq!(r.stdout, "1 /etc\n", "{r:?}");
    env.ok(&["rm", "-f", "box"]);
    assert!(env.mounts().is_empty());
    assert!(env.run(&["exec", "box", "true"]).code != 0);
}

#[test]
fn commit_makes_an_image_with_the_change() {
    let env = Env::new();
    env.ok(&[
        "run",
        "--name",
        "c1",
        "busybox",
        "sh",
        "-c",
        "echo data > /root/file; rm /bin/vi; echo mod >> /etc/passwd",
    ]);
    let id = env.ok(&[
        "commit",
        "-m",
        "add a file",
        "-a",
        "tester",
        "--change",
        "ENV FOO=bar",
        "c1",
        "img2",
    ]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    let images = env.ok(&["images"]);
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("localhost/img2 ") && l.contains("latest")),
        "{images}"
    );
    let r = env.run(&[
        "run",
        "--rm",
        "img2",
        "sh",
        "-c",
        "cat /root/file; tail -1 /etc/passwd; echo $FOO; test -e /bin/vi || echo no-vi",
    ]);
    assert_eq!(r.stdout, "data\nmod\nbar\nno-vi\n", "{r:?}");
    let h = env.ok(&["history", "img2"]);
    assert!(h.contains("add a file"), "{h}");
    // The image is in use: rmi refuses until the container is gone.
    env.ok(&["run", "--name", "user", "img2", "true"]);
    let r = env.run(&["rmi", "img2"]);
    assert_ne!(r.code, 0, "{r:?}");
    env.ok(&["rm", "user"]);
    env.ok(&["rmi", "img2"]);
}

#[test]
fn export_holds_the_merged_view_without_whiteouts() {
    let env = Env::new();
    env.ok(&[
        "run",
        "--name",
        "x",
        "busybox",
        "sh",
        "-c",
        "echo hi > /root/new; rm /bin/vi; rm -r /tmp",
    ]);
    let out = env.dir.path().join("x.tar");
    env.ok(&["export", "-o", out.to_str().unwrap(), "x"]);
    // Regression: the output was made after a mount had set the umask to 0.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o002, 0, "export output is world-writable: {mode:o}");
    let mut ar = tar::Archive::new(std::fs::File::open(&out).unwrap());
    let mut names = Vec::new();
    let mut new_content = String::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        if p.trim_end_matches('/') == "root/new" {
            e.read_to_string(&mut new_content).unwrap();
        }
        names.push(p);
    }
    assert_eq!(new_content, "hi\n");
    assert!(names.iter().any(|n| n == "bin/sh"), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "bin/vi"),
        "deleted file exported"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("tmp")),
        "deleted dir exported"
    );
    assert!(
        !names.iter().any(|n| n.contains(".wh.")),
        "whiteout exported"
    );
    // A stopped container was mounted for the export and unmounted after.
    assert!(env.mounts().is_empty(), "{:?}", env.mounts());
}

#[test]
fn diff_lists_added_changed_deleted() {
    let env = Env::new();
    env.ok(&[
        "run",
        "--name",
        "d",
        "busybox",
        "sh",
        "-c",
        "echo x > /added; echo y >> /etc/group; rm /bin/vi; mkdir -p /opt/dir",
    ]);
    let d = env.ok(&["diff", "d"]);
    let lines: Vec<&str> = d.lines().collect();
    for want in [
        "A /added",
        "C /etc",
        "C /etc/group",
        "C /bin",
        "D /bin/vi",
        "A /opt",
        "A /opt/dir",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in\n{d}");
    }
    // Mountpoints made by the runtime are not changes.
    assert!(!d.contains("/etc/hostname") && !d.contains("/proc"), "{d}");
}

#[test]
fn rm_removes_upper_and_mounts() {
    let env = Env::new();
    let id = env
        .ok(&["run", "-d", "--name", "r", "busybox", "sleep", "1000"])
        .trim()
        .to_string();
    let dir = env.root.join("containers").join(&id);
    assert!(dir.join("upper").is_dir());
    assert!(!env.mounts().is_empty());
    let sup: i32 = env
        .inspect("r", "{{.State.SupervisorPid}}")
        .parse()
        .unwrap();
    let r = env.run(&["rm", "r"]);
    assert_eq!(r.code, 125, "rm of a running container without -f: {r:?}");
    assert!(r.stderr.contains("running"), "{r:?}");
    env.ok(&["rm", "-f", "r"]);
    assert!(!dir.exists());
    assert!(env.mounts().is_empty(), "{:?}", env.mounts());
    assert!(
        !std::path::Path::new(&format!("/proc/{sup}")).exists() || {
            let s = std::fs::read_to_string(format!("/proc/{sup}/stat")).unwrap_or_default();
            s.contains(") Z ")
        }
    );
    assert!(env.ps().is_empty());
}

#[test]
fn killed_supervisor_shows_exited_and_rm_cleans_up() {
    let env = Env::new();
    env.ok(&["run", "-d", "--name", "s", "busybox", "sleep", "1000"]);
    let sup = env.inspect("s", "{{.State.SupervisorPid}}");
    let init = env.inspect("s", "{{.State.Pid}}");
    std::process::Command::new("kill")
        .args(["-9", &sup])
        .status()
        .unwrap();
    env.wait_until("the init to die with its supervisor", || {
        std::fs::read_to_string(format!("/proc/{init}/stat")).map_or(true, |s| s.contains(") Z "))
    });
    let st = env.status("s");
    assert!(st.starts_with("Exited (137)"), "{st}");
    // The dead server's mount is found by system check, and repaired.
    let r = env.run(&["system", "check"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("orphaned mount"), "{r:?}");
    env.ok(&["system", "check", "--repair"]);
    assert!(env.mounts().is_empty(), "{:?}", env.mounts());
    env.ok(&["rm", "s"]);
    assert!(env.mounts().is_empty(), "{:?}", env.mounts());
    assert!(env.ps().is_empty());
}

#[test]
fn image_mount_is_read_only() {
    let env = Env::new();
    let dir = env.ok(&["image", "mount", "busybox"]).trim().to_string();
    let p = std::path::Path::new(&dir);
    assert!(p.join("bin/busybox").is_file());
    let err = std::fs::write(p.join("new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    env.ok(&["image", "unmount", "busybox"]);
    env.wait_until("the image mount to go", || env.mounts().is_empty());
}

#[test]
fn flags_set_env_workdir_user_hostname_and_network() {
    let env = Env::new();
    let envfile = env.dir.path().join("env");
    std::fs::write(&envfile, "# comment\nFROMFILE=1\n").unwrap();
    let r = env.run(&[
        "run", "--rm", "-e", "FOO=bar", "--env-file", envfile.to_str().unwrap(), "-w", "/newdir", "-u", "nobody",
        "--hostname", "myhost", "busybox", "sh", "-c", "echo $FOO $FROMFILE; pwd; id -u; hostname; cat /etc/hostname; grep myhost /etc/hosts | wc -l",
    ]);
    assert_eq!(
        r.stdout, "bar 1\n/newdir\n65534\nmyhost\nmyhost\n1\n",
        "{r:?}"
    );
    let r = env.run(&["run", "--rm", "--entrypoint", "echo", "busybox", "a", "b"]);
    assert_eq!(r.stdout, "a b\n", "{r:?}");
    let r = env.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "cat",
        "/sys/class/net/lo/operstate",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = env.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(r.stdout, "lo\n", "{r:?}");
    let vol = env.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("f"), "host\n").unwrap();
    let spec = format!("{}:/data:ro", vol.display());
    let r = env.run(&[
        "run",
        "--rm",
        "-v",
        &spec,
        "busybox",
        "sh",
        "-c",
        "cat /data/f; touch /data/g",
    ]);
    assert_eq!(r.stdout, "host\n", "{r:?}");
    assert_ne!(r.code, 0, "read-only volume was writable");
    assert!(!vol.join("g").exists());
}

#[test]
fn proc_dev_and_sys_inside() {
    let env = Env::new();
    let r = env.run(&[
        "run", "--rm", "busybox", "sh", "-c",
        "echo $$; cat /proc/1/cmdline | tr '\\0' ' '; echo; for d in null zero full random urandom tty; do test -c /dev/$d || echo missing $d; done; \
         test -d /dev/pts && test -d /dev/shm && test -L /dev/fd && echo devok; echo x > /dev/null && head -c 4 /dev/zero | wc -c; \
         touch /sys/x 2>/dev/null || echo sys-ro; ps -o pid,stat,comm > /tmp/ps.out; grep -v -E '^ *PID| (sh|ps)$' /tmp/ps.out | wc -l; cat /tmp/ps.out >&2",
    ]);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "1", "{r:?}");
    assert!(lines[1].starts_with("sh -c"), "{r:?}");
    assert_eq!(&lines[2..], ["devok", "4", "sys-ro", "0"], "{r:?}");
    // No process but the shell's own: the container has its own PID namespace.
    // Nothing the runtime mounted went into the image or the upper layer.
    let img = env.ok(&["image", "mount", "busybox"]);
    let etc = std::path::Path::new(img.trim()).join("etc");
    assert!(!etc.join("hostname").exists());
    env.ok(&["image", "unmount", "busybox"]);
}

#[test]
fn containers_see_only_their_own_changes() {
    let env = Env::new();
    for i in 0..8 {
        env.ok(&[
            "run",
            "-d",
            "--name",
            &format!("p{i}"),
            "busybox",
            "sh",
            "-c",
            &format!("echo {i} > /mine; exec sleep 1000"),
        ]);
    }
    for i in 0..8 {
        let name = format!("p{i}");
        env.wait_until("the file", || {
            env.run(&["exec", &name, "cat", "/mine"]).stdout == format!("{i}\n")
        });
        let ls = env.run(&["exec", &name, "ls", "/"]).stdout;
        assert_eq!(ls.lines().filter(|l| *l == "mine").count(), 1);
    }
    let q = env.ok(&["ps", "-q"]);
    assert_eq!(q.lines().count(), 8);
    let ids: Vec<&str> = q.lines().collect();
    let mut args = vec!["rm", "-f"];
    args.extend(ids);
    env.ok(&args);
    assert!(env.mounts().is_empty(), "{:?}", env.mounts());
}

#[test]
fn bad_input_gives_one_line_errors_and_leaves_nothing() {
    let env = Env::new();
    env.ok(&["create", "--name", "taken", "busybox"]);
    let r = env.run(&["create", "--name", "taken", "busybox"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(
        r.stderr.contains("taken") && r.stderr.lines().count() == 1,
        "{r:?}"
    );
    assert_eq!(env.ps().len(), 1);
    // An image with no command.
    let tarball = env.dir.path().join("rootfs.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "hello.txt", &b"hi"[..]).unwrap();
        b.finish().unwrap();
    }
    env.ok(&["import", tarball.to_str().unwrap(), "nocmd"]);
    let r = env.run(&["run", "nocmd"]);
    assert_eq!(r.code, 125, "{r:?}");
    assert!(r.stderr.contains("no command"), "{r:?}");
    assert_eq!(env.ps().len(), 1, "no half-made container");
    let r = env.run(&["commit", "no-such-container"]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("no-such-container"), "{r:?}");
    let r = env.run(&["start", "-a", "taken"]);
    assert_eq!(r.code, 0, "created container starts: {r:?}");
    let r = env.run(&["rm", "nope"]);
    assert_ne!(r.code, 0);
    env.ok(&["rm", "taken"]);
}

#[test]
fn images_lists_and_save_round_trips() {
    let env = Env::new();
    let out = env.ok(&["images"]);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    for col in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(header.contains(col), "{header}");
    }
    let row: Vec<&str> = lines
        .next()
        .unwrap()
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(&row[..3], ["localhost/busybox", "latest", "b1ef65e51b22"]);
    assert!(row[4].ends_with("MB"), "{row:?}");
    env.ok(&["tag", "busybox", "other:v1"]);
    assert_eq!(env.ok(&["images", "-q"]).lines().count(), 1);
    let saved = env.dir.path().join("saved.tar");
    env.ok(&["save", "-o", saved.to_str().unwrap(), "other:v1"]);
    env.ok(&["rmi", "other:v1"]);
    env.ok(&["rmi", "busybox"]);
    assert_eq!(env.ok(&["images", "-q"]), "");
    let r = env.run_input(&["load"], &std::fs::read(&saved).unwrap());
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("localhost/other:v1"), "{r:?}");
    let js: serde_json::Value =
        serde_json::from_str(&env.ok(&["images", "--format", "json"])).unwrap();
    assert_eq!(
        js[0]["Id"],
        "b1ef65e51b22207fe0cd9968c26a84e8b25df40809806acd200f5e9036bfcdc4"
    );
    let ft = std::fs::metadata(&saved).unwrap().file_type();
    assert!(!ft.is_char_device());
}

#[test]
fn commit_of_a_running_container_pauses_and_resumes_it() {
    let env = Env::new();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "live",
        "busybox",
        "sh",
        "-c",
        "echo v1 > /state; exec sleep 1000",
    ]);
    env.wait_until("the state file", || {
        env.run(&["exec", "live", "cat", "/state"]).stdout == "v1\n"
    });
    env.ok(&["exec", "live", "sh", "-c", "echo v2 > /state"]);
    env.ok(&["commit", "live", "snap"]);
    // Still running after the commit, and not left stopped.
    assert!(env.status("live").starts_with("Up "));
    assert_eq!(
        env.run(&["exec", "live", "echo", "alive"]).stdout,
        "alive\n"
    );
    let r = env.run(&["run", "--rm", "snap", "cat", "/state"]);
    assert_eq!(r.stdout, "v2\n", "{r:?}");
}

#[test]
fn stop_with_a_term_handler_exits_143_and_rm_d_removes_itself() {
    let env = Env::new();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "t",
        "busybox",
        "sh",
        "-c",
        "trap 'exit 143' TERM; echo ready; while true; do sleep 0.1; done",
    ]);
    env.wait_until("the trap", || env.ok(&["logs", "t"]) == "ready\n");
    env.ok(&["stop", "-t", "20", "t"]);
    assert!(
        env.status("t").starts_with("Exited (143)"),
        "{}",
        env.status("t")
    );
    let id = env.ok(&["run", "-d", "--rm", "busybox", "true"]);
    env.wait_until("the --rm container to go", || {
        !env.ok(&["ps", "-aq"]).contains(&id[..12])
    });
    assert!(!env.root.join("containers").join(id.trim()).exists());
}

#[test]
fn cp_mount_attach_and_logs_follow() {
    let env = Env::new();
    env.ok(&[
        "create",
        "--name",
        "c",
        "busybox",
        "sh",
        "-c",
        "cat /in.txt; echo out > /out.txt",
    ]);
    let src = env.dir.path().join("in.txt");
    std::fs::write(&src, "copied in\n").unwrap();
    env.ok(&["cp", src.to_str().unwrap(), "c:/in.txt"]);
    let r = env.run(&["start", "-a", "c"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "copied in\n"), "{r:?}");
    let dst = env.dir.path().join("out.txt");
    env.ok(&["cp", "c:/out.txt", dst.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&dst).unwrap(), "out\n");
    // mount shows the stopped container's files, umount lets go.
    let m = env.ok(&["mount", "c"]);
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(m.trim()).join("in.txt")).unwrap(),
        "copied in\n"
    );
    env.ok(&["umount", "c"]);
    env.wait_until("the mount to go", || env.mounts().is_empty());
    // attach and logs -f end when the container does, with its code.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "busybox",
        "sh",
        "-c",
        "while [ ! -e /go ]; do sleep 0.05; done; echo bye; exit 9",
    ]);
    let attach = env
        .cmd(&["attach", "a"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once attach has the log open it is following; then let the container go.
    let fd_dir = format!("/proc/{}/fd", attach.id());
    env.wait_until("attach to open the log", || {
        std::fs::read_dir(&fd_dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.ends_with("ctr.log")))
        })
    });
    env.ok(&["exec", "a", "touch", "/go"]);
    let r: common::Run = attach.wait_with_output().unwrap().into();
    assert_eq!((r.code, r.stdout.as_str()), (9, "bye\n"), "{r:?}");
    let r = env.run(&["logs", "-f", "a"]);
    assert!(r.stdout.ends_with("bye\n"), "{r:?}");
}

#[test]
fn system_df_check_and_prune() {
    let env = Env::new();
    env.ok(&["run", "--name", "old", "busybox", "sh", "-c", "echo x > /f"]);
    let df = env.ok(&["system", "df"]);
    assert!(
        df.lines().any(|l| l.starts_with("Images "))
            && df.lines().any(|l| l.starts_with("Containers ")),
        "{df}"
    );
    let r = env.run(&["system", "check"]);
    assert_eq!(r.code, 0, "{r:?}");
    // A leftover half-made container directory is found and repaired.
    std::fs::create_dir_all(env.root.join("containers/.new-debris")).unwrap();
    assert_eq!(env.run(&["system", "check"]).code, 1);
    env.ok(&["system", "check", "--repair"]);
    assert_eq!(env.run(&["system", "check"]).code, 0);
    let out = env.ok(&["system", "prune", "-f"]);
    assert!(out.contains("Deleted Containers:"), "{out}");
    assert!(env.ps().is_empty());
    assert_eq!(
        env.ok(&["images", "-q"]).lines().count(),
        1,
        "tagged image kept"
    );
    env.ok(&["system", "prune", "-f", "-a"]);
    assert_eq!(env.ok(&["images", "-q"]), "");
}

#[test]
fn detached_tty_container_keeps_a_terminal() {
    let env = Env::new();
    env.ok(&[
        "run",
        "-dt",
        "--name",
        "t",
        "busybox",
        "sh",
        "-c",
        "tty; exec sleep 1000",
    ]);
    env.wait_until("tty's output in the log", || {
        env.ok(&["logs", "t"]).ends_with('\n')
    });
    let log = env.ok(&["logs", "t"]);
    assert!(log.starts_with("/dev/"), "{log:?}");
    env.ok(&["rm", "-f", "t"]);
    assert!(env.mounts().is_empty());
}

#[test]
fn unwritable_store_is_a_clear_error() {
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["--root", "/proc/strata-store", "images"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.starts_with("Error: ") && stderr.contains("/proc/strata-store"),
        "{stderr}"
    );
}

#[test]
fn import_from_stdin_with_changes_and_oci_save() {
    let env = Env::new();
    // A root filesystem: the busybox image exported from a container.
    env.ok(&["create", "--name", "src", "busybox"]);
    let rootfs = env.dir.path().join("rootfs.tar");
    env.ok(&["export", "-o", rootfs.to_str().unwrap(), "src"]);
    let r = env.run_input(
        &[
            "import",
            "-c",
            "CMD [\"echo\", \"from-import\"]",
            "-c",
            "ENV X=y",
            "-",
            "imported:v2",
        ],
        &std::fs::read(&rootfs).unwrap(),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.trim().starts_with("sha256:"), "{r:?}");
    let r = env.run(&["run", "--rm", "imported:v2"]);
    assert_eq!(r.stdout, "from-import\n", "{r:?}");
    let r = env.run(&[
        "run",
        "--rm",
        "localhost/imported:v2",
        "sh",
        "-c",
        "echo $X",
    ]);
    assert_eq!(r.stdout, "y\n", "{r:?}");
    let tpl = env.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(tpl.lines().any(|l| l == "localhost/imported:v2"), "{tpl}");
    // OCI archive and OCI layout directory.
    let oci = env.dir.path().join("img.oci.tar");
    env.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        oci.to_str().unwrap(),
        "imported:v2",
    ]);
    let dir = env.dir.path().join("layout");
    env.ok(&[
        "save",
        "--format",
        "oci-dir",
        "-o",
        dir.to_str().unwrap(),
        "imported:v2",
    ]);
    assert!(dir.join("index.json").is_file() && dir.join("oci-layout").is_file());
    let r = env.run(&["save", "--format", "nope", "-o", "/dev/null", "busybox"]);
    assert_eq!(r.code, 125);
    env.ok(&["rm", "src"]);
    env.ok(&["rmi", "imported:v2"]);
    let loaded = env.ok(&["load", "-i", oci.to_str().unwrap()]);
    assert!(loaded.contains("imported:v2"), "{loaded}");
}

#[test]
fn attached_output_is_logged_and_no_descriptor_leaks_in() {
    let env = Env::new();
    let r = env.run(&[
        "run",
        "--name",
        "l",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 2",
    ]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (2, "out\n", "err\n"),
        "{r:?}"
    );
    let logs = env.ok(&["logs", "l"]);
    assert!(logs.contains("out\n") && logs.contains("err\n"), "{logs:?}");
    // An extra descriptor left open by the caller does not reach the
    // container's program.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 7</dev/null; {} --root {} run --rm busybox ls /proc/self/fd",
            env!("CARGO_BIN_EXE_strata"),
            env.root.display()
        ))
        .output()
        .unwrap();
    let fds = String::from_utf8_lossy(&out.stdout);
    // 0, 1, 2, and ls's own directory descriptor.
    assert_eq!(fds.lines().count(), 4, "{fds}");
    assert!(!fds.lines().any(|l| l == "7"), "{fds}");
}

/// `rm -f` of a `run --rm` container: its supervisor removes it as the
/// container dies, and `rm` must not then fail on a directory already gone
/// (it printed "rename ...: No such file or directory" and exited 125).
#[test]
fn rm_force_of_an_auto_removed_container_succeeds() {
    let env = Env::new();
    for i in 0..3 {
        let name = format!("auto{i}");
        env.ok(&[
            "run",
            "-d",
            "--rm",
            "--name",
            &name,
            "--network",
            "none",
            "busybox",
            "sleep",
            "100",
        ]);
        let r = env.run(&["rm", "-f", &name]);
        assert_eq!((r.code, r.stdout.trim()), (0, name.as_str()), "{r:?}");
        assert!(!env.ok(&["ps", "-a"]).contains(&name));
    }
}
