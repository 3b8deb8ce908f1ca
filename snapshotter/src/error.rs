//! The snapshotter's errors, and the gRPC status each becomes.
//!
//! containerd turns the status code back into its own error kinds
//! (`errdefs.FromGRPC`) and acts on them: the unpacker retries a Prepare that
//! answers `AlreadyExists`, the garbage collector skips a Remove that answers
//! `FailedPrecondition`. So each variant maps to the code containerd's own
//! snapshotters give for the same case.

use std::path::PathBuf;

/// What can go wrong in a snapshot operation; each names the snapshot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot has this key.
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    /// The key (or commit name) is taken.
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// A parent that is not a committed snapshot.
    #[error("parent {0:?} is not a committed snapshot; commit it first")]
    ParentNotCommitted(String),
    /// Commit of a snapshot that is not active.
    #[error("snapshot {0:?} is not active; only active snapshots can be committed")]
    NotActive(String),
    /// Remove of a snapshot that others are built on.
    #[error("snapshot {key:?} has {children} child snapshot(s); remove them first")]
    HasChildren { key: String, children: usize },
    /// A request that can never succeed as given.
    #[error("{0}")]
    InvalidArgument(String),
    /// A filter that does not parse.
    #[error("filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    /// The metadata file exists but cannot be read as metadata.
    #[error("metadata {}: {reason}; restore it from a backup or move it away to start empty", path.display())]
    CorruptMetadata { path: PathBuf, reason: String },
    /// Another snapshotter serves this root.
    #[error("{} is locked by another strata-snapshotter; stop it or choose another --root", path.display())]
    Locked { path: PathBuf },
    /// A file or directory operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds what was done, and on which path, to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.into(),
            source,
        })
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::ParentNotCommitted(_) | Error::InvalidArgument(_) | Error::Filter { .. } => {
                tonic::Status::invalid_argument(msg)
            }
            Error::NotActive(_) | Error::HasChildren { .. } => {
                tonic::Status::failed_precondition(msg)
            }
            Error::CorruptMetadata { .. } | Error::Locked { .. } | Error::Io { .. } => {
                tonic::Status::internal(msg)
            }
        }
    }
}
