//! Image commands: images, save, rmi, history, and image inspect.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use strata_layerdb::{Compression, ImageSummary, ImportOptions, LoadOptions, Removed, SaveFormat};

use super::files::spawn_mount_daemon;
use super::{parse_changes, Ctx};
use crate::cli::{HistoryArgs, ImagesArgs, ImportArgs, LoadArgs, SaveFormatArg};
use crate::cli::{ImageFilter, OutputFormat};
use crate::format::{self, ago, human_size, parse_rfc3339, Table};
use crate::process::EXIT_RUNTIME;
use crate::{proc, sys};

pub(super) fn split_name(n: &str) -> (String, String) {
    match n.rfind(':') {
        Some(i) if !n[i..].contains('/') => (n[..i].to_string(), n[i + 1..].to_string()),
        _ => (n.to_string(), "latest".to_string()),
    }
}

/// Whether `pattern` (a glob: `*`, `?` and `[...]` within one path
/// component, as docker's `reference` filter) matches `name`
/// (`REGISTRY/REPO:TAG`): against the repository alone when the pattern
/// has no tag, and with the registry, then `library/`, left off as well.
fn reference_matches(pattern: &str, name: &str) -> bool {
    let (repo, tag) = split_name(name);
    let with_tag = pattern
        .rfind(':')
        .is_some_and(|i| !pattern[i..].contains('/'));
    let mut repos = vec![repo.clone()];
    if let Some((first, rest)) = repo.split_once('/') {
        if first.contains(['.', ':']) || first == "localhost" {
            repos.push(rest.to_string());
            if let Some(short) = rest.strip_prefix("library/") {
                repos.push(short.to_string());
            }
        }
    }
    repos.iter().any(|r| {
        let candidate = if with_tag {
            format!("{r}:{tag}")
        } else {
            r.clone()
        };
        glob_match(pattern.as_bytes(), candidate.as_bytes())
    })
}

/// `path.Match` semantics: `*` and `?` never match `/`.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != b'/')
            .any(|i| glob_match(&p[1..], &s[i..])),
        Some(b'?') => s.first().is_some_and(|c| *c != b'/') && glob_match(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(close) = p.iter().skip(1).position(|c| *c == b']').map(|i| i + 1) else {
                return s.first() == Some(&b'[') && glob_match(&p[1..], &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let (neg, set) = match &p[1..close] {
                [b'^' | b'!', rest @ ..] => (true, rest),
                set => (false, set),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != neg && c != b'/' && glob_match(&p[close + 1..], &s[1..])
        }
        Some(&c) => s.first() == Some(&c) && glob_match(&p[1..], &s[1..]),
    }
}

/// A creation time as (seconds, nanoseconds), so that images made in the
/// same second still order for `before=` and `since=`.
fn created_key(created: Option<&str>) -> Option<(i64, u32)> {
    let c = created?;
    let secs = parse_rfc3339(c)?;
    let frac = c
        .get(19..)
        .and_then(|r| r.strip_prefix('.'))
        .map(|r| {
            r.chars()
                .take_while(char::is_ascii_digit)
                .take(9)
                .collect::<String>()
        })
        .unwrap_or_default();
    let nanos = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().unwrap_or(0)
    };
    Some((secs, nanos))
}

/// The `--filter`s and the REPOSITORY[:TAG] argument, resolved against
/// the store: different keys must all hold; several `reference`s are
/// alternatives; several `label`s must all hold.
struct ImageFilters {
    references: Vec<String>,
    dangling: Option<bool>,
    before: Option<(i64, u32)>,
    since: Option<(i64, u32)>,
    labels: Vec<(String, Option<String>)>,
}

impl ImageFilters {
    fn new(ctx: &Ctx, a: &ImagesArgs) -> Result<ImageFilters> {
        let created = |image: &str| -> Result<(i64, u32)> {
            let info = ctx.store.inspect(image)?;
            created_key(info.config.created.as_deref())
                .ok_or_else(|| anyhow!("image {image} has no creation time to compare with"))
        };
        let mut f = ImageFilters {
            references: a.reference.iter().cloned().collect(),
            dangling: None,
            before: None,
            since: None,
            labels: Vec::new(),
        };
        for x in &a.filter {
            match x {
                ImageFilter::Reference(p) => f.references.push(p.clone()),
                ImageFilter::Dangling(d) => f.dangling = Some(*d),
                ImageFilter::Before(i) => f.before = Some(created(i)?),
                ImageFilter::Since(i) => f.since = Some(created(i)?),
                ImageFilter::Label(k, v) => f.labels.push((k.clone(), v.clone())),
            }
        }
        Ok(f)
    }

    /// Whether the image passes the filters that look at it as a whole.
    fn keeps(&self, ctx: &Ctx, i: &strata_layerdb::store::ImageSummary) -> Result<bool> {
        if self.dangling.is_some_and(|d| d != i.names.is_empty()) {
            return Ok(false);
        }
        let created = created_key(i.created.as_deref());
        if self.before.is_some_and(|b| created.is_none_or(|c| c >= b)) {
            return Ok(false);
        }
        if self.since.is_some_and(|s| created.is_none_or(|c| c <= s)) {
            return Ok(false);
        }
        if !self.labels.is_empty() {
            let info = ctx.store.inspect(&i.id)?;
            let labels = info
                .config
                .config
                .and_then(|c| c.labels)
                .unwrap_or_default();
            let all = self.labels.iter().all(|(k, v)| match (labels.get(k), v) {
                (Some(have), Some(want)) => have == want,
                (Some(_), None) => true,
                (None, _) => false,
            });
            if !all {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether a name of a kept image is listed.
    fn keeps_name(&self, name: Option<&String>) -> bool {
        if self.references.is_empty() {
            return true;
        }
        name.is_some_and(|n| self.references.iter().any(|p| reference_matches(p, n)))
    }
}

/// The heading podman gives a field of `images --format 'table ...'`.
fn image_heading(field: &str) -> String {
    match field {
        "ID" | "Id" => "IMAGE ID".into(),
        "CreatedSince" => "CREATED".into(),
        f => format::heading(f),
    }
}

pub(super) fn images(ctx: &Ctx, a: &ImagesArgs) -> Result<i32> {
    let filters = ImageFilters::new(ctx, a)?;
    let list = selected_images(ctx, a, &filters)?;
    if a.quiet {
        for i in &list {
            println!(
                "{}",
                if a.no_trunc {
                    i.id.to_string()
                } else {
                    i.id.short()
                }
            );
        }
        return Ok(0);
    }
    let rows = image_rows(ctx, a, &filters, &list)?;
    print_images(a, &rows)?;
    Ok(0)
}

/// The images `images` lists: intermediate build images only with `-a`,
/// then the filters, newest first.
fn selected_images(ctx: &Ctx, a: &ImagesArgs, filters: &ImageFilters) -> Result<Vec<ImageSummary>> {
    let mut list = ctx.store.images()?;
    if !a.all {
        // Untagged images of build steps, as docker hides them.
        let steps = ctx.store.cache_intermediate_images()?;
        list.retain(|i| !i.names.is_empty() || !steps.contains(&i.id));
    }
    let mut kept = Vec::new();
    for i in list {
        if filters.keeps(ctx, &i)? {
            kept.push(i);
        }
    }
    let mut list = kept;
    list.retain(|i| {
        if i.names.is_empty() {
            filters.keeps_name(None)
        } else {
            i.names.iter().any(|n| filters.keeps_name(Some(n)))
        }
    });
    list.sort_by_key(|i| std::cmp::Reverse(i.created.as_deref().and_then(parse_rfc3339)));
    Ok(list)
}

/// One row per name an image is listed under (`<none>` for an untagged
/// one), with every field a template may use.
fn image_rows(
    ctx: &Ctx,
    a: &ImagesArgs,
    filters: &ImageFilters,
    list: &[ImageSummary],
) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for i in list {
        let names = if i.names.is_empty() {
            vec![None]
        } else {
            i.names
                .iter()
                .filter(|n| filters.keeps_name(Some(n)))
                .map(Some)
                .collect()
        };
        for n in names {
            let (repo, tag) = match n {
                Some(n) => split_name(n),
                None => ("<none>".into(), "<none>".into()),
            };
            let created = i.created.as_deref().and_then(parse_rfc3339);
            let digest = ctx
                .store
                .repo_digests(&i.id)?
                .into_iter()
                .find(|d| d.starts_with(&format!("{repo}@")))
                .and_then(|d| d.split_once('@').map(|(_, d)| d.to_string()))
                .unwrap_or_else(|| "<none>".into());
            rows.push(json!({
                "Digest": digest,
                "Repository": repo,
                "Tag": tag,
                "ID": if a.no_trunc { i.id.to_string() } else { i.id.short() },
                "Id": i.id.hex(),
                "Names": i.names,
                "Created": created,
                "CreatedAt": i.created,
                "CreatedSince": ago(created),
                "Size": i.size,
                "Layers": i.layer_count,
            }));
        }
    }
    Ok(rows)
}

/// The rows as JSON, a template, a table template, or docker's table.
fn print_images(a: &ImagesArgs, rows: &[Value]) -> Result<()> {
    match &a.format {
        Some(OutputFormat::Json) => println!("{}", serde_json::to_string_pretty(rows)?),
        Some(OutputFormat::Template(tpl)) => {
            for r in rows {
                println!("{}", format::go_template(tpl, r));
            }
        }
        Some(OutputFormat::Table(tpl)) if !tpl.trim().is_empty() => {
            print!("{}", format::table_template(tpl, rows, &image_heading));
        }
        Some(OutputFormat::Table(_)) | None => {
            let mut head = vec!["REPOSITORY", "TAG"];
            if a.digests {
                head.push("DIGEST");
            }
            head.extend(["IMAGE ID", "CREATED", "SIZE"]);
            let mut t = Table::new(&head);
            for r in rows {
                let mut row: Vec<String> = vec![
                    r["Repository"].as_str().unwrap_or("").into(),
                    r["Tag"].as_str().unwrap_or("").into(),
                ];
                if a.digests {
                    row.push(r["Digest"].as_str().unwrap_or("").into());
                }
                row.extend([
                    r["ID"].as_str().unwrap_or("").into(),
                    r["CreatedSince"].as_str().unwrap_or("").into(),
                    human_size(r["Size"].as_u64().unwrap_or(0)),
                ]);
                t.row(row);
            }
            print!("{}", t.render());
        }
    }
    Ok(())
}

pub(super) fn save(ctx: &Ctx, a: &crate::cli::SaveArgs) -> Result<i32> {
    let refs: Vec<&str> = a.images.iter().map(String::as_str).collect();
    let format = match a.format {
        SaveFormatArg::DockerArchive => SaveFormat::DockerArchive,
        SaveFormatArg::OciArchive => SaveFormat::OciArchive(Compression::None),
        SaveFormatArg::OciDir => {
            let dir = a
                .output
                .as_ref()
                .ok_or_else(|| anyhow!("--format oci-dir needs -o DIR"))?;
            ctx.store.save_oci_dir(&refs, dir, Compression::None)?;
            return Ok(0);
        }
    };
    match &a.output {
        Some(p) => {
            let tmp = p.with_file_name(format!(
                ".{}.strata-tmp",
                p.file_name().and_then(|n| n.to_str()).unwrap_or("out")
            ));
            let r = (|| -> Result<()> {
                let f =
                    fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
                let mut w = std::io::BufWriter::new(f);
                ctx.store.save(&refs, format, &mut w)?;
                let f = w.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()?;
                fs::rename(&tmp, p).with_context(|| format!("rename to {}", p.display()))?;
                Ok(())
            })();
            if r.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            r?;
        }
        None => {
            if sys::is_tty(std::io::stdout()) {
                bail!("refusing to write an archive to a terminal; use -o FILE or redirect stdout");
            }
            let mut out = std::io::stdout().lock();
            ctx.store.save(&refs, format, &mut out)?;
            out.flush()?;
        }
    }
    Ok(0)
}

pub(super) fn rmi(ctx: &Ctx, images: &[String], force: bool) -> Result<i32> {
    let mut code = 0;
    for i in images {
        match ctx.store.remove(i, force) {
            Ok(rs) => {
                for r in rs {
                    match r {
                        Removed::Untagged(t) => println!("Untagged: {t}"),
                        Removed::Deleted(id) => println!("Deleted: {id}"),
                        Removed::LayerDeleted(_) => {}
                    }
                }
            }
            Err(e) => {
                eprintln!("Error: {e}");
                code = EXIT_RUNTIME;
            }
        }
    }
    Ok(code)
}

pub(super) fn trunc(s: &str, n: usize, no_trunc: bool) -> String {
    if no_trunc || s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

pub(super) fn history(ctx: &Ctx, a: &HistoryArgs) -> Result<i32> {
    let (image, no_trunc, quiet) = (a.image.as_str(), a.no_trunc, a.quiet);
    let id = ctx.store.resolve(image)?;
    let h = ctx.store.history(image)?;
    let mut t = Table::new(&["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]);
    for (i, e) in h.iter().enumerate() {
        let img = if i == 0 {
            if no_trunc {
                id.to_string()
            } else {
                id.short()
            }
        } else {
            "<missing>".into()
        };
        if quiet {
            println!("{img}");
            continue;
        }
        t.row(vec![
            img,
            ago(e.created.as_deref().and_then(parse_rfc3339)),
            trunc(e.created_by.as_deref().unwrap_or(""), 45, no_trunc),
            human_size(e.size),
            e.comment.clone().unwrap_or_default(),
        ]);
    }
    if !quiet {
        print!("{}", t.render());
    }
    Ok(0)
}

pub(super) fn image_json(ctx: &Ctx, r: &str) -> Result<Value> {
    let info = ctx.store.inspect(r)?;
    let cfg: Value = serde_json::from_slice(&info.config_bytes).unwrap_or(Value::Null);
    let lowers: Vec<String> = info
        .layers
        .iter()
        .rev()
        .map(|l| l.path.display().to_string())
        .collect();
    Ok(json!({
        "Id": info.id.to_string(),
        "RepoTags": info.names,
        "Created": cfg.get("created"),
        "Author": cfg.get("author"),
        "Architecture": cfg.get("architecture"),
        "Os": cfg.get("os"),
        "Config": cfg.get("config"),
        "Size": info.size,
        "RootFS": {"Type": "layers", "Layers": info.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
        "GraphDriver": {"Name": "strata", "Data": {"LowerDir": lowers.join(":")}},
        "History": cfg.get("history"),
        "Containers": info.users,
    }))
}

/// `import`: a root filesystem tarball (a file or `-` for stdin) becomes
/// a one-layer image.
pub(super) fn import(ctx: &Ctx, a: &ImportArgs) -> Result<i32> {
    let mut input: Box<dyn Read> = if a.file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(fs::File::open(&a.file).with_context(|| format!("open {}", a.file))?)
    };
    let changes = parse_changes(&a.change)?;
    let id = ctx.store.import(
        &mut input,
        &ImportOptions {
            name: a.name.clone(),
            changes,
            comment: a.message.clone(),
            created: None,
        },
    )?;
    println!("{id}");
    Ok(0)
}

/// `load`: the images of an archive (a file or stdin), printed by name,
/// or by ID when they have none.
pub(super) fn load(ctx: &Ctx, a: &LoadArgs) -> Result<i32> {
    let loaded = match &a.input {
        Some(p) => ctx.store.load(p, &LoadOptions::default())?,
        None => ctx
            .store
            .load_reader(&mut std::io::stdin(), &LoadOptions::default())?,
    };
    if !a.quiet {
        for l in loaded {
            if l.names.is_empty() {
                println!("Loaded image ID: {}", l.id);
            }
            for n in l.names {
                println!("Loaded image: {n}");
            }
        }
    }
    Ok(0)
}

/// `tag`: another name for an image.
pub(super) fn tag(ctx: &Ctx, source: &str, target: &str) -> Result<i32> {
    ctx.store.tag(source, target)?;
    Ok(0)
}

/// `image mount`: the image's layers served read-only by a mount daemon
/// (once), at `dir` or under the store; prints where.
pub(super) fn mount(ctx: &Ctx, image: &str, dir: Option<PathBuf>) -> Result<i32> {
    let info = ctx.store.inspect(image)?;
    let dir = match dir {
        Some(d) => d,
        None => ctx.root.join("image-mounts").join(info.id.hex()),
    };
    fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    if !proc::is_mounted(&dir) {
        let lowers: Vec<PathBuf> = info.layers.iter().rev().map(|l| l.path.clone()).collect();
        spawn_mount_daemon(&ctx.root, &lowers, None, &dir)?;
    }
    println!("{}", dir.canonicalize().unwrap_or(dir).display());
    Ok(0)
}

/// `image unmount`: by mountpoint, or by image (its mountpoint under the
/// store, which is then removed).
pub(super) fn unmount(ctx: &Ctx, target: &str) -> Result<i32> {
    let p = Path::new(target);
    let dir = if p.is_dir() && proc::is_mounted(p) {
        p.to_path_buf()
    } else {
        let id = ctx.store.resolve(target)?;
        ctx.root.join("image-mounts").join(id.hex())
    };
    if !proc::is_mounted(&dir) {
        bail!("{target} is not mounted");
    }
    strata_fs::unmount(&dir.canonicalize()?)
        .map_err(|e| anyhow!("unmount {}: {e}", dir.display()))?;
    if dir.starts_with(ctx.root.join("image-mounts")) {
        let _ = fs::remove_dir(&dir);
    }
    println!("{target}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_match_as_docker() {
        let n = "docker.io/library/busybox:latest";
        for p in [
            "busybox",
            "busybox:latest",
            "library/busybox",
            "docker.io/library/busybox",
            "busy*",
            "*:latest",
            "busybox:l*",
        ] {
            assert!(reference_matches(p, n), "{p}");
        }
        for p in ["busybox:1.36", "box", "*box/x", "bus"] {
            assert!(!reference_matches(p, n), "{p}");
        }
        assert!(reference_matches("*", n));
        assert!(reference_matches("foo", "localhost/foo:1"));
        assert!(!reference_matches("*", "localhost/a/b:1"));
        assert!(reference_matches("a/*", "localhost/a/b:1"));
        assert!(reference_matches("[ab]usybox", n));
        assert!(!reference_matches("[!b]usybox", n));
    }
}
