//! `strata-mount`: fuse-overlayfs's command line over Strata's union
//! filesystem, usable as the `mount_program` of podman, buildah and dockerd.
//!
//! `strata-mount [-f] [-d] -o lowerdir=A:B[,upperdir=U,workdir=W][,...] MNT`
//!
//! or, as mount helpers are called (`mount.fuse3 overlay MNT -o OPTIONS -t
//! strata-mount` runs `strata-mount overlay MNT -o OPTIONS`, which is how
//! containerd mounts `fuse3.strata-mount` mounts):
//! `strata-mount SOURCE MNT -o OPTIONS`, the source ignored as fuse-overlayfs
//! ignores it. mount(8)'s generic options that mean nothing here (`rw`,
//! `dev`, `suid`, `exec`, `nofail`, ...) are ignored too.
//!
//! Without `-f` it forks: the parent exits 0 once the mount is live (or
//! non-zero with a one-line reason on stderr, leaving nothing mounted), and
//! the server, a child forked after the handshake, goes on in the
//! background until the mount is unmounted (`fusermount3 -u MNT`) or it
//! gets SIGTERM/SIGINT, which unmount it. With FUSE over io_uring
//! (`uring=`) "live" includes the server's ring: the parent waits until the
//! child has registered it, which only the child can do.
#![deny(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use nix::sys::signal::SigSet;
use nix::unistd::{setsid, ForkResult};
use strata_fs::{MountOptions, Mounted};

struct Args {
    options: Vec<String>,
    /// `MNT`, or `SOURCE MNT` as mount helpers are called.
    positional: Vec<PathBuf>,
    foreground: bool,
    debug: bool,
}

fn usage() -> &'static str {
    "usage: strata-mount [-f] [-d] -o lowerdir=LOWER1:LOWER2[,upperdir=UPPER,workdir=WORK][,OPTIONS] [SOURCE] MOUNTPOINT"
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        options: Vec::new(),
        positional: Vec::new(),
        foreground: false,
        debug: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--version" | "-V" => {
                // A closed stdout (`| head -1`) is not an error worth a panic.
                let _ = writeln!(
                    std::io::stdout(),
                    "strata-mount version {}\nstrata-fs: FUSE union filesystem, fuse-overlayfs compatible",
                    env!("CARGO_PKG_VERSION")
                );
                return Ok(None);
            }
            "-h" | "--help" => {
                let _ = writeln!(std::io::stdout(), "{}", usage());
                return Ok(None);
            }
            "-f" => a.foreground = true,
            "-d" | "--debug" => {
                a.debug = true;
                a.foreground = true;
            }
            "-o" => a.options.push(it.next().ok_or("-o needs an argument")?),
            s if s.starts_with("-o") && s.len() > 2 => a.options.push(s[2..].to_string()),
            s if s.starts_with('-') => return Err(format!("unknown flag {s}\n{}", usage())),
            s => a.positional.push(PathBuf::from(s)),
        }
    }
    Ok(Some(a))
}

fn init_logging(debug: bool) {
    let filter = if debug {
        "debug".to_string()
    } else {
        std::env::var("STRATA_LOG").unwrap_or_else(|_| "warn".into())
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

fn serve(mounted: Mounted) -> ExitCode {
    if mounted.via_fusermount() {
        // Not allowed to unmount itself: a thread waits for the signals
        // (blocked in every thread, which inherit the mask) and has
        // fusermount3 unmount. fusermount3's own auto_unmount, when the
        // server dies, cannot check a mount whose server is gone without
        // allow_other (the kernel answers EACCES, not ENOTCONN).
        let mut set = SigSet::empty();
        for sig in strata_fs::sys::END_SIGNALS {
            set.add(sig);
        }
        let _ = set.thread_block();
        let mnt = mounted.mountpoint().to_path_buf();
        std::thread::spawn(move || {
            if set.wait().is_ok() {
                let _ = std::process::Command::new("fusermount3")
                    .arg("-u")
                    .arg("-z")
                    .arg(&mnt)
                    .status();
            }
        });
    } else if let Err(e) = strata_fs::sys::unmount_on_signals(mounted.mountpoint()) {
        tracing::warn!(%e, "cannot handle SIGTERM; unmount with fusermount3 -u or umount");
    }
    match mounted.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(?e, "FUSE session ended with an error");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let mut args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-mount: {e}");
            return ExitCode::from(2);
        }
    };
    // `MNT`, or `SOURCE MNT` (the mount-helper form; the source is ignored).
    let mnt = match args.positional.as_slice() {
        [mnt] | [_, mnt] => mnt.clone(),
        [] => {
            eprintln!("strata-mount: no mountpoint given\n{}", usage());
            return ExitCode::from(2);
        }
        more => {
            eprintln!(
                "strata-mount: {} paths given, expected [SOURCE] MOUNTPOINT\n{}",
                more.len(),
                usage()
            );
            return ExitCode::from(2);
        }
    };
    let opts = match MountOptions::parse(args.options.iter().map(String::as_str)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("strata-mount: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = opts.validate() {
        eprintln!("strata-mount: {e}");
        return ExitCode::from(2);
    }
    // `-o debug` as fuse-overlayfs: found among the parsed options, so a
    // layer path with an escaped comma (`x\,debug`) is not mistaken for it.
    if opts.ignored.iter().any(|o| o == "debug") {
        args.debug = true;
        args.foreground = true;
    }
    init_logging(args.debug);
    // Everything that can fail happens here, in the caller's process, so
    // the caller hears why: opening the layers, the mount and the FUSE
    // handshake. No thread exists yet.
    let mounted = match Mounted::mount(opts, &mnt) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("strata-mount: {e}");
            return ExitCode::from(1);
        }
    };
    if args.foreground {
        return serve(mounted);
    }
    // The mount is live and the kernel holds requests until the child
    // serves them, so the parent returns at once; with FUSE over io_uring
    // it first waits for the child to register the ring, which can only
    // happen there (the entries' buffers are the server's memory), so that
    // a failure is this command's error. Single-threaded, so fork is sound.
    let ready = if mounted.uring() {
        match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("strata-mount: pipe: {e}");
                let _ = strata_fs::unmount(mounted.mountpoint());
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let mut mounted = mounted;
    match strata_fs::sys::fork_single_threaded() {
        Err(e) => {
            eprintln!("strata-mount: fork: {e}");
            let _ = strata_fs::unmount(mounted.mountpoint());
            ExitCode::from(1)
        }
        // The child serves; the parent's copy of the session is left alone
        // (dropping it would run the filesystem's end-of-session code), and
        // its fds close as it exits.
        Ok(ForkResult::Parent { .. }) => {
            std::mem::forget(mounted);
            let Some((r, w)) = ready else {
                return ExitCode::SUCCESS;
            };
            drop(w);
            let mut msg = String::new();
            let _ = std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut msg);
            match msg.as_str() {
                "ok" => ExitCode::SUCCESS,
                "" => {
                    eprintln!("strata-mount: the FUSE server ended before it served the mount");
                    ExitCode::from(1)
                }
                why => {
                    eprintln!("strata-mount: {why}");
                    ExitCode::from(1)
                }
            }
        }
        Ok(ForkResult::Child) => {
            let _ = setsid();
            redirect_stdio();
            if let Some((r, w)) = ready {
                drop(r);
                mounted.on_ready(move |res| {
                    let msg = match res {
                        Ok(()) => "ok".to_string(),
                        Err(why) => why,
                    };
                    let _ = std::io::Write::write_all(&mut std::fs::File::from(w), msg.as_bytes());
                });
            }
            serve(mounted)
        }
    }
}

/// Points stdin, stdout and stderr at /dev/null so the server holds no
/// terminal or pipe of its caller (podman waits for EOF on the stderr pipe it
/// gives the mount program). Logs go to `$STRATA_LOG_FILE` when set.
fn redirect_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let log = std::env::var_os("STRATA_LOG_FILE").and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        let _ = nix::unistd::dup2_stderr(log.as_ref().unwrap_or(&null));
    }
}
