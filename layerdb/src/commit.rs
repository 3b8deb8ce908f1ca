//! Commit: a container's upper directory becomes a layer on top of its
//! image, and a new image whose config inherits the parent's with one more
//! history entry.
//!
//! The upper is packed into a tar in `tmp/` ([`crate::pack`], overlay
//! whiteouts and opaque directories turned into `.wh.` entries, overlay
//! xattrs stripped), then imported like any layer, so the stored layer, its
//! tar-split record and its diffID are exactly those of the tar `save` will
//! write.

use std::io::{BufWriter, Seek, SeekFrom};
use std::path::Path;

use crate::config::{self, CommitMeta};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::TempFile;
use crate::ids::{ChainId, ImageId};
use crate::pack::{pack, PackMode};
use crate::reference::{DefaultDomain, ImageName};
use crate::store::Store;

impl Store {
    /// Turns the directory `upper` into a new layer on top of the image
    /// `parent` (or on nothing, for `None`), and stores a new image, tagged
    /// `name` if given. The parent's config is kept field for field;
    /// `meta` adds the history entry (`created_by`, `comment`, `author`) and
    /// config changes. `upper` is only read.
    pub fn commit(
        &self,
        parent: Option<&str>,
        upper: &Path,
        meta: &CommitMeta,
        name: Option<&str>,
    ) -> Result<ImageId> {
        // Where metacopy files of the upper (metacopy=on) find their data.
        let data_layers = match parent {
            Some(r) => self.lower_dirs(r)?,
            None => Vec::new(),
        };
        let (tmp, f) = TempFile::new(&self.tmp_dir())?;
        let mut w = BufWriter::new(f);
        pack(upper, &mut w, PackMode::Layer, &data_layers)?;
        let mut f = w
            .into_inner()
            .map_err(|e| Error::io("write", tmp.path(), e.into_error()))?;
        f.seek(SeekFrom::Start(0)).ctx("seek", tmp.path())?;
        // Only the open descriptor reads it from here on.
        drop(tmp);
        let mut r = std::io::BufReader::new(f);
        let what = format!("layer committed from {}", upper.display());
        self.commit_tar(parent, &mut r, &what, meta, name)
    }

    /// Like [`Store::commit`], with the layer given as a tar stream (a
    /// layer diff: `.wh.` whiteouts allowed), read once: `strata build`
    /// streams COPY sources straight into the store this way. `what`
    /// names the stream in errors.
    pub fn commit_tar(
        &self,
        parent: Option<&str>,
        tar: &mut dyn std::io::Read,
        what: &str,
        meta: &CommitMeta,
        name: Option<&str>,
    ) -> Result<ImageId> {
        let name = name
            .map(|n| ImageName::parse(n, DefaultDomain::Localhost))
            .transpose()?;
        let (parent_cfg, mut chain) = match parent {
            Some(r) => {
                let info = self.inspect(r)?;
                let chain: Vec<ChainId> = info.layers.iter().map(|l| l.chain_id).collect();
                (Some(info.config_bytes), chain)
            }
            None => (None, Vec::new()),
        };
        let layer = self.extract_layer(tar, chain.last().copied(), None, what)?;
        let diff = layer.record.diff_id;
        let parent_cfg = parent_cfg.unwrap_or_else(|| config::to_bytes(&config::scratch_config()));
        let cfg = config::child_config(&parent_cfg, Some(diff), meta)?;
        let bytes = config::to_bytes(&cfg);
        chain.push(layer.record.chain_id);
        let l = self.lock(true)?;
        let names: Vec<ImageName> = name.into_iter().collect();
        self.store_image_locked(&l, &mut vec![layer], &chain, &bytes, &names)
    }

    /// Stores an image with the layers of `parent` (none for `None`, an
    /// empty `FROM scratch` image) and a config changed by `meta`, its
    /// history entry marked `empty_layer`: the metadata steps of a build
    /// (ENV, CMD, ...). Returns the new image's ID.
    pub fn amend(&self, parent: Option<&str>, meta: &CommitMeta) -> Result<ImageId> {
        let (parent_cfg, chain) = match parent {
            Some(r) => {
                let info = self.inspect(r)?;
                let chain: Vec<ChainId> = info.layers.iter().map(|l| l.chain_id).collect();
                (info.config_bytes, chain)
            }
            None => (config::to_bytes(&config::scratch_config()), Vec::new()),
        };
        let cfg = config::child_config(&parent_cfg, None, meta)?;
        let bytes = config::to_bytes(&cfg);
        let l = self.lock(true)?;
        self.store_image_locked(&l, &mut Vec::new(), &chain, &bytes, &[])
    }
}
