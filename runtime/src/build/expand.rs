//! Variable expansion and word splitting in instruction arguments, as
//! Docker's shell lexer does it (hand-written: no crate implements
//! Docker's rules).
//!
//! - `$VAR`, `${VAR}`, `${VAR:-word}` / `${VAR-word}` (default when unset
//!   or empty / unset), `${VAR:+word}` / `${VAR+word}` (alternative),
//!   `${VAR:?msg}` / `${VAR?msg}` (error). An unset variable expands to
//!   nothing. A `$` not followed by a name is literal.
//! - Single quotes keep everything literal; double quotes expand and keep
//!   whitespace, and the escape character escapes only `"`, `$` and
//!   itself inside them; outside quotes the escape character makes the
//!   next character literal.
//! - [`words`] splits on unquoted whitespace (ENV, LABEL, EXPOSE, ...);
//!   [`word`] keeps it (WORKDIR, USER, ...).

/// An expansion that cannot be done (an unclosed quote or `${`, or
/// `${VAR?msg}` with VAR unset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExpandError(pub String);

/// Expands `s` as one word: quotes removed, whitespace kept.
pub fn word(
    s: &str,
    escape: char,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    Ok(Lexer::new(s, escape, vars, false)
        .run()?
        .into_iter()
        .next()
        .unwrap_or_default())
}

/// Expands `s` and splits it into words on unquoted whitespace.
pub fn words(
    s: &str,
    escape: char,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, ExpandError> {
    Lexer::new(s, escape, vars, true).run()
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    vars: &'a dyn Fn(&str) -> Option<String>,
    split: bool,
}

impl<'a> Lexer<'a> {
    fn new(
        s: &str,
        escape: char,
        vars: &'a dyn Fn(&str) -> Option<String>,
        split: bool,
    ) -> Lexer<'a> {
        Lexer {
            chars: s.chars().collect(),
            pos: 0,
            escape,
            vars,
            split,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn run(mut self) -> Result<Vec<String>, ExpandError> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut started = false;
        while let Some(c) = self.peek() {
            if self.split && c.is_whitespace() {
                self.pos += 1;
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
                continue;
            }
            started = true;
            self.pos += 1;
            match c {
                '\'' => loop {
                    match self.peek() {
                        None => return Err(ExpandError("unclosed single quote".into())),
                        Some('\'') => {
                            self.pos += 1;
                            break;
                        }
                        Some(x) => {
                            cur.push(x);
                            self.pos += 1;
                        }
                    }
                },
                '"' => loop {
                    match self.peek() {
                        None => return Err(ExpandError("unclosed double quote".into())),
                        Some('"') => {
                            self.pos += 1;
                            break;
                        }
                        Some('$') => {
                            self.pos += 1;
                            cur.push_str(&self.dollar()?);
                        }
                        Some(x) if x == self.escape => {
                            self.pos += 1;
                            match self.peek() {
                                Some(n) if n == '"' || n == '$' || n == self.escape => {
                                    cur.push(n);
                                    self.pos += 1;
                                }
                                _ => cur.push(x),
                            }
                        }
                        Some(x) => {
                            cur.push(x);
                            self.pos += 1;
                        }
                    }
                },
                '$' => cur.push_str(&self.dollar()?),
                x if x == self.escape => match self.peek() {
                    Some(n) => {
                        cur.push(n);
                        self.pos += 1;
                    }
                    None => cur.push(x),
                },
                x => cur.push(x),
            }
        }
        if started || !self.split {
            out.push(cur);
        }
        Ok(out)
    }

    fn name(&mut self) -> String {
        let mut n = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                n.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        n
    }

    /// After a `$`: the expansion.
    fn dollar(&mut self) -> Result<String, ExpandError> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                let name = self.name();
                if name.is_empty() {
                    return Err(ExpandError("bad substitution: '${' without a name".into()));
                }
                let val = (self.vars)(&name);
                match self.peek() {
                    Some('}') => {
                        self.pos += 1;
                        Ok(val.unwrap_or_default())
                    }
                    Some(c) => {
                        let colon = c == ':';
                        if colon {
                            self.pos += 1;
                        }
                        let op = self.peek().ok_or_else(unclosed)?;
                        self.pos += 1;
                        let raw = self.until_brace()?;
                        let set = match &val {
                            Some(v) => !(colon && v.is_empty()),
                            None => false,
                        };
                        let sub = |s: &str| word(s, self.escape, self.vars);
                        match op {
                            '-' if set => Ok(val.unwrap_or_default()),
                            '-' => sub(&raw),
                            '+' if set => sub(&raw),
                            '+' => Ok(String::new()),
                            '?' if set => Ok(val.unwrap_or_default()),
                            '?' => Err(ExpandError(format!(
                                "{name}: {}",
                                if raw.is_empty() {
                                    "is not set".to_string()
                                } else {
                                    sub(&raw)?
                                }
                            ))),
                            other => Err(ExpandError(format!(
                                "unsupported modifier '{other}' in ${{{name}...}}"
                            ))),
                        }
                    }
                    None => Err(unclosed()),
                }
            }
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let name = self.name();
                Ok((self.vars)(&name).unwrap_or_default())
            }
            _ => Ok("$".into()),
        }
    }

    /// The raw text up to the `}` that closes the current `${`.
    fn until_brace(&mut self) -> Result<String, ExpandError> {
        let mut depth = 0;
        let mut raw = String::new();
        while let Some(c) = self.peek() {
            self.pos += 1;
            match c {
                '}' if depth == 0 => return Ok(raw),
                '}' => depth -= 1,
                '{' if raw.ends_with('$') => depth += 1,
                _ => {}
            }
            raw.push(c);
        }
        Err(unclosed())
    }
}

fn unclosed() -> ExpandError {
    ExpandError("missing '}' in a ${...} expansion".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(n: &str) -> Option<String> {
        match n {
            "A" => Some("a".into()),
            "E" => Some(String::new()),
            "SP" => Some("x y".into()),
            _ => None,
        }
    }

    fn w(s: &str) -> String {
        word(s, '\\', &vars).unwrap()
    }

    fn ws(s: &str) -> Vec<String> {
        words(s, '\\', &vars).unwrap()
    }

    #[test]
    fn expands_like_docker() {
        assert_eq!(w("$A/${A}/$NOPE/x"), "a/a//x");
        assert_eq!(w("${NOPE:-def} ${E:-def} ${E-def}"), "def def ");
        assert_eq!(w("${A:+alt} ${NOPE:+alt}|"), "alt |");
        assert_eq!(w("${NOPE:-${A}b}"), "ab");
        assert_eq!(w("'$A' \"$A\" \\$A"), "$A a $A");
        assert_eq!(w("a $ b"), "a $ b");
        assert_eq!(w(r#""q\"uote\n""#), "q\"uote\\n");
        assert!(word("${NOPE?must be set}", '\\', &vars)
            .unwrap_err()
            .0
            .contains("must be set"));
        assert!(word("${A", '\\', &vars).is_err());
        assert!(word("'open", '\\', &vars).is_err());
    }

    #[test]
    fn splits_on_unquoted_whitespace_only() {
        assert_eq!(ws("A=\"x y\" B=$SP  C='1 2'"), ["A=x y", "B=x y", "C=1 2"]);
        assert_eq!(ws("  80  443/udp "), ["80", "443/udp"]);
        assert_eq!(ws("a\\ b"), ["a b"]);
        assert_eq!(ws("K=\"\""), ["K="]);
        assert_eq!(words("a` b", '`', &vars).unwrap(), ["a b"]);
    }
}
