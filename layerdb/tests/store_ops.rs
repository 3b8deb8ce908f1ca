//! References, tags, removal with shared layers and users, and check.

mod common;

use std::fs;

use common::*;
use strata_layerdb::{Error, ImportOptions, LoadOptions, Problem, Removed};

fn import_named(
    store: &strata_layerdb::Store,
    content: &str,
    name: Option<&str>,
) -> strata_layerdb::ImageId {
    let tar = TarBuilder::new().file("f", content.as_bytes()).build();
    store
        .import(
            &mut &tar[..],
            &ImportOptions {
                name: name.map(String::from),
                created: Some("2024-01-01T00:00:00Z".into()),
                changes: vec![
                    "CMD [\"/bin/sh\"]".parse().unwrap(),
                    "LABEL a=b".parse().unwrap(),
                ],
                ..Default::default()
            },
        )
        .unwrap()
}

#[test]
fn references_resolve_by_name_id_and_prefix() {
    let (_d, store) = store();
    let mut ids = Vec::new();
    // Enough images that some share a first hex digit.
    for i in 0..40 {
        ids.push(import_named(&store, &format!("content {i}"), None));
    }
    let id = ids[0];
    assert_eq!(store.resolve(&id.to_string()).unwrap(), id);
    assert_eq!(store.resolve(&id.hex()).unwrap(), id);
    assert_eq!(store.resolve(&id.hex()[..12]).unwrap(), id);
    assert_eq!(
        store
            .resolve(&format!("sha256:{}", &id.hex()[..8]))
            .unwrap(),
        id
    );
    // A 3-digit prefix is never accepted.
    assert!(matches!(
        store.resolve(&id.hex()[..3]),
        Err(Error::ImageNotFound { .. })
    ));
    // Find two IDs sharing a 1-digit prefix... ambiguity needs 4 digits: craft via first 4 of a pair if any.
    let mut ambiguous = None;
    for a in &ids {
        for b in &ids {
            if a != b && a.hex()[..4] == b.hex()[..4] {
                ambiguous = Some(a.hex()[..4].to_string());
            }
        }
    }
    if let Some(p) = ambiguous {
        let err = store.resolve(&p).unwrap_err();
        assert!(matches!(err, Error::AmbiguousReference { .. }), "{err}");
    }
    store.tag(&id.to_string(), "myimg").unwrap();
    store.tag(&id.to_string(), "quay.io/x/y:v1").unwrap();
    assert_eq!(store.resolve("myimg").unwrap(), id);
    assert_eq!(store.resolve("myimg:latest").unwrap(), id);
    assert_eq!(store.resolve("localhost/myimg").unwrap(), id);
    assert_eq!(store.resolve("quay.io/x/y:v1").unwrap(), id);
    assert!(matches!(
        store.resolve("myimg:v2"),
        Err(Error::ImageNotFound { .. })
    ));
    let cfg = store.inspect("myimg").unwrap().config.config.unwrap();
    assert_eq!(cfg.cmd, Some(vec!["/bin/sh".to_string()]));
    assert_eq!(cfg.labels.unwrap()["a"], "b");
}

#[test]
fn ambiguous_prefix_lists_candidates() {
    let (_d, store) = store();
    // Import until two IDs share 4 hex digits (birthday bound: a few hundred tries).
    let mut seen = std::collections::HashMap::new();
    for i in 0.. {
        let id = import_named(&store, &format!("x{i}"), None);
        if let Some(other) = seen.insert(id.hex()[..4].to_string(), id) {
            let err = store.resolve(&id.hex()[..4]).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&id.short()) && msg.contains(&other.short()),
                "{msg}"
            );
            // One more digit may disambiguate.
            break;
        }
        assert!(i < 2000);
    }
}

#[test]
fn removal_keeps_shared_layers_and_respects_users() {
    let (_d, store) = store();
    store
        .load(
            &fixture("busybox-docker-archive.tar"),
            &LoadOptions::default(),
        )
        .unwrap();
    store
        .load(
            &fixture("busybox-c1-docker-archive.tar"),
            &LoadOptions::default(),
        )
        .unwrap();
    let layers = || fs::read_dir(store.root().join("layers")).unwrap().count();
    assert_eq!(layers(), 2);
    // A second tag: rmi by name only untags.
    store.tag("busybox", "other").unwrap();
    assert_eq!(
        store.remove("other", false).unwrap(),
        vec![Removed::Untagged("localhost/other:latest".into())]
    );
    // Removing the base image keeps the layer the child uses.
    let out = store.remove("busybox", false).unwrap();
    assert!(out.contains(&Removed::Deleted(BUSYBOX_ID.parse().unwrap())));
    assert!(!out.iter().any(|r| matches!(r, Removed::LayerDeleted(_))));
    assert_eq!(layers(), 2);
    // An image in use cannot be removed without force.
    let c1: strata_layerdb::ImageId = C1_ID.parse().unwrap();
    store.add_image_user(&c1, "ctr1").unwrap();
    let err = store.remove("busybox-c1", false).unwrap_err();
    assert!(matches!(err, Error::ImageInUse { .. }), "{err}");
    assert!(err.to_string().contains("ctr1"));
    // Forced: untagged, but data stays while the container lives.
    let out = store.remove("busybox-c1", true).unwrap();
    assert_eq!(
        out,
        vec![Removed::Untagged("localhost/busybox-c1:latest".into())]
    );
    assert_eq!(layers(), 2);
    assert!(store.inspect(C1_ID).unwrap().layers[1]
        .path
        .join("root/file")
        .exists());
    // The last user goes: image and both layers go.
    let out = store.remove_image_user(&c1, "ctr1").unwrap();
    assert!(out.contains(&Removed::Deleted(c1)));
    assert_eq!(layers(), 0);
    assert!(store.images().unwrap().is_empty());
    assert!(store.check(false).unwrap().problems.is_empty());
}

#[test]
fn rmi_by_id_with_several_tags_needs_force() {
    let (_d, store) = store();
    let id = import_named(&store, "a", Some("one"));
    store.tag("one", "two").unwrap();
    let err = store.remove(&id.short(), false).unwrap_err();
    assert!(matches!(err, Error::ImageHasTags { .. }), "{err}");
    let out = store.remove(&id.short(), true).unwrap();
    assert_eq!(
        out.iter()
            .filter(|r| matches!(r, Removed::Untagged(_)))
            .count(),
        2
    );
    assert!(out.contains(&Removed::Deleted(id)));
}

#[test]
fn check_detects_corruption_and_repairs_debris() {
    let (_d, store) = store();
    store
        .load(
            &fixture("busybox-c1-docker-archive.tar"),
            &LoadOptions::default(),
        )
        .unwrap();
    let info = store.inspect("busybox-c1").unwrap();
    assert!(store.check(false).unwrap().problems.is_empty());
    // Debris: an orphan temp dir, a dangling tag, an unreferenced layer.
    fs::create_dir_all(store.root().join("tmp/t999-0-0/diff")).unwrap();
    let tags = store.root().join("tags.json");
    let mut t: serde_json::Value = serde_json::from_slice(&fs::read(&tags).unwrap()).unwrap();
    t["localhost/ghost:latest"] = serde_json::Value::from(format!("sha256:{}", "ab".repeat(32)));
    fs::write(&tags, serde_json::to_vec(&t).unwrap()).unwrap();
    let rep = store.check(true).unwrap();
    assert!(rep.is_clean(), "{:?}", rep.problems);
    assert!(rep
        .problems
        .iter()
        .any(|p| matches!(p, Problem::OrphanTemp { .. })));
    assert!(rep
        .problems
        .iter()
        .any(|p| matches!(p, Problem::DanglingTag { .. })));
    assert!(store.check(false).unwrap().problems.is_empty());
    // Corrupt a file in the top layer: check names the layer.
    fs::write(info.layers[1].path.join("root/file"), "DATA\n").unwrap();
    let rep = store.check(true).unwrap();
    assert!(!rep.is_clean());
    assert!(
        matches!(&rep.problems[..], [Problem::CorruptLayer { chain, .. }] if *chain == info.layers[1].chain_id),
        "{:?}",
        rep.problems
    );
    // Saving refuses to write a layer that no longer matches its diffID.
    let err = store
        .save(
            &["busybox-c1"],
            strata_layerdb::SaveFormat::DockerArchive,
            &mut std::io::sink(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("no longer hashes"), "{err}");
    // A missing layer is reported against its image.
    fs::remove_dir_all(
        store
            .root()
            .join("layers")
            .join(info.layers[1].chain_id.hex()),
    )
    .unwrap();
    let rep = store.check(false).unwrap();
    assert!(
        rep.problems
            .iter()
            .any(|p| matches!(p, Problem::MissingLayer { .. })),
        "{:?}",
        rep.problems
    );
}
