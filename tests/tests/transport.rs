//! The two FUSE transports of strata-mount (`uring=on|off|auto`): each one
//! mounts and unmounts with its server exiting, survives a `kill -9` of the
//! server (calls fail with ENOTCONN, nothing hangs), and keeps serving every
//! CPU while one request is stuck in a layer that does not answer. `auto`
//! falls back to `/dev/fuse` when the kernel does not offer the ring, and
//! `on` then fails the mount with the reason.
//!
//! The tests change the kernel's `enable_uring` parameter, so they run one
//! at a time (`SERIAL`).

use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use strata_tests::mount::{strata_program, wait_process_gone};
use strata_tests::transport::{UringEnabled, ENABLE_URING};
use strata_tests::{Backend, Layers, Mounted};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a call that must not hang may take before the test says it
/// hung (far above what any of them needs).
const HUNG: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Ring,
    Dev,
}

impl Transport {
    fn option(self) -> &'static str {
        match self {
            Transport::Ring => "uring=on",
            Transport::Dev => "uring=off",
        }
    }
    /// The line `stats=` writes for it.
    fn stats_name(self) -> &'static str {
        match self {
            Transport::Ring => "io_uring",
            Transport::Dev => "/dev/fuse",
        }
    }
}

/// Holds `enable_uring` as the transport needs it (Y for the ring; as
/// found for /dev/fuse, which `uring=off` uses either way).
fn switch(t: Transport) -> Option<UringEnabled> {
    (t == Transport::Ring).then(UringEnabled::acquire)
}

fn layers() -> Layers {
    Layers::new()
        .lower(|l| {
            (0..8).fold(l.file("a", "lower a\n").dir("d"), |l, i| {
                l.file(format!("f{i}"), format!("file {i}\n"))
            })
        })
        .upper(|u| u.file("u", "upper\n"))
}

/// Mounts `layers()` over transport `t`, with `stats=` in the root.
fn mount(t: Transport) -> Mounted {
    let mut m = layers().materialize(false);
    let stats = m.root().join("t.stats");
    m.set_extra_options(Some(&format!("{},stats={}", t.option(), stats.display())));
    m.mount_again(Backend::strata(), false);
    m
}

/// The last value of `name` in a stats file (the last block is the last
/// mount).
fn stat_line(path: &Path, name: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().rev().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        (rest.starts_with(' ')).then(|| rest.trim().to_string())
    })
}

/// The names of the threads of `pid`.
fn thread_names(pid: i32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

/// Runs `f` on a thread pinned to `cpu`; its result, or None if it did not
/// finish within `HUNG`.
fn on_cpu<T: Send + 'static>(cpu: usize, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        pin(cpu);
        let _ = tx.send(f());
    });
    rx.recv_timeout(HUNG).ok()
}

fn pin(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).expect("cpu in range");
    sched_setaffinity(Pid::from_raw(0), &set).expect("pin the thread to its CPU");
}

/// The CPUs this process may run on.
fn cpus() -> Vec<usize> {
    let set = nix::sched::sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
    (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect()
}

/// Mount, use from every CPU, unmount: the server exits, its stats file
/// names the transport, and on the ring the requests went through it (its
/// threads were there, and it counted them).
fn mount_serve_unmount(t: Transport) {
    let _s = serial();
    let _u = switch(t);
    let mut m = mount(t);
    let stats = m.root().join("t.stats");
    for cpu in cpus() {
        let p = m.join(format!("f{}", cpu % 8));
        let got = on_cpu(cpu, move || fs::read_to_string(p).expect("read"));
        assert_eq!(
            got,
            Some(format!("file {}\n", cpu % 8)),
            "read on CPU {cpu}"
        );
    }
    fs::write(m.join("new"), "new\n").expect("create through the mount");
    let pid = m.servers()[0];
    let ring_threads = thread_names(pid)
        .iter()
        .filter(|n| n.starts_with("fuse-uring-"))
        .count();
    match t {
        Transport::Ring => assert!(
            ring_threads >= cpus().len(),
            "io_uring threads of the server: {:?}",
            thread_names(pid)
        ),
        Transport::Dev => assert_eq!(ring_threads, 0, "{:?}", thread_names(pid)),
    }
    let start = Instant::now();
    m.unmount();
    // unmount() waited for the server; the design target is well under a
    // second (parked ring commands complete with ENOTCONN at once).
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the server took {:?} to exit after unmount",
        start.elapsed()
    );
    assert_eq!(
        stat_line(&stats, "transport").as_deref(),
        Some(t.stats_name()),
        "{}",
        fs::read_to_string(&stats).unwrap_or_default()
    );
    let ring: u64 = stat_line(&stats, "ring requests")
        .and_then(|s| s.parse().ok())
        .expect("ring requests line");
    match t {
        Transport::Ring => assert!(ring > 0, "no request went through the ring"),
        Transport::Dev => assert_eq!(ring, 0),
    }
}

#[test]
fn uring_mount_serve_unmount() {
    mount_serve_unmount(Transport::Ring);
}

#[test]
fn dev_fuse_mount_serve_unmount() {
    mount_serve_unmount(Transport::Dev);
}

/// `kill -9` of the server: calls into the mount fail with ENOTCONN (or
/// ECONNABORTED) instead of hanging, and the mount can be unmounted.
fn kill_server(t: Transport) {
    let _s = serial();
    let _u = switch(t);
    let mut m = mount(t);
    assert_eq!(fs::read_to_string(m.join("a")).expect("read"), "lower a\n");
    let pid = m.servers()[0];
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
    assert!(
        wait_process_gone(pid, HUNG),
        "server {pid} survived kill -9"
    );
    m.forget_servers();
    let p = m.join("f1");
    let r = on_cpu(cpus()[0], move || {
        fs::metadata(p).map_err(|e| e.raw_os_error())
    })
    .expect("a call into a killed server's mount hung");
    assert!(
        matches!(r, Err(Some(libc::ENOTCONN)) | Err(Some(libc::ECONNABORTED))),
        "a call into a killed server's mount: {r:?}"
    );
    m.unmount();
}

#[test]
fn uring_kill_9_of_the_server() {
    kill_server(Transport::Ring);
}

#[test]
fn dev_fuse_kill_9_of_the_server() {
    kill_server(Transport::Dev);
}

/// Sends SIGCONT to a stopped server when dropped, so a failing test
/// leaves nothing stopped.
struct Stopped(i32);

impl Stopped {
    fn stop(pid: i32) -> Stopped {
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// One request stuck: the bottom layer is another FUSE mount whose server
/// is stopped, and a read of a file there holds one of the server's
/// request slots on CPU 0. Meanwhile lookups and reads of other files,
/// issued from every CPU (CPU 0 included), are still answered: on the ring
/// the stuck request holds one entry of its CPU's queue, not the queue.
/// Once the layer answers again the read completes, and the server exits
/// after unmount.
fn stuck_request(t: Transport) {
    let _s = serial();
    let _u = switch(t);
    // Writable, so its lower files are read with direct I/O: every read
    // reaches its server.
    let mut slow = Layers::new()
        .lower(|l| l.file("slow", "slow data\n"))
        .materialize(false);
    slow.set_extra_options(Some("uring=off"));
    slow.mount_again(Backend::strata(), false);
    let mut m = layers().materialize(false);
    m.push_lower(slow.path());
    let stats = m.root().join("t.stats");
    m.set_extra_options(Some(&format!("{},stats={}", t.option(), stats.display())));
    m.mount_again(Backend::strata(), false);

    let mut file = fs::File::open(m.join("slow")).expect("open a file of the bottom layer");
    let mut first = String::new();
    file.read_to_string(&mut first).expect("read it once");
    assert_eq!(first, "slow data\n");

    let stopped = Stopped::stop(slow.servers()[0]);
    let (tx, stuck_rx) = mpsc::channel();
    std::thread::spawn(move || {
        pin(0);
        let mut buf = [0u8; 64];
        let r = std::os::unix::fs::FileExt::read_at(&file, &mut buf, 0);
        let _ = tx.send(r.map(|n| buf[..n].to_vec()));
    });

    for round in 0..2 {
        for cpu in cpus() {
            let name = format!("f{}", (cpu + round * 4) % 8);
            let p = m.join(&name);
            let got = on_cpu(cpu, move || {
                fs::read_to_string(p).map_err(|e| e.to_string())
            });
            assert_eq!(
                got,
                Some(Ok(format!("file {}\n", (cpu + round * 4) % 8))),
                "{name} from CPU {cpu} while a request is stuck (None: it hung)"
            );
        }
    }
    assert!(
        stuck_rx.try_recv().is_err(),
        "the read from the stopped layer was not stuck: the test proves nothing"
    );
    drop(stopped);
    let r = stuck_rx
        .recv_timeout(HUNG)
        .expect("the stuck read never completed after its layer answered again");
    assert_eq!(r.expect("the stuck read"), b"slow data\n");

    m.unmount();
    slow.unmount();
    assert_eq!(
        stat_line(&stats, "transport").as_deref(),
        Some(t.stats_name())
    );
}

#[test]
fn uring_stuck_request_does_not_block_its_cpu() {
    stuck_request(Transport::Ring);
}

#[test]
fn dev_fuse_stuck_request_does_not_block_the_mount() {
    stuck_request(Transport::Dev);
}

/// Sets `enable_uring` to N while alive; puts back what it found.
struct UringDisabled(String);

impl UringDisabled {
    fn new() -> UringDisabled {
        let old = fs::read_to_string(ENABLE_URING).expect(ENABLE_URING);
        fs::write(ENABLE_URING, "N").expect("write enable_uring");
        UringDisabled(old.trim().to_string())
    }
}

impl Drop for UringDisabled {
    fn drop(&mut self) {
        let _ = fs::write(ENABLE_URING, &self.0);
    }
}

/// The kernel does not offer the ring: `auto` (the default) mounts over
/// /dev/fuse, `on` fails the mount with a one-line reason naming the
/// switch, leaving nothing mounted.
#[test]
fn without_the_kernel_switch_auto_falls_back_and_on_fails() {
    let _s = serial();
    let _off = UringDisabled::new();
    let mut m = layers().materialize(false);
    let stats = m.root().join("t.stats");
    m.set_extra_options(Some(&format!("uring=auto,stats={}", stats.display())));
    m.mount_again(Backend::strata(), false);
    assert_eq!(fs::read_to_string(m.join("a")).expect("read"), "lower a\n");
    m.unmount();
    assert_eq!(stat_line(&stats, "transport").as_deref(), Some("/dev/fuse"));

    let m = layers().materialize(false);
    let opts = format!("{},uring=on", m.program_options());
    let err = m.root().join("on.stderr");
    let out = strata_tests::mount::run_program(
        &strata_program(),
        &["-o".into(), opts.into(), m.path().into()],
        m.root(),
        &err,
    );
    assert!(!out.success(), "uring=on mounted without the kernel's ring");
    assert!(
        !strata_tests::mount::is_mountpoint(m.path()),
        "a failed mount left {} mounted",
        m.path().display()
    );
    let msg = out.stderr.trim();
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    assert!(
        msg.contains("enable_uring"),
        "the reason names the switch: {msg}"
    );
}

/// With the kernel's switch on, `auto` serves over the ring.
#[test]
fn with_the_kernel_switch_auto_uses_the_ring() {
    let _s = serial();
    let _u = UringEnabled::acquire();
    let mut m = layers().materialize(false);
    let stats = m.root().join("t.stats");
    m.set_extra_options(Some(&format!("uring=auto,stats={}", stats.display())));
    m.mount_again(Backend::strata(), false);
    assert_eq!(fs::read_to_string(m.join("u")).expect("read"), "upper\n");
    m.unmount();
    assert_eq!(stat_line(&stats, "transport").as_deref(), Some("io_uring"));
}
