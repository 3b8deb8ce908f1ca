//! strata-runtime: containers on Strata's FUSE union filesystem, and the
//! `strata` command.
//!
//! It joins `strata-fs` (mounting a layer stack) and `strata-layerdb` (the
//! store of layers and images). A container is an image's layers under an
//! init layer and a writable upper directory, mounted by a supervisor
//! process ([`supervisor`]) and made the root of new mount, PID, UTS and IPC
//! namespaces ([`rootfs`]).
//!
//! Map: [`cli`] (arguments) → [`commands`] (one function per command) →
//! [`container`] (config and state on disk), [`spec`] (image config +
//! flags), [`supervisor`] (mount, fork init, wait, record), [`rootfs`]
//! (mounts inside the container, through the [`sys::Syscall`] seam),
//! [`process`] (user, cwd, exec), [`attach`] (terminals and signals),
//! [`diff`], [`format`] (docker-style output), [`build`] (`strata build`:
//! Containerfiles, the layer cache).
//!
//! Invariant: no `unsafe` outside [`sys`].
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod attach;
pub mod build;
pub mod cli;
pub mod commands;
pub mod container;
pub mod diff;
pub mod format;
pub mod ids;
pub mod mounts;
pub mod proc;
pub mod process;
pub mod rootfs;
pub mod spec;
pub mod supervisor;
pub mod sys;
pub mod users;
