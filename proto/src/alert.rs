//! Alert's events (`tes.evt.0x5003.alert` / `.resolved`): a rule started or
//! stopped holding. The Supervisor records both in the ledger.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{MsgId, Timestamp};
use crate::key_version::KeyVersion;

/// The rules Alert knows (DESIGN.md §1, the seed's "Alert Thresholds").
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The new version's share is still low a while after a rotation
    /// (the seed: "V2 usage < 10% after 24 hours").
    NewVersionUsageBelow,
    /// The old version's share is still high long after a rotation
    /// (the seed: "V1 usage > 90% after 7 days").
    OldVersionUsageAbove,
    /// Too many signing requests fall back to the previous version
    /// (the seed: "fallback rate > 5%").
    FallbackRateAbove,
    /// A rotation failed and no rotation has succeeded since.
    RotationFailed,
    /// The old version's share has not fallen over a window.
    MigrationStalled,
    /// A key version was revoked within the recent window (critical).
    KeyRevoked,
}

/// How urgent a rule is (a label in Prometheus and the logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::NewVersionUsageBelow,
        Rule::OldVersionUsageAbove,
        Rule::FallbackRateAbove,
        Rule::RotationFailed,
        Rule::MigrationStalled,
        Rule::KeyRevoked,
    ];

    /// A revocation (a key that leaked) and a failed rotation (nothing to
    /// rotate to) need someone now; the migration rules can wait for hours.
    pub fn severity(self) -> Severity {
        match self {
            Rule::KeyRevoked | Rule::RotationFailed => Severity::Critical,
            _ => Severity::Warning,
        }
    }

    /// The name in rules files, events and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Rule::NewVersionUsageBelow => "new_version_usage_below",
            Rule::OldVersionUsageAbove => "old_version_usage_above",
            Rule::FallbackRateAbove => "fallback_rate_above",
            Rule::RotationFailed => "rotation_failed",
            Rule::MigrationStalled => "migration_stalled",
            Rule::KeyRevoked => "key_revoked",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A rule started to hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertRaised {
    pub rule: Rule,
    /// What to do about it, in words.
    pub message: String,
    /// The measured share or rate (basis points), where the rule has one.
    pub observed_bp: Option<u32>,
    pub threshold_bp: Option<u32>,
    /// The versions of the migration it is about.
    pub from: Option<KeyVersion>,
    pub to: Option<KeyVersion>,
    /// The snapshot that raised it: its time and last ledger seq.
    pub at: Timestamp,
    pub seq: u64,
}

/// A rule stopped holding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertResolved {
    pub rule: Rule,
    /// The id of the `alert` event this ends.
    pub raised: MsgId,
    pub message: String,
    pub at: Timestamp,
    pub seq: u64,
}
