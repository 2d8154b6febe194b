//! Printing: plain words for people, one JSON object per line with `--json`.

use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub json: bool,
}

impl Printer {
    /// Prints `words` for people, or `value` as one JSON line.
    pub fn emit(&self, words: impl AsRef<str>, value: &impl Serialize) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string(value).expect("output serializes")
            );
        } else {
            println!("{}", words.as_ref());
        }
    }

    /// Prints only for people (headings, explanations).
    pub fn say(&self, words: impl AsRef<str>) {
        if !self.json {
            println!("{}", words.as_ref());
        }
    }
}

/// The first characters of a hex string, for people.
pub fn short(hex: &str) -> &str {
    &hex[..hex.len().min(16)]
}
