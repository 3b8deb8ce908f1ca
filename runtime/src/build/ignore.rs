//! `.dockerignore` / `.containerignore` patterns and the glob matching of
//! COPY sources, with Docker's rules (hand-written: no maintained crate
//! implements Docker's pattern matcher; the cases in the tests are the
//! examples of Docker's documentation).
//!
//! - One pattern per line; `#` lines and blank lines are ignored; each
//!   pattern is cleaned like a path (`./a//b/` is `a/b`, a leading `/` is
//!   dropped).
//! - `*` matches any run of characters but `/`, `?` one such character,
//!   `[a-z]` / `[^a-z]` a class, `\` escapes; `**` as a whole path
//!   segment matches any number of segments, zero included.
//! - A pattern that matches a directory excludes everything below it.
//! - `!pattern` re-includes what an earlier pattern excluded; the last
//!   matching pattern wins.

/// A parsed ignore file.
#[derive(Debug, Clone, Default)]
pub struct Ignore {
    patterns: Vec<(Vec<String>, bool)>,
}

/// Cleans a path the way Go's `filepath.Clean` does, without a leading
/// `/`; `..` that would climb above the start is kept (callers refuse it).
pub fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." if out.last().is_some_and(|l| *l != "..") => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out.join("/")
}

impl Ignore {
    /// Parses the text of an ignore file.
    pub fn parse(text: &str) -> Ignore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exclude, p) = match line.strip_prefix('!') {
                Some(rest) => (false, rest.trim()),
                None => (true, line),
            };
            let p = clean(p);
            if p.is_empty() {
                continue;
            }
            patterns.push((p.split('/').map(str::to_string).collect(), exclude));
        }
        Ignore { patterns }
    }

    /// Whether the path (relative to the context, `/`-separated) is
    /// excluded: the last pattern that matches it or one of its parent
    /// directories decides.
    pub fn excludes(&self, rel: &str) -> bool {
        let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for (pat, exclude) in &self.patterns {
            let hit = (1..=segs.len()).any(|n| match_segments(pat, &segs[..n]));
            if hit {
                excluded = *exclude;
            }
        }
        excluded
    }

    /// Whether some `!` pattern could re-include something below an
    /// excluded directory (then the walk must descend into it).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|(_, e)| !e)
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// Matches a pattern split in segments against path segments, `**`
/// spanning any number of segments.
pub fn match_segments<S: AsRef<str>>(pat: &[S], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p.as_ref() == "**" => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((p, rest)) => match path.split_first() {
            Some((s, prest)) => glob(p.as_ref(), s) && match_segments(rest, prest),
            None => false,
        },
    }
}

/// Whether `pattern` (a `/`-separated glob) matches the relative path
/// `rel`, segment by segment (Go's `filepath.Match`, plus `**`).
pub fn matches_path(pattern: &str, rel: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let path: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    match_segments(&pat, &path)
}

/// Whether a string has glob characters.
pub fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Matches one path segment against one glob segment.
pub fn glob(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = s.chars().collect();
    glob_at(&p, &t)
}

fn glob_at(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|i| glob_at(&p[1..], &t[i..])),
        Some('?') => !t.is_empty() && glob_at(&p[1..], &t[1..]),
        Some('[') => {
            let Some(c) = t.first() else { return false };
            match class(&p[1..], *c) {
                Some((ok, used)) => ok && glob_at(&p[1 + used..], &t[1..]),
                None => t.first() == Some(&'[') && glob_at(&p[1..], &t[1..]),
            }
        }
        Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && glob_at(&p[2..], &t[1..]),
        Some(c) => t.first() == Some(c) && glob_at(&p[1..], &t[1..]),
    }
}

/// A `[...]` class after its `[`: whether `c` is in it, and how many
/// pattern characters it used (the closing `]` included).
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 0;
    let negate = matches!(p.first(), Some('^') | Some('!'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        let lo = if p[i] == '\\' && i + 1 < p.len() {
            i += 1;
            p[i]
        } else {
            p[i]
        };
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            let hi = p[i + 2];
            hit |= lo <= c && c <= hi;
            i += 3;
        } else {
            hit |= lo == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_documentation_examples() {
        // The example .dockerignore of Docker's documentation.
        let i = Ignore::parse("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(i.excludes("somedir/temporary.txt"));
        assert!(i.excludes("somedir/temp"));
        assert!(i.excludes("somedir/subdir/temporary.txt"));
        assert!(i.excludes("tempa"));
        assert!(
            i.excludes("tempb/inner"),
            "a matched directory excludes its content"
        );
        assert!(!i.excludes("temporary.txt"));
        assert!(!i.excludes("a/b/c/temp"));
        // `**` matches any number of directories.
        let i = Ignore::parse("**/*.go\n");
        assert!(i.excludes("main.go"));
        assert!(i.excludes("a/b/c.go"));
        assert!(!i.excludes("a/b/c.rs"));
        // Exceptions: the last matching line wins.
        let i = Ignore::parse("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(i.excludes("CHANGES.md"));
        assert!(!i.excludes("README.md"));
        assert!(i.excludes("README-secret.md"));
        let i = Ignore::parse("*.md\nREADME-secret.md\n!README*.md\n");
        assert!(!i.excludes("README-secret.md"));
        // Paths are cleaned; a leading slash means the context root.
        let i = Ignore::parse("/build/\n./dist//x\n");
        assert!(i.excludes("build/out.o"));
        assert!(i.excludes("dist/x"));
        assert!(!i.excludes("src/build"));
    }

    #[test]
    fn globs_match_segments() {
        assert!(glob("*.txt", "a.txt"));
        assert!(!glob("*.txt", "a.txt.bak"));
        assert!(glob("fil?", "file"));
        assert!(glob("[a-c]x", "bx"));
        assert!(!glob("[^a-c]x", "bx"));
        assert!(glob("\\*", "*"));
        assert!(matches_path("dir/*.txt", "dir/a.txt"));
        assert!(!matches_path("*.txt", "dir/a.txt"));
        assert!(matches_path("a/**/z", "a/z"));
        assert!(matches_path("a/**/z", "a/b/c/z"));
        assert_eq!(clean("./a//b/../c/"), "a/c");
        assert_eq!(clean("../x"), "../x");
    }
}
