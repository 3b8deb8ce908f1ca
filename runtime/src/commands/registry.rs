//! Registry commands: pull, push, login, logout. The work is in
//! `strata_layerdb::registry`; here are the flags, the progress bars (one
//! per blob, on stderr, only when it is a terminal) and what is printed.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, IsTerminal, Read};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use strata_layerdb::registry::{
    self, Credentials, LayerCompression, ManifestFormat, NoProgress, Platform, Progress,
    PullOptions, PushOptions,
};
use strata_layerdb::Digest;

use super::Ctx;
use crate::cli::{LoginArgs, PullArgs, PushArgs, PushCompression, PushFormat};

/// One bar per blob, like docker's.
struct Bars {
    mp: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
    verb: &'static str,
    with_total: bool,
}

impl Bars {
    fn new(verb: &'static str, with_total: bool) -> Bars {
        Bars {
            mp: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
            verb,
            with_total,
        }
    }

    fn bar(&self, d: &Digest, size: u64) -> ProgressBar {
        let mut bars = self.bars.lock().expect("not poisoned");
        bars.entry(*d)
            .or_insert_with(|| {
                let tpl = if self.with_total {
                    "{prefix}: {msg:<16} [{bar:30}] {bytes}/{total_bytes}"
                } else {
                    "{prefix}: {msg:<16} {bytes}"
                };
                let pb = self.mp.add(ProgressBar::new(size));
                pb.set_style(
                    ProgressStyle::with_template(tpl)
                        .expect("a valid template")
                        .progress_chars("=> "),
                );
                pb.set_prefix(d.short());
                pb.set_message("Waiting");
                pb
            })
            .clone()
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        // The bars stay, as docker's do; what is printed next starts on a
        // line of its own.
        if !self.bars.lock().expect("not poisoned").is_empty() {
            eprintln!();
        }
    }
}

impl Progress for Bars {
    fn queued(&self, d: &Digest, size: u64) {
        self.bar(d, size);
    }
    fn started(&self, d: &Digest, size: u64) {
        self.bar(d, size).set_message(self.verb);
    }
    fn advanced(&self, d: &Digest, bytes: u64) {
        self.bar(d, 0).inc(bytes);
    }
    fn finished(&self, d: &Digest, status: &str) {
        self.bar(d, 0).finish_with_message(status.to_string());
    }
    fn skipped(&self, d: &Digest, status: &str) {
        let b = self.bar(d, 0);
        b.set_style(ProgressStyle::with_template("{prefix}: {msg}").expect("a valid template"));
        b.finish_with_message(status.to_string());
    }
}

fn progress(quiet: bool, verb: &'static str, with_total: bool) -> Box<dyn Progress> {
    if quiet || !std::io::stderr().is_terminal() {
        Box::new(NoProgress)
    } else {
        Box::new(Bars::new(verb, with_total))
    }
}

pub(super) fn pull(ctx: &Ctx, a: &PullArgs) -> Result<i32> {
    let platform = a
        .platform
        .as_deref()
        .map(str::parse::<Platform>)
        .transpose()?;
    let opts = PullOptions {
        platform,
        tls_verify: a.tls_verify,
        ..PullOptions::default()
    };
    let p = progress(a.quiet, "Downloading", true);
    let pulled = ctx.store.pull(&a.image, &opts, p.as_ref())?;
    drop(p);
    println!("{}", pulled.id.hex());
    Ok(0)
}

pub(super) fn push(ctx: &Ctx, a: &PushArgs) -> Result<i32> {
    let format = match a.format {
        PushFormat::Oci => ManifestFormat::Oci,
        PushFormat::V2s2 => ManifestFormat::V2s2,
    };
    let compression = match a.compression_format {
        PushCompression::Gzip => LayerCompression::Gzip,
        PushCompression::Zstd => LayerCompression::Zstd,
    };
    let opts = PushOptions {
        tls_verify: a.tls_verify,
        format,
        compression,
        ..PushOptions::default()
    };
    let p = progress(a.quiet, "Pushing", false);
    let pushed = ctx
        .store
        .push(&a.image, a.destination.as_deref(), &opts, p.as_ref())?;
    drop(p);
    if let Some(f) = &a.digestfile {
        fs::write(f, pushed.digest.to_string())
            .with_context(|| format!("write {}", f.display()))?;
    }
    if !a.quiet && std::io::stderr().is_terminal() {
        eprintln!(
            "{}: digest: {} size: {}",
            pushed.destination, pushed.digest, pushed.size
        );
    }
    Ok(0)
}

/// Asks on the terminal (stdin), without echo for a password.
fn prompt(label: &str, hide: bool) -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    eprint!("{label}: ");
    let saved = if hide {
        let t = tcgetattr(&stdin).context("read the terminal's settings")?;
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turn echo off")?;
        Some(t)
    } else {
        None
    };
    let mut s = String::new();
    let r = stdin.lock().read_line(&mut s);
    if let Some(t) = saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &t);
        eprintln!();
    }
    r.context("read from the terminal")?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

pub(super) fn login(a: &LoginArgs) -> Result<i32> {
    let tty = std::io::stdin().is_terminal();
    let username = match &a.username {
        Some(u) => u.clone(),
        None if tty && !a.password_stdin => prompt("Username", false)?,
        None => bail!("give the user name with -u USER"),
    };
    let password = match (&a.password, a.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(p), false) => p.clone(),
        (None, true) => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("read the password from stdin")?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) if tty => prompt("Password", true)?,
        (None, false) => bail!("give the password with --password-stdin (or -p PASSWORD)"),
    };
    let creds = Credentials { username, password };
    let file = registry::login(&a.registry, &creds, a.tls_verify, a.authfile.as_deref())?;
    tracing::debug!(file = %file.display(), "credentials stored");
    println!("Login Succeeded!");
    Ok(0)
}

pub(super) fn logout(reg: &str) -> Result<i32> {
    registry::logout(reg)?;
    println!("Removed login credentials for {reg}");
    Ok(0)
}
