//! Events: facts that happened, as stored in the ledger and published on
//! `tes.evt.<thread>.<kind>`.
//!
//! The ledger stores these bodies (schema [`crate::SCHEMA_VERSION`]); a body
//! that changes shape needs a new schema version and an upcaster, never an
//! edit in place, because old ledgers must keep replaying.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::alert::{AlertRaised, AlertResolved};
use crate::command::Scope;
use crate::envelope::Timestamp;
use crate::key_version::{Fingerprint, KeyVersion};
pub use crate::metrics::MetricsSnapshot;
use crate::thread::colour;

/// Every event kind. The serialized tag is the kind (`{"key_rotate": {…}}`);
/// the subject's last token is the same string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    KeyProvisioned(KeyProvisioned),
    KeyRotate(KeyRotate),
    KeyRollback(KeyRollback),
    KeyRetired(KeyRetired),
    KeyFallback(KeyFallback),
    RotationFailed(RotationFailed),
    SignatureGenerated(SignatureGenerated),
    SignatureVerified(SignatureVerified),
    VersionBump(VersionBump),
    Rejected(Rejected),
    Checkpoint(Checkpoint),
    // New kinds go at the end: the binary form numbers variants in order,
    // and stored rows must keep decoding.
    SignerHeartbeat(SignerHeartbeat),
    Metrics(Box<MetricsSnapshot>),
    Alert(AlertRaised),
    Resolved(AlertResolved),
    ArchiveBatch(ArchiveBatch),
    BundleArchived(BundleArchived),
    KeyRevoked(KeyRevoked),
    GraceChanged(GraceChanged),
    KeyExpirySet(KeyExpirySet),
}

/// Event kind names, as in subjects and the ledger's `kind` column.
pub mod kind {
    pub const KEY_PROVISIONED: &str = "key_provisioned";
    pub const KEY_ROTATE: &str = "key_rotate";
    pub const KEY_ROLLBACK: &str = "key_rollback";
    pub const KEY_RETIRED: &str = "key_retired";
    pub const KEY_FALLBACK: &str = "key_fallback";
    pub const ROTATION_FAILED: &str = "rotation_failed";
    pub const SIGNATURE_GENERATED: &str = "signature_generated";
    pub const SIGNATURE_VERIFIED: &str = "signature_verified";
    pub const VERSION_BUMP: &str = "version_bump";
    pub const REJECTED: &str = "rejected";
    pub const CHECKPOINT: &str = "checkpoint";
    pub const SIGNER_HEARTBEAT: &str = "signer_heartbeat";
    pub const METRICS: &str = "metrics";
    pub const ALERT: &str = "alert";
    pub const RESOLVED: &str = "resolved";
    pub const ARCHIVE_BATCH: &str = "archive_batch";
    pub const BUNDLE_ARCHIVED: &str = "bundle_archived";
    pub const KEY_REVOKED: &str = "key_revoked";
    pub const GRACE_CHANGED: &str = "grace_changed";
    pub const KEY_EXPIRY_SET: &str = "key_expiry_set";

    pub const ALL: [&str; 20] = [
        KEY_PROVISIONED,
        KEY_ROTATE,
        KEY_ROLLBACK,
        KEY_RETIRED,
        KEY_FALLBACK,
        ROTATION_FAILED,
        SIGNATURE_GENERATED,
        SIGNATURE_VERIFIED,
        VERSION_BUMP,
        REJECTED,
        CHECKPOINT,
        SIGNER_HEARTBEAT,
        METRICS,
        ALERT,
        RESOLVED,
        ARCHIVE_BATCH,
        BUNDLE_ARCHIVED,
        KEY_REVOKED,
        GRACE_CHANGED,
        KEY_EXPIRY_SET,
    ];

    /// The kinds that are ledger rows (see [`super::Event::is_ledgered`]):
    /// all but refusals, checkpoints, heartbeats and snapshots.
    pub fn ledgered() -> impl Iterator<Item = &'static str> {
        ALL.into_iter()
            .filter(|k| !matches!(*k, REJECTED | CHECKPOINT | SIGNER_HEARTBEAT | METRICS))
    }
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::KeyProvisioned(_) => kind::KEY_PROVISIONED,
            Event::KeyRotate(_) => kind::KEY_ROTATE,
            Event::KeyRollback(_) => kind::KEY_ROLLBACK,
            Event::KeyRetired(_) => kind::KEY_RETIRED,
            Event::KeyFallback(_) => kind::KEY_FALLBACK,
            Event::RotationFailed(_) => kind::ROTATION_FAILED,
            Event::SignatureGenerated(_) => kind::SIGNATURE_GENERATED,
            Event::SignatureVerified(_) => kind::SIGNATURE_VERIFIED,
            Event::VersionBump(_) => kind::VERSION_BUMP,
            Event::Rejected(_) => kind::REJECTED,
            Event::Checkpoint(_) => kind::CHECKPOINT,
            Event::SignerHeartbeat(_) => kind::SIGNER_HEARTBEAT,
            Event::Metrics(_) => kind::METRICS,
            Event::Alert(_) => kind::ALERT,
            Event::Resolved(_) => kind::RESOLVED,
            Event::ArchiveBatch(_) => kind::ARCHIVE_BATCH,
            Event::BundleArchived(_) => kind::BUNDLE_ARCHIVED,
            Event::KeyRevoked(_) => kind::KEY_REVOKED,
            Event::GraceChanged(_) => kind::GRACE_CHANGED,
            Event::KeyExpirySet(_) => kind::KEY_EXPIRY_SET,
        }
    }

    /// The seed's label for the event, as people grep for it in logs
    /// (`key:fallback_v2_to_v1`, `signature:generated`).
    pub fn seed_label(&self) -> String {
        match self {
            Event::KeyFallback(f) => {
                format!("key:fallback_v{}_to_v{}", f.from.get(), f.to.get())
            }
            Event::SignatureGenerated(_) => "signature:generated".to_string(),
            Event::SignatureVerified(_) => "signature:verified".to_string(),
            Event::Alert(a) => format!("alert:{}", a.rule),
            Event::Resolved(r) => format!("resolved:{}", r.rule),
            other => other.kind().to_string(),
        }
    }

    /// The key version the event is about, for the ledger's `key_version`
    /// column and for per-version counts.
    pub fn key_version(&self) -> Option<KeyVersion> {
        match self {
            Event::KeyProvisioned(e) => Some(e.version),
            Event::KeyRotate(e) => Some(e.to),
            Event::KeyRollback(e) => Some(e.to),
            Event::KeyRetired(e) => Some(e.version),
            Event::KeyFallback(e) => Some(e.to),
            Event::RotationFailed(e) => e.from,
            Event::SignatureGenerated(e) => Some(e.key_version),
            Event::SignatureVerified(e) => Some(e.key_version),
            Event::VersionBump(e) => Some(e.key_version),
            Event::ArchiveBatch(e) => Some(e.version),
            Event::BundleArchived(e) => Some(e.version),
            Event::KeyRevoked(e) => Some(e.version),
            Event::GraceChanged(e) => Some(e.version),
            Event::KeyExpirySet(e) => Some(e.version),
            Event::Rejected(_)
            | Event::Checkpoint(_)
            | Event::SignerHeartbeat(_)
            | Event::Metrics(_)
            | Event::Alert(_)
            | Event::Resolved(_) => None,
        }
    }

    /// The colour the event is shown in (DESIGN.md §1).
    pub fn hsl(&self) -> &'static str {
        match self {
            Event::KeyFallback(_) | Event::KeyRollback(_) => colour::FALLBACK_ORANGE,
            Event::RotationFailed(_) => colour::MISSING_KEY_RED,
            Event::KeyRevoked(_) => colour::REVOKED_CRIMSON,
            Event::Rejected(_) => colour::REJECTED_ORANGE_RED,
            Event::Alert(_) => colour::ALERT_MAGENTA,
            Event::Resolved(_) | Event::Metrics(_) => colour::MONITORING_GREEN,
            Event::SignerHeartbeat(_) | Event::Checkpoint(_) => colour::TELEMETRY_GREY,
            _ => colour::VERSION_PURPLE,
        }
    }

    /// Whether the event is part of the ledger (the rest are bus-only:
    /// rejections change nothing, checkpoints describe the ledger itself,
    /// heartbeats describe who is alive, snapshots are derived from the
    /// ledger). Alerts are ledgered: the Supervisor records them.
    pub fn is_ledgered(&self) -> bool {
        !matches!(
            self,
            Event::Rejected(_)
                | Event::Checkpoint(_)
                | Event::SignerHeartbeat(_)
                | Event::Metrics(_)
        )
    }
}

/// Key material for a version is present on a signer; records its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyProvisioned {
    pub version: KeyVersion,
    pub fingerprint: Fingerprint,
}

/// Why the active version changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotationReason {
    /// The first version became active on a new ledger.
    Initial,
    /// Someone asked.
    Requested,
    /// The active version passed its expiry.
    Expired,
    /// A bundle signed under the active version carries an expiry that
    /// passed (the seed's "V1 TTL Expiry → Force V2").
    BundleExpired,
    /// The active version was revoked; a `key_revoked` event follows in the
    /// same transaction.
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRotate {
    /// The version that was active (none on a new ledger).
    pub from: Option<KeyVersion>,
    pub to: KeyVersion,
    pub reason: RotationReason,
    pub requested_by: String,
    /// Whether the propagation gate was overridden.
    pub forced: bool,
    /// Until when `from` still verifies.
    pub grace_until: Option<Timestamp>,
    /// When `to` expires and is rotated away on its own.
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRollback {
    pub from: KeyVersion,
    pub to: KeyVersion,
    pub requested_by: String,
    /// Until when `from` still verifies.
    pub grace_until: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetireReason {
    /// Its grace window after a rotation ended.
    GraceElapsed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRetired {
    pub version: KeyVersion,
    pub reason: RetireReason,
}

/// The active version's material was missing here; `to` signed instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyFallback {
    pub from: KeyVersion,
    pub to: KeyVersion,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationFailed {
    pub from: Option<KeyVersion>,
    pub reason: String,
}

/// A signature was handed out. Recorded before the caller gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignatureGenerated {
    pub key_version: KeyVersion,
    /// Lowercase hex HMAC-SHA256 (a MAC, not key material).
    pub signature: String,
    /// Lowercase hex SHA-256 of the signed payload.
    pub payload_sha256: String,
    /// Whether the caller pinned the version.
    pub pinned: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignatureVerified {
    pub key_version: KeyVersion,
    pub valid: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionBump {
    pub entity: String,
    pub scope: Scope,
    pub from: String,
    pub to: String,
    /// The key version the manifest is signed with.
    pub key_version: KeyVersion,
}

/// A command or message that was refused; it changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rejected {
    /// The subject it arrived on.
    pub subject: String,
    pub code: crate::reply::ErrorCode,
    pub reason: String,
}

/// The ledger's head, published so a truncated or replaced ledger is caught.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The head seq (also the Merkle tree's size).
    pub seq: u64,
    /// The head row's `hash` (hex).
    pub hash: String,
    /// The RFC 6962 Merkle root over every row hash up to `seq` (hex).
    pub root: String,
    /// The signed checkpoint: a C2SP tlog-checkpoint in a C2SP signed-note,
    /// signed by the audit key (`tes audit key` prints its vkey).
    pub note: String,
}

/// An archive batch is about to move: these bundles of `version` go from
/// `bundle/v<N>/` to `archive/v<N>/`. Recorded before any of them moves, so
/// a pass cut short (a crash, a kill) is finished with exactly these keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveBatch {
    pub version: KeyVersion,
    /// Numbered from 1 per version, across passes.
    pub batch: u64,
    /// Object keys under `bundle/v<N>/`, in order.
    pub keys: Vec<String>,
    /// Bundles of this version not yet archived when the batch was planned,
    /// this batch included (for progress).
    pub left: u64,
}

/// An archive batch is done: each of its keys is under `archive/v<N>/` and
/// no longer under `bundle/v<N>/`, or was in neither place (`missing`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleArchived {
    pub version: KeyVersion,
    pub batch: u64,
    /// Bundles now in the archive.
    pub objects: u64,
    pub bytes: u64,
    /// Keys found in neither place (deleted behind the archiver's back).
    pub missing: Vec<String>,
}

/// A key version is no longer trusted, from this event on: it neither signs
/// nor verifies on any signer. Permanent. When it was the active version,
/// a `key_rotate` (reason `revoked`) to the next version precedes it in the
/// same transaction — unless `forced`, which leaves no version active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRevoked {
    pub version: KeyVersion,
    /// Why, in the operator's words (e.g. "leaked in build log 4711").
    pub reason: String,
    pub requested_by: String,
    /// The active version was revoked with nothing to rotate to: nothing
    /// signs until a new version is provisioned and rotated to.
    pub forced: bool,
}

/// A verifying version's grace window was changed by an operator (shortened,
/// extended, or ended now). Applies on every signer, like the rotation that
/// set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GraceChanged {
    pub version: KeyVersion,
    /// The verify-until before the change (none: it had no end).
    pub previous: Option<Timestamp>,
    /// The new verify-until; at or before the event's time it ends now (a
    /// `key_retired` follows in the same transaction).
    pub grace_until: Timestamp,
    pub requested_by: String,
}

/// The expiry policy applied to a version that is already active: a daemon
/// started (or restarted) with a key TTL records when the running version
/// expires, counted from its activation, so a replay gives the same expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyExpirySet {
    pub version: KeyVersion,
    /// The TTL in force, in seconds.
    pub ttl_secs: u64,
    /// Activation time + TTL.
    pub expires_at: Timestamp,
}

/// The ledger writer's name as a signer (replicas have their own).
pub const WRITER_SIGNER: &str = "writer";

/// How often a signer says it is alive.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// A signer unheard of for this long is taken as gone.
pub const SIGNER_LIVENESS: std::time::Duration = std::time::Duration::from_secs(6);

/// A signer (the ledger writer or a replica) is alive and holds these key
/// versions. The Supervisor refuses to promote a version a live signer lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignerHeartbeat {
    pub signer: String,
    pub held: Vec<HeldKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeldKey {
    pub version: KeyVersion,
    pub fingerprint: Fingerprint,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thread::ThreadId;

    #[test]
    fn a_revocation_has_a_colour_of_its_own() {
        let revoked = Event::KeyRevoked(KeyRevoked {
            version: KeyVersion::V1,
            reason: "leaked".into(),
            requested_by: "ops".into(),
            forced: false,
        });
        let retired = Event::KeyRetired(KeyRetired {
            version: KeyVersion::V1,
            reason: RetireReason::GraceElapsed,
        });
        let others = [
            retired.hsl(),
            colour::REJECTED_ORANGE_RED,
            colour::MISSING_KEY_RED,
            colour::FALLBACK_ORANGE,
        ];
        assert!(!others.contains(&revoked.hsl()));
        assert!(ThreadId::ALL.iter().all(|t| t.hsl() != revoked.hsl()));
        assert!(revoked.is_ledgered());
        assert!(kind::ledgered().any(|k| k == kind::KEY_REVOKED));
    }
}
