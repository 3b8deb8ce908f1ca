//! strata-ovl: the overlay on-disk format, in one place.
//!
//! What a layer directory means to the kernel's overlayfs, fuse-overlayfs,
//! containers/storage and OCI layer tars, and so to every part of Strata
//! that reads or writes one (the FUSE mount, extraction and packing of
//! layers, `strata diff`, build):
//!
//! - [`names`]: the AUFS/OCI names (`.wh.NAME`, `.wh..wh..opq`) and the
//!   private xattrs (`trusted.overlay.*`, `user.overlay.*`,
//!   `user.fuseoverlayfs.*`, the owner overrides), with the filter that keeps them private;
//! - [`layer`]: every whiteout and opaque form read from one layer, and
//!   the forms written into an upper one;
//! - [`ownership`]: owners and modes kept in an xattr (fuse-overlayfs'
//!   `xattr_permissions`, containers/storage's `force_mask`);
//! - [`forms`]: which forms to write, probed from what the upper
//!   filesystem and the caller's privileges allow;
//! - [`stack`]: a path resolved through a stack of layer directory fds,
//!   beneath each root, and merged listings;
//! - [`sys`]: the layer `*at` syscalls (openat2 beneath a root, xattrs,
//!   listings), the crate's only `unsafe`.
//!
//! strata-fs and strata-layerdb both build on it and never on each other.
#![deny(unsafe_code)]

pub mod forms;
pub mod layer;
pub mod names;
pub mod ownership;
mod path;
pub mod stack;
pub mod sys;

pub use forms::{Forms, OpaqueForm, Probe, WhiteoutForm};
pub use names::{
    escape_xattr, is_escaped_xattr, is_private_xattr, unescape_xattr, EntryName, Xattr, XattrNs,
};
pub use ownership::{OverrideKind, OverrideMode, OverrideStat};
pub use path::RelPath;
pub use stack::{Found, MergedEntry, Stack};
