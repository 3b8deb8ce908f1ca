//! strata-layerdb: the store of layers, images and tags that Strata stacks
//! into containers, and the image formats users already have.
//!
//! # What it does
//!
//! - [`Store`]: a root directory (default `/var/lib/strata`, `$STRATA_ROOT`,
//!   or an explicit path; see [`Store::default_root`]) holding layers
//!   extracted one directory per chainID (overlay-form whiteouts, ready for
//!   `lowerdir`), image configs as their exact bytes, and tags.
//! - [`Store::pull`], [`Store::push`], [`registry::login`] (feature
//!   `registry`, on by default): the OCI distribution API, see [`registry`].
//! - [`Store::import`] (rootfs tarball, plain/gzip/zstd, any reader),
//!   [`Store::load`] / [`Store::load_reader`] (docker-archive, OCI layout dir
//!   or tar), [`Store::save`] / [`Store::save_oci_dir`] (docker-archive, OCI),
//!   [`Store::commit`] (upper directory → layer + image), [`export_dir`]
//!   (flat tar of any tree), [`Store::images`], [`Store::inspect`],
//!   [`Store::history`], [`Store::tag`], [`Store::untag`], [`Store::remove`],
//!   [`Store::resolve`], [`Store::lower_dirs`], [`Store::check`];
//!   [`Store::amend`] and the build cache ([`buildcache`]) for `strata build`.
//!
//! # Layer identity: why a tar-split record
//!
//! A layer's diffID is the SHA-256 of its uncompressed tar. Layers are kept
//! extracted (the filesystem stacks directories), and `save` must write a tar
//! with the recorded diffID, byte for byte. Two ways were possible: keep the
//! original tar next to the directory (doubles the disk use of every image),
//! or regenerate a tar from the directory and make *that* the layer's
//! identity (then a layer loaded from podman would change its diffID, and
//! every image ID with it). Strata does neither: while importing it records
//! the tar's non-content bytes verbatim and content as references into the
//! extracted tree ([`tarsplit`]), the approach of containers/storage. `save`
//! rebuilds the original stream exactly, and `check` re-hashes the rebuilt
//! stream. The cost: about 512 bytes per entry, compressed; and metadata-only
//! damage to an extracted file (a changed mode) is not seen by the hash.
//!
//! # Crash safety and concurrency
//!
//! See [`store`]: everything is written to `tmp/` and renamed into place
//! after `syncfs`/`fsync`; an exclusive `flock` on `strata.lock` guards
//! changes, and the slow extraction runs outside it. A killed process leaves
//! only `tmp/` debris, which [`Store::check`] removes.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod abilities;
pub mod archive;
pub mod buildcache;
pub mod check;
pub mod commit;
pub mod config;
pub mod error;
pub(crate) mod extract;
pub(crate) mod fsutil;
pub mod ids;
pub mod pack;
pub mod reference;
#[cfg(feature = "registry")]
pub mod registry;
pub mod store;
pub mod tarbounds;
pub(crate) mod tarfmt;
pub mod tarsplit;

pub use abilities::Abilities;
pub use archive::{Compression, LoadOptions, LoadedImage, SaveFormat};
pub use check::{CheckReport, Problem};
pub use config::{CommitMeta, ConfigChange, ImageConfig};
pub use error::{Error, Result};
pub use ids::{ChainId, DiffId, Digest, ImageId};
pub use pack::export_dir;
pub use reference::{ImageName, ImageRef, ToImageRef};
pub use store::{
    HistoryEntry, ImageInfo, ImageSummary, ImportOptions, LayerInfo, Removed, Store, StoreOptions,
};
pub use tarbounds::BoundedTarReader;
