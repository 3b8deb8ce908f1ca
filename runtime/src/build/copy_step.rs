//! COPY and ADD as steps of [`Builder`]: where the sources come from (the
//! context, a stage or an image mounted read-only), `--chown`/`--chmod`,
//! the destination resolved in the image, the items and their digest
//! (the cache key), then the layer tar streamed into the store. The file
//! work itself is in [`super::copy`].

use std::path::PathBuf;

use serde_json::Value;
use strata_layerdb::{CommitMeta, ImageId, Store};

use super::parse::{CopySpec, Source, Step};
use super::{copy, expand, ignore, sha, tempdir_in, BuildError, Builder, StageState, TempDir};

/// A COPY ready to be written.
struct PreparedCopy {
    items: Vec<copy::Item>,
    digest: String,
    what: &'static str,
    dest_shown: String,
    /// The image the COPY writes onto.
    image: copy::ImageTree,
    /// The `--from` image's mount, kept until the files are copied.
    mount: Option<ImageMount>,
}

/// Where a COPY's sources are.
struct SourceDir {
    dir: PathBuf,
    /// The build context (then `.dockerignore` applies and owners are
    /// reset), else a stage's or an image's tree.
    from_context: bool,
    /// The `--from` image's mount, kept until the files are copied.
    mount: Option<ImageMount>,
}

/// The destination of a COPY, resolved in the image.
struct Dest {
    /// As written, expanded.
    raw: String,
    /// Relative to the image's root, symlinks resolved.
    rel: String,
    /// Written with a trailing `/` (or `.`): a directory.
    ends_slash: bool,
}

impl Builder<'_> {
    /// COPY/ADD: the layer from the cache when the files (their digest),
    /// the destination, the config and the overrides are the same; else
    /// a tar of the items streamed into the store.
    pub(super) fn copy_step(
        &mut self,
        st: &mut StageState,
        step: &Step,
        spec: &CopySpec,
    ) -> Result<(), BuildError> {
        let err = |msg: String| Builder::step_error(step, msg);
        let prepared = self.prepare_copy(st, spec, &err)?;
        let kw = if spec.add { "ADD" } else { "COPY" };
        let created_by = format!(
            "/bin/sh -c #(nop) {kw} {}:{} in {}",
            prepared.what, prepared.digest, prepared.dest_shown
        );
        let (parent, parent_key) = Builder::parent(st);
        let cfg_json = Value::Object(st.config.clone()).to_string();
        let key = sha(&[
            "copy",
            &parent_key,
            &cfg_json,
            &created_by,
            &format!("{:?}", spec.chown),
            &format!("{:?}", spec.chmod),
        ]);
        if let Some(id) = self.cached(st, &key) {
            return self.advance(st, id);
        }
        let meta = CommitMeta {
            created_by: Some(created_by),
            config: Some(Value::Object(st.config.clone())),
            ..Default::default()
        };
        let id = self.write_layer(parent.as_deref(), step, meta, prepared, &err)?;
        self.made(st, &key, id)
    }

    /// The layer of a prepared COPY: the tar is made on a thread and read
    /// by the store through a pipe, so the files are read once and written
    /// once.
    fn write_layer(
        &mut self,
        parent: Option<&str>,
        step: &Step,
        meta: CommitMeta,
        prepared: PreparedCopy,
        err: &dyn Fn(String) -> BuildError,
    ) -> Result<ImageId, BuildError> {
        let (r, w) = nix::unistd::pipe().map_err(|e| err(format!("cannot make a pipe: {e}")))?;
        let PreparedCopy {
            items,
            image,
            mount,
            ..
        } = prepared;
        let writer = std::thread::spawn(move || {
            // A store that stops reading gives EPIPE here, not a
            // SIGPIPE that would end the build without clean-up.
            let mut pipe_sig = nix::sys::signal::SigSet::empty();
            pipe_sig.add(nix::sys::signal::Signal::SIGPIPE);
            let _ = pipe_sig.thread_block();
            let w = std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::from(w));
            copy::write_tar(w, &image, &items)
        });
        let mut reader = std::fs::File::from(r);
        let stored = self.store.commit_tar(
            parent,
            &mut reader,
            &format!("the layer of {}", step.text),
            &meta,
            None,
        );
        drop(reader);
        let written = writer
            .join()
            .map_err(|_| err("the layer writer panicked".into()))?;
        drop(mount);
        match (stored, written) {
            (Ok(id), Ok(())) => Ok(id),
            // A writer error explains a cut stream; a closed pipe
            // means the store gave up first and says why.
            (Ok(_), Err(w)) => Err(err(w.to_string())),
            (Err(_), Err(w)) if !w.is_broken_pipe() => Err(err(w.to_string())),
            (Err(s), _) => Err(s.into()),
        }
    }

    /// Everything a COPY needs before its cache key: the image it writes
    /// onto, the sources as items, their digest.
    fn prepare_copy(
        &mut self,
        st: &StageState,
        spec: &CopySpec,
        err: &dyn Fn(String) -> BuildError,
    ) -> Result<PreparedCopy, BuildError> {
        let esc = self.cf.escape;
        let vars = |n: &str| st.var(n);
        let word = |s: &str| expand::word(s, esc, &vars).map_err(|e| err(e.0));
        let lowers: Vec<PathBuf> = match &st.image {
            Some(id) => self.store.lower_dirs(id)?,
            None => Vec::new(),
        };
        let image = copy::ImageTree::open(&lowers).map_err(|e| err(e.to_string()))?;
        let src = self.source_dir(st, spec, &word, err)?;
        let root = copy::SourceRoot {
            dir: &src.dir,
            ignore: if src.from_context {
                Some(&self.ignore)
            } else {
                None
            },
            keep_owner: !src.from_context,
        };
        let o = overrides(spec, &image, &word, err)?;
        let dest = destination(st, spec, &image, &word, err)?;
        let (resolved, inline) = resolve_sources(
            spec,
            &root,
            &word,
            &|c| expand::word(c, esc, &vars).unwrap_or_else(|_| c.to_string()),
            err,
        )?;
        let n_sources = resolved.len() + inline.len();
        let dest_is_dir = dest.ends_slash || n_sources > 1 || image.is_dir(&dest.rel);
        if n_sources > 1 && !dest.ends_slash {
            return Err(err(format!(
                "with more than one source the destination must be a directory ending in '/' (got {})",
                dest.raw
            )));
        }
        let mut items = Vec::new();
        for (rel, md) in &resolved {
            let t = copy::Target {
                dest: &dest.rel,
                is_dir: dest_is_dir,
                add: spec.add,
                overrides: o,
            };
            root.items(rel, md, &t, &mut items)
                .map_err(|e| err(e.to_string()))?;
        }
        inline_items(spec, &inline, &dest.rel, dest_is_dir, o, &mut items);
        let digest = copy::digest(&items).map_err(|e| err(e.to_string()))?;
        let what = if n_sources > 1 {
            "multi"
        } else if resolved.first().is_some_and(|(_, m)| m.is_dir()) {
            "dir"
        } else {
            "file"
        };
        let slash = if dest.ends_slash && !dest.rel.is_empty() {
            "/"
        } else {
            ""
        };
        Ok(PreparedCopy {
            items,
            digest,
            what,
            dest_shown: format!("/{}{slash}", dest.rel),
            image,
            mount: src.mount,
        })
    }

    /// The context, or with `--from` a stage's image or a stored image
    /// mounted read-only.
    fn source_dir(
        &self,
        st: &StageState,
        spec: &CopySpec,
        word: &dyn Fn(&str) -> Result<String, BuildError>,
        err: &dyn Fn(String) -> BuildError,
    ) -> Result<SourceDir, BuildError> {
        let Some(f) = &spec.from else {
            return Ok(SourceDir {
                dir: self.opts.context.clone(),
                from_context: true,
                mount: None,
            });
        };
        let f = word(f)?;
        let img = match self.stage_index(&f, st.index) {
            Some(i) => self
                .stage_images
                .get(&i)
                .copied()
                .flatten()
                .ok_or_else(|| err(format!("stage {f} has not been built or made no image")))?,
            None => self
                .store
                .resolve(&f)
                .map_err(|e| err(format!("--from={f}: no stage or image of that name ({e})")))?,
        };
        let m = ImageMount::new(self.store, &img).map_err(|e| err(e.to_string()))?;
        Ok(SourceDir {
            dir: m.path.clone(),
            from_context: false,
            mount: Some(m),
        })
    }
}

/// Top-level entries of the sources, with their metadata.
type Resolved = Vec<(String, std::fs::Metadata)>;

/// The sources: paths (globs) resolved under the source root, and the
/// here-documents' contents (expanded when they ask for it).
fn resolve_sources(
    spec: &CopySpec,
    root: &copy::SourceRoot<'_>,
    word: &dyn Fn(&str) -> Result<String, BuildError>,
    expand_inline: &dyn Fn(&str) -> String,
    err: &dyn Fn(String) -> BuildError,
) -> Result<(Resolved, Vec<String>), BuildError> {
    let mut resolved = Vec::new();
    let mut inline = Vec::new();
    for s in &spec.sources {
        match s {
            Source::Path(p) => {
                let p = word(p)?;
                if spec.add
                    && (p.starts_with("http://")
                        || p.starts_with("https://")
                        || p.starts_with("git@"))
                {
                    return Err(err(format!(
                        "ADD of the URL {p} is not supported: strata build does not download; fetch it into the context and COPY it"
                    )));
                }
                resolved.extend(root.resolve(&p).map_err(|e| err(e.to_string()))?);
            }
            Source::Inline { content, expand } => inline.push(if *expand {
                expand_inline(content)
            } else {
                content.clone()
            }),
        }
    }
    Ok((resolved, inline))
}

/// The here-documents as items: at the destination itself when it is the
/// only one and the destination is a file, else `DEST/heredoc-N`.
fn inline_items(
    spec: &CopySpec,
    inline: &[String],
    dest: &str,
    dest_is_dir: bool,
    o: copy::Overrides,
    items: &mut Vec<copy::Item>,
) {
    let n_inline = spec
        .sources
        .iter()
        .filter(|s| matches!(s, Source::Inline { .. }))
        .count();
    for (i, c) in inline.iter().enumerate() {
        let name = match n_inline {
            1 if !dest_is_dir => dest.to_string(),
            _ => format!("{dest}/heredoc-{i}"),
        };
        items.push(copy::Item {
            dst: name,
            kind: copy::Kind::Inline(c.clone().into_bytes()),
            mode: o.mode.unwrap_or(0o644),
            uid: o.owner.map(|x| x.0).unwrap_or(0),
            gid: o.owner.map(|x| x.1).unwrap_or(0),
            mtime: 0,
        });
    }
}

/// `--chown` (resolved in the image's `/etc/passwd` and `/etc/group`) and
/// `--chmod` (octal).
fn overrides(
    spec: &CopySpec,
    image: &copy::ImageTree,
    word: &dyn Fn(&str) -> Result<String, BuildError>,
    err: &dyn Fn(String) -> BuildError,
) -> Result<copy::Overrides, BuildError> {
    let mut o = copy::Overrides::default();
    if let Some(c) = &spec.chown {
        let c = word(c)?;
        let r = crate::users::resolve(&c, &image.read("etc/passwd"), &image.read("etc/group"))
            .map_err(|e| err(format!("--chown={c}: {e}")))?;
        let gid = if c.contains(':') { r.gid } else { r.uid };
        o.owner = Some((r.uid, gid));
    }
    if let Some(m) = &spec.chmod {
        let m = word(m)?;
        o.mode = Some(
            u32::from_str_radix(&m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| err(format!("--chmod={m}: expected an octal mode")))?,
        );
    }
    Ok(o)
}

/// The destination: relative ones under the stage's WORKDIR, resolved in
/// the image.
fn destination(
    st: &StageState,
    spec: &CopySpec,
    image: &copy::ImageTree,
    word: &dyn Fn(&str) -> Result<String, BuildError>,
    err: &dyn Fn(String) -> BuildError,
) -> Result<Dest, BuildError> {
    let raw = word(&spec.dest)?;
    let workdir = st
        .config
        .get("WorkingDir")
        .and_then(Value::as_str)
        .unwrap_or("/");
    let abs = if raw.starts_with('/') {
        raw.clone()
    } else {
        format!("{workdir}/{raw}")
    };
    let rel = image
        .resolve(&ignore::clean(&abs), false)
        .map_err(|e| err(e.to_string()))?;
    let ends_slash = raw.ends_with('/') || raw == "." || raw.ends_with("/.");
    Ok(Dest {
        raw,
        rel,
        ends_slash,
    })
}

/// An image mounted read-only in a temporary directory (`COPY --from`);
/// unmounted and removed on drop.
struct ImageMount {
    _served: crate::mounts::ServedMount,
    path: PathBuf,
    _dir: TempDir,
}

/// Why a `COPY --from` image could not be mounted.
#[derive(Debug, thiserror::Error)]
enum FromImageError {
    /// The image's layers could not be read from the store.
    #[error(transparent)]
    Store(#[from] strata_layerdb::Error),
    /// The temporary mountpoint could not be made.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The image is empty (`FROM scratch` with nothing added).
    #[error("the --from image has no layers")]
    NoLayers,
    /// The mount failed.
    #[error("cannot mount the --from image: {0}")]
    Mount(#[from] strata_fs::MountError),
}

impl ImageMount {
    fn new(store: &Store, id: &ImageId) -> Result<ImageMount, FromImageError> {
        let lowers = store.lower_dirs(id)?;
        let dir = tempdir_in(&store.root().join("tmp"))?;
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path)?;
        if lowers.is_empty() {
            // An empty image: an empty directory is its whole content.
            return Err(FromImageError::NoLayers);
        }
        let served =
            crate::mounts::ServedMount::mount(crate::mounts::options(lowers, None), &path)?;
        Ok(ImageMount {
            _served: served,
            path,
            _dir: dir,
        })
    }
}
