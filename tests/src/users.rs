//! Unprivileged users for the rootless tests: a user made with `useradd`,
//! with or without a subordinate id range of the test's choosing, a home
//! and a runtime directory under a test directory. On drop everything
//! that runs as the user is killed (and waited for), and the user and its
//! ranges go.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Removes the lines naming `user` from /etc/subuid or /etc/subgid.
pub fn drop_range(file: &str, user: &str) {
    if let Ok(s) = std::fs::read_to_string(file) {
        let kept: String = s
            .lines()
            .filter(|l| !l.starts_with(&format!("{user}:")))
            .map(|l| format!("{l}\n"))
            .collect();
        let _ = std::fs::write(file, kept);
    }
}

/// A user of the test, removed on drop.
pub struct TestUser {
    /// Its name.
    pub name: String,
    /// Its uid (and gid).
    pub uid: u32,
    /// The directory holding `home/` and `run/` (mode 0755, so the user
    /// reaches them); removed on drop.
    pub dir: tempfile::TempDir,
}

impl TestUser {
    /// A user named `NAME_PREFIX` + this process's id + `tag`, whose only
    /// subordinate uid and gid range is 65536 ids from `range` (useradd's
    /// own default range is removed), or none.
    pub fn new(name_prefix: &str, tag: &str, range: Option<u32>) -> TestUser {
        let name = format!("{name_prefix}{}{tag}", std::process::id() % 100_000);
        let dir = tempfile::Builder::new()
            .prefix("strata-user-")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the test directory");
        let ok = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", "-d"])
            .arg(dir.path().join("home"))
            .arg(&name)
            .status()
            .expect("run useradd")
            .success();
        assert!(ok, "useradd {name}");
        let uid = nix::unistd::User::from_name(&name)
            .ok()
            .flatten()
            .expect("the new user")
            .uid
            .as_raw();
        let u = TestUser { name, uid, dir };
        for file in ["/etc/subuid", "/etc/subgid"] {
            drop_range(file, &u.name);
            if let Some(base) = range {
                let mut s = std::fs::read_to_string(file).unwrap_or_default();
                s.push_str(&format!("{}:{base}:65536\n", u.name));
                std::fs::write(file, s).expect("write the subordinate ids");
            }
        }
        for (d, mode) in [("home", 0o755), ("run", 0o700)] {
            let p = u.dir.path().join(d);
            std::fs::create_dir(&p).expect("mkdir");
            u.give_path(&p);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        u
    }

    /// Its home directory.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Its `XDG_RUNTIME_DIR`.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Makes `path` the user's (not recursively).
    pub fn give_path(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.uid)).expect("chown");
    }

    /// A copy of `from`, named `name` in its home, that the user owns.
    pub fn give(&self, name: &str, from: &Path) -> PathBuf {
        let to = self.home().join(name);
        std::fs::copy(from, &to).expect("copy into the user's home");
        self.give_path(&to);
        to
    }

    /// Kills whatever still runs as the user and waits (bounded) for it
    /// to be gone.
    pub fn kill_all(&self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .status();
        for _ in 0..100 {
            let left = Command::new("pgrep")
                .args(["-u", &self.name])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !left {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        self.kill_all();
        let _ = Command::new("userdel").arg(&self.name).status();
        drop_range("/etc/subuid", &self.name);
        drop_range("/etc/subgid", &self.name);
    }
}
