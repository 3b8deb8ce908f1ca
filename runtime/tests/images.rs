//! `strata images` as docker and podman take it: a REPOSITORY[:TAG]
//! argument, `--filter` (reference, dangling, before, since, label) and
//! `--format` (a template, `table TEMPLATE`, `json`).

mod common;

use common::Env;

/// Imports a one-file image; `name` may be empty for an untagged one.
fn import(env: &Env, name: &str, changes: &[&str]) -> String {
    let tarball = env.dir.path().join("t.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tarball).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(name.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "name.txt", name.as_bytes()).unwrap();
    b.finish().unwrap();
    let mut args = vec!["import"];
    for c in changes {
        args.extend(["--change", c]);
    }
    args.push(tarball.to_str().unwrap());
    if !name.is_empty() {
        args.push(name);
    }
    env.ok(&args).trim().to_string()
}

/// `images --format '{{.Repository}}:{{.Tag}}'` with `args` added, sorted.
fn names(env: &Env, args: &[&str]) -> Vec<String> {
    let mut a = vec!["images", "--format", "{{.Repository}}:{{.Tag}}"];
    a.extend(args);
    let mut v: Vec<String> = env.ok(&a).lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn images_filters_and_formats_as_docker_and_podman() {
    let env = Env::new(); // localhost/busybox:latest, made in 2023
    import(&env, "app:1", &["LABEL tier=web"]);
    import(&env, "other.example/team/app:2", &["LABEL tier=db"]);
    import(&env, "", &[]);
    let all = [
        "<none>:<none>",
        "localhost/app:1",
        "localhost/busybox:latest",
        "other.example/team/app:2",
    ];
    assert_eq!(names(&env, &[]), all);

    // REPOSITORY[:TAG], as `docker images app` (the short name only).
    assert_eq!(names(&env, &["app"]), ["localhost/app:1"]);
    assert_eq!(names(&env, &["app:1"]), ["localhost/app:1"]);
    assert_eq!(names(&env, &["app:2"]), Vec::<String>::new());
    assert_eq!(names(&env, &["team/app"]), ["other.example/team/app:2"]);
    assert_eq!(
        names(&env, &["busybox:latest"]),
        ["localhost/busybox:latest"]
    );
    let table = env.ok(&["images", "nothing-like-this"]);
    assert_eq!(table.lines().count(), 1, "only the header: {table}");

    // reference= globs: `*` stays within one path component; several are
    // alternatives.
    assert_eq!(
        names(&env, &["--filter", "reference=*/app"]),
        ["localhost/app:1", "other.example/team/app:2"]
    );
    assert_eq!(
        names(&env, &["-f", "reference=busy*", "-f", "reference=*/app:2"]),
        ["localhost/busybox:latest", "other.example/team/app:2"]
    );

    assert_eq!(
        names(&env, &["--filter", "dangling=true"]),
        ["<none>:<none>"]
    );
    assert_eq!(names(&env, &["--filter", "dangling=false"]).len(), 3);

    // before= and since= compare creation times with that image's.
    assert_eq!(
        names(&env, &["--filter", "before=app:1"]),
        ["localhost/busybox:latest"]
    );
    assert_eq!(
        names(&env, &["--filter", "since=app:1"]),
        ["<none>:<none>", "other.example/team/app:2"]
    );
    assert_eq!(
        names(
            &env,
            &[
                "--filter",
                "since=busybox",
                "--filter",
                "before=other.example/team/app:2"
            ]
        ),
        ["localhost/app:1"]
    );

    assert_eq!(
        names(&env, &["--filter", "label=tier=web"]),
        ["localhost/app:1"]
    );
    assert_eq!(
        names(&env, &["--filter", "label=tier"]),
        ["localhost/app:1", "other.example/team/app:2"]
    );
    assert_eq!(
        names(
            &env,
            &["--filter", "label=tier", "--filter", "label=tier=db"]
        ),
        ["other.example/team/app:2"]
    );

    // -q lists the IDs of what passes.
    let id = env.ok(&["images", "-q", "--no-trunc", "app"]);
    assert_eq!(id.lines().count(), 1, "{id}");
    assert!(id.starts_with("sha256:"), "{id}");

    // --format: a template, `table`, `json`.
    let line = env.ok(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}}",
        "app",
    ]);
    assert_eq!(line, format!("localhost/app:1 {}\n", &id.trim()[7..19]));
    let t = env.ok(&[
        "images",
        "--format",
        "table {{.Repository}}\\t{{.Tag}}\\t{{.ID}}",
        "busybox",
    ]);
    let mut lines = t.lines();
    let head: Vec<&str> = lines
        .next()
        .unwrap()
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(head, ["REPOSITORY", "TAG", "IMAGE ID"], "{t}");
    let row: Vec<&str> = lines
        .next()
        .unwrap()
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(row, ["localhost/busybox", "latest", "b1ef65e51b22"], "{t}");
    assert_eq!(lines.next(), None, "{t}");
    let js: serde_json::Value =
        serde_json::from_str(&env.ok(&["images", "--format", "json", "--filter", "label=tier=db"]))
            .unwrap();
    assert_eq!(js.as_array().unwrap().len(), 1, "{js}");
    assert_eq!(js[0]["Repository"], "other.example/team/app", "{js}");

    // A filter key or value that does not exist is refused, saying why.
    let r = env.run(&["images", "--filter", "colour=red"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("unknown filter \"colour\""), "{r:?}");
    let r = env.run(&["images", "--filter", "dangling=maybe"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("use true or false"), "{r:?}");
    let r = env.run(&["images", "--filter", "before=no-such-image"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("no-such-image"), "{r:?}");
}
