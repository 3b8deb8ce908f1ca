//! `system df`, `system prune` and `system check`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use strata_layerdb::Removed;

use super::lifecycle::remove;
use super::Ctx;
use crate::format::{human_size, Table};
use crate::proc;

pub(super) fn du(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else {
        m.len()
    }
}

pub(super) fn system_df(ctx: &Ctx) -> Result<i32> {
    let images = ctx.store.images()?;
    let containers = ctx.reg.list()?;
    let used: std::collections::BTreeSet<_> =
        containers.iter().map(|c| c.config.image_id).collect();
    let img_size: u64 = images.iter().map(|i| i.size).sum();
    let img_unused: u64 = images
        .iter()
        .filter(|i| !used.contains(&i.id))
        .map(|i| i.size)
        .sum();
    let mut running = 0;
    let mut ctr_size = 0;
    let mut ctr_reclaim = 0;
    for c in &containers {
        let sz = du(&c.paths.upper());
        ctr_size += sz;
        if still_there(c.running_init())?.flatten().is_some() {
            running += 1;
        } else {
            ctr_reclaim += sz;
        }
    }
    let mut t = Table::new(&["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]);
    t.row(vec![
        "Images".into(),
        images.len().to_string(),
        used.len().to_string(),
        human_size(img_size),
        human_size(img_unused),
    ]);
    t.row(vec![
        "Containers".into(),
        containers.len().to_string(),
        running.to_string(),
        human_size(ctr_size),
        human_size(ctr_reclaim),
    ]);
    print!("{}", t.render());
    Ok(0)
}

pub(super) fn system_prune(ctx: &Ctx, force: bool, all: bool) -> Result<i32> {
    if !force {
        eprint!(
            "WARNING! This will remove all stopped containers, the build cache and {} images.\nAre you sure you want to continue? [y/N] ",
            if all { "all unused" } else { "dangling" }
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !answer.trim().eq_ignore_ascii_case("y") {
            return Ok(0);
        }
    }
    let mut reclaimed = 0u64;
    println!("Deleted Containers:");
    for c in ctx.reg.list()? {
        match still_there(c.running_init())? {
            Some(None) => {}
            _ => continue,
        }
        let sz = du(&c.paths.upper());
        remove(ctx, &c, false)?;
        reclaimed += sz;
        println!("{}", c.id());
    }
    let entries = ctx.store.cache_clear()?;
    println!("Deleted build cache entries: {entries}");
    println!("Deleted Images:");
    let used: std::collections::BTreeSet<_> =
        ctx.reg.list()?.iter().map(|c| c.config.image_id).collect();
    for i in ctx.store.images()? {
        if used.contains(&i.id) || (!all && !i.names.is_empty()) {
            continue;
        }
        if let Ok(rs) = ctx.store.remove(&i.id.to_string(), true) {
            for r in rs {
                match r {
                    Removed::Untagged(t) => println!("untagged: {t}"),
                    Removed::Deleted(id) => {
                        reclaimed += i.size;
                        println!("deleted: {id}");
                    }
                    Removed::LayerDeleted(_) => {}
                }
            }
        }
    }
    println!("Total reclaimed space: {}", human_size(reclaimed));
    Ok(0)
}

pub(super) fn system_check(ctx: &Ctx, repair: bool) -> Result<i32> {
    let report = ctx.store.check(repair)?;
    let mut problems = 0;
    for p in &report.problems {
        let fixed = report.repaired.contains(p);
        // Debris of an operation that died (kill -9, power loss) is not
        // damage: no image or layer refers to it. It is shown, and --repair
        // removes it, but the store checks good.
        let harmless = matches!(p, strata_layerdb::Problem::OrphanTemp { .. });
        match (fixed, harmless) {
            (true, _) => println!("repaired: {p}"),
            (false, true) => println!("{p} (harmless; --repair removes it)"),
            (false, false) => {
                println!("{p}");
                problems += 1;
            }
        }
    }
    let _l = ctx.reg.lock()?;
    for d in ctx.reg.debris() {
        if repair {
            proc::unmount_all_under(&d);
            let _ = fs::remove_dir_all(&d);
            println!("repaired: leftover container data {}", d.display());
        } else {
            println!("leftover container data {}", d.display());
            problems += 1;
        }
    }
    for d in ctx.reg.damaged() {
        println!(
            "container directory {} is damaged; remove it by hand",
            d.display()
        );
        problems += 1;
    }
    drop(_l);
    // Mounts whose server is gone: under containers without a live
    // supervisor, and image mounts. A live server answers a directory
    // listing; a dead one gives ENOTCONN.
    let mut candidates = proc::mounts_under(&ctx.root.join("image-mounts"));
    for c in ctx.reg.list()? {
        let Some(s) = still_there(c.state())? else {
            continue;
        };
        if !s.supervisor.is_some_and(|p| p.is_alive()) {
            candidates.extend(proc::mounts_under(&c.paths.dir));
        }
    }
    // Opening the directory may be answered from the kernel's cache (when
    // the server said it needs no opendir): reading it asks the server.
    let dead = |m: &PathBuf| {
        fs::read_dir(m)
            .and_then(|mut d| d.next().transpose())
            .is_err()
    };
    for m in candidates.into_iter().filter(dead) {
        if repair {
            let _ = strata_fs::unmount(&m);
            println!("repaired: orphaned mount {}", m.display());
        } else {
            println!("orphaned mount {} (its server is gone)", m.display());
            problems += 1;
        }
    }
    println!(
        "checked {} layers, {} images, {} containers: {}",
        report.layers_checked,
        report.images_checked,
        ctx.reg.list()?.len(),
        if problems == 0 {
            "ok".to_string()
        } else {
            format!("{problems} problems")
        }
    );
    Ok(if problems == 0 { 0 } else { 1 })
}

/// A container's answer, or `None` when it was removed meanwhile.
fn still_there<T>(r: Result<T, crate::container::Error>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(crate::container::Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
