//! strata-snapshotter: a containerd proxy snapshotter whose mounts are
//! Strata's union filesystem (`strata-mount`, as `fuse3.strata-mount`).
//!
//! containerd talks to it over gRPC on a unix socket (`[proxy_plugins]` in
//! its config) with its Snapshots API; the snapshotter keeps each
//! snapshot as a directory and answers with mounts that containerd (its
//! shims, its applier) performs. It mounts nothing itself.
//!
//! | module | owns |
//! | --- | --- |
//! | `service` | the gRPC service: requests → [`Snapshotter`] → replies |
//! | `snapshotter` | the operations, the directories, crash-safe order of work, Cleanup |
//! | `store` | the metadata file: records, atomic and durable replacement |
//! | `mounts` | which mount each kind of snapshot gets; unpacking without FUSE |
//! | `filter` | containerd's filter language, for List |
//! | `usage` | disk use of a tree, as containerd counts it |
//! | `crash` | crash points for the crash tests |
//! | `client` | a client on the unix socket |
#![deny(unsafe_code)]

pub mod client;
pub mod crash;
pub mod error;
pub mod filter;
pub mod mounts;
pub mod service;
pub mod snapshotter;
pub mod store;
pub mod usage;

pub use error::{Error, Result};
pub use snapshotter::Snapshotter;

/// The code generated from containerd's protos (`proto/`, Apache-2.0).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    /// `containerd.types`.
    pub mod containerd {
        /// `containerd.types`: `Mount`.
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        /// `containerd.services`.
        pub mod services {
            /// `containerd.services.snapshots`.
            pub mod snapshots {
                /// `containerd.services.snapshots.v1`: the Snapshots service.
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }
}
