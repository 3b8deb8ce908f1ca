//! `run -it` gives the container a real terminal: the test plays the
//! user's terminal (a pty whose slave is strata's controlling terminal)
//! and checks that the window size, a resize and Ctrl-C reach the
//! container, and that the exit code comes back.

mod common;

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Env;
use nix::pty::{openpty, Winsize};

struct Screen {
    rx: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Screen {
    /// Waits (bounded) until the output so far contains `s`.
    fn expect(&mut self, s: &str) {
        let start = Instant::now();
        while !self.seen.contains(s) {
            let left = Duration::from_secs(30).saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(b) => self.seen.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => panic!("timed out waiting for {s:?}; screen:\n{}", self.seen),
            }
        }
    }
}

fn resize(fd: impl AsFd, rows: u16, cols: u16) {
    let ws = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    nix::ioctl_write_ptr_bad!(set_winsize, nix::libc::TIOCSWINSZ, Winsize);
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCSWINSZ reads the winsize we pass.
    unsafe { set_winsize(fd.as_fd().as_raw_fd(), &ws) }.unwrap();
}

#[test]
fn run_it_passes_size_resize_ctrl_c_and_exit_code() {
    let env = Env::new();
    let ws = Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&ws), None).unwrap();
    let mut cmd = std::process::Command::new("setsid");
    cmd.arg("-c")
        .arg(env!("CARGO_BIN_EXE_strata"))
        .arg("--root")
        .arg(&env.root)
        .args(["run", "-it", "--name", "tty", "busybox", "sh"]);
    cmd.stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave.try_clone().unwrap());
    let mut child = cmd.spawn().unwrap();
    drop(pty.slave);
    let master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Screen {
        rx,
        seen: String::new(),
    };
    let mut w = master.try_clone().unwrap();
    w.write_all(b"stty size; tty; echo mark-$((40+2))\r")
        .unwrap();
    screen.expect("mark-42");
    assert!(screen.seen.contains("33 101"), "{}", screen.seen);
    assert!(!screen.seen.contains("not a tty"), "{}", screen.seen);
    // A resize of the user's terminal reaches the container's.
    resize(&master, 40, 120);
    env.wait_until("the new size", || {
        env.run(&["exec", "tty", "sh", "-c", "stty size < /dev/console"])
            .stdout
            == "40 120\n"
    });
    // Ctrl-C interrupts the foreground command, not the shell.
    w.write_all(b"sleep 1000\r").unwrap();
    env.wait_until("sleep to run", || {
        env.run(&["exec", "tty", "pidof", "sleep"]).code == 0
    });
    w.write_all(b"\x03").unwrap();
    env.wait_until("sleep to be interrupted", || {
        env.run(&["exec", "tty", "pidof", "sleep"]).code != 0
    });
    w.write_all(b"echo rc=$?\r").unwrap();
    screen.expect("rc=130");
    w.write_all(b"exit 5\r").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(5), "{}", screen.seen);
}
