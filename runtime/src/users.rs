//! `-u USER[:GROUP]` resolved against the container's `/etc/passwd` and
//! `/etc/group`, as docker does.

/// Who the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// Supplementary groups (from `/etc/group` membership).
    pub groups: Vec<u32>,
    /// The home directory (for `HOME` when the environment has none).
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 6 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// A user or group name the container's files do not have.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// No passwd entry of that name (and not a number).
    #[error("unable to find user {0}: no matching entries in passwd file")]
    NoUser(String),
    /// No group entry of that name (and not a number).
    #[error("unable to find group {0}: no matching entries in group file")]
    NoGroup(String),
}

/// Resolves `spec` (`""` for root, `name`, `uid`, `name:group`, `uid:gid`)
/// with the text of the container's passwd and group files. The error says
/// which name was not found.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, UserError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entry = passwd_entries(passwd).find(|e| e.name == user || e.uid.to_string() == user);
    let (uid, mut gid, home, name) = match (&entry, user.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, e.home.to_string(), Some(e.name.to_string())),
        (None, Ok(n)) => (n, 0, "/".to_string(), None),
        (None, Err(_)) => return Err(UserError::NoUser(user.to_string())),
    };
    if let Some(g) = grp.filter(|g| !g.is_empty()) {
        gid = match group_entries(group).find(|(n, id, _)| *n == g || id.to_string() == g) {
            Some((_, id, _)) => id,
            None => g.parse().map_err(|_| UserError::NoGroup(g.to_string()))?,
        };
    }
    let groups = match &name {
        Some(n) if grp.is_none() => group_entries(group)
            .filter(|(_, id, members)| members.contains(&n.as_str()) && *id != gid)
            .map(|(_, id, _)| id)
            .collect(),
        _ => Vec::new(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        groups,
        home: if uid == 0 && home == "/" && name.is_none() {
            "/root".into()
        } else {
            home
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nalice:x:1000:\nwheel:x:10:alice\n";

    #[test]
    fn names_numbers_and_groups() {
        let r = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (0, 0, "/root"));
        let a = resolve("alice", PASSWD, GROUP).unwrap();
        assert_eq!((a.uid, a.gid, a.groups.clone()), (1000, 1000, vec![10]));
        let n = resolve("nobody:wheel", PASSWD, GROUP).unwrap();
        assert_eq!((n.uid, n.gid), (65534, 10));
        let u = resolve("4242:99", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 99));
        assert!(resolve("bob", PASSWD, GROUP)
            .unwrap_err()
            .to_string()
            .contains("bob"));
    }
}
