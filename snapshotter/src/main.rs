//! `strata-snapshotter`: containerd's Snapshots API on a unix socket,
//! answering with Strata mounts.
//!
//! `strata-snapshotter --root /var/lib/strata-snapshotter --address /run/strata-snapshotter/snapshotter.sock`
//!
//! Runs in the foreground until SIGTERM or SIGINT, then stops accepting,
//! finishes the requests in flight and removes its socket.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use strata_snapshotter::proto::containerd::services::snapshots::v1::snapshots_server::SnapshotsServer;
use strata_snapshotter::service::Service;
use strata_snapshotter::Snapshotter;

#[derive(Parser)]
#[command(
    version,
    about = "containerd proxy snapshotter serving Strata (FUSE union filesystem) mounts"
)]
struct Args {
    /// Where snapshots and their metadata are kept.
    #[arg(
        long,
        default_value = "/var/lib/strata-snapshotter",
        env = "STRATA_SNAPSHOTTER_ROOT"
    )]
    root: PathBuf,
    /// The unix socket to serve on (containerd's `[proxy_plugins.strata] address`).
    #[arg(
        long,
        default_value = "/run/strata-snapshotter/snapshotter.sock",
        env = "STRATA_SNAPSHOTTER_ADDRESS"
    )]
    address: PathBuf,
    /// Log level or tracing filter (also `STRATA_LOG`), e.g. `debug`.
    #[arg(long)]
    log: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = args
        .log
        .clone()
        .or_else(|| std::env::var("STRATA_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-snapshotter: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let sn = Arc::new(Snapshotter::open(&args.root).context("open the snapshot root")?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    rt.block_on(serve(sn, &args.address))
}

/// Removes a socket left by a previous run; refuses to remove anything else.
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "{} is served by another process; stop it or choose another --address",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("remove stale socket {}", path.display()))
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; remove it or choose another --address",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("stat {}", path.display())),
    }
}

async fn serve(sn: Arc<Snapshotter>, address: &Path) -> anyhow::Result<()> {
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    remove_stale_socket(address)?;
    let listener = tokio::net::UnixListener::bind(address)
        .with_context(|| format!("listen on {}", address.display()))?;
    tracing::info!(root = %sn.root().display(), address = %address.display(), "serving containerd's Snapshots API");
    let result = tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(Service::new(sn)))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown(),
        )
        .await;
    let _ = std::fs::remove_file(address);
    result.context("serve gRPC")
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action (exit) applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("stopping");
}
