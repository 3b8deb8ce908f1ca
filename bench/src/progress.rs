//! The progress line on a terminal, and notes printed above it.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// A one-line progress display on stderr (only when stderr is a terminal)
/// with notes printed above it (always).
pub struct Progress {
    enabled: bool,
    total: usize,
    done: usize,
    start: Instant,
    line: String,
}

impl Progress {
    /// A progress display for `total` steps; `wanted` false turns the line off.
    pub fn new(total: usize, wanted: bool) -> Self {
        Progress {
            enabled: wanted && std::io::stderr().is_terminal(),
            total,
            done: 0,
            start: Instant::now(),
            line: String::new(),
        }
    }

    /// Shows that step `done + 1` is `what`.
    pub fn step(&mut self, what: &str) {
        let elapsed = self.start.elapsed().as_secs();
        let eta = if self.done > 0 {
            let per = self.start.elapsed().as_secs_f64() / self.done as f64;
            let left = (per * (self.total - self.done) as f64) as u64;
            format!(", ~{}:{:02} left", left / 60, left % 60)
        } else {
            String::new()
        };
        self.line = format!(
            "[{}/{}] {what}  ({}:{:02}{eta})",
            self.done + 1,
            self.total,
            elapsed / 60,
            elapsed % 60
        );
        self.draw();
    }

    /// Marks one step done.
    pub fn advance(&mut self) {
        self.done += 1;
    }

    /// Prints `msg` on its own line, above the progress line.
    pub fn note(&mut self, msg: &str) {
        let mut err = std::io::stderr().lock();
        if self.enabled {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "strata-bench: {msg}");
        drop(err);
        self.draw();
    }

    fn draw(&self) {
        if self.enabled && !self.line.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{}", self.line);
            let _ = err.flush();
        }
    }

    /// Clears the progress line.
    pub fn finish(&mut self) {
        if self.enabled {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
        self.line.clear();
    }
}
