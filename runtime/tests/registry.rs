//! `strata pull`, `push`, `login` and `logout` against a real registry
//! (Debian's docker-registry, distribution 2.8, started per test on a free
//! loopback port), through a fault-injecting proxy where a test needs to
//! see or break the traffic; interop with skopeo and podman where they are
//! installed (always on CI: scripts/setup installs them).

mod common;
mod registry_support;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Env, Run};
use registry_support::{
    fixture, have, http, put_blob, put_manifest, sha256, Fault, Proxy, Registry,
};

const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// `strata --root ROOT ARGS` for a bare store (no fixture loaded).
fn strata(root: &Path, args: &[&str]) -> Run {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run strata")
        .into()
}

fn ok(root: &Path, args: &[&str]) -> String {
    let r = strata(root, args);
    assert_eq!(r.code, 0, "strata {args:?} failed: {r:?}");
    r.stdout
}

/// A store with busybox-c1 (two layers, the base shared with busybox).
fn env_with_c1() -> Env {
    let e = Env::new();
    e.ok(&[
        "load",
        "-i",
        fixture("busybox-c1-docker-archive.tar").to_str().unwrap(),
    ]);
    e
}

fn image_id(e: &Env, name: &str) -> String {
    e.inspect(name, "{{.Id}}")
        .trim_start_matches("sha256:")
        .to_string()
}

fn blob_gets(p: &Proxy) -> usize {
    p.log()
        .iter()
        .filter(|l| l.starts_with("GET ") && l.contains("/blobs/"))
        .count()
}

/// The store is as a clean one: check passes, no temp debris, nothing
/// half-stored.
fn assert_clean(root: &Path) {
    let r = strata(root, &["system", "check"]);
    assert_eq!(r.code, 0, "system check: {r:?}");
    let debris: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(debris.is_empty(), "tmp/ debris: {debris:?}");
}

#[test]
fn push_then_pull_keeps_ids_and_digests_and_moves_only_missing_blobs() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let proxy = Proxy::start(&reg.addr);
    let a = env_with_c1();
    let id = image_id(&a, "localhost/busybox-c1");
    let dest = format!("{}/strata/c1:v1", proxy.addr);
    let df = a.dir.path().join("digest");
    a.ok(&[
        "push",
        "--digestfile",
        df.to_str().unwrap(),
        "localhost/busybox-c1",
        &dest,
    ]);
    let digest = std::fs::read_to_string(&df).unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert!(
        proxy.log().iter().any(|l| l.starts_with("PATCH ")),
        "chunked upload: {:?}",
        proxy.log()
    );

    // A second push of the same image uploads nothing.
    proxy.clear();
    a.ok(&["push", "localhost/busybox-c1", &dest]);
    assert!(
        !proxy.log().iter().any(|l| l.starts_with("PATCH ")),
        "{:?}",
        proxy.log()
    );
    // To another repository of the registry: the layers are mounted.
    proxy.clear();
    a.ok(&[
        "push",
        "localhost/busybox-c1",
        &format!("{}/strata/other:1", proxy.addr),
    ]);
    let log = proxy.log();
    assert!(
        log.iter().any(|l| l.contains("mount=")),
        "cross-repository mount: {log:?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("PATCH ")), "{log:?}");

    // Pull into another store that has busybox (the shared base layer).
    let b = Env::new();
    proxy.clear();
    let out = b.ok(&["pull", &dest]);
    assert_eq!(out.trim(), id, "pull prints the image ID, podman's");
    assert_eq!(
        blob_gets(&proxy),
        2,
        "config and the one missing layer: {:?}",
        proxy.log()
    );
    assert_eq!(
        b.inspect(&dest, "{{.RootFS.Layers}}"),
        a.inspect("localhost/busybox-c1", "{{.RootFS.Layers}}")
    );
    // Again: only the config is read.
    proxy.clear();
    b.ok(&["pull", "-q", &dest]);
    assert_eq!(blob_gets(&proxy), 1, "{:?}", proxy.log());
    // By digest; the digest shows in images --digests; run by digest.
    let by_digest = format!("{}/strata/c1@{digest}", proxy.addr);
    assert_eq!(b.ok(&["pull", "-q", &by_digest]).trim(), id);
    let images = b.ok(&["images", "--digests"]);
    assert!(images.contains(&digest), "{images}");
    assert_eq!(
        b.ok(&["run", "--rm", &by_digest, "cat", "/root/file"]),
        "data\n"
    );
    assert_clean(&b.root);

    // zstd layers in an OCI manifest, and a Docker schema 2 manifest.
    let z = format!("{}/strata/z:1", reg.addr);
    a.ok(&[
        "push",
        "--compression-format",
        "zstd",
        "localhost/busybox-c1",
        &z,
    ]);
    let v2 = format!("{}/strata/v2:1", reg.addr);
    a.ok(&["push", "--format", "v2s2", "localhost/busybox-c1", &v2]);
    let m = http(
        &reg.addr,
        "GET",
        "/v2/strata/z/manifests/1",
        &[("Accept", MT_OCI_MANIFEST)],
        b"",
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&m.body).contains("tar+zstd"));
    let m = http(
        &reg.addr,
        "GET",
        "/v2/strata/v2/manifests/1",
        &[(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )],
        b"",
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&m.body).contains("rootfs.diff.tar.gzip"));
    let c = tempfile::tempdir_in("/var/tmp").unwrap();
    assert_eq!(ok(c.path(), &["pull", "-q", &z]).trim(), id);
    assert_eq!(ok(c.path(), &["pull", "-q", &v2]).trim(), id);
    let r = strata(
        c.path(),
        &[
            "push",
            "--format",
            "v2s2",
            "--compression-format",
            "zstd",
            &z,
            &z,
        ],
    );
    assert_ne!(r.code, 0);
    assert_clean(c.path());
}

/// podman with a private vfs store and the containers.conf that works here
/// (see tests/fixtures/README.md).
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("strata-podman-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\nnetns = \"none\"\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                dir.path().join("run").display(),
                dir.path().join("root").display()
            ),
        )
        .unwrap();
        Podman { dir }
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = Command::new("podman")
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            )
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            )
            .args(["rm", "-af"])
            .output();
    }
}

fn skopeo(args: &[&str]) -> String {
    let o = Command::new("skopeo")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

#[test]
fn skopeo_and_podman_read_what_strata_pushes_and_the_reverse() {
    if !have("skopeo", "skopeo") || !have("podman", "podman") {
        return;
    }
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let a = env_with_c1();
    let id = image_id(&a, "localhost/busybox-c1");
    let diffs: Vec<String> = json(&a.inspect("localhost/busybox-c1", "{{json .RootFS.Layers}}"))
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();

    // strata push → skopeo inspect, podman pull + run.
    let dest = format!("{}/interop/from-strata:1", reg.addr);
    a.ok(&["push", "localhost/busybox-c1", &dest]);
    let cfg = json(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--config",
        &format!("docker://{dest}"),
    ]));
    assert_eq!(cfg["rootfs"]["diff_ids"], serde_json::json!(diffs));
    let raw = json(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{dest}"),
    ]));
    assert_eq!(raw["config"]["digest"], format!("sha256:{id}"));
    let p = Podman::new();
    p.ok(&["pull", "-q", "--tls-verify=false", &dest]);
    assert_eq!(p.ok(&["run", "--rm", &dest, "cat", "/root/file"]), "data\n");
    assert_eq!(
        p.ok(&["image", "inspect", "-f", "{{.Id}}", &dest]).trim(),
        id
    );

    // Docker schema 2 and zstd layers read by the other tools.
    let v2 = format!("{}/interop/v2s2:1", reg.addr);
    a.ok(&["push", "--format", "v2s2", "localhost/busybox-c1", &v2]);
    let raw = json(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{v2}"),
    ]));
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let zst = format!("{}/interop/zstd:1", reg.addr);
    a.ok(&[
        "push",
        "--compression-format",
        "zstd",
        "localhost/busybox-c1",
        &zst,
    ]);
    for n in [&v2, &zst] {
        p.ok(&["pull", "-q", "--tls-verify=false", n]);
        assert_eq!(p.ok(&["run", "--rm", n, "cat", "/root/file"]), "data\n");
    }

    // podman push (its own compression) → strata pull + run.
    let from_podman = format!("{}/interop/from-podman:1", reg.addr);
    p.ok(&["push", "--tls-verify=false", &dest, &from_podman]);
    let b = Env::new();
    assert_eq!(b.ok(&["pull", "-q", &from_podman]).trim(), id);
    assert_eq!(
        b.ok(&["run", "--rm", &from_podman, "cat", "/root/file"]),
        "data\n"
    );

    // skopeo copy of podman's OCI archive → strata pull.
    let from_skopeo = format!("{}/interop/from-skopeo:1", reg.addr);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!(
            "oci-archive:{}",
            fixture("busybox-c1-oci-archive.tar").display()
        ),
        &format!("docker://{from_skopeo}"),
    ]);
    let raw = json(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{from_skopeo}"),
    ]));
    let skopeo_id = raw["config"]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    assert_eq!(b.ok(&["pull", "-q", &from_skopeo]).trim(), skopeo_id);
    assert_clean(&b.root);
}

#[test]
fn a_multi_platform_index_gives_the_platform_asked_for() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let a = env_with_c1();
    let amd = format!("{}/multi/img:amd64", reg.addr);
    a.ok(&["push", "localhost/busybox-c1", &amd]);
    let m = http(
        &reg.addr,
        "GET",
        "/v2/multi/img/manifests/amd64",
        &[("Accept", MT_OCI_MANIFEST)],
        b"",
    )
    .unwrap();
    let amd_manifest = m.body.clone();
    // The arm64 image: the same layers under a config that says arm64.
    let mut manifest = json(&String::from_utf8_lossy(&amd_manifest));
    let cd = manifest["config"]["digest"].as_str().unwrap().to_string();
    let cfg = http(
        &reg.addr,
        "GET",
        &format!("/v2/multi/img/blobs/{cd}"),
        &[],
        b"",
    )
    .unwrap()
    .body;
    let arm_cfg = String::from_utf8(cfg)
        .unwrap()
        .replace("\"amd64\"", "\"arm64\"")
        .into_bytes();
    let arm_cd = put_blob(&reg.addr, "multi/img", &arm_cfg);
    manifest["config"]["digest"] = arm_cd.clone().into();
    manifest["config"]["size"] = arm_cfg.len().into();
    let arm_manifest = serde_json::to_vec(&manifest).unwrap();
    let arm_md = put_manifest(
        &reg.addr,
        "multi/img",
        "arm64",
        MT_OCI_MANIFEST,
        &arm_manifest,
    );
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [
            {"mediaType": MT_OCI_MANIFEST, "digest": arm_md, "size": arm_manifest.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": MT_OCI_MANIFEST, "digest": sha256(&amd_manifest), "size": amd_manifest.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    });
    put_manifest(
        &reg.addr,
        "multi/img",
        "multi",
        MT_OCI_INDEX,
        &serde_json::to_vec(&index).unwrap(),
    );
    let name = format!("{}/multi/img:multi", reg.addr);
    let s = tempfile::tempdir_in("/var/tmp").unwrap();
    let host = ok(s.path(), &["pull", "-q", &name]);
    if std::env::consts::ARCH == "x86_64" {
        assert_eq!(host.trim(), image_id(&a, "localhost/busybox-c1"));
    }
    let arm = ok(
        s.path(),
        &["pull", "-q", "--platform", "linux/arm64", &name],
    );
    assert_eq!(format!("sha256:{}", arm.trim()), arm_cd);
    let r = strata(s.path(), &["pull", "--platform", "linux/s390x", &name]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("linux/arm64/v8") && r.stderr.contains("linux/amd64"),
        "{r:?}"
    );
    assert_clean(s.path());
}

fn fails_with(root: &Path, args: &[&str], needles: &[&str]) {
    let r = strata(root, args);
    assert_ne!(r.code, 0, "strata {args:?} should fail: {r:?}");
    let err = r.stderr.trim();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

#[test]
fn faults_end_in_a_clean_error_or_a_resumed_pull() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let a = env_with_c1();
    let name = format!("{}/faults/c1:1", reg.addr);
    a.ok(&["push", "localhost/busybox-c1", &name]);
    let m = json(&String::from_utf8_lossy(
        &http(
            &reg.addr,
            "GET",
            "/v2/faults/c1/manifests/1",
            &[("Accept", MT_OCI_MANIFEST)],
            b"",
        )
        .unwrap()
        .body,
    ));
    let config = m["config"]["digest"].as_str().unwrap().to_string();
    let top = m["layers"][1]["digest"].as_str().unwrap().to_string();
    let top_size = m["layers"][1]["size"].as_u64().unwrap() as usize;
    let proxy = Proxy::start(&reg.addr);
    let via = format!("{}/faults/c1:1", proxy.addr);
    let s = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = s.path();
    let id = image_id(&a, "localhost/busybox-c1");
    let check_empty = |what: &str| {
        assert_eq!(
            ok(root, &["images", "-q"]).trim(),
            "",
            "{what}: nothing stored"
        );
        assert!(
            std::fs::read_dir(root.join("layers"))
                .unwrap()
                .next()
                .is_none(),
            "{what}: no layer stored"
        );
        assert_clean(root);
    };
    let pull_ok = |what: &str| {
        let out = strata(root, &["pull", "-q", &via]);
        assert_eq!(out.code, 0, "{what}: {out:?}");
        assert_eq!(out.stdout.trim(), id, "{what}");
        assert_clean(root);
        ok(root, &["rmi", &via]);
    };

    // Broken connections mid-blob are resumed with Range requests.
    proxy.add("GET", &top, Fault::Cut(top_size / 3), 2);
    pull_ok("cut twice");
    assert!(
        proxy
            .log()
            .iter()
            .any(|l| l.contains(&top) && l.contains(" bytes=")),
        "{:?}",
        proxy.log()
    );
    // 429 with Retry-After, and a 500, are retried.
    proxy.clear();
    proxy.add("GET", "/manifests/", Fault::Status(429), 1);
    proxy.add("GET", &config, Fault::Status(500), 1);
    pull_ok("429 and 500 once");

    // Corruption: refused, naming the blob; nothing stored.
    proxy.clear();
    proxy.add("GET", &top, Fault::Corrupt(top_size / 2), usize::MAX);
    fails_with(root, &["pull", &via], &[&top]);
    check_empty("corrupt layer");
    proxy.clear();
    proxy.add("GET", &config, Fault::Corrupt(10), usize::MAX);
    fails_with(root, &["pull", &via], &[&config, "digest mismatch"]);
    check_empty("corrupt config");
    // A blob cut short every time: gives up after the resumes.
    proxy.clear();
    proxy.add("GET", &top, Fault::Cut(0), usize::MAX);
    fails_with(root, &["pull", &via], &[&top, "gave up"]);
    check_empty("always cut");
    // 500 forever, 404 on a blob, 403.
    proxy.clear();
    proxy.add("GET", &top, Fault::Status(500), usize::MAX);
    fails_with(root, &["pull", &via], &[&top, "500"]);
    proxy.clear();
    proxy.add("GET", &top, Fault::Status(404), usize::MAX);
    fails_with(root, &["pull", &via], &[&top, "not found"]);
    proxy.clear();
    proxy.add("GET", "/manifests/", Fault::Status(403), usize::MAX);
    fails_with(root, &["pull", &via], &["denied", &proxy.addr]);
    check_empty("errors");
    // Unknown tag and repository.
    proxy.clear();
    fails_with(
        root,
        &["pull", &format!("{}/faults/c1:nope", proxy.addr)],
        &["MANIFEST_UNKNOWN"],
    );
    fails_with(
        root,
        &["pull", &format!("{}/faults/nothing:1", proxy.addr)],
        &["not found"],
    );
    fails_with(root, &["pull", "busybox"], &["docker.io/library/busybox"]);
    // A huge manifest, and one with 128 layers.
    proxy.add(
        "GET",
        "/manifests/",
        Fault::Replace(vec![b' '; 5 << 20], MT_OCI_MANIFEST.into()),
        1,
    );
    fails_with(root, &["pull", &via], &["limit"]);
    let mut many = m.clone();
    many["layers"] = serde_json::Value::Array(vec![m["layers"][0].clone(); 128]);
    proxy.add(
        "GET",
        "/manifests/",
        Fault::Replace(serde_json::to_vec(&many).unwrap(), MT_OCI_MANIFEST.into()),
        1,
    );
    fails_with(root, &["pull", &via], &["128 layers"]);
    check_empty("bad manifests");

    // A layer whose tar escapes: the import rules apply.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
    h.set_cksum();
    b.append(&h, &b"evil"[..]).unwrap();
    let evil = b.into_inner().unwrap();
    let ld = put_blob(&reg.addr, "faults/evil", &evil);
    let cfg = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [ld.clone()]}
    }))
    .unwrap();
    let cd = put_blob(&reg.addr, "faults/evil", &cfg);
    let man = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": evil.len()}]
    }))
    .unwrap();
    put_manifest(&reg.addr, "faults/evil", "1", MT_OCI_MANIFEST, &man);
    fails_with(
        root,
        &["pull", &format!("{}/faults/evil:1", reg.addr)],
        &[&ld, "escape"],
    );
    check_empty("hostile tar");
}

#[test]
fn login_and_logout_with_basic_auth_use_the_users_auth_files() {
    let Some(reg) = Registry::start(Some(("alice", "s3cret"))) else {
        return;
    };
    let e = env_with_c1();
    let home = e.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let authfile = e.dir.path().join("run/containers/auth.json");
    let with_env = |args: &[&str], input: Option<&str>| -> Run {
        let mut c = e.cmd(args);
        c.env("HOME", &home)
            .env("XDG_RUNTIME_DIR", e.dir.path().join("run"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG");
        if let Some(i) = input {
            use std::io::Write;
            c.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut ch = c.spawn().unwrap();
            ch.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
            return ch.wait_with_output().unwrap().into();
        }
        c.output().unwrap().into()
    };
    let dest = format!("{}/private/c1:1", reg.addr);
    let r = with_env(&["push", "localhost/busybox-c1", &dest], None);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("unauthorized") && r.stderr.contains(&reg.addr),
        "{r:?}"
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{r:?}");

    let r = with_env(
        &["login", "-u", "alice", "--password-stdin", &reg.addr],
        Some("wrong\n"),
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("unauthorized") && r.stderr.contains(&reg.addr),
        "{r:?}"
    );
    assert!(!authfile.exists(), "nothing written on a failed login");

    let r = with_env(
        &["login", "-u", "alice", "--password-stdin", &reg.addr],
        Some("s3cret\n"),
    );
    assert_eq!(r.code, 0, "{r:?}");
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(&authfile).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let v = json(&std::fs::read_to_string(&authfile).unwrap());
    assert_eq!(
        v["auths"][&reg.addr]["auth"], "YWxpY2U6czNjcmV0",
        "base64 of alice:s3cret"
    );
    let r = with_env(&["push", "localhost/busybox-c1", &dest], None);
    assert_eq!(r.code, 0, "{r:?}");
    let r = with_env(&["pull", "-q", &dest], None);
    assert_eq!(r.code, 0, "{r:?}");

    let r = with_env(&["logout", &reg.addr], None);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json(&std::fs::read_to_string(&authfile).unwrap());
    assert!(v["auths"].get(&reg.addr).is_none(), "{v}");
    let r = with_env(&["pull", "-q", &dest], None);
    assert!(r.code != 0 && r.stderr.contains("unauthorized"), "{r:?}");

    // docker's config.json is read too.
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    std::fs::write(
        home.join(".docker/config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"YWxpY2U6czNjcmV0"}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let r = with_env(&["pull", "-q", &dest], None);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn concurrent_pulls_of_images_sharing_layers_store_each_layer_once() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let a = env_with_c1();
    let one = format!("{}/shared/c1:1", reg.addr);
    let two = format!("{}/shared/busybox:1", reg.addr);
    a.ok(&["push", "localhost/busybox-c1", &one]);
    a.ok(&["push", "localhost/busybox", &two]);
    let s = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = s.path().to_path_buf();
    let spawn = |n: &str| {
        Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("--root")
            .arg(&root)
            .args(["pull", "-q", n])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(&one), spawn(&two));
    let (o1, o2) = (
        p1.wait_with_output().unwrap(),
        p2.wait_with_output().unwrap(),
    );
    assert!(
        o1.status.success(),
        "{}",
        String::from_utf8_lossy(&o1.stderr)
    );
    assert!(
        o2.status.success(),
        "{}",
        String::from_utf8_lossy(&o2.stderr)
    );
    let layers = std::fs::read_dir(root.join("layers")).unwrap().count();
    assert_eq!(layers, 2, "the shared base layer is stored once");
    assert_clean(&root);
}

#[test]
fn kill_9_during_a_pull_leaves_a_store_that_checks_and_a_second_pull_completes() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let a = env_with_c1();
    let name = format!("{}/killed/c1:1", reg.addr);
    a.ok(&["push", "localhost/busybox-c1", &name]);
    let proxy = Proxy::start(&reg.addr);
    proxy.add("GET", "/blobs/", Fault::Slow(100), usize::MAX);
    let via = format!("{}/killed/c1:1", proxy.addr);
    let s = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = s.path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--root")
        .arg(root)
        .args(["pull", "-q", &via])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while proxy.log().iter().filter(|l| l.contains("/blobs/")).count() < 2 {
        assert!(
            start.elapsed().as_secs() < 30,
            "the pull never reached the layers"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    // Only temp debris can be left: check passes, shows nothing else, and
    // --repair removes it.
    let r = strata(root, &["system", "check"]);
    assert_eq!(
        r.code, 0,
        "a store with only debris of a killed pull checks good: {r:?}"
    );
    let debris = format!("leftover temporary data {}", root.join("tmp").display());
    for l in r.stdout.lines().filter(|l| !l.starts_with("checked")) {
        assert!(
            l.starts_with(&debris),
            "only tmp/ debris after kill -9: {r:?}"
        );
    }
    assert!(
        std::fs::read_dir(root.join("layers"))
            .unwrap()
            .next()
            .is_none(),
        "no layer half-stored"
    );
    let r = strata(root, &["system", "check", "--repair"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(ok(root, &["images", "-q"]).trim(), "");
    proxy.clear();
    assert_eq!(
        ok(root, &["pull", "-q", &via]).trim(),
        image_id(&a, "localhost/busybox-c1")
    );
    assert_clean(root);
}

#[test]
fn bearer_token_challenges_are_answered_with_a_scoped_token() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let a = env_with_c1();
    let proxy = Proxy::start(&reg.addr);
    proxy.require_token("t0ken");
    let dest = format!("{}/tok/c1:1", proxy.addr);
    a.ok(&["push", "localhost/busybox-c1", &dest]);
    let s = tempfile::tempdir_in("/var/tmp").unwrap();
    assert_eq!(
        ok(s.path(), &["pull", "-q", &dest]).trim(),
        image_id(&a, "localhost/busybox-c1")
    );
    let log = proxy.log();
    assert!(
        log.iter()
            .any(|l| l
                .starts_with("GET /token?service=test&scope=repository%3Atok%2Fc1%3Apull%2Cpush")),
        "a push token: {log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("GET /token?service=test&scope=repository%3Atok%2Fc1%3Apull")),
        "a pull token: {log:?}"
    );
}

#[test]
fn a_big_layer_goes_up_in_chunks_and_comes_back_identical() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let e = Env::new();
    // 12 MiB that do not compress: three or four chunks of 4 MiB.
    let mut data = vec![0u8; 12 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    t.append_data(&mut h, "big", &data[..]).unwrap();
    let tarball = e.dir.path().join("big.tar");
    std::fs::write(&tarball, t.into_inner().unwrap()).unwrap();
    e.ok(&["import", tarball.to_str().unwrap(), "big"]);
    let proxy = Proxy::start(&reg.addr);
    let dest = format!("{}/big/img:1", proxy.addr);
    e.ok(&["push", "localhost/big", &dest]);
    let patches = proxy
        .log()
        .iter()
        .filter(|l| l.starts_with("PATCH "))
        .count();
    assert!(patches >= 3, "chunked: {:?}", proxy.log());
    let s = tempfile::tempdir_in("/var/tmp").unwrap();
    assert_eq!(
        ok(s.path(), &["pull", "-q", &dest]).trim(),
        image_id(&e, "localhost/big")
    );
    assert_clean(s.path());
}

#[test]
fn a_loopback_registry_that_speaks_tls_is_used_without_certificate_checks() {
    let Some(reg) = Registry::start_tls() else {
        return;
    };
    let e = env_with_c1();
    let dest = format!("{}/tls/c1:1", reg.addr);
    e.ok(&["push", "localhost/busybox-c1", &dest]);
    let s = tempfile::tempdir_in("/var/tmp").unwrap();
    assert_eq!(
        ok(s.path(), &["pull", "-q", "--tls-verify=false", &dest]).trim(),
        image_id(&e, "localhost/busybox-c1")
    );
    assert_clean(s.path());
    // It speaks only TLS: plain HTTP gets 400 there.
    let r = http(&reg.addr, "GET", "/v2/", &[], b"").unwrap();
    assert_eq!(r.status, 400);
}

/// `strata build` pulls a base image named with its registry, as docker
/// build does; a short name that is not in the store is still an error
/// that says what to write.
#[test]
fn build_pulls_a_missing_base_named_with_its_registry() {
    let Some(reg) = Registry::start(None) else {
        return;
    };
    let a = Env::new();
    let base = format!("{}/lib/busybox:1", reg.addr);
    a.ok(&["push", "localhost/busybox", &base]);
    let b = Env::new();
    b.ok(&["rmi", "localhost/busybox"]);
    let ctx = b.dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Containerfile"),
        format!("FROM {base}\nRUN echo from-pulled-base > /x\n"),
    )
    .unwrap();
    let out = b.ok(&["build", "-t", "child", ctx.to_str().unwrap()]);
    assert!(out.contains(&format!("Pulling {base}")), "{out}");
    assert_eq!(
        b.ok(&["run", "--rm", "child", "cat", "/x"]).trim(),
        "from-pulled-base"
    );
    assert_eq!(
        b.inspect(&base, "{{.Id}}"),
        a.inspect("localhost/busybox", "{{.Id}}"),
        "the base is stored under its name with podman's image ID"
    );
    std::fs::write(ctx.join("Containerfile"), "FROM nosuchbase\n").unwrap();
    let r = b.run(&["build", ctx.to_str().unwrap()]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("pull it first"), "{r:?}");
}
