//! Printing: plain words for people, one JSON object per line with `--json`.

use std::io::Write;

use serde::Serialize;

/// Writes one line to stdout. A reader that went away (`tes replay | head
/// -1`) is not an error: the process ends quietly with success, as `cat`
/// and `grep` do.
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    quiet_on_closed_pipe(writeln!(out, "{text}").and_then(|()| out.flush()));
}

/// Ends the process quietly (exit 0) when stdout's reader is gone.
pub fn quiet_on_closed_pipe(result: std::io::Result<()>) {
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub json: bool,
}

impl Printer {
    /// Prints `words` for people, or `value` as one JSON line.
    pub fn emit(&self, words: impl AsRef<str>, value: &impl Serialize) {
        if self.json {
            line(&serde_json::to_string(value).expect("output serializes"));
        } else {
            line(words.as_ref());
        }
    }

    /// Prints only for people (headings, explanations).
    pub fn say(&self, words: impl AsRef<str>) {
        if !self.json {
            line(words.as_ref());
        }
    }
}

/// The first characters of a hex string, for people.
pub fn short(hex: &str) -> &str {
    &hex[..hex.len().min(16)]
}
