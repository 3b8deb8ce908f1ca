//! Registry references: `REGISTRY/PATH[:TAG][@sha256:DIGEST]`.
//!
//! Unlike [`ImageName`] (names in the store, where a missing registry means
//! `localhost/`), a reference for pull or push must name its registry: no
//! search list is configured, so an unqualified name is an error that says
//! what to write. `docker://` (podman's transport prefix) is accepted.

use std::fmt;
use std::net::Ipv4Addr;

use crate::error::{Error, Result};
use crate::ids::Digest;
use crate::reference::{has_domain, DefaultDomain, ImageName};

/// A parsed registry reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as written (`localhost:5000`, `docker.io`).
    pub registry: String,
    /// The repository inside it (`library/busybox`).
    pub repository: String,
    /// The tag, if one was given or implied (`latest` when neither a tag
    /// nor a digest was written).
    pub tag: Option<String>,
    /// The manifest digest, if written (`@sha256:...`).
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference that must name its registry.
    pub fn parse(input: &str) -> Result<Reference> {
        let s = input.strip_prefix("docker://").unwrap_or(input);
        let bad = |why: String| Error::InvalidReference {
            reference: input.to_string(),
            reason: why,
        };
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (
                n,
                Some(
                    d.parse::<Digest>()
                        .map_err(|e| bad(format!("{e} (only sha256 digests are supported)")))?,
                ),
            ),
            None => (s, None),
        };
        let first = name.split('/').next().unwrap_or("");
        if !name.contains('/') || !has_domain(first) {
            return Err(bad(format!(
                "it names no registry and none is configured for short names; \
                 write the registry, e.g. docker.io/library/{name} or localhost:5000/{name}"
            )));
        }
        let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
        let has_tag = name[slash..].contains(':');
        let parsed = ImageName::parse(name, DefaultDomain::Localhost)?;
        let (registry, repository) = parsed
            .repo()
            .split_once('/')
            .expect("a name with a registry has a '/'");
        let mut repository = repository.to_string();
        if registry == "docker.io" && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        let tag = if has_tag || digest.is_none() {
            Some(parsed.tag().to_string())
        } else {
            None
        };
        Ok(Reference {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// The name in the store's form (`REGISTRY/REPO:TAG`), when tagged.
    pub fn image_name(&self) -> Option<ImageName> {
        let tag = self.tag.as_ref()?;
        ImageName::parse(&format!("{}:{tag}", self.repo()), DefaultDomain::Localhost).ok()
    }

    /// `REGISTRY/REPO`.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What the manifest URL ends with: the digest if given, else the tag.
    pub(crate) fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repo())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The host and port to connect to for a registry name (`docker.io` is
/// served by `registry-1.docker.io`).
pub(crate) fn api_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// Whether a registry may be spoken to in plain HTTP without being told:
/// `localhost` and 127.0.0.0/8 (and `[::1]`), as docker allows.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        return rest.starts_with("::1]");
    } else {
        registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(registry)
    };
    host == "localhost"
        || host
            .parse::<Ipv4Addr>()
            .map(|a| a.octets()[0] == 127)
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = Reference::parse("localhost:5000/a/b:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "a/b")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let r = Reference::parse("docker.io/busybox").unwrap();
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let d = "sha256:".to_string() + &"ab".repeat(32);
        let r = Reference::parse(&format!("docker://127.0.0.1:5000/x@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), d);
        let e = Reference::parse("busybox").unwrap_err().to_string();
        assert!(e.contains("docker.io/library/busybox"), "{e}");
        assert!(Reference::parse("localhost:5000/x@sha256:12").is_err());
    }

    #[test]
    fn loopback_registries_may_use_http() {
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:41",
            "127.9.9.9",
            "[::1]:5000",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["quay.io", "10.0.0.1:5000", "localhost.example.com"] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
