//! A Containerfile, parsed by the `parse-dockerfile` crate (lines,
//! continuations, comments, parser directives, heredocs at the start of an
//! instruction), turned into Strata's own model: stages of steps, each
//! step with its line number and the text `STEP n/m:` shows. Nothing is
//! expanded here; variables depend on the build ([`super::expand`]).

use parse_dockerfile as pd;

use super::BuildError;

/// A command in exec form (a JSON array) or shell form (one string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdForm {
    /// `["a", "b"]`.
    Exec(Vec<String>),
    /// `a b`, run by the stage's SHELL.
    Shell(String),
}

/// A COPY or ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A path or glob (relative to the context or the `--from` root).
    Path(String),
    /// A heredoc's content (`COPY <<EOF /dst`); `expand`: its delimiter
    /// was unquoted.
    Inline {
        /// The content.
        content: String,
        /// Whether variables in it are expanded.
        expand: bool,
    },
}

/// COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpec {
    /// ADD (tar extraction, URLs refused) rather than COPY.
    pub add: bool,
    /// The sources.
    pub sources: Vec<Source>,
    /// The destination (relative ones are under WORKDIR).
    pub dest: String,
    /// `--from=STAGE|IMAGE`.
    pub from: Option<String>,
    /// `--chown=USER[:GROUP]`.
    pub chown: Option<String>,
    /// `--chmod=OCTAL`.
    pub chmod: Option<String>,
}

/// HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// `HEALTHCHECK NONE`.
    None,
    /// `HEALTHCHECK [--interval=...] CMD ...`: the options as given.
    Cmd(Vec<(String, String)>, CmdForm),
}

/// One instruction after FROM, its arguments unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instr {
    /// RUN.
    Run(CmdForm),
    /// COPY or ADD.
    Copy(CopySpec),
    /// ENV (raw arguments).
    Env(String),
    /// ARG (raw arguments).
    Arg(String),
    /// WORKDIR.
    Workdir(String),
    /// USER.
    User(String),
    /// CMD.
    Cmd(CmdForm),
    /// ENTRYPOINT.
    Entrypoint(CmdForm),
    /// EXPOSE (one raw word each).
    Expose(Vec<String>),
    /// LABEL (raw arguments).
    Label(String),
    /// VOLUME (raw paths).
    Volume(Vec<String>),
    /// STOPSIGNAL.
    StopSignal(String),
    /// SHELL.
    Shell(Vec<String>),
    /// HEALTHCHECK.
    Healthcheck(Health),
    /// ONBUILD: the trigger's text, recorded in the config.
    Onbuild(String),
    /// MAINTAINER.
    Maintainer(String),
}

/// A step: an instruction where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line of its keyword.
    pub line: usize,
    /// The instruction as written, continuations joined (`RUN echo hi`).
    pub text: String,
    /// What it does.
    pub instr: Instr,
}

/// A stage: `FROM image [AS name]` and its steps.
#[derive(Debug, Clone)]
pub struct StageDef {
    /// Its position (for `--from=0`).
    pub index: usize,
    /// `AS name`, lowercased.
    pub name: Option<String>,
    /// The image reference as written (may hold `$ARG`s).
    pub base: String,
    /// The FROM line.
    pub line: usize,
    /// The FROM text.
    pub text: String,
    /// The steps after FROM.
    pub steps: Vec<Step>,
}

/// A parsed Containerfile.
#[derive(Debug, Clone)]
pub struct Containerfile {
    /// ARGs before the first FROM: (raw arguments, line).
    pub global_args: Vec<(String, usize)>,
    /// The stages, in order.
    pub stages: Vec<StageDef>,
    /// The escape character (`# escape=` directive; `\` by default).
    pub escape: char,
}

fn line_of(text: &str, pos: usize) -> usize {
    text[..pos.min(text.len())].matches('\n').count() + 1
}

/// The instruction's text for display: from its keyword to the end of
/// its logical line (continuations joined, heredoc bodies left out).
fn display_text(text: &str, start: usize, escape: char) -> String {
    let mut out = String::new();
    for l in text[start..].lines() {
        let t = l.trim_end();
        match t.strip_suffix(escape) {
            Some(head) => {
                out.push_str(head.trim_end());
                out.push(' ');
            }
            None => {
                out.push_str(t);
                break;
            }
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Removes line continuations (the escape character before a newline) as
/// Docker's parser does, and comment lines inside them.
pub fn join_continuations(s: &str, escape: char) -> String {
    let mut out = String::new();
    let mut lines = s.split('\n').peekable();
    let mut continuing = false;
    while let Some(l) = lines.next() {
        if continuing && l.trim_start().starts_with('#') {
            continue;
        }
        let t = l.trim_end_matches([' ', '\t', '\r']);
        if let Some(head) = t.strip_suffix(escape) {
            if lines.peek().is_some() {
                out.push_str(head);
                continuing = true;
                continue;
            }
        }
        out.push_str(l);
        if lines.peek().is_some() {
            out.push('\n');
        }
        continuing = false;
    }
    out
}

fn command(c: &pd::Command<'_>, escape: char) -> CmdForm {
    match c {
        pd::Command::Exec(v) => {
            CmdForm::Exec(v.value.iter().map(|s| s.value.to_string()).collect())
        }
        pd::Command::Shell(s) => CmdForm::Shell(join_continuations(s.value, escape)),
        _ => CmdForm::Shell(String::new()),
    }
}

fn flags(opts: &[pd::Flag<'_>]) -> Vec<(String, String)> {
    opts.iter()
        .map(|f| {
            (
                f.name.value.trim_start_matches('-').to_string(),
                f.value
                    .as_ref()
                    .map(|v| v.value.to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn copy_spec(
    add: bool,
    opts: &[pd::Flag<'_>],
    src: &[pd::Source<'_>],
    dest: &pd::UnescapedString<'_>,
    line: usize,
    text: &str,
) -> Result<CopySpec, BuildError> {
    let mut spec = CopySpec {
        add,
        sources: src
            .iter()
            .map(|s| match s {
                pd::Source::Path(p) => Source::Path(p.value.to_string()),
                pd::Source::HereDoc(h) => Source::Inline {
                    content: h.value.to_string(),
                    expand: h.expand,
                },
                _ => Source::Path(String::new()),
            })
            .collect(),
        dest: dest.value.to_string(),
        from: None,
        chown: None,
        chmod: None,
    };
    for (k, v) in flags(opts) {
        match k.as_str() {
            "from" if !add => spec.from = Some(v),
            "chown" => spec.chown = Some(v),
            "chmod" => spec.chmod = Some(v),
            "link" => {}
            _ => {
                return Err(BuildError::Step {
                    line,
                    text: text.to_string(),
                    msg: format!("unknown flag --{k}"),
                })
            }
        }
    }
    Ok(spec)
}

fn instr(
    i: &pd::Instruction<'_>,
    text: &str,
    line: usize,
    shown: &str,
    escape: char,
) -> Result<Instr, BuildError> {
    let unsupported = |what: &str| BuildError::Step {
        line,
        text: shown.to_string(),
        msg: what.to_string(),
    };
    Ok(match i {
        pd::Instruction::Run(r) => {
            if let Some((k, _)) = flags(&r.options).first() {
                return Err(unsupported(&format!(
                    "RUN --{k} is a BuildKit feature that strata build does not support"
                )));
            }
            match (&r.arguments, r.here_docs.as_slice()) {
                (pd::Command::Shell(s), [h]) if s.value.trim().is_empty() => {
                    Instr::Run(CmdForm::Shell(h.value.to_string()))
                }
                (_, []) => Instr::Run(command(&r.arguments, escape)),
                _ => {
                    return Err(unsupported(
                        "only a RUN whose whole command is one heredoc (RUN <<EOF) is supported",
                    ))
                }
            }
        }
        pd::Instruction::Copy(c) => {
            Instr::Copy(copy_spec(false, &c.options, &c.src, &c.dest, line, shown)?)
        }
        pd::Instruction::Add(c) => {
            Instr::Copy(copy_spec(true, &c.options, &c.src, &c.dest, line, shown)?)
        }
        pd::Instruction::Env(e) => Instr::Env(join_continuations(&e.arguments.value, escape)),
        pd::Instruction::Arg(a) => Instr::Arg(a.arguments.value.to_string()),
        pd::Instruction::Workdir(w) => Instr::Workdir(w.arguments.value.to_string()),
        pd::Instruction::User(u) => Instr::User(u.arguments.value.to_string()),
        pd::Instruction::Cmd(c) => Instr::Cmd(command(&c.arguments, escape)),
        pd::Instruction::Entrypoint(c) => Instr::Entrypoint(command(&c.arguments, escape)),
        pd::Instruction::Expose(e) => {
            Instr::Expose(e.arguments.iter().map(|s| s.value.to_string()).collect())
        }
        pd::Instruction::Label(l) => Instr::Label(join_continuations(&l.arguments.value, escape)),
        pd::Instruction::Volume(v) => Instr::Volume(match &v.arguments {
            pd::JsonOrStringArray::Json(a) => a.value.iter().map(|s| s.value.to_string()).collect(),
            pd::JsonOrStringArray::String(a) => a.iter().map(|s| s.value.to_string()).collect(),
        }),
        pd::Instruction::Stopsignal(s) => Instr::StopSignal(s.arguments.value.to_string()),
        pd::Instruction::Shell(s) => {
            Instr::Shell(s.arguments.iter().map(|s| s.value.to_string()).collect())
        }
        pd::Instruction::Healthcheck(h) => Instr::Healthcheck(match &h.arguments {
            pd::HealthcheckArguments::None { .. } => Health::None,
            pd::HealthcheckArguments::Cmd { arguments, .. } => {
                Health::Cmd(flags(&h.options), command(arguments, escape))
            }
            _ => return Err(unsupported("unknown HEALTHCHECK form")),
        }),
        pd::Instruction::Onbuild(o) => {
            let inner = shown
                .split_once(char::is_whitespace)
                .map(|(_, r)| r.trim().to_string())
                .unwrap_or_default();
            let _ = &o.instruction;
            Instr::Onbuild(inner)
        }
        pd::Instruction::Maintainer(m) => Instr::Maintainer(m.name.value.to_string()),
        pd::Instruction::From(_) => unreachable!("FROM starts a stage"),
        _ => {
            let _ = text;
            return Err(unsupported("unknown instruction"));
        }
    })
}

/// A Containerfile whose `RUN cmd <<EOF` heredocs were rewritten for the
/// parser crate, which only takes a heredoc that starts an instruction:
/// `RUN cmd <<EOF` + body + `EOF` becomes `RUN <<STRATA_RUN_HEREDOC`, the
/// original command line, the body and its delimiter, and
/// `STRATA_RUN_HEREDOC`: a script that the shell runs with the heredoc
/// in it, as BuildKit does. Line numbers are mapped back.
struct Rewritten {
    text: String,
    /// Original 1-based line of each line of `text` (index = line - 1).
    lines: Vec<usize>,
    /// The original display text of rewritten RUNs, by their new line.
    shown: std::collections::HashMap<usize, String>,
}

const WRAP: &str = "STRATA_RUN_HEREDOC";

impl Rewritten {
    fn orig_line(&self, new_line: usize) -> usize {
        self.lines
            .get(new_line.saturating_sub(1))
            .copied()
            .unwrap_or(new_line)
    }
}

/// The delimiters of the heredocs a shell command line opens (`<<EOF`,
/// `<<-'EOF'`, `<< "EOF"`), with whether tabs are stripped (`<<-`).
fn heredoc_delims(cmd: &str) -> Vec<(String, bool)> {
    let b = cmd.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'<' && b[i + 1] == b'<' && b.get(i + 2) != Some(&b'<') {
            let mut j = i + 2;
            let strip = b.get(j) == Some(&b'-');
            if strip {
                j += 1;
            }
            while b.get(j) == Some(&b' ') {
                j += 1;
            }
            let quote = match b.get(j) {
                Some(q @ (b'\'' | b'"')) => {
                    j += 1;
                    Some(*q)
                }
                _ => None,
            };
            let start = j;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if j > start && quote.is_none_or(|q| b.get(j) == Some(&q)) {
                out.push((cmd[start..j].to_string(), strip));
            }
            i = j.max(i + 2);
        } else {
            i += 1;
        }
    }
    out
}

fn rewrite_run_heredocs(text: &str) -> Rewritten {
    let escape = if text
        .lines()
        .take_while(|l| l.trim_start().starts_with('#'))
        .any(|l| l.replace(' ', "").eq_ignore_ascii_case("#escape=`"))
    {
        '`'
    } else {
        '\\'
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = Rewritten {
        text: String::new(),
        lines: Vec::new(),
        shown: Default::default(),
    };
    let emit = |out: &mut Rewritten, l: &str, orig: usize| {
        out.text.push_str(l);
        out.text.push('\n');
        out.lines.push(orig);
    };
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let t = l.trim_start();
        let is_run = t.len() > 4
            && t[..3].eq_ignore_ascii_case("RUN")
            && t.as_bytes()[3].is_ascii_whitespace();
        if is_run {
            // The logical line: continuations joined.
            let mut end = i;
            while end + 1 < lines.len() && lines[end].trim_end().ends_with(escape) {
                end += 1;
            }
            let cmd_lines = &lines[i..=end];
            let cmd = cmd_lines.join("\n");
            let after_kw = t[3..].trim_start();
            // A heredoc that starts the command the parser crate takes as
            // it is; with RUN flags, its error about them stands.
            let delims = if after_kw.starts_with("<<") || after_kw.starts_with("--") {
                Vec::new()
            } else {
                heredoc_delims(&cmd)
            };
            // Find every body; give up (leave the text as is) if one is
            // not closed.
            let mut j = end + 1;
            let mut ok = !delims.is_empty();
            for (d, strip) in &delims {
                loop {
                    match lines.get(j) {
                        None => {
                            ok = false;
                            break;
                        }
                        Some(b) => {
                            j += 1;
                            let b = if *strip {
                                b.trim_start_matches('\t')
                            } else {
                                b
                            };
                            if b.trim_end_matches('\r') == d {
                                break;
                            }
                        }
                    }
                }
                if !ok {
                    break;
                }
            }
            if ok {
                let indent = &l[..l.len() - t.len()];
                let new_line = out.lines.len() + 1;
                out.shown.insert(new_line, display_text(&cmd, 0, escape));
                emit(&mut out, &format!("{indent}RUN <<{WRAP}"), i + 1);
                let first = &t[3..];
                emit(&mut out, first.trim_start(), i + 1);
                for (k, cl) in lines.iter().enumerate().take(j).skip(i + 1) {
                    emit(&mut out, cl, k + 1);
                }
                emit(&mut out, WRAP, j);
                i = j;
                continue;
            }
        }
        emit(&mut out, l, i + 1);
        i += 1;
    }
    if !text.ends_with('\n') {
        out.text.pop();
    }
    out
}

/// Parses a Containerfile's text.
pub fn parse(original: &str) -> Result<Containerfile, BuildError> {
    let rw = rewrite_run_heredocs(original);
    let text = rw.text.as_str();
    let df = pd::parse(text).map_err(|e| {
        let msg = e.to_string();
        let msg = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        let msg = if msg == "expected FROM" {
            "expected FROM before any other instruction (ARG excepted)".to_string()
        } else {
            msg
        };
        BuildError::Parse {
            line: rw.orig_line(e.line()),
            msg,
        }
    })?;
    let escape = df
        .parser_directives
        .escape
        .as_ref()
        .map(|d| d.value.value)
        .unwrap_or('\\');
    let mut cf = Containerfile {
        global_args: Vec::new(),
        stages: Vec::new(),
        escape,
    };
    let kw_start = |i: &pd::Instruction<'_>| -> usize {
        match i {
            pd::Instruction::Add(x) => x.add.span.start,
            pd::Instruction::Arg(x) => x.arg.span.start,
            pd::Instruction::Cmd(x) => x.cmd.span.start,
            pd::Instruction::Copy(x) => x.copy.span.start,
            pd::Instruction::Entrypoint(x) => x.entrypoint.span.start,
            pd::Instruction::Env(x) => x.env.span.start,
            pd::Instruction::Expose(x) => x.expose.span.start,
            pd::Instruction::From(x) => x.from.span.start,
            pd::Instruction::Healthcheck(x) => x.healthcheck.span.start,
            pd::Instruction::Label(x) => x.label.span.start,
            pd::Instruction::Maintainer(x) => x.maintainer.span.start,
            pd::Instruction::Onbuild(x) => x.onbuild.span.start,
            pd::Instruction::Run(x) => x.run.span.start,
            pd::Instruction::Shell(x) => x.shell.span.start,
            pd::Instruction::Stopsignal(x) => x.stopsignal.span.start,
            pd::Instruction::User(x) => x.user.span.start,
            pd::Instruction::Volume(x) => x.volume.span.start,
            pd::Instruction::Workdir(x) => x.workdir.span.start,
            _ => 0,
        }
    };
    for i in &df.instructions {
        let start = kw_start(i);
        let new_line = line_of(text, start);
        let line = rw.orig_line(new_line);
        let shown = rw
            .shown
            .get(&new_line)
            .cloned()
            .unwrap_or_else(|| display_text(text, start, escape));
        match i {
            pd::Instruction::From(f) => {
                if let Some((k, _)) = flags(&f.options).into_iter().find(|(k, _)| k != "platform") {
                    return Err(BuildError::Step {
                        line,
                        text: shown,
                        msg: format!("unknown flag --{k}"),
                    });
                }
                cf.stages.push(StageDef {
                    index: cf.stages.len(),
                    name: f.as_.as_ref().map(|(_, n)| n.value.to_lowercase()),
                    base: f.image.value.to_string(),
                    line,
                    text: shown,
                    steps: Vec::new(),
                });
            }
            pd::Instruction::Arg(a) if cf.stages.is_empty() => {
                cf.global_args.push((a.arguments.value.to_string(), line));
            }
            other => {
                let instr = instr(other, text, line, &shown, escape)?;
                let stage = cf.stages.last_mut().ok_or(BuildError::Parse {
                    line,
                    msg: "expected FROM before any other instruction (ARG excepted)".into(),
                })?;
                stage.steps.push(Step {
                    line,
                    text: shown,
                    instr,
                });
            }
        }
    }
    if cf.stages.is_empty() {
        return Err(BuildError::Parse {
            line: 1,
            msg: "no FROM instruction: the file is empty or only has comments".into(),
        });
    }
    Ok(cf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_steps_and_lines() {
        let cf = parse(
            "# syntax=docker/dockerfile:1\nARG V=1\nFROM busybox AS Build\n# c\nRUN echo a && \\\n  echo b\nRUN <<EOF\necho hi\nEOF\nCOPY --chown=1:2 a* /d/\nFROM scratch\nCOPY --from=build /x /y\nCMD [\"a\"]\n",
        )
        .unwrap();
        assert_eq!(cf.global_args, vec![("V=1".to_string(), 2)]);
        assert_eq!(cf.stages.len(), 2);
        let s = &cf.stages[0];
        assert_eq!(s.name.as_deref(), Some("build"));
        assert_eq!(s.steps[0].line, 5);
        assert_eq!(s.steps[0].text, "RUN echo a && echo b");
        assert_eq!(
            s.steps[0].instr,
            Instr::Run(CmdForm::Shell("echo a &&   echo b".into()))
        );
        assert_eq!(
            s.steps[1].instr,
            Instr::Run(CmdForm::Shell("echo hi\n".into()))
        );
        let Instr::Copy(c) = &s.steps[2].instr else {
            panic!()
        };
        assert_eq!(c.chown.as_deref(), Some("1:2"));
        assert_eq!(c.sources, vec![Source::Path("a*".into())]);
        let Instr::Copy(c) = &cf.stages[1].steps[0].instr else {
            panic!()
        };
        assert_eq!(c.from.as_deref(), Some("build"));
        assert_eq!(
            cf.stages[1].steps[1].instr,
            Instr::Cmd(CmdForm::Exec(vec!["a".into()]))
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("FROM busybox\nFROBNICATE x\n").unwrap_err();
        assert_eq!(e.to_string(), "line 2: unknown instruction 'FROBNICATE'");
        let e = parse("RUN x\n").unwrap_err();
        assert!(e.to_string().starts_with("line 1: expected FROM"), "{e}");
        let e = parse("FROM busybox\nCOPY a\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse("FROM busybox\nRUN --mount=type=cache,target=/x true\n").unwrap_err();
        assert!(e.to_string().contains("BuildKit"), "{e}");
    }

    #[test]
    fn heredocs_after_a_command_become_a_script() {
        let cf = parse(
            "FROM busybox\nRUN cat <<EOF > /f && \\\n  cat <<-'X' >> /f\nhello $HOME\nEOF\n\tbye\nX\nRUN echo after\n",
        )
        .unwrap();
        let steps = &cf.stages[0].steps;
        assert_eq!(steps[0].line, 2);
        assert_eq!(steps[0].text, "RUN cat <<EOF > /f && cat <<-'X' >> /f");
        assert_eq!(
            steps[0].instr,
            Instr::Run(CmdForm::Shell(
                "cat <<EOF > /f && \\\n  cat <<-'X' >> /f\nhello $HOME\nEOF\n\tbye\nX\n".into()
            ))
        );
        assert_eq!(
            (steps[1].line, steps[1].text.as_str()),
            (8, "RUN echo after")
        );
        // An unclosed heredoc is left to the parser, whose error names the line.
        let e = parse("FROM busybox\nRUN cat <<EOF\nFROB x\n").unwrap_err();
        assert_eq!(e.to_string(), "line 3: unknown instruction 'FROB'");
    }

    #[test]
    fn escape_directive_changes_continuations() {
        let cf = parse("# escape=`\nFROM busybox\nRUN echo a `\n  b\n").unwrap();
        assert_eq!(cf.escape, '`');
        assert_eq!(cf.stages[0].steps[0].text, "RUN echo a b");
    }
}
