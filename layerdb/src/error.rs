//! The error type of the layer database.
//!
//! Every variant carries what a user needs to act: the path, the tar entry,
//! the blob or the reference that failed.

use std::io;
use std::path::PathBuf;

use crate::ids::{ChainId, Digest, ImageId};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the layer database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation on the store or on a user's path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("open", "rename", ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Reading or writing a stream (stdin, an archive, a compressed layer)
    /// failed, or it ended early.
    #[error("{what}: {source}")]
    Stream {
        /// Which stream ("layer sha256:…", "archive foo.tar").
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A layer tar is malformed or hostile (escapes the layer, duplicate
    /// entry, bad header...). Nothing was written to the store.
    #[error("refusing layer tar entry {entry:?}: {reason}")]
    BadEntry {
        /// The entry name as it appears in the tar.
        entry: String,
        /// Why it was refused.
        reason: String,
    },

    /// A file's owner is not mapped in the user namespace the store is
    /// used from (rootless, with too few subordinate ids).
    #[error("cannot give {path} the owner {uid}:{gid}: not mapped in this user namespace; give the user a range of 65536 ids in /etc/subuid and /etc/subgid")]
    UnmappedOwner {
        /// The entry's path in the layer.
        path: String,
        /// The owner's uid in the tar.
        uid: u32,
        /// The owner's gid.
        gid: u32,
    },

    /// A tar stream is not a valid tar (bad checksum, truncated, garbage).
    #[error("corrupt tar stream {what}: {reason}")]
    CorruptTar {
        /// Which stream.
        what: String,
        /// What is wrong.
        reason: String,
    },

    /// Content does not hash to the digest that names it.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was hashed ("blob sha256:…", "layer 2 of image …").
        what: String,
        /// The digest it should have had.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
    },

    /// An image archive is not in a format we can read, or is inconsistent
    /// (a manifest references a missing blob, a config does not parse...).
    #[error("bad image archive {archive}: {reason}")]
    BadArchive {
        /// The archive (path or "stdin").
        archive: String,
        /// What is wrong, naming the file or blob.
        reason: String,
    },

    /// A JSON document (config, manifest, index) does not parse.
    #[error("{what} does not parse: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },

    /// A reference is not a valid `NAME[:TAG]`, ID or ID prefix.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// Why it is invalid.
        reason: String,
    },

    /// No image matches a reference.
    #[error("image not known: {reference}; see the list of images")]
    ImageNotFound {
        /// The reference as given.
        reference: String,
    },

    /// An ID prefix matches several images.
    #[error("ambiguous image ID prefix {reference:?}: matches {}", list_ids(.candidates))]
    AmbiguousReference {
        /// The prefix as given.
        reference: String,
        /// Every image it matches.
        candidates: Vec<ImageId>,
    },

    /// The image is used by containers (or other holders) and removal was
    /// not forced.
    #[error("image {image} is in use by {}; remove them first or force the removal", .users.join(", "))]
    ImageInUse {
        /// The image.
        image: ImageId,
        /// Who uses it.
        users: Vec<String>,
    },

    /// The image has several tags and removal by ID was not forced.
    #[error("image {image} is referenced by several tags ({}); remove them by name or force the removal", .tags.join(", "))]
    ImageHasTags {
        /// The image.
        image: ImageId,
        /// Its tags.
        tags: Vec<String>,
    },

    /// A layer the store's metadata refers to is not on disk.
    #[error("layer {chain} is missing or damaged: {reason}; run 'strata system check'")]
    LayerMissing {
        /// The layer.
        chain: ChainId,
        /// What is wrong.
        reason: String,
    },

    /// A `--change` instruction could not be understood.
    #[error("invalid config change {change:?}: {reason}")]
    InvalidChange {
        /// The instruction as given.
        change: String,
        /// Why.
        reason: String,
    },

    /// The store's metadata is damaged.
    #[error("store {path} is damaged: {reason}; run 'strata system check'")]
    Corrupt {
        /// The file that is damaged.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A registry refused a request, failed, or sent something unusable.
    #[error("registry {registry}: {message}")]
    Registry {
        /// The registry (`localhost:5000`, `quay.io`).
        registry: String,
        /// What went wrong, naming the manifest or blob.
        message: String,
    },

    /// A registry refused the credentials (or wanted some and had none).
    #[error("registry {registry}: unauthorized: {message}")]
    Unauthorized {
        /// The registry.
        registry: String,
        /// What it said, and what to do.
        message: String,
    },

    /// One blob of an image could not be fetched, verified or stored; the
    /// image was refused and the store is as it was.
    #[error("blob {digest}: {error}")]
    Blob {
        /// The blob's digest (compressed layer or config).
        digest: Digest,
        /// Why (printed inline: one line for the user).
        error: Box<Error>,
    },

    /// Something valid that this implementation does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

fn list_ids(ids: &[ImageId]) -> String {
    ids.iter().map(|i| i.short()).collect::<Vec<_>>().join(", ")
}

impl Error {
    /// An [`Error::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn stream(what: impl Into<String>, source: io::Error) -> Self {
        Error::Stream {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn bad_entry(entry: impl AsRef<[u8]>, reason: impl Into<String>) -> Self {
        Error::BadEntry {
            entry: String::from_utf8_lossy(entry.as_ref()).into_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn bad_archive(archive: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadArchive {
            archive: archive.into(),
            reason: reason.into(),
        }
    }
}

/// Attaches a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
