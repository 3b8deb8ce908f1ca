//! The last step of a container process, shared by a container's init and
//! by `exec` (libcontainer has set up the rest): finding the program and
//! exec'ing it (127 when it is not found, 126 when it cannot be run, as
//! docker reports).

use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::spec::DEFAULT_PATH;

/// Exit code when the command is not found.
pub const EXIT_NOT_FOUND: i32 = 127;
/// Exit code when the command cannot be run.
pub const EXIT_CANNOT_RUN: i32 = 126;
/// Exit code for errors of the runtime itself.
pub const EXIT_RUNTIME: i32 = 125;

/// Why a process could not be started: an exit code (125, 126, 127) and a
/// message for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// The exit code to report.
    pub code: i32,
    /// The message.
    pub message: String,
}

impl StartFailure {
    /// A runtime failure (125).
    pub fn runtime(message: impl Into<String>) -> StartFailure {
        StartFailure {
            code: EXIT_RUNTIME,
            message: message.into(),
        }
    }

    /// Encodes for the error pipe: `CODE message`.
    pub fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.code, self.message).into_bytes()
    }

    /// Decodes what [`StartFailure::encode`] wrote.
    pub fn decode(b: &[u8]) -> StartFailure {
        let s = String::from_utf8_lossy(b);
        match s.split_once(' ') {
            Some((c, m)) if c.parse::<i32>().is_ok() => StartFailure {
                code: c.parse().unwrap_or(EXIT_RUNTIME),
                message: m.to_string(),
            },
            _ => StartFailure::runtime(s.into_owned()),
        }
    }
}

/// Finds `cmd` as `execvp` would, in the `PATH` of `env`.
pub fn find_program(cmd: &str, env: &[String]) -> Result<PathBuf, StartFailure> {
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => Err(StartFailure {
                code: EXIT_CANNOT_RUN,
                message: format!("{cmd}: is a directory"),
            }),
            Ok(_) => Ok(p),
            Err(_) => Err(StartFailure {
                code: EXIT_NOT_FOUND,
                message: format!("{cmd}: no such file or directory"),
            }),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(cmd);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(p);
            }
        }
    }
    Err(StartFailure {
        code: EXIT_NOT_FOUND,
        message: format!("{cmd}: executable file not found in $PATH"),
    })
}

fn cstrings(v: &[String], what: &str) -> Result<Vec<CString>, StartFailure> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| StartFailure::runtime(format!("{what} {s:?} contains a NUL byte")))
        })
        .collect()
}

/// Finds the program of `args` in the `PATH` of `env` and execs it with
/// `env`. Runs inside the container, as its user; returns only on failure.
pub fn exec_program(args: &[String], env: &[String]) -> Result<Infallible, StartFailure> {
    let Some(cmd) = args.first() else {
        return Err(StartFailure::runtime("no command specified"));
    };
    let prog = find_program(cmd, env)?;
    let prog_c = CString::new(prog.as_os_str().as_encoded_bytes())
        .map_err(|_| StartFailure::runtime("program path contains a NUL byte"))?;
    let argv = cstrings(args, "argument")?;
    let envp = cstrings(env, "environment entry")?;
    crate::sys::cloexec_from_3();
    let e = nix::unistd::execve(&prog_c, &argv, &envp).unwrap_err();
    let code = match e {
        Errno::ENOENT => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_RUN,
    };
    Err(StartFailure {
        code,
        message: format!("{}: {}", prog.display(), exec_reason(e)),
    })
}

fn exec_reason(e: Errno) -> String {
    match e {
        Errno::EACCES => "permission denied".into(),
        Errno::ENOEXEC => "exec format error".into(),
        Errno::ENOENT => "no such file or directory (or its interpreter is missing)".into(),
        e => e.desc().to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_round_trip_through_the_pipe() {
        let f = StartFailure {
            code: 127,
            message: "x: not found".into(),
        };
        assert_eq!(StartFailure::decode(&f.encode()), f);
    }

    #[test]
    fn programs_are_found_in_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(find_program("sh", &env).is_ok());
        assert_eq!(find_program("no-such-cmd-xyz", &env).unwrap_err().code, 127);
        assert_eq!(find_program("/", &env).unwrap_err().code, 126);
        assert_eq!(find_program("/no/such", &env).unwrap_err().code, 127);
    }
}
