//! strata-layerdb: the store of layers, images and tags.
#![deny(unsafe_code)]

pub mod archive;
pub mod check;
pub mod commit;
pub mod config;
pub mod error;
pub(crate) mod extract;
pub(crate) mod fsutil;
pub mod ids;
pub mod pack;
pub mod reference;
pub mod store;
pub(crate) mod sys;
pub(crate) mod tarfmt;
pub(crate) mod tarsplit;

pub use archive::{Compression, LoadOptions, LoadedImage, SaveFormat};
pub use check::{CheckReport, Problem};
pub use config::{CommitMeta, ConfigChange, ImageConfig};
pub use error::{Error, Result};
pub use pack::export_dir;
pub use ids::{ChainId, DiffId, Digest, ImageId};
pub use reference::ImageName;
pub use store::{
    HistoryEntry, ImageInfo, ImageSummary, ImportOptions, LayerInfo, Removed, Store, StoreOptions,
};
