//! Which rules are in force and their thresholds.
//!
//! Without a file, the seed's four rules and "migration stalled" hold with
//! the seed's numbers. A rules file (TOML) lists the rules in force, one
//! table each; a rule left out is off:
//!
//! ```toml
//! [new_version_usage_below]   # the seed: V2 usage < 10% after 24 hours
//! after = "24h"
//! below = "10%"
//!
//! [old_version_usage_above]   # the seed: V1 usage > 90% after 7 days
//! after = "7d"
//! above = "90%"
//!
//! [fallback_rate_above]       # the seed: fallback rate > 5%
//! above = "5%"
//! min_requests = 20           # fewer requests in the window say nothing
//!
//! [rotation_failed]           # the seed: any rotation failure
//!
//! [key_revoked]               # critical: a key version was revoked
//! hold = "24h"                # the alert stays open this long after it
//!
//! [migration_stalled]         # the old version's share has not fallen
//! window = "6h"               # by min_drop over this long
//! min_drop = "5%"             # percentage points; smaller moves are noise
//! above = "1%"                # below this the migration counts as done
//! ```
//!
//! A mistake (an unknown rule or key, a negative or over-100% threshold, a
//! window that is not a duration) is refused at start-up, naming the line.

use std::path::Path;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};
use tes_proto::metrics::FULL_BP;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub new_version_usage_below: Option<UsageAfter>,
    pub old_version_usage_above: Option<UsageAfter>,
    pub fallback_rate_above: Option<FallbackRate>,
    pub rotation_failed: bool,
    pub migration_stalled: Option<Stall>,
    /// How long a revocation keeps its (critical) alert open.
    pub key_revoked: Option<Duration>,
}

/// A share threshold that applies from `after` past the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageAfter {
    pub after: Duration,
    /// Basis points.
    pub threshold_bp: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackRate {
    pub above_bp: u32,
    pub min_requests: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub window: Duration,
    /// The least fall (basis points of share) that counts as progress.
    pub min_drop_bp: u32,
    pub above_bp: u32,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for Rules {
    /// The seed's thresholds.
    fn default() -> Self {
        Rules {
            new_version_usage_below: Some(UsageAfter {
                after: DAY,
                threshold_bp: 1_000,
            }),
            old_version_usage_above: Some(UsageAfter {
                after: 7 * DAY,
                threshold_bp: 9_000,
            }),
            fallback_rate_above: Some(FallbackRate {
                above_bp: 500,
                min_requests: 20,
            }),
            rotation_failed: true,
            migration_stalled: Some(Stall {
                window: Duration::from_secs(6 * 3600),
                min_drop_bp: 500,
                above_bp: 100,
            }),
            key_revoked: Some(DAY),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read the alert rules file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("alert rules file {path}, line {line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

impl Rules {
    pub fn load(path: &Path) -> Result<Rules, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|error| RulesError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Rules::parse(&text, &path.display().to_string())
    }

    /// Parses a rules file's text; `name` is how errors call it.
    pub fn parse(text: &str, name: &str) -> Result<Rules, RulesError> {
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |span| {
                text[..span.start.min(text.len())].matches('\n').count() + 1
            });
            RulesError::Invalid {
                path: name.to_string(),
                line,
                message: e.message().trim().to_string(),
            }
        })?;
        Ok(Rules {
            new_version_usage_below: file.new_version_usage_below.map(|r| UsageAfter {
                after: r.after.0,
                threshold_bp: r.below.0,
            }),
            old_version_usage_above: file.old_version_usage_above.map(|r| UsageAfter {
                after: r.after.0,
                threshold_bp: r.above.0,
            }),
            fallback_rate_above: file.fallback_rate_above.map(|r| FallbackRate {
                above_bp: r.above.0,
                min_requests: r.min_requests.unwrap_or(20),
            }),
            rotation_failed: file.rotation_failed.is_some(),
            migration_stalled: file.migration_stalled.map(|r| Stall {
                window: r.window.0,
                min_drop_bp: r.min_drop.map_or(500, |p| p.0),
                above_bp: r.above.map_or(100, |p| p.0),
            }),
            key_revoked: file.key_revoked.map(|r| r.hold.map_or(DAY, |w| w.0)),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    new_version_usage_below: Option<BelowAfter>,
    old_version_usage_above: Option<AboveAfter>,
    fallback_rate_above: Option<FallbackFile>,
    rotation_failed: Option<NoSettings>,
    migration_stalled: Option<StallFile>,
    key_revoked: Option<RevokedFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokedFile {
    hold: Option<Window>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BelowAfter {
    after: Window,
    below: Percent,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AboveAfter {
    after: Window,
    above: Percent,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FallbackFile {
    above: Percent,
    min_requests: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoSettings {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StallFile {
    window: Window,
    min_drop: Option<Percent>,
    above: Option<Percent>,
}

/// A duration written as humans write them: `24h`, `7d`, `90m`.
struct Window(Duration);

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let duration = humantime::parse_duration(text.trim()).map_err(|e| {
            de::Error::custom(format!(
                "{text:?} is not a window ({e}); write e.g. \"24h\", \"7d\", \"90m\""
            ))
        })?;
        if duration.is_zero() {
            return Err(de::Error::custom("a window must be longer than zero"));
        }
        Ok(Window(duration))
    }
}

/// A percentage, `"5%"`, `"0.5%"` or a bare number of percent, as basis points.
struct Percent(u32);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        let (value, shown) = match Raw::deserialize(d)? {
            Raw::Number(n) => (n, n.to_string()),
            Raw::Text(t) => {
                let number = t.trim().trim_end_matches('%').trim();
                let n = number.parse::<f64>().map_err(|_| {
                    de::Error::custom(format!("{t:?} is not a percentage; write e.g. \"5%\""))
                })?;
                (n, t)
            }
        };
        if !(0.0..=100.0).contains(&value) {
            return Err(de::Error::custom(format!(
                "threshold {shown} is outside 0%..100%"
            )));
        }
        let bp = (value * f64::from(FULL_BP) / 100.0).round();
        Ok(Percent(bp as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> (usize, String) {
        match Rules::parse(text, "rules.toml") {
            Err(RulesError::Invalid { line, message, .. }) => (line, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn the_documented_example_is_the_default() {
        let doc = include_str!("rules.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(Rules::parse(&doc, "doc").unwrap(), Rules::default());
    }

    #[test]
    fn a_rule_left_out_is_off() {
        let rules = Rules::parse("[fallback_rate_above]\nabove = 6\n", "r").unwrap();
        assert_eq!(
            rules.fallback_rate_above,
            Some(FallbackRate {
                above_bp: 600,
                min_requests: 20
            })
        );
        assert!(!rules.rotation_failed);
        assert!(rules.new_version_usage_below.is_none());
        assert!(rules.migration_stalled.is_none());
    }

    #[test]
    fn an_unknown_rule_is_named_with_its_line() {
        let (line, message) = error_of("[rotation_failed]\n\n[v2_usage_low]\nbelow = \"10%\"\n");
        assert_eq!(line, 3, "{message}");
        assert!(message.contains("v2_usage_low"), "{message}");
    }

    #[test]
    fn a_negative_threshold_is_named_with_its_line() {
        let (line, message) = error_of("[fallback_rate_above]\nabove = \"-5%\"\n");
        assert_eq!(line, 2, "{message}");
        assert!(
            message.contains("-5%") && message.contains("0%..100%"),
            "{message}"
        );
        let (line, _) = error_of("[old_version_usage_above]\nafter = \"7d\"\nabove = 190\n");
        assert_eq!(line, 3);
    }

    #[test]
    fn a_malformed_window_is_named_with_its_line() {
        let (line, message) = error_of("[migration_stalled]\nwindow = \"six hours\"\n");
        assert_eq!(line, 2, "{message}");
        assert!(
            message.contains("six hours") && message.contains("24h"),
            "{message}"
        );
        let (line, message) =
            error_of("[new_version_usage_below]\nbelow = \"10%\"\nafter = \"0s\"\n");
        assert_eq!(line, 3, "{message}");
    }

    #[test]
    fn an_unknown_setting_and_a_missing_one_are_named() {
        let (line, message) = error_of("[fallback_rate_above]\nabove = \"5%\"\nbelow = \"1%\"\n");
        assert_eq!(line, 3, "{message}");
        let (_, message) = error_of("[new_version_usage_below]\nafter = \"24h\"\n");
        assert!(message.contains("below"), "{message}");
    }
}
