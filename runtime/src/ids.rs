//! Container identities: 64-hex IDs (12-character short form) and the
//! generated `adjective_noun` names.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A container ID: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContainerId(String);

/// A string that is not 64 lowercase hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid container ID {0:?}: expected 64 lowercase hex digits")]
pub struct BadId(pub String);

impl ContainerId {
    /// A fresh random ID (from the kernel's random pool).
    pub fn generate() -> ContainerId {
        let mut b = [0u8; 32];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = f.read_exact(&mut b);
        }
        if b == [0u8; 32] {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            b[..16].copy_from_slice(&t.to_le_bytes());
            b[16..20].copy_from_slice(&std::process::id().to_le_bytes());
        }
        ContainerId(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    /// The 12-character short form shown in listings.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }

    /// The full 64 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ContainerId {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Self, BadId> {
        if s.len() == 64
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            Ok(ContainerId(s.to_string()))
        } else {
            Err(BadId(s.to_string()))
        }
    }
}

impl TryFrom<String> for ContainerId {
    type Error = BadId;
    fn try_from(s: String) -> Result<Self, BadId> {
        s.parse()
    }
}

impl From<ContainerId> for String {
    fn from(c: ContainerId) -> String {
        c.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const ADJECTIVES: &[&str] = &[
    "admiring",
    "agitated",
    "amazing",
    "bold",
    "brave",
    "busy",
    "calm",
    "clever",
    "cool",
    "dazzling",
    "eager",
    "elastic",
    "epic",
    "festive",
    "focused",
    "gallant",
    "gifted",
    "happy",
    "hopeful",
    "jolly",
    "keen",
    "kind",
    "lucid",
    "magical",
    "modest",
    "nifty",
    "nostalgic",
    "optimistic",
    "peaceful",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "stoic",
    "sweet",
    "tender",
    "trusting",
    "upbeat",
    "vibrant",
    "wizardly",
    "youthful",
    "zealous",
];

const NOUNS: &[&str] = &[
    "albattani",
    "babbage",
    "bohr",
    "curie",
    "darwin",
    "dijkstra",
    "einstein",
    "euler",
    "fermat",
    "feynman",
    "galileo",
    "gauss",
    "hopper",
    "hypatia",
    "kepler",
    "knuth",
    "lamport",
    "liskov",
    "lovelace",
    "mccarthy",
    "meitner",
    "newton",
    "noether",
    "pasteur",
    "perlman",
    "ritchie",
    "shannon",
    "tesla",
    "thompson",
    "torvalds",
    "turing",
    "wilson",
    "wozniak",
    "yalow",
];

/// A fresh `adjective_noun` name for which `taken` is false (with a number
/// appended when every plain combination is taken).
pub fn generate_name(taken: impl Fn(&str) -> bool) -> String {
    let id = ContainerId::generate();
    let bytes = id.as_str().as_bytes();
    let seed = bytes
        .iter()
        .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(*b as usize));
    let total = ADJECTIVES.len() * NOUNS.len();
    for i in 0..total {
        let k = (seed + i * 7919) % total;
        let name = format!(
            "{}_{}",
            ADJECTIVES[k % ADJECTIVES.len()],
            NOUNS[k / ADJECTIVES.len()]
        );
        if !taken(&name) {
            return name;
        }
    }
    let mut n = 1;
    loop {
        let name = format!(
            "{}_{}{}",
            ADJECTIVES[seed % ADJECTIVES.len()],
            NOUNS[seed % NOUNS.len()],
            n
        );
        if !taken(&name) {
            return name;
        }
        n += 1;
    }
}

/// Is `name` a valid container name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`, as docker)?
pub fn valid_name(name: &str) -> bool {
    let mut cs = name.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphanumeric())
        && cs.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_short_is_12() {
        let a = ContainerId::generate();
        let b = ContainerId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 64);
        assert_eq!(a.short().len(), 12);
        assert!(a.as_str().parse::<ContainerId>().is_ok());
        assert!("xyz".parse::<ContainerId>().is_err());
    }

    #[test]
    fn names_avoid_taken_ones() {
        let n = generate_name(|_| false);
        assert!(n.contains('_') && valid_name(&n));
        let n2 = generate_name(|s| s == n);
        assert_ne!(n, n2);
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
    }
}
