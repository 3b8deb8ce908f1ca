//! Content identities: [`Digest`], and the three newtypes built on it that
//! name layers and images ([`DiffId`], [`ChainId`], [`ImageId`]).
//!
//! Invariant: every value holds a valid `sha256:` digest (64 lowercase hex
//! digits), so a parsed identity can be used as a file name without further
//! checks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A parse error for a digest-like identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: expected sha256: followed by 64 lowercase hex digits")]
pub struct DigestParseError {
    /// The text that failed to parse.
    pub input: String,
}

/// A `sha256:<64 hex>` content digest.
///
/// `Display` prints `sha256:<hex>`; `FromStr` accepts exactly that form (a
/// bare 64-digit hex string is also accepted, as docker does for image IDs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// Wraps a raw 32-byte SHA-256 value.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits: the short ID that docker and podman print.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", &self.hex()[..16])
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hexpart = s.strip_prefix("sha256:").unwrap_or(s);
        let err = || DigestParseError {
            input: s.to_string(),
        };
        if hexpart.len() != 64
            || !hexpart
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hexpart, &mut out).map_err(|_| err())?;
        Ok(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental SHA-256 hasher producing a [`Digest`].
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

macro_rules! digest_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Digest);

        impl $name {
            /// The underlying digest.
            pub fn digest(&self) -> &Digest {
                &self.0
            }
            /// The 64 hex digits, without `sha256:`.
            pub fn hex(&self) -> String {
                self.0.hex()
            }
            /// The first 12 hex digits.
            pub fn short(&self) -> String {
                self.0.short()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = DigestParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok($name(s.parse()?))
            }
        }

        impl From<Digest> for $name {
            fn from(d: Digest) -> Self {
                $name(d)
            }
        }
    };
}

digest_newtype!(
    /// A layer's diffID: the SHA-256 of its uncompressed tar stream.
    DiffId
);
digest_newtype!(
    /// A layer's chainID: names the layer together with all layers below it.
    /// `chain(L1) = diff(L1)`, `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))`.
    ChainId
);
digest_newtype!(
    /// An image ID: the SHA-256 of the exact bytes of the image config JSON.
    ImageId
);

impl ChainId {
    /// The chainID of `diff` stacked on `parent` (or of a base layer when
    /// `parent` is `None`).
    pub fn next(parent: Option<&ChainId>, diff: &DiffId) -> ChainId {
        match parent {
            None => ChainId(diff.0),
            Some(p) => ChainId(Digest::of(format!("{p} {diff}").as_bytes())),
        }
    }

    /// The chainIDs of a whole stack of diffIDs, bottom layer first.
    pub fn chain(diffs: &[DiffId]) -> Vec<ChainId> {
        let mut out: Vec<ChainId> = Vec::with_capacity(diffs.len());
        for d in diffs {
            let next = ChainId::next(out.last(), d);
            out.push(next);
        }
        out
    }
}

impl ImageId {
    /// The image ID of a config whose exact bytes are `config`.
    pub fn of_config(config: &[u8]) -> ImageId {
        ImageId(Digest::of(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let s = "sha256:04a8b625e955f08102a1e56cb355a4855d9fad18fd485ce2f88bcbbd22e72f25";
        let d: DiffId = s.parse().unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(d.short(), "04a8b625e955");
        let bare: Digest = s[7..].parse().unwrap();
        assert_eq!(bare, d.0);
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256:",
            "sha256:xyz",
            "md5:04a8b625e955f08102a1e56cb355a4855d9fad18fd485ce2f88bcbbd22e72f25",
            "sha256:04A8B625E955F08102A1E56CB355A4855D9FAD18FD485CE2F88BCBBD22E72F25",
            "sha256:04a8b625e955f08102a1e56cb355a4855d9fad18fd485ce2f88bcbbd22e72f2",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = DiffId(Digest::of(b"a"));
        let b = DiffId(Digest::of(b"b"));
        let chain = ChainId::chain(&[a, b]);
        assert_eq!(chain[0].0, a.0);
        assert_eq!(chain[1].0, Digest::of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn fixture_chain_id() {
        // The legacy v1 layout of the 2-layer fixture does not name chainIDs,
        // but the value below is what docker and containers/storage compute.
        let l1: DiffId = "sha256:04a8b625e955f08102a1e56cb355a4855d9fad18fd485ce2f88bcbbd22e72f25"
            .parse()
            .unwrap();
        let l2: DiffId = "sha256:054674bdec3cf1cc79c1b77d73620d729a1302e4982324ec3d0c2da27b641d92"
            .parse()
            .unwrap();
        let chain = ChainId::chain(&[l1, l2]);
        let expect = Digest::of(format!("{l1} {l2}").as_bytes());
        assert_eq!(chain[1].0, expect);
    }
}
