//! User-mode networking: pasta (the default) and slirp4netns attached to
//! the container's network namespace, `-p` forwarding from the host's
//! loopback, `port`, the PORTS column, `inspect`, and the helper's
//! lifetime (gone after `rm -f` and after a killed supervisor). Loopback
//! only: nothing here reaches a real network.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::Env;

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET / from 127.0.0.1:port; the whole answer, or "" when the
/// connection is refused or closed before an answer.
fn http_get(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn pid_alive(pid: i32) -> bool {
    // A zombie is gone for our purpose (its parent reaps it).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// The network helper's pid recorded for container `name`.
fn helper_pid(env: &Env, name: &str) -> i32 {
    let id = env.inspect(name, "{{.Id}}");
    let rt = std::fs::read(env.root.join("containers").join(id).join("network.json"))
        .expect("network.json of a running container");
    let v: serde_json::Value = serde_json::from_slice(&rt).unwrap();
    v["helper"]["pid"].as_i64().expect("a helper pid") as i32
}

/// busybox httpd in a container of `mode`, published on 127.0.0.1:PORT
/// and on a random host port; reached from the host, listed by `port`,
/// `ps` and `inspect`; `rm -f` leaves no helper.
fn httpd_published(mode: &str, helper_name: &str) {
    let env = Env::new();
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    env.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        mode,
        "-p",
        &publish,
        "-p",
        "127.0.0.1::8080/tcp",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo hello-from-httpd > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let helper = helper_pid(&env, "web");
    let comm = std::fs::read_to_string(format!("/proc/{helper}/comm")).unwrap();
    assert!(comm.starts_with(helper_name), "helper is {comm:?}");
    // httpd may not listen yet when `run -d` returns.
    let mut answer = String::new();
    env.wait_until("httpd to answer through the published port", || {
        answer = http_get(port);
        answer.contains("hello-from-httpd")
    });
    assert!(answer.starts_with("HTTP/1."), "{answer}");

    let out = env.ok(&["port", "web"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("80/tcp -> 127.0.0.1:{port}"), "{out}");
    let random: u16 = lines[1]
        .strip_prefix("8080/tcp -> 127.0.0.1:")
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap();
    assert_ne!(random, 0);
    assert_eq!(
        env.ok(&["port", "web", "80"]),
        format!("127.0.0.1:{port}\n")
    );
    assert_eq!(
        env.ok(&["port", "web", "80/tcp"]),
        format!("127.0.0.1:{port}\n")
    );
    assert_ne!(env.run(&["port", "web", "81"]).code, 0);

    let ps = env.ok(&["ps"]);
    let header = ps.lines().next().unwrap();
    assert!(header.contains("PORTS"), "{ps}");
    let cell = format!("127.0.0.1:{port}->80/tcp, 127.0.0.1:{random}->8080/tcp");
    assert!(ps.contains(&cell), "{ps}");
    assert_eq!(
        env.inspect("web", "{{.HostConfig.NetworkMode}}"),
        mode.split(':').next().unwrap()
    );
    let ports = env.inspect("web", "{{json .NetworkSettings.Ports}}");
    let ports: serde_json::Value = serde_json::from_str(&ports).unwrap();
    assert_eq!(ports["80/tcp"][0]["HostIp"], "127.0.0.1");
    assert_eq!(ports["80/tcp"][0]["HostPort"], port.to_string());
    assert_eq!(ports["8080/tcp"][0]["HostPort"], random.to_string());

    // The container's side: an interface besides lo, an address, a
    // default route.
    let r = env.run(&[
        "exec",
        "web",
        "sh",
        "-c",
        "ls /sys/class/net; ip -4 addr; ip route",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let ifaces: Vec<&str> = r.stdout.lines().take_while(|l| !l.contains(':')).collect();
    assert!(ifaces.len() >= 2 && ifaces.contains(&"lo"), "{r:?}");
    assert!(r.stdout.contains("scope global"), "{r:?}");
    assert!(r.stdout.contains("default via"), "{r:?}");

    env.ok(&["rm", "-f", "web"]);
    assert!(
        !pid_alive(helper),
        "{helper_name} {helper} left after rm -f"
    );
    assert_eq!(http_get(port), "", "the port is still forwarded");
}

#[test]
fn pasta_publishes_busybox_httpd_on_loopback() {
    httpd_published("pasta", "passt");
}

#[test]
fn slirp4netns_publishes_busybox_httpd_on_loopback() {
    httpd_published("slirp4netns", "slirp4netns");
}

#[test]
fn pasta_is_the_default_and_none_has_only_lo() {
    let env = Env::new();
    env.ok(&["create", "--name", "dflt", "busybox", "true"]);
    assert_eq!(env.inspect("dflt", "{{.HostConfig.NetworkMode}}"), "pasta");
    let r = env.run(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "ls /sys/class/net; ip route",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.lines().count() >= 3, "{r:?}");
    assert!(r.stdout.contains("default via"), "{r:?}");
    let r = env.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "ls /sys/class/net; ip route",
    ]);
    assert_eq!(r.stdout, "lo\n", "{r:?}");
    // Flags that cannot work: one line, exit 125.
    for bad in [
        &["--network", "none", "-p", "8080:80"][..],
        &["--network", "host", "-p", "80"][..],
        &["-p", "80:http"][..],
        &["--network", "bridge"][..],
        &["--network", "pasta:--tcp-ports=all"][..],
    ] {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(bad);
        args.extend_from_slice(&["busybox", "true"]);
        let r = env.run(&args);
        assert_eq!(r.code, 125, "{bad:?}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{bad:?}: {r:?}");
    }
}

#[test]
fn a_missing_helper_is_named_with_its_package() {
    let env = Env::new();
    let empty = env.dir.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    for (mode, package) in [("pasta", "passt"), ("slirp4netns", "slirp4netns")] {
        let r = env
            .cmd(&["run", "--rm", "--network", mode, "busybox", "true"])
            .env("PATH", &empty)
            .output()
            .unwrap();
        let r: common::Run = r.into();
        assert_eq!(r.code, 125, "{r:?}");
        assert!(
            r.stderr.contains(&format!("Debian package {package}")),
            "{r:?}"
        );
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    }
}

#[test]
fn a_killed_supervisor_takes_the_helper_along() {
    let env = Env::new();
    for mode in ["pasta", "slirp4netns"] {
        let name = format!("k-{mode}");
        env.ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            mode,
            "busybox",
            "sleep",
            "300",
        ]);
        let helper = helper_pid(&env, &name);
        assert!(pid_alive(helper));
        let sup: i32 = env
            .inspect(&name, "{{.State.SupervisorPid}}")
            .parse()
            .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sup),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        env.wait_until(&format!("{mode} to exit with its supervisor"), || {
            !pid_alive(helper)
        });
        env.ok(&["rm", "-f", &name]);
    }
}

#[test]
fn slirp4netns_reaches_the_hosts_loopback_only_when_allowed() {
    let env = Env::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        // One connection: the allowed one.
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"pong-from-host\n");
        }
    });
    let script = format!("timeout 10 nc 10.0.2.2 {port} </dev/null");
    let r = env.run(&[
        "run",
        "--rm",
        "--network",
        "slirp4netns",
        "busybox",
        "sh",
        "-c",
        &script,
    ]);
    assert!(!r.stdout.contains("pong"), "{r:?}");
    assert_ne!(r.code, 0, "{r:?}");
    let r = env.run(&[
        "run",
        "--rm",
        "--network",
        "slirp4netns:allow_host_loopback=true",
        "busybox",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(r.stdout, "pong-from-host\n", "{r:?}");
    server.join().unwrap();
}

#[test]
fn a_host_port_in_use_fails_the_start_in_one_line() {
    let env = Env::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let publish = format!("127.0.0.1:{port}:80");
    for mode in ["pasta", "slirp4netns"] {
        let r = env.run(&[
            "run",
            "--rm",
            "--network",
            mode,
            "-p",
            &publish,
            "busybox",
            "true",
        ]);
        assert_eq!(r.code, 125, "{mode}: {r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{mode}: {r:?}");
        assert!(r.stderr.contains(&port.to_string()), "{mode}: {r:?}");
    }
}
