//! Monitoring's snapshot (`tes.evt.0x5000.metrics`): the key-migration
//! numbers Telemetry exports and Alert judges.
//!
//! Shares and rates are integer basis points (1 bp = 0.01 %), so snapshots
//! compare exactly and encode the same in both wire forms.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::Timestamp;
use crate::key_version::KeyVersion;

/// 100 % in basis points.
pub const FULL_BP: u32 = 10_000;

/// `part / whole` in basis points, rounded down; `None` when `whole` is 0
/// (no traffic says nothing about a share).
pub fn share_bp(part: u64, whole: u64) -> Option<u32> {
    if whole == 0 {
        return None;
    }
    let bp = u128::from(part) * u128::from(FULL_BP) / u128::from(whole);
    Some(u32::try_from(bp).unwrap_or(u32::MAX))
}

/// Everything Monitoring knows at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSnapshot {
    /// The moment this describes: the time of the last event when rebuilt
    /// from a ledger, Monitoring's clock when live.
    pub at: Timestamp,
    /// Ledger seq of the last event counted (0: none yet).
    pub seq: u64,
    /// The version that signs now.
    pub active: Option<KeyVersion>,
    /// Since the ledger began, per version.
    pub versions: Vec<VersionCounts>,
    /// Since the ledger began, per (from, to).
    pub fallbacks: Vec<FallbackCount>,
    /// Signing requests (a dual signature is one request, two signatures).
    pub sign_requests: u64,
    /// Secondary signatures of dual signing (the verifying version signing
    /// beside the active one during a grace window).
    pub dual_signatures: u64,
    /// Rotations away from a version (not the first activation).
    pub rotations: u64,
    pub rollbacks: u64,
    pub rotation_failures: u64,
    /// Rotation failures since the active version last changed: a failure
    /// stays a problem until a rotation succeeds.
    pub failures_since_rotation: u64,
    pub retirements: u64,
    pub bumps: u64,
    pub alerts: u64,
    /// The rotation in progress: from the last rotation until a rollback.
    pub migration: Option<Migration>,
    /// The recent traffic, for shares and rates.
    pub window: WindowCounts,
    /// Every revocation since the ledger began, in order.
    pub revocations: Vec<Revocation>,
    /// The window's signing requests per version over time: the admin
    /// page's migration chart. (Absent from snapshots made before it
    /// existed.)
    #[serde(default)]
    pub series: UsageSeries,
}

/// Signing requests per version that served them, in equal time buckets
/// across the recent window, oldest first. A bucket with no requests is
/// left out; a version absent from a bucket served none in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageSeries {
    /// Each bucket's length: the window over [`SERIES_BUCKETS`], at least
    /// a second.
    pub bucket_ms: u64,
    pub buckets: Vec<UsageBucket>,
}

/// How many buckets a window is cut into.
pub const SERIES_BUCKETS: u64 = 120;

/// The requests served from `start` for one bucket's length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageBucket {
    pub start: Timestamp,
    pub usage: Vec<VersionUsage>,
}

/// A key version revoked (`key_revoked`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    pub version: KeyVersion,
    pub at: Timestamp,
    pub reason: String,
    pub seq: u64,
}

impl MetricsSnapshot {
    pub fn version(&self, v: KeyVersion) -> Option<&VersionCounts> {
        self.versions.iter().find(|c| c.version == v)
    }

    /// Signatures under `v` since the ledger began.
    pub fn signatures(&self, v: KeyVersion) -> u64 {
        self.version(v).map_or(0, |c| c.signatures)
    }

    /// Fallbacks of every kind since the ledger began.
    pub fn fallback_total(&self) -> u64 {
        self.fallbacks.iter().map(|f| f.count).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionCounts {
    pub version: KeyVersion,
    /// `signature_generated` events under this version (primary and dual).
    pub signatures: u64,
    /// Signing requests this version served (its signature was the primary).
    pub primary: u64,
    /// Secondary signatures of dual signing under this version.
    pub dual: u64,
    pub verified_valid: u64,
    pub verified_invalid: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FallbackCount {
    pub from: KeyVersion,
    pub to: KeyVersion,
    pub count: u64,
}

/// A rotation from `from` to `to` and how far clients have followed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    pub from: KeyVersion,
    pub to: KeyVersion,
    /// When the rotation was recorded.
    pub started_at: Timestamp,
    /// The first signature under `to` after it (the end of the seed's
    /// "rotation duration").
    pub first_signature_at: Option<Timestamp>,
}

impl Migration {
    /// Rotation signal → first signature under the new version.
    pub fn duration_ms(&self) -> Option<u64> {
        self.first_signature_at
            .map(|t| t.as_millis().saturating_sub(self.started_at.as_millis()))
    }
}

/// Traffic within the last `span_ms` before `at`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowCounts {
    pub span_ms: u64,
    pub sign_requests: u64,
    pub fallbacks: u64,
    /// Signing requests per version that served them (the primary
    /// signature): which key clients get. Dual signatures and verifications
    /// are not in it, so a grace window with every request on the new
    /// version shows it at 100 %.
    pub usage: Vec<VersionUsage>,
    /// Verifications per version (valid or not).
    pub verifications: Vec<VersionUsage>,
    /// Secondary signatures of dual signing.
    pub dual_signatures: u64,
}

impl WindowCounts {
    /// Signing requests in [`Self::usage`].
    pub fn operations(&self) -> u64 {
        self.usage.iter().map(|u| u.operations).sum()
    }

    /// The share of the window's signing requests served by `v`.
    pub fn usage_bp(&self, v: KeyVersion) -> Option<u32> {
        let part = self
            .usage
            .iter()
            .find(|u| u.version == v)
            .map_or(0, |u| u.operations);
        share_bp(part, self.operations())
    }

    /// Fallbacks per signing request in the window.
    pub fn fallback_rate_bp(&self) -> Option<u32> {
        share_bp(self.fallbacks, self.sign_requests)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionUsage {
    pub version: KeyVersion,
    pub operations: u64,
}

/// Basis points as a person reads them: `6.00%`.
pub fn percent(bp: u32) -> String {
    format!("{}.{:02}%", bp / 100, bp % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_exact_basis_points() {
        assert_eq!(share_bp(6, 100), Some(600));
        assert_eq!(share_bp(1, 3), Some(3333));
        assert_eq!(share_bp(0, 0), None);
        assert_eq!(share_bp(u64::MAX, u64::MAX), Some(FULL_BP));
        assert_eq!(percent(600), "6.00%");
        assert_eq!(percent(5), "0.05%");
    }
}
