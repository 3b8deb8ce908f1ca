//! Signal names as users write them (`KILL`, `SIGKILL`, `9`), shared by
//! the command line (`kill --signal`, a container's stop signal) and the
//! build (`STOPSIGNAL`), so neither calls into the other.

use nix::sys::signal::Signal;

/// A signal name or number that names no signal.
#[derive(Debug, thiserror::Error)]
#[error("invalid signal {0:?}")]
pub struct InvalidSignal(pub String);

/// Parses `KILL`, `SIGKILL`, `kill` or `9`.
pub fn parse(s: &str) -> Result<Signal, InvalidSignal> {
    let invalid = || InvalidSignal(s.to_string());
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| invalid());
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::parse;
    use nix::sys::signal::Signal;

    #[test]
    fn names_numbers_and_junk() {
        assert_eq!(parse("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(parse("9").unwrap(), Signal::SIGKILL);
        assert_eq!(
            parse("NOPE").unwrap_err().to_string(),
            "invalid signal \"NOPE\""
        );
        assert_eq!(
            parse("999").unwrap_err().to_string(),
            "invalid signal \"999\""
        );
    }
}
