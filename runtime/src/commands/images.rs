//! Image commands: images, save, rmi, history, and image inspect.

use super::*;

pub(super) fn split_name(n: &str) -> (String, String) {
    match n.rfind(':') {
        Some(i) if !n[i..].contains('/') => (n[..i].to_string(), n[i + 1..].to_string()),
        _ => (n.to_string(), "latest".to_string()),
    }
}

pub(super) fn images(ctx: &Ctx, a: &ImagesArgs) -> Result<i32> {
    let mut list = ctx.store.images()?;
    if !a.all {
        // Untagged images of build steps, as docker hides them.
        let steps = ctx.store.cache_intermediate_images()?;
        list.retain(|i| !i.names.is_empty() || !steps.contains(&i.id));
    }
    list.sort_by_key(|i| std::cmp::Reverse(i.created.as_deref().and_then(parse_rfc3339)));
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
    let mut rows = Vec::new();
    for i in &list {
        let names = if i.names.is_empty() {
            vec![None]
        } else {
            i.names.iter().map(Some).collect()
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
    match a.format.as_deref() {
        Some("json") => println!("{}", serde_json::to_string_pretty(&rows)?),
        Some(tpl) => {
            for r in &rows {
                println!("{}", format::go_template(tpl, r));
            }
        }
        None => {
            let mut head = vec!["REPOSITORY", "TAG"];
            if a.digests {
                head.push("DIGEST");
            }
            head.extend(["IMAGE ID", "CREATED", "SIZE"]);
            let mut t = Table::new(&head);
            for r in &rows {
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
    Ok(0)
}

pub(super) fn save(ctx: &Ctx, a: &crate::cli::SaveArgs) -> Result<i32> {
    let refs: Vec<&str> = a.images.iter().map(String::as_str).collect();
    let format = match a.format.as_str() {
        "docker-archive" => SaveFormat::DockerArchive,
        "oci-archive" => SaveFormat::OciArchive(Compression::None),
        "oci-dir" => {
            let dir = a
                .output
                .as_ref()
                .ok_or_else(|| anyhow!("--format oci-dir needs -o DIR"))?;
            ctx.store.save_oci_dir(&refs, dir, Compression::None)?;
            return Ok(0);
        }
        other => bail!("unknown format {other:?}: use docker-archive, oci-archive or oci-dir"),
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

pub(super) fn history(ctx: &Ctx, image: &str, no_trunc: bool, quiet: bool) -> Result<i32> {
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
