//! Keeping the node table bounded.
//!
//! The kernel holds a node id for every dentry it caches and forgets it
//! only when it evicts the inode, which on a machine with free memory is
//! almost never: after `find` over a million files the server would hold a
//! million nodes. So when the table grows past its limit (`max_nodes=`,
//! default [`DEFAULT_MAX_NODES`]), a background thread asks the kernel to
//! drop the least recently used ones (`FUSE_NOTIFY_PRUNE`, Linux 6.18):
//! the kernel drops only inodes nothing uses (no open file, no dentry in
//! use, no mount on it) and sends FORGET for each, so the table shrinks
//! back to three quarters of the limit. A pruned name costs one LOOKUP the
//! next time it is used, as after the kernel's own cache reclaim.
//!
//! Files go before directories (a directory cannot be dropped while the
//! kernel caches names inside it), the least recently used first. The
//! thread never runs inside a request handler, and it is started only when
//! the table first outgrows its limit: a process that mounts, then forks
//! (the runtime's supervisor clones the container's init before serving)
//! must have no other thread at that moment.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tracing::{debug, warn};

use crate::nodes::NodeId;
use crate::overlay::Overlay;

/// Nodes kept at most by default.
pub const DEFAULT_MAX_NODES: usize = 112 * 1024;

/// Node ids per notification (the kernel reads them in batches of 512).
const BATCH: usize = 512;

/// The pruning thread's doorbell; the thread starts at the first ring.
#[derive(Debug)]
pub struct Pruner {
    ov: Weak<Overlay>,
    limit: usize,
    bell: OnceLock<SyncSender<()>>,
}

impl Pruner {
    /// Asks for a pruning round (never blocks; rings at most once).
    pub fn ring(&self) {
        let bell = self.bell.get_or_init(|| {
            let (bell, rx) = sync_channel(1);
            let (weak, limit) = (self.ov.clone(), self.limit);
            let spawned = std::thread::Builder::new()
                .name("strata-prune".into())
                .spawn(move || run(weak, rx, limit));
            if let Err(e) = spawned {
                warn!(%e, "cannot start the node pruning thread; the node table is unbounded");
            }
            bell
        });
        let _ = bell.try_send(());
    }
}

/// Arms the pruning of `ov` (once its notifier is set); the thread starts
/// when the table first outgrows its limit and ends with the filesystem.
pub fn start(ov: &Arc<Overlay>) {
    let limit = ov.max_nodes();
    if limit == 0 {
        return;
    }
    let _ = ov.pruner.set(Pruner {
        ov: Arc::downgrade(ov),
        limit,
        bell: OnceLock::new(),
    });
}

fn run(weak: Weak<Overlay>, rx: Receiver<()>, limit: usize) {
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => {
                if weak.strong_count() == 0 {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(ov) = weak.upgrade() else { return };
        match round(&ov, limit) {
            Ok(n) => debug!(asked = n, live = ov.nodes.len(), "pruned the node table"),
            Err(e) => {
                warn!(%e, "the kernel refused FUSE_NOTIFY_PRUNE; the node table is unbounded");
                return;
            }
        }
        drop(ov);
        // Let the FORGETs arrive before looking again.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One round: asks the kernel to drop enough of the least recently used
/// nodes to come back to three quarters of `limit`. Returns how many.
fn round(ov: &Overlay, limit: usize) -> std::io::Result<usize> {
    let live = ov.nodes.len();
    if live <= limit {
        return Ok(0);
    }
    let Some(notifier) = ov.notifier.get() else {
        return Ok(0);
    };
    let want = live - limit * 3 / 4;
    let mut cands = ov.nodes.prune_candidates();
    let now = ov.nodes.next_epoch();
    cands.sort_unstable();
    let ids: Vec<u64> = cands
        .into_iter()
        .filter(|c| c.1 != now)
        .take(want)
        .map(|c| c.2 .0)
        .collect();
    for chunk in ids.chunks(BATCH) {
        notifier.prune(chunk)?;
    }
    ov.stats_pruned
        .fetch_add(ids.len() as u64, Ordering::Relaxed);
    Ok(ids.len())
}

/// What the pruner sorts by: directories last, then least recently used.
pub type Candidate = (bool, u32, NodeId);
