//! strata-runtime: containers on Strata's FUSE union filesystem, and the
//! `strata` command.
//!
//! It joins `strata-fs` (mounting a layer stack) and `strata-layerdb` (the
//! store of layers and images). A container is an image's layers under an
//! init layer and a writable upper directory, mounted by a supervisor
//! process ([`supervisor`]) and made the root of a container that youki's
//! `libcontainer` starts from an OCI runtime spec ([`oci`], [`launch`]):
//! new namespaces, docker's default capabilities, seccomp profile, masked
//! paths, device rules and cgroup limits ([`security`], [`resources`]).
//!
//! Map: [`cli`] (arguments) → [`commands`] (one function per command) →
//! [`container`] (config and state on disk), [`spec`] (image config +
//! flags), [`supervisor`] (mount, serve, start, wait, record), [`rootfs`]
//! (the init layer), [`oci`] (the runtime spec), [`network`] (pasta,
//! slirp4netns, `-p`), [`launch`]
//! (libcontainer), [`beneath`] (paths resolved inside a container's tree),
//! [`process`] (finding and exec'ing the program), [`attach`] (terminals and signals),
//! [`diff`], [`format`] (docker-style output), [`build`] (`strata build`:
//! Containerfiles, the layer cache).
//!
//! Invariant: no `unsafe` outside [`sys`].
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod attach;
pub mod beneath;
pub mod build;
pub mod cli;
pub mod commands;
pub mod container;
pub mod cp;
pub mod diff;
pub mod format;
pub mod ids;
pub mod launch;
pub mod mounts;
pub mod network;
pub mod oci;
pub mod proc;
pub mod process;
pub mod resources;
pub mod rootfs;
pub mod rootless;
pub mod security;
pub mod signal;
pub mod spec;
pub mod supervisor;
pub mod sys;
pub mod users;
