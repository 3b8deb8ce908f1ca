//! containerd's filter language (its `filters` package), for List.
//!
//! A filter is selectors joined by `,`, all of which must match; List takes
//! several filters and returns what matches any of them. A selector is a
//! field path, optionally an operator and a value:
//!
//! ```text
//! selectors := selector ("," selector)*
//! selector  := fieldpath (operator value)?     no operator: the field is present
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z0-9_]+
//! operator  := "==" | "!=" | "~="              ~= is a regular expression
//! value     := quoted | anything up to "," or white space
//! quoted    := "..." (Go escapes), or /.../ and |...| after ~=
//! ```
//!
//! Snapshots have the fields `kind` (`active`, `view`, `committed`), `name`,
//! `parent` (empty for none, but present) and `labels.KEY` (the rest of the
//! path joined with `.`, so `labels."a.b"` and `labels.a.b` are the same).
//! containerd itself asks, when a remote snapshotter answers a Prepare with
//! AlreadyExists: `labels."containerd.io/snapshot.ref"==sha256:…,parent=="…"`.

use regex::Regex;

use crate::error::Error;

/// Any of several filters; no filter matches everything.
#[derive(Debug, Default)]
pub struct Filters {
    any: Vec<Vec<Selector>>,
}

/// Something filters look at: the value of a field path, if present.
pub trait Fields {
    /// The field's value, `None` when absent.
    fn field(&self, path: &[String]) -> Option<String>;
}

#[derive(Debug)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Filters {
    /// Parses each filter; an error names the filter and the position.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filters, Error> {
        let mut any = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if f.is_empty() {
                // An empty filter matches everything, as containerd's.
                any.push(Vec::new());
                continue;
            }
            let sels = Parser::new(f).selectors().map_err(|reason| Error::Filter {
                filter: f.to_string(),
                reason,
            })?;
            any.push(sels);
        }
        Ok(Filters { any })
    }

    /// Whether `obj` matches any filter (or there are none).
    pub fn matches(&self, obj: &impl Fields) -> bool {
        self.any.is_empty()
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|s| s.matches(obj)))
    }
}

impl Selector {
    fn matches(&self, obj: &impl Fields) -> bool {
        let value = obj.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value.as_deref() == Some(v.as_str()),
            Op::NotEqual(v) => value.as_deref().unwrap_or("") != v,
            Op::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Eof,
    Quoted(String),
    Value(String),
    Field(String),
    Separator(char),
    Operator(String),
    Illegal(String),
    Other(char),
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
    /// An operator was just read: what follows is a value.
    value: bool,
}

fn is_field(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}
fn is_quote(c: char) -> bool {
    matches!(c, '/' | '|' | '"')
}
fn is_operator(c: char) -> bool {
    matches!(c, '=' | '!' | '~')
}
fn is_value(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            input,
            pos: 0,
            value: false,
        }
    }

    fn peek(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) {
        while self.peek().is_some_and(&f) {
            self.bump();
        }
    }

    fn scan(&mut self) -> Token {
        self.take_while(char::is_whitespace);
        let start = self.pos;
        let Some(c) = self.bump() else {
            return Token::Eof;
        };
        if c == '\0' {
            return Token::Illegal("unexpected null".into());
        }
        if is_quote(c) {
            return match self.scan_quoted(c) {
                Ok(()) => Token::Quoted(self.input[start..self.pos].to_string()),
                Err(e) => Token::Illegal(e),
            };
        }
        if c == ',' || c == '.' {
            self.value = false;
            return Token::Separator(c);
        }
        if is_operator(c) {
            self.take_while(is_operator);
            self.value = true;
            return Token::Operator(self.input[start..self.pos].to_string());
        }
        if self.value {
            self.take_while(is_value);
            self.value = false;
            return Token::Value(self.input[start..self.pos].to_string());
        }
        if is_field(c) {
            self.take_while(is_field);
            return Token::Field(self.input[start..self.pos].to_string());
        }
        Token::Other(c)
    }

    /// Skips a quoted literal (the opening quote read), checking escapes.
    fn scan_quoted(&mut self, quote: char) -> Result<(), String> {
        loop {
            match self.bump() {
                None | Some('\n') => return Err("quoted literal not terminated".into()),
                Some(c) if c == quote => return Ok(()),
                Some('\\') => match self.bump() {
                    Some(c) if c == quote => {}
                    Some('a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\') => {}
                    Some(c @ '0'..='7') => self.scan_digits(c, 8, 3)?,
                    Some('x') => self.scan_first_digit(16, 2)?,
                    Some('u') => self.scan_first_digit(16, 4)?,
                    Some('U') => self.scan_first_digit(16, 8)?,
                    _ => return Err("illegal escape sequence".into()),
                },
                Some(_) => {}
            }
        }
    }

    fn scan_first_digit(&mut self, base: u32, n: usize) -> Result<(), String> {
        match self.bump() {
            Some(c) => self.scan_digits(c, base, n),
            None => Err("illegal numeric escape sequence".into()),
        }
    }

    /// `first` was read; `n` digits in all.
    fn scan_digits(&mut self, first: char, base: u32, n: usize) -> Result<(), String> {
        if !first.is_digit(base) {
            return Err("illegal numeric escape sequence".into());
        }
        for _ in 1..n {
            match self.bump() {
                Some(c) if c.is_digit(base) => {}
                _ => return Err("illegal numeric escape sequence".into()),
            }
        }
        Ok(())
    }

    fn err(&self, what: impl std::fmt::Display) -> String {
        format!("at offset {}: {what}", self.pos)
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, String> {
        let mut out = vec![self.selector()?];
        loop {
            match self.peek() {
                None => return Ok(out),
                Some(',') => {
                    self.scan();
                    out.push(self.selector()?);
                }
                Some(c) => return Err(self.err(format!("unexpected input {c:?}"))),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, String> {
        let path = self.fieldpath()?;
        if matches!(self.peek(), None | Some(',')) {
            return Ok(Selector {
                path,
                op: Op::Present,
            });
        }
        let op = match self.scan() {
            Token::Operator(o) => o,
            Token::Illegal(e) => return Err(self.err(e)),
            t => return Err(self.err(format!("expected an operator (== != ~=), found {t:?}"))),
        };
        let regex = op == "~=";
        if !matches!(op.as_str(), "==" | "!=" | "~=") {
            return Err(self.err(format!("unsupported operator {op:?}")));
        }
        let value = match self.scan() {
            Token::Value(v) | Token::Field(v) => v,
            Token::Quoted(q) => self.unquote(&q, regex)?,
            Token::Illegal(e) => return Err(self.err(e)),
            Token::Eof => return Err(self.err("a value is missing")),
            t => return Err(self.err(format!("expected a value, found {t:?}"))),
        };
        let op = match op.as_str() {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => Op::Matches(
                Regex::new(&value).map_err(|e| self.err(format!("regular expression: {e}")))?,
            ),
        };
        Ok(Selector { path, op })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, String> {
        let mut path = vec![self.field()?];
        while self.peek() == Some('.') {
            self.scan();
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> Result<String, String> {
        match self.scan() {
            Token::Field(f) => Ok(f),
            Token::Quoted(q) => self.unquote(&q, false),
            Token::Illegal(e) => Err(self.err(e)),
            t => Err(self.err(format!(
                "expected a field name or a quoted string, found {t:?}"
            ))),
        }
    }

    /// The text of a quoted literal (quotes included), escapes resolved.
    fn unquote(&self, quoted: &str, alternate_quotes: bool) -> Result<String, String> {
        let mut chars = quoted.chars();
        let quote = chars.next().unwrap_or('"');
        if quote != '"' && !alternate_quotes {
            return Err(self.err(format!(
                "{quote:?} quotes only a regular expression, after ~="
            )));
        }
        let body: Vec<char> = chars.collect();
        let body = &body[..body.len().saturating_sub(1)];
        let mut out = String::new();
        let mut i = 0;
        let num = |digits: &[char], base: u32| -> Result<char, String> {
            let s: String = digits.iter().collect();
            u32::from_str_radix(&s, base)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| self.err(format!("invalid escape {s:?}")))
        };
        while i < body.len() {
            let c = body[i];
            i += 1;
            if c != '\\' {
                out.push(c);
                continue;
            }
            let e = body.get(i).copied().unwrap_or('\\');
            i += 1;
            match e {
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'v' => out.push('\x0b'),
                '0'..='7' => {
                    let end = (i - 1 + 3).min(body.len());
                    out.push(num(&body[i - 1..end], 8)?);
                    i = end;
                }
                'x' | 'u' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let end = (i + n).min(body.len());
                    out.push(num(&body[i..end], 16)?);
                    i = end;
                }
                other => out.push(other),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Snap {
        name: &'static str,
        parent: &'static str,
        kind: &'static str,
        labels: BTreeMap<String, String>,
    }

    impl Fields for Snap {
        fn field(&self, path: &[String]) -> Option<String> {
            match path.first()?.as_str() {
                "name" => Some(self.name.into()),
                "parent" => Some(self.parent.into()),
                "kind" => Some(self.kind.into()),
                "labels" => self.labels.get(&path[1..].join(".")).cloned(),
                _ => None,
            }
        }
    }

    fn snap(
        name: &'static str,
        parent: &'static str,
        kind: &'static str,
        labels: &[(&str, &str)],
    ) -> Snap {
        Snap {
            name,
            parent,
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn names(filters: &[&str], snaps: &[Snap]) -> Vec<&'static str> {
        let f = Filters::parse_all(filters).unwrap();
        snaps
            .iter()
            .filter(|s| f.matches(*s))
            .map(|s| s.name)
            .collect()
    }

    #[test]
    fn the_forms_ctr_cri_and_containerd_use() {
        let snaps = [
            snap(
                "default/1/sha256:aa",
                "",
                "committed",
                &[("containerd.io/snapshot.ref", "sha256:aa")],
            ),
            snap(
                "default/2/sha256:bb",
                "default/1/sha256:aa",
                "committed",
                &[("containerd.io/snapshot.ref", "sha256:bb"), ("x", "1")],
            ),
            snap(
                "default/3/c1",
                "default/2/sha256:bb",
                "active",
                &[("a.b", "q")],
            ),
        ];
        assert_eq!(names(&[], &snaps).len(), 3);
        assert_eq!(names(&["kind==active"], &snaps), ["default/3/c1"]);
        assert_eq!(names(&["kind!=active"], &snaps).len(), 2);
        assert_eq!(names(&["parent==\"\""], &snaps), ["default/1/sha256:aa"]);
        assert_eq!(names(&["name==default/3/c1"], &snaps), ["default/3/c1"]);
        // What containerd's metadata layer asks a remote snapshotter.
        assert_eq!(
            names(
                &[
                    r#"labels."containerd.io/snapshot.ref"==sha256:bb,parent=="default/1/sha256:aa""#
                ],
                &snaps
            ),
            ["default/2/sha256:bb"]
        );
        assert_eq!(names(&["labels.x"], &snaps), ["default/2/sha256:bb"]);
        assert_eq!(names(&[r#"labels."a.b"==q"#], &snaps), ["default/3/c1"]);
        assert_eq!(names(&["labels.a.b==q"], &snaps), ["default/3/c1"]);
        // , is AND; several filters are OR.
        assert_eq!(
            names(&["kind==committed,labels.x==1"], &snaps),
            ["default/2/sha256:bb"]
        );
        assert_eq!(names(&["kind==active", "labels.x"], &snaps).len(), 2);
        assert_eq!(names(&["name~=/sha256:[ab]+$/"], &snaps).len(), 2);
        assert_eq!(names(&["name~=c1$"], &snaps), ["default/3/c1"]);
        assert_eq!(names(&[" kind == active"], &snaps), ["default/3/c1"]);
    }

    #[test]
    fn escapes_in_quoted_values() {
        let s = [snap("a\"b\tc", "", "view", &[])];
        assert_eq!(names(&[r#"name=="a\"b\tc""#], &s).len(), 1);
        assert_eq!(names(&[r#"name=="a\x22b\u0009c""#], &s).len(), 1);
        assert_eq!(names(&[r#"name=="a\042b\011c""#], &s).len(), 1);
    }

    #[test]
    fn bad_filters_are_errors_naming_the_filter() {
        for bad in [
            "kind==",
            "kind=>x",
            "kind===x",
            "==x",
            "labels.",
            "name==\"x",
            r#"name=="\q""#,
            "kind==a b",
            "name~=(",
            "name==/x/",
        ] {
            match Filters::parse_all(&[bad]) {
                Err(Error::Filter { filter, .. }) => assert_eq!(filter, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
