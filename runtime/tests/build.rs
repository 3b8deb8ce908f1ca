//! End-to-end tests of `strata build`: every instruction, checked by
//! running the built image and reading its config; the layer cache (hit,
//! miss after a content change but not after a touch, --no-cache,
//! multi-stage reuse, prune); a corpus of bad inputs with their messages;
//! and the same Containerfile built by podman, whose containers must see
//! the same files, modes and owners.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{Env, Run};

/// A build context in the test's directory.
fn context(env: &Env, files: &[(&str, &str)]) -> std::path::PathBuf {
    let ctx = env.dir.path().join("ctx");
    let _ = fs::remove_dir_all(&ctx);
    for (p, content) in files {
        let p = ctx.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    fs::create_dir_all(&ctx).unwrap();
    ctx
}

fn build(env: &Env, ctx: &Path, containerfile: &str, extra: &[&str]) -> Run {
    fs::write(ctx.join("Containerfile"), containerfile).unwrap();
    let mut args = vec!["build"];
    args.extend_from_slice(extra);
    let c = ctx.to_str().unwrap();
    args.push(c);
    env.run(&args)
}

fn image_id(r: &Run) -> String {
    assert_eq!(r.code, 0, "build failed: {r:?}");
    r.stdout.lines().last().unwrap().to_string()
}

/// The diffIDs of an image, bottom first.
fn diff_ids(env: &Env, image: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", image])).unwrap();
    v[0]["RootFS"]["Layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no RootFS.Layers in {v}"))
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

fn assert_clean(env: &Env) {
    assert!(env.ps().is_empty(), "containers left: {:?}", env.ps());
    assert!(env.mounts().is_empty(), "mounts left: {:?}", env.mounts());
    let tmp: Vec<_> = fs::read_dir(env.root.join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
}

const EVERYTHING: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE} AS builder
RUN mkdir -p /out && echo built > /out/artifact
RUN ["sh", "-c", "echo exec-form > /out/exec"]

FROM builder AS unused
RUN echo this stage is not needed; exit 7

FROM $BASE
ARG BASE
ARG WHO=world
LABEL org.example.who="$WHO" version=1.0
MAINTAINER someone@example.com
ENV PATH=/usr/local/bin:$PATH \
    HOME_DIR=${HOME_DIR:-/home/me} \
    ALT=${WHO:+set}
COPY --from=builder /out/ /from-builder/
COPY --chown=65534:65534 --chmod=600 a.txt /owned
COPY g*.txt /globbed/
ADD arch.tar /extracted/
COPY dir /copied-dir
COPY <<EOF /inline.txt
hello $WHO
EOF
RUN <<EOF
echo heredoc-run > /hd
echo base=$BASE who=$WHO >> /hd
EOF
RUN rm /bin/vi
RUN cat <<EOF > /cmd-heredoc && cat <<-'X' >> /cmd-heredoc
who=$WHO
EOF
	literal $WHO
X
SHELL ["/bin/sh", "-c"]
WORKDIR sub
WORKDIR dir
USER nobody
EXPOSE 8080 53/udp
VOLUME /data
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --retries=2 CMD wget -q localhost || exit 1
ONBUILD RUN echo triggered
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["id -u; pwd"]
"#;

fn everything_context(env: &Env) -> std::path::PathBuf {
    let ctx = context(
        env,
        &[
            ("a.txt", "a\n"),
            ("g1.txt", "1\n"),
            ("g2.txt", "2\n"),
            ("dir/x", "x\n"),
            ("dir/skip.log", "ignored\n"),
            ("dir/keep.log", "kept\n"),
            ("tarsrc/t/f", "in tar\n"),
            (".dockerignore", "**/*.log\n!dir/keep.log\ntarsrc\n"),
        ],
    );
    let st = Command::new("tar")
        .arg("-cf")
        .arg(ctx.join("arch.tar"))
        .arg("-C")
        .arg(ctx.join("tarsrc"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    ctx
}

#[test]
fn build_runs_every_instruction_and_the_image_has_them() {
    let env = Env::new();
    let ctx = everything_context(&env);
    let r = build(
        &env,
        &ctx,
        EVERYTHING,
        &["-t", "all", "--build-arg", "WHO=you"],
    );
    image_id(&r);
    assert!(
        !r.stdout.contains("not needed"),
        "unused stage ran: {}",
        r.stdout
    );
    assert!(r.stdout.contains("[2/2] STEP 26/26: CMD"), "{}", r.stdout);
    assert_eq!(env.ok(&["run", "--rm", "all"]), "65534\n/sub/dir\n");
    let out = env.ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "",
        "-u",
        "0",
        "all",
        "sh",
        "-c",
        "cat /from-builder/artifact /from-builder/exec /inline.txt /hd /extracted/t/f /cmd-heredoc; \
         stat -c '%n %a %u %g' /owned /globbed/g1.txt /globbed/g2.txt; ls /copied-dir; \
         ls /bin/vi 2>&1; echo $PATH $HOME_DIR $ALT",
    ]);
    assert_eq!(
        out,
        "built\nexec-form\nhello you\nheredoc-run\nbase=busybox who=you\nin tar\nwho=you\nliteral $WHO\n\
         /owned 600 65534 65534\n/globbed/g1.txt 644 0 0\n/globbed/g2.txt 644 0 0\n\
         keep.log\nx\nls: /bin/vi: No such file or directory\n\
         /usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /home/me set\n"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "-f", "{{json .Config}}", "all"])).unwrap();
    assert_eq!(cfg["User"], "nobody");
    assert_eq!(cfg["WorkingDir"], "/sub/dir");
    assert_eq!(cfg["Labels"]["org.example.who"], "you");
    assert_eq!(cfg["Labels"]["version"], "1.0");
    assert!(cfg["ExposedPorts"]["8080/tcp"].is_object());
    assert!(cfg["ExposedPorts"]["53/udp"].is_object());
    assert!(cfg["Volumes"]["/data"].is_object());
    assert_eq!(cfg["StopSignal"], "SIGINT");
    assert_eq!(
        cfg["Healthcheck"],
        serde_json::json!({"Test": ["CMD-SHELL", "wget -q localhost || exit 1"],
                           "Interval": 5_000_000_000u64, "Retries": 2})
    );
    assert_eq!(cfg["OnBuild"], serde_json::json!(["RUN echo triggered"]));
    assert_eq!(cfg["Shell"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(cfg["Cmd"], serde_json::json!(["id -u; pwd"]));
    assert_eq!(env.inspect("all", "{{.Author}}"), "someone@example.com");
    // History reads like docker's: one layer per RUN/COPY/ADD, the rest
    // empty layers.
    let hist = env.ok(&["history", "--no-trunc", "all"]);
    assert!(
        hist.contains("/bin/sh -c #(nop)  CMD [\"id -u; pwd\"]"),
        "{hist}"
    );
    assert!(hist.contains("/bin/sh -c rm /bin/vi"), "{hist}");
    assert!(hist.contains("/bin/sh -c #(nop) COPY file:"), "{hist}");
    assert!(hist.contains(" in /owned"), "{hist}");
    assert_eq!(
        diff_ids(&env, "all").len(),
        1 + 9,
        "base + 6 COPY/ADD + 3 RUN"
    );
    // Only the result is listed; the steps' images need -a.
    assert_eq!(env.ok(&["images", "-q"]).lines().count(), 2);
    assert!(env.ok(&["images", "-a", "-q"]).lines().count() > 10);
    assert_clean(&env);
}

const SMALL: &str = "FROM busybox\nRUN echo one > /one\nCOPY a.txt /app/\nCOPY b.txt /app/\nRUN cat /app/a.txt /app/b.txt > /app/both\nCMD [\"cat\", \"/app/both\"]\n";

#[test]
fn rebuild_hits_the_cache_and_a_content_change_misses_from_its_copy_on() {
    let env = Env::new();
    let ctx = context(&env, &[("a.txt", "a\n"), ("b.txt", "b\n")]);
    let first = build(&env, &ctx, SMALL, &["-t", "small"]);
    let id1 = image_id(&first);
    assert!(!first.stdout.contains("Using cache"), "{}", first.stdout);
    let layers1 = diff_ids(&env, "small");
    // An unchanged rebuild: every step from the cache, the same image.
    let again = build(&env, &ctx, SMALL, &["-t", "small"]);
    assert_eq!(image_id(&again), id1);
    assert_eq!(
        again.stdout.matches("--> Using cache").count(),
        5,
        "{}",
        again.stdout
    );
    // A touch changes no content: still a hit.
    let t = fs::File::options()
        .write(true)
        .open(ctx.join("b.txt"))
        .unwrap();
    t.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(100))
        .unwrap();
    drop(t);
    assert_eq!(image_id(&build(&env, &ctx, SMALL, &["-t", "small"])), id1);
    // -q prints the ID only.
    let q = build(&env, &ctx, SMALL, &["-q"]);
    assert_eq!(q.stdout, format!("{id1}\n"));
    // New content in b.txt: the steps before its COPY come from the cache
    // (same layers), that COPY and everything after run again.
    fs::write(ctx.join("b.txt"), "B\n").unwrap();
    let changed = build(&env, &ctx, SMALL, &["-t", "small"]);
    let id2 = image_id(&changed);
    assert_ne!(id2, id1);
    assert_eq!(
        changed.stdout.matches("--> Using cache").count(),
        2,
        "{}",
        changed.stdout
    );
    let layers2 = diff_ids(&env, "small");
    assert_eq!(
        layers1[..3],
        layers2[..3],
        "base, RUN and the first COPY are reused"
    );
    assert_ne!(layers1[3], layers2[3]);
    assert_eq!(env.ok(&["run", "--rm", "small"]), "a\nB\n");
    // A mode change is a content change for the cache.
    let mut perm = fs::metadata(ctx.join("a.txt")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o600);
    fs::set_permissions(ctx.join("a.txt"), perm).unwrap();
    let moded = build(&env, &ctx, SMALL, &[]);
    assert_eq!(
        moded.stdout.matches("--> Using cache").count(),
        1,
        "{}",
        moded.stdout
    );
    // --no-cache runs every step.
    let nc = build(&env, &ctx, SMALL, &["--no-cache", "-t", "small"]);
    image_id(&nc);
    assert!(!nc.stdout.contains("Using cache"), "{}", nc.stdout);
    // --iidfile.
    let f = env.dir.path().join("iid");
    let r = build(&env, &ctx, SMALL, &["--iidfile", f.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(&f).unwrap(), image_id(&r));
    assert_clean(&env);
}

#[test]
fn cache_survives_restarts_and_system_prune_drops_it() {
    let env = Env::new();
    let ctx = context(&env, &[("a.txt", "a\n"), ("b.txt", "b\n")]);
    let id = image_id(&build(&env, &ctx, SMALL, &["-t", "small"]));
    // Every `strata` command is a new process: the cache is in the store.
    let r = build(&env, &ctx, SMALL, &[]);
    assert_eq!(image_id(&r), id);
    assert_eq!(r.stdout.matches("Using cache").count(), 5);
    let out = env.ok(&["system", "prune", "-f"]);
    assert!(out.contains("Deleted build cache entries: "), "{out}");
    let r = build(&env, &ctx, SMALL, &["-t", "small"]);
    image_id(&r);
    assert!(!r.stdout.contains("Using cache"), "{}", r.stdout);
}

#[test]
fn multi_stage_target_and_cache_reuse() {
    let env = Env::new();
    let ctx = context(&env, &[("src.txt", "source\n")]);
    let cf = "FROM busybox AS build\nCOPY src.txt /src.txt\nRUN tr a-z A-Z < /src.txt > /out\n\n\
              FROM busybox AS test\nRUN exit 9\n\n\
              FROM scratch\nCOPY --from=build /out /out\nCOPY --from=busybox /bin/busybox /bin/cat\nCMD [\"/bin/cat\", \"/out\"]\n";
    // --target builds only the stage and what it needs.
    let t = build(&env, &ctx, cf, &["--target", "build", "-t", "stage1"]);
    image_id(&t);
    assert!(t.stdout.contains("STEP 3/3: RUN tr"), "{}", t.stdout);
    // The full build reuses the build stage from the cache and skips `test`.
    let full = build(&env, &ctx, cf, &["-t", "final"]);
    image_id(&full);
    assert_eq!(
        full.stdout.matches("Using cache").count(),
        2,
        "{}",
        full.stdout
    );
    assert_eq!(env.ok(&["run", "--rm", "final"]), "SOURCE\n");
    assert_eq!(
        diff_ids(&env, "final").len(),
        2,
        "FROM scratch: only the two COPY layers"
    );
    let bad = build(&env, &ctx, cf, &["--target", "nope"]);
    assert_ne!(bad.code, 0);
    assert!(
        bad.stderr.contains("no stage is named nope"),
        "{}",
        bad.stderr
    );
    assert_clean(&env);
}

#[test]
fn bad_inputs_name_the_line_and_leave_nothing_behind() {
    let env = Env::new();
    let ctx = context(
        &env,
        &[
            ("a.txt", "a\n"),
            ("junk.log", "j\n"),
            (".dockerignore", "*.log\n"),
        ],
    );
    // (Containerfile, expected exit code, what stderr says)
    let corpus: &[(&str, i32, &str)] = &[
        ("FROM busybox\nCOPY a.txt\n", 125, "line 2: COPY instruction requires at least two arguments"),
        ("FROM busybox\nFROBNICATE x\n", 125, "line 2: unknown instruction 'FROBNICATE'"),
        ("RUN true\n", 125, "line 1: expected FROM"),
        ("FROM busybox\nRUN true\nENV A=\"x\n", 125, "line 3: ENV A=\"x: unclosed double quote"),
        ("FROM no/such-image\nRUN true\n", 125, "line 1: FROM no/such-image: image not known"),
        ("FROM busybox\nCOPY ../x /x\n", 125, "line 2: COPY ../x /x: ../x is outside the build context"),
        ("FROM busybox\n\nCOPY missing.txt /x\n", 125, "line 3: COPY missing.txt /x: missing.txt: no such file or directory"),
        ("FROM busybox\nCOPY junk.log /x\n", 125, "junk.log is excluded by the ignore file"),
        ("FROM busybox\nCOPY *.nomatch /x/\n", 125, "no source files match *.nomatch"),
        ("FROM busybox\nCOPY --from=nostage /x /x\n", 125, "line 2: COPY --from=nostage /x /x: --from=nostage: no stage or image of that name"),
        ("FROM busybox\nCOPY a.txt a.txt /x\n", 125, "destination must be a directory ending in '/'"),
        ("FROM busybox\nRUN echo partial > /p\nRUN echo failing; exit 42\nCMD x\n", 42, "line 3: RUN echo failing; exit 42: the command exited with code 42"),
        ("FROM busybox\nADD https://example.com/x.tar /x\n", 125, "not supported: strata build does not download"),
        ("FROM busybox\nRUN --mount=type=cache,target=/c true\n", 125, "line 2: RUN --mount=type=cache,target=/c true: RUN --mount is a BuildKit feature"),
        ("FROM busybox\nEXPOSE 80/foo\n", 125, "line 2: EXPOSE 80/foo: invalid port"),
        ("FROM busybox\nCOPY --chown=nosuchuser a.txt /a\n", 125, "line 2: COPY --chown=nosuchuser a.txt /a: --chown=nosuchuser: unable to find user nosuchuser"),
        ("FROM scratch\nRUN true\n", 125, "line 2: RUN true: cannot RUN in an empty image"),
    ];
    let images_before = env.ok(&["images", "-q"]);
    for (cf, code, msg) in corpus {
        let r = build(&env, &ctx, cf, &["-t", "bad"]);
        assert_eq!(r.code, *code, "{cf:?}: {r:?}");
        assert!(
            r.stderr.contains(msg),
            "{cf:?}: expected {msg:?} in {:?}",
            r.stderr
        );
        assert_eq!(
            r.stderr.lines().count(),
            1,
            "one short message: {:?}",
            r.stderr
        );
        assert!(
            env.run(&["inspect", "--type", "image", "bad"]).code != 0,
            "{cf:?} tagged an image"
        );
        assert_clean(&env);
    }
    // Steps that succeeded before a failure stay as cache, untagged and
    // not listed.
    assert_eq!(images_before, env.ok(&["images", "-q"]));
    // A bad tag is refused before anything is built.
    let r = build(&env, &ctx, "FROM busybox\nRUN true\n", &["-t", "Bad Name"]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("-t Bad Name"), "{}", r.stderr);
    assert!(!r.stdout.contains("STEP"), "{}", r.stdout);
    let r = build(
        &env,
        &ctx,
        "FROM busybox\nRUN true\n",
        &["--network", "bridge"],
    );
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("--network bridge"), "{}", r.stderr);
    // A context that is not a directory; an undeclared build arg warns.
    let r = env.run(&["build", ctx.join("a.txt").to_str().unwrap()]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("is not a directory"), "{}", r.stderr);
    let r = build(
        &env,
        &ctx,
        "FROM busybox\nARG USED\nRUN true\n",
        &["--build-arg", "USED=1", "--build-arg", "UNUSED=2"],
    );
    image_id(&r);
    assert!(
        r.stderr.contains("build-args [UNUSED] were not consumed"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("[USED]"), "{}", r.stderr);
    // -f - reads the file from stdin.
    let r = env.run_input(
        &["build", "-q", "-f", "-", ctx.to_str().unwrap()],
        b"FROM busybox\nENV FROM_STDIN=1\n",
    );
    assert_eq!(r.code, 0, "{r:?}");
    let id = r.stdout.trim();
    assert!(env
        .inspect(id, "{{json .Config.Env}}")
        .contains("FROM_STDIN=1"));
}

// ---- podman interoperability ------------------------------------------

fn podman_available() -> bool {
    let ok = Command::new("podman")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "podman is missing on CI: scripts/setup installs it"
        );
        println!("SKIPPED: podman is not installed");
    }
    ok
}

/// podman with a store of its own (vfs driver), removed on drop.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        let dir = tempfile::Builder::new()
            .prefix("strata-podman-build-")
            .tempdir_in("/var/tmp")
            .unwrap();
        fs::write(
            dir.path().join("containers.conf"),
            "[containers]\nnetns = \"none\"\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        Podman { dir }
    }

    fn run(&self, args: &[&str]) -> Run {
        let d = self.dir.path();
        Command::new("podman")
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .unwrap()
            .into()
    }

    fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "podman {args:?}: {r:?}");
        r.stdout
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af"]);
        let _ = self.run(&["system", "reset", "-f"]);
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("root"))
            .output();
    }
}

#[test]
fn podman_and_strata_builds_give_the_same_files() {
    if !podman_available() {
        return;
    }
    let env = Env::new();
    let ctx = context(
        &env,
        &[
            ("app/main.sh", "echo main\n"),
            ("app/lib/util.sh", "echo util\n"),
            ("app/removed.txt", "gone\n"),
            ("conf.txt", "c\n"),
        ],
    );
    let mut p = fs::metadata(ctx.join("app/main.sh")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
    fs::set_permissions(ctx.join("app/main.sh"), p).unwrap();
    let cf = "FROM busybox\n\
              RUN mkdir -p /data/sub && echo x > /data/sub/f && chmod 751 /data/sub && rm /bin/vi && rm -r /etc/group\n\
              COPY app/ /app/\n\
              COPY --chown=1000:1000 conf.txt /etc/conf.txt\n\
              COPY --chmod=640 conf.txt /etc/conf-640\n\
              RUN rm /app/removed.txt && echo later > /data/sub/f2 && chown 65534:65534 /data/sub/f2\n\
              WORKDIR /app\n";
    fs::write(ctx.join("Containerfile"), cf).unwrap();
    let c = ctx.to_str().unwrap();
    env.ok(&["build", "-q", "-t", "same", c]);
    let pm = Podman::new();
    pm.ok(&["load", "-i", common::fixture().to_str().unwrap()]);
    pm.ok(&["build", "-q", "-t", "same", c]);
    let script = "find /app /data /etc /bin -xdev | sort | while read -r f; do \
                  stat -c '%n %F %a %u:%g %s' \"$f\"; done; pwd; ls /bin/vi /etc/group 2>&1; true";
    let ours = env.ok(&["run", "--rm", "same", "sh", "-c", script]);
    let theirs = pm.ok(&["run", "--rm", "same", "sh", "-c", script]);
    // Each runtime mounts its own /etc/hosts, resolv.conf and hostname;
    // podman also adds /etc/mtab.
    let keep = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| {
                ![
                    "/etc/hosts ",
                    "/etc/resolv.conf ",
                    "/etc/hostname ",
                    "/etc/mtab ",
                ]
                .iter()
                .any(|x| l.starts_with(x))
            })
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (keep(&ours), keep(&theirs));
    assert!(
        a.iter()
            .any(|l| l == "/app/main.sh regular file 755 0:0 10"),
        "{ours}"
    );
    assert!(
        a.iter().any(|l| l.starts_with("ls: /bin/vi: No such file")),
        "{ours}"
    );
    let only_ours: Vec<_> = a.iter().filter(|l| !b.contains(l)).collect();
    let only_theirs: Vec<_> = b.iter().filter(|l| !a.contains(l)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "only in strata's container: {only_ours:#?}\nonly in podman's: {only_theirs:#?}"
    );
}

#[test]
fn onbuild_triggers_run_in_the_child_build_and_are_not_inherited() {
    let env = Env::new();
    let ctx = context(&env, &[("a.txt", "from the context\n")]);
    let base =
        "FROM busybox\nONBUILD RUN echo trigger ran > /trig\nONBUILD COPY a.txt /trig-copy\n";
    image_id(&build(&env, &ctx, base, &["-t", "ob/base"]));
    let r = build(
        &env,
        &ctx,
        "FROM ob/base\nRUN cat /trig /trig-copy\n",
        &["-t", "ob/child"],
    );
    image_id(&r);
    assert!(
        r.stdout.contains("ONBUILD RUN echo trigger ran"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("trigger ran\nfrom the context\n"),
        "{}",
        r.stdout
    );
    assert_eq!(
        env.inspect("ob/child", "{{json .Config.OnBuild}}"),
        "<no value>"
    );
    assert_clean(&env);
}
