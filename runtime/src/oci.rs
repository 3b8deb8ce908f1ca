//! The OCI runtime spec of a container (`config.json` of its bundle), as
//! docker's defaults make it: the image's process as the user it resolves
//! to, docker's 14 capabilities and seccomp profile, runc's masked and
//! read-only paths, /sys read-only, the standard devices only (a device
//! cgroup denies every other), new PID, mount, IPC, UTS and network
//! namespaces (the host's network with `--network host`), and the limits
//! of its cgroup. youki's `libcontainer` starts it (`crate::supervisor`).

use std::path::Path;

use serde_json::{json, Value};

use crate::container::{Container, Network};
use crate::resources;
use crate::security::SeccompError;
use crate::users::ResolvedUser;

/// Paths of /proc and /sys hidden from the container (runc's and docker's
/// defaults).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths of /proc the container sees read-only.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The character devices a container may use: null, zero, full, random,
/// urandom, tty, console, ptmx and the pty slaves (136:*).
const ALLOWED_DEVICES: [(i64, Option<i64>); 9] = [
    (1, Some(3)),
    (1, Some(5)),
    (1, Some(7)),
    (1, Some(8)),
    (1, Some(9)),
    (5, Some(0)),
    (5, Some(1)),
    (5, Some(2)),
    (136, None),
];

/// What the spec needs beyond the container's config.
#[derive(Debug, Clone)]
pub struct ProcessInputs<'a> {
    /// The user the process runs as (resolved in the image).
    pub user: &'a ResolvedUser,
    /// `KEY=VALUE`, `HOME` included.
    pub env: Vec<String>,
    /// The terminal to show as `/dev/console`.
    pub console: Option<&'a Path>,
    /// Whether `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf` are files
    /// in the container's tree (then the container's own copies are bound
    /// onto them).
    pub etc_files: [bool; 3],
    /// The runtime runs in a user namespace: no cgroup limits or device
    /// rules in the spec.
    pub rootless: bool,
}

fn bind(src: &Path, dst: &str, ro: bool) -> Value {
    let mut options = vec!["rbind", "rprivate"];
    if ro {
        options.push("ro");
    }
    json!({"destination": dst, "type": "bind", "source": src, "options": options})
}

/// The container's `config.json`.
pub fn spec(c: &Container, p: &ProcessInputs<'_>) -> Result<Value, SeccompError> {
    let cfg = &c.config;
    let sec = &cfg.security;
    let caps = sec.capabilities();
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
    ];
    let sys_mode = if sec.privileged { "rw" } else { "ro" };
    mounts.push(if p.rootless && cfg.network == Network::Host {
        // sysfs may be mounted only by the owner of the network namespace:
        // rootless with the host's network, the host's /sys is bound.
        json!({"destination": "/sys", "type": "bind", "source": "/sys",
               "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev", sys_mode]})
    } else {
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", sys_mode]})
    });
    mounts.push(if p.rootless {
        // A cgroup filesystem cannot be mounted without a cgroup namespace
        // of its own: the namespace's hierarchy, bound read-only.
        json!({"destination": "/sys/fs/cgroup", "type": "bind", "source": "/sys/fs/cgroup",
               "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev", "ro"]})
    } else {
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", if sec.privileged { "rw" } else { "ro" }]})
    });
    let etc = [
        (c.paths.hostname(), "/etc/hostname"),
        (c.paths.hosts(), "/etc/hosts"),
        (c.paths.resolv(), "/etc/resolv.conf"),
    ];
    for ((src, dst), present) in etc.iter().zip(p.etc_files) {
        if present {
            mounts.push(bind(src, dst, false));
        }
    }
    if let Some(console) = p.console {
        mounts.push(bind(console, "/dev/console", false));
    }
    for v in &cfg.volumes {
        mounts.push(bind(&v.host, &v.target, v.read_only));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if cfg.network != Network::Host {
        namespaces.push(json!({"type": "network"}));
    }
    let mut res = cfg.resources.oci();
    res["devices"] = if sec.privileged {
        json!([{"allow": true, "access": "rwm"}])
    } else {
        let mut d = vec![
            json!({"allow": false, "access": "rwm"}),
            // mknod of any node, as docker: a node made inside is still
            // neither readable nor writable.
            json!({"allow": true, "type": "c", "access": "m"}),
            json!({"allow": true, "type": "b", "access": "m"}),
        ];
        for (major, minor) in ALLOWED_DEVICES {
            let mut r = json!({"allow": true, "type": "c", "major": major, "access": "rwm"});
            if let Some(m) = minor {
                r["minor"] = json!(m);
            }
            d.push(r);
        }
        Value::Array(d)
    };
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": resources::cgroups_path(c.id().as_str()),
    });
    // In a user namespace (rootless) devices are what the kernel lets it
    // have (bind mounts of the host's, no mknod), and cgroups are best
    // effort: limits are not promised where they cannot be kept.
    if !p.rootless {
        linux["resources"] = res;
    }
    if !sec.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    if let Some(s) = sec.seccomp()? {
        linux["seccomp"] = s;
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": p.user.uid, "gid": p.user.gid, "additionalGids": p.user.groups},
            "args": cfg.args,
            "env": p.env,
            "cwd": cfg.workdir,
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
        },
        "root": {"path": c.paths.merged(), "readonly": false},
        "hostname": cfg.hostname,
        "mounts": mounts,
        "linux": linux,
    });
    // Only when set: libcontainer 0.7 loads the seccomp filter before
    // dropping capabilities only when the field is absent, and a filter
    // loaded later, without no_new_privs or CAP_SYS_ADMIN, is refused.
    if sec.no_new_privileges {
        spec["process"]["noNewPrivileges"] = json!(true);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(extra: Value) -> Container {
        let mut v = json!({
            "id": "a".repeat(64), "name": "n", "image": "i",
            "image_id": format!("sha256:{}", "b".repeat(64)),
            "created": "1970-01-01T00:00:00Z", "args": ["sh"], "env": [],
            "workdir": "/", "user": "", "hostname": "h", "network": "none",
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Container {
            config: serde_json::from_value(v).unwrap(),
            paths: crate::container::Paths { dir: "/x/c".into() },
        }
    }

    fn inputs(u: &ResolvedUser) -> ProcessInputs<'_> {
        ProcessInputs {
            user: u,
            env: vec!["PATH=/bin".into()],
            console: None,
            etc_files: [true, true, false],
            rootless: false,
        }
    }

    #[test]
    fn default_spec_is_dockers_and_parses_as_oci() {
        let u = ResolvedUser {
            uid: 0,
            gid: 0,
            groups: vec![10],
            home: "/root".into(),
        };
        let c = container(json!({}));
        let s = spec(&c, &inputs(&u)).unwrap();
        let parsed: libcontainer::oci_spec::runtime::Spec =
            serde_json::from_value(s.clone()).unwrap();
        let caps = parsed
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap()
            .len();
        assert_eq!(caps, 14);
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"network"));
        assert_eq!(s["linux"]["resources"]["devices"][0]["allow"], false);
        assert!(s["linux"]["readonlyPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/sys")));
        assert!(s["linux"]["seccomp"].is_object());
        let sysfs = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(sysfs["options"].as_array().unwrap().contains(&json!("ro")));
        let binds = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "bind")
            .count();
        assert_eq!(binds, 2);

        let host = container(json!({"network": "host", "security": {"privileged": true}}));
        let s = spec(&host, &inputs(&u)).unwrap();
        let n = s["linux"]["namespaces"].as_array().unwrap().len();
        assert_eq!(n, 4);
        assert!(s["linux"].get("seccomp").is_none());
        assert!(s["linux"].get("maskedPaths").is_none());
        assert_eq!(s["linux"]["resources"]["devices"][0]["allow"], true);
    }
}
