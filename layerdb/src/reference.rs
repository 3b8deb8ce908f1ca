//! Image names: `[REGISTRY/]PATH[:TAG]`, parsed, validated and normalised.
//!
//! Names a user types (`tag`, `import`, `commit`) without a registry get
//! `localhost/`, as podman does. Names read from archives (`RepoTags`)
//! without a registry get `docker.io/` (and `library/` for one-component
//! names), as docker and podman read them. Lookup of a short name tries
//! both.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A normalised image name with its tag, e.g. `localhost/busybox:latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageName {
    repo: String,
    tag: String,
}

/// Which registry a name without one gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultDomain {
    /// `localhost/NAME` (podman's rule for local names).
    Localhost,
    /// `docker.io/library/NAME` (docker's rule, for names from archives).
    DockerHub,
}

fn has_domain(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        })
        && c.as_bytes()[0].is_ascii_alphanumeric()
}

impl ImageName {
    /// Parses `s`, adding a registry per `domain` and the tag `latest` when
    /// missing.
    pub fn parse(s: &str, domain: DefaultDomain) -> Result<ImageName, Error> {
        let bad = |why: &str| Error::InvalidReference {
            reference: s.to_string(),
            reason: why.to_string(),
        };
        if s.contains('@') {
            return Err(bad(
                "digest references (NAME@sha256:...) are not supported here",
            ));
        }
        // The tag is after the last ':' that follows the last '/'.
        let slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (repo, tag) = match s[slash..].rfind(':') {
            Some(i) => (&s[..slash + i], &s[slash + i + 1..]),
            None => (s, "latest"),
        };
        if !valid_tag(tag) {
            return Err(bad("invalid tag"));
        }
        let comps: Vec<&str> = repo.split('/').collect();
        if comps.iter().any(|c| c.is_empty()) {
            return Err(bad("empty name component"));
        }
        let (domain_part, path): (Option<&str>, &[&str]) =
            if comps.len() > 1 && has_domain(comps[0]) {
                (Some(comps[0]), &comps[1..])
            } else {
                (None, &comps[..])
            };
        if let Some(d) = domain_part {
            if !d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':')
            {
                return Err(bad("invalid registry"));
            }
        }
        if !path.iter().all(|c| valid_component(c)) {
            return Err(bad(
                "name components must be lowercase letters, digits, '.', '_' or '-'",
            ));
        }
        let repo = match (domain_part, domain) {
            (Some(_), _) => repo.to_string(),
            (None, DefaultDomain::Localhost) => format!("localhost/{repo}"),
            (None, DefaultDomain::DockerHub) if path.len() == 1 => {
                format!("docker.io/library/{repo}")
            }
            (None, DefaultDomain::DockerHub) => format!("docker.io/{repo}"),
        };
        Ok(ImageName {
            repo,
            tag: tag.to_string(),
        })
    }

    /// The repository, with registry (`localhost/busybox`).
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// The tag (`latest`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Every normalised name a user's short reference may mean, in lookup
    /// order: as written if it names a registry, then `localhost/...`, then
    /// `docker.io/...`.
    pub(crate) fn candidates(s: &str) -> Vec<ImageName> {
        let mut out = Vec::new();
        for d in [DefaultDomain::Localhost, DefaultDomain::DockerHub] {
            if let Ok(n) = ImageName::parse(s, d) {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        out
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repo, self.tag)
    }
}

impl FromStr for ImageName {
    type Err = Error;
    /// Parses with the `localhost/` default, as for names users type.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageName::parse(s, DefaultDomain::Localhost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        let n: ImageName = "busybox".parse().unwrap();
        assert_eq!(n.to_string(), "localhost/busybox:latest");
        let n = ImageName::parse("busybox:1.36", DefaultDomain::DockerHub).unwrap();
        assert_eq!(n.to_string(), "docker.io/library/busybox:1.36");
        let n: ImageName = "quay.io/a/b:v1".parse().unwrap();
        assert_eq!(n.to_string(), "quay.io/a/b:v1");
        let n: ImageName = "localhost:5000/x".parse().unwrap();
        assert_eq!(n.to_string(), "localhost:5000/x:latest");
        assert!("Busy".parse::<ImageName>().is_err());
        assert!("a:".parse::<ImageName>().is_err());
        assert!("a@sha256:00".parse::<ImageName>().is_err());
        assert_eq!(
            ImageName::candidates("busybox")
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            [
                "localhost/busybox:latest",
                "docker.io/library/busybox:latest"
            ]
        );
    }
}
