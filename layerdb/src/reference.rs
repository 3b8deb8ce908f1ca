//! Image names: `[REGISTRY/]PATH[:TAG]`, parsed, validated and normalised.
//!
//! Names a user types (`tag`, `import`, `commit`) without a registry get
//! `localhost/`, as podman does. Names read from archives (`RepoTags`)
//! without a registry get `docker.io/` (and `library/` for one-component
//! names), as docker and podman read them. Lookup of a short name tries
//! both.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::ids::ImageId;

/// How a user names an image, as [`crate::Store::resolve`] and the other
/// store calls take it: an [`ImageId`] the caller holds, or text as typed,
/// looked up (in this order) as a full image ID, `NAME@DIGEST`,
/// `NAME[:TAG]` (short names also under `localhost/` and
/// `docker.io/library/`) and a unique ID prefix of at least 4 hex digits.
///
/// Text is kept as typed, so an error names the image as the user wrote
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// An image ID.
    Id(ImageId),
    /// A reference as typed.
    Text(String),
}

impl ImageRef {
    /// The reference as text: the ID's `sha256:...` form, or as typed.
    pub fn text(&self) -> Cow<'_, str> {
        match self {
            ImageRef::Id(id) => Cow::Owned(id.to_string()),
            ImageRef::Text(t) => Cow::Borrowed(t),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Id(id) => id.fmt(f),
            ImageRef::Text(t) => f.write_str(t),
        }
    }
}

impl FromStr for ImageRef {
    type Err = Infallible;
    /// Any text may name an image; whether one exists is for
    /// [`crate::Store::resolve`] to say.
    fn from_str(s: &str) -> Result<Self, Infallible> {
        Ok(ImageRef::Text(s.to_string()))
    }
}

impl From<ImageId> for ImageRef {
    fn from(id: ImageId) -> Self {
        ImageRef::Id(id)
    }
}

impl From<&ImageId> for ImageRef {
    fn from(id: &ImageId) -> Self {
        ImageRef::Id(*id)
    }
}

impl From<&str> for ImageRef {
    fn from(s: &str) -> Self {
        ImageRef::Text(s.to_string())
    }
}

impl From<String> for ImageRef {
    fn from(s: String) -> Self {
        ImageRef::Text(s)
    }
}

impl From<&String> for ImageRef {
    fn from(s: &String) -> Self {
        ImageRef::Text(s.clone())
    }
}

impl From<&ImageRef> for ImageRef {
    fn from(r: &ImageRef) -> Self {
        r.clone()
    }
}

/// What the store's calls take by reference to name an image: an
/// [`ImageRef`], an [`ImageId`], or text (`str`, `String`) as typed.
pub trait ToImageRef {
    /// The reference.
    fn to_image_ref(&self) -> ImageRef;
}

impl ToImageRef for ImageRef {
    fn to_image_ref(&self) -> ImageRef {
        self.clone()
    }
}

impl ToImageRef for ImageId {
    fn to_image_ref(&self) -> ImageRef {
        ImageRef::Id(*self)
    }
}

impl ToImageRef for str {
    fn to_image_ref(&self) -> ImageRef {
        ImageRef::Text(self.to_string())
    }
}

impl ToImageRef for String {
    fn to_image_ref(&self) -> ImageRef {
        ImageRef::Text(self.clone())
    }
}

impl<T: ToImageRef + ?Sized> ToImageRef for &T {
    fn to_image_ref(&self) -> ImageRef {
        (**self).to_image_ref()
    }
}

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

/// Whether the first component of a name is a registry (`quay.io`,
/// `localhost:5000`, `localhost`), as docker tells them from paths.
pub(crate) fn has_domain(first: &str) -> bool {
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
    fn image_ref_keeps_text_as_typed_and_ids_as_ids() {
        let typed: ImageRef = " busybox:1 ".parse().unwrap();
        assert_eq!(typed, ImageRef::Text(" busybox:1 ".into()));
        assert_eq!(typed.to_string(), " busybox:1 ");
        let hex = "ab".repeat(32);
        let id: ImageId = hex.parse().unwrap();
        let by_id = ImageRef::from(id);
        assert_eq!(by_id, ImageRef::Id(id));
        assert_eq!(by_id.to_string(), format!("sha256:{hex}"));
        assert_eq!(by_id.text(), id.to_string());
        // Text that happens to be an ID stays text: errors quote it as typed.
        assert_eq!(ImageRef::from(hex.as_str()), ImageRef::Text(hex.clone()));
    }

    #[test]
    fn registries_are_told_from_paths() {
        assert!(has_domain("quay.io"));
        assert!(has_domain("localhost:5000"));
        assert!(has_domain("localhost"));
        assert!(!has_domain("library"));
    }

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
