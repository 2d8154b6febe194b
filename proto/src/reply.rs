//! Request/reply bodies: a reply is either `{"ok": …}` or `{"err": …}`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::command::Scope;
use crate::envelope::Timestamp;
use crate::key_version::{Fingerprint, KeyVersion};
use crate::thread::colour;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Ok(T),
    Err(ErrorReply),
}

impl<T> Reply<T> {
    pub fn into_result(self) -> Result<T, ErrorReply> {
        match self {
            Reply::Ok(t) => Ok(t),
            Reply::Err(e) => Err(e),
        }
    }
}

impl<T> From<Result<T, ErrorReply>> for Reply<T> {
    fn from(r: Result<T, ErrorReply>) -> Self {
        match r {
            Ok(t) => Reply::Ok(t),
            Err(e) => Reply::Err(e),
        }
    }
}

/// Why a request was refused, in words a person can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message could not be decoded or is too large.
    Malformed,
    /// No such verb on this subject.
    UnknownVerb,
    /// The key version is not known to the ledger.
    UnknownVersion,
    /// The key version is retired: it neither signs nor verifies.
    RetiredVersion,
    /// The key version's material is not held here.
    MissingKey,
    /// Rotation asked for but nothing is provisioned to rotate to.
    NoNextVersion,
    /// Rollback asked for but no previous version still verifies.
    NothingToRollBack,
    /// The Supervisor's gate refused (e.g. a signer lacks the key).
    Gated,
    /// This command id was already applied.
    Duplicate,
    /// The ledger could not be written; nothing was handed out.
    Storage,
    /// An actor did not answer.
    Unavailable,
    /// The version still signs or verifies, so its bundles stay where they are.
    InUse,
    /// The bundle store could not be reached or refused the request.
    BundleStore,
    /// A key version's material differs from the fingerprint the ledger
    /// recorded for it (replacing it takes `tes secret put --replace`).
    MaterialChanged,
    /// The key version was revoked: it neither signs nor verifies.
    RevokedVersion,
}

impl ErrorCode {
    pub fn hsl(self) -> &'static str {
        match self {
            ErrorCode::MissingKey | ErrorCode::NoNextVersion => colour::MISSING_KEY_RED,
            ErrorCode::RevokedVersion => colour::REVOKED_CRIMSON,
            _ => colour::REJECTED_ORANGE_RED,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{message}")]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
    pub hsl: String,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            code,
            message: message.into(),
            hsl: code.hsl().to_string(),
        }
    }
}

/// A signature and the version that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionedSignature {
    pub key_version: KeyVersion,
    /// Lowercase hex HMAC-SHA256.
    pub signature: String,
}

/// One result per item of a [`crate::command::SignBatch`], in its order:
/// `{"ok": {…}}` or `{"err": {"code": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignBatchReply {
    pub results: Vec<Reply<SignReply>>,
}

/// One result per item of a [`crate::command::VerifyBatch`], in its order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyBatchReply {
    pub results: Vec<Reply<VerifyReply>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignReply {
    /// Exactly the string that was signed.
    pub payload: String,
    /// The primary signature (lowercase hex) and its version.
    pub signature: String,
    pub key_version: KeyVersion,
    /// Every signature over the payload: during a grace window the previous
    /// version signs too, so a verifier that knows only one key succeeds.
    pub signatures: Vec<VersionedSignature>,
    /// Set when the active version's material was missing and this one signed.
    pub fallback_from: Option<KeyVersion>,
    /// Ledger seq of the audit record of the primary signature.
    pub seq: u64,
    /// Which signer made it: the ledger writer or a replica's name.
    pub signer: String,
    /// A retry of a command the ledger had already applied: this is the
    /// original outcome, rebuilt from the ledger; nothing was signed again.
    #[serde(default)]
    pub replayed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReply {
    pub valid: bool,
    pub key_version: KeyVersion,
}

/// The manifest a bump signs, serialized canonically (RFC 8785).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub entity: String,
    pub version: String,
    pub previous: String,
    pub scope: Scope,
    pub key_version: KeyVersion,
    pub timestamp: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BumpReply {
    pub manifest: Manifest,
    /// The canonical bytes of `manifest`: what the signatures are over.
    pub payload: String,
    pub signature: String,
    pub key_version: KeyVersion,
    pub signatures: Vec<VersionedSignature>,
    pub fallback_from: Option<KeyVersion>,
    pub seq: u64,
    /// The original outcome of a retried command (see [`SignReply::replayed`]).
    #[serde(default)]
    pub replayed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationReply {
    pub success: bool,
    pub message: String,
    pub from: Option<KeyVersion>,
    /// The version now active.
    pub key_version: KeyVersion,
    pub rotation_timestamp: Timestamp,
    /// Until when `from` still verifies.
    pub grace_until: Option<Timestamp>,
    pub forced: bool,
    pub seq: u64,
    pub hsl: String,
    /// The original outcome of a retried command (see [`SignReply::replayed`]).
    #[serde(default)]
    pub replayed: bool,
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokeReply {
    pub version: KeyVersion,
    pub revoked_at: Timestamp,
    pub reason: String,
    /// The version that took over, when the revoked one was active.
    pub rotated_to: Option<KeyVersion>,
    /// The version that signs now (none after a forced revocation of the
    /// active version).
    pub active: Option<KeyVersion>,
    pub forced: bool,
    pub message: String,
    pub seq: u64,
    pub hsl: String,
    #[serde(default)]
    pub replayed: bool,
}

/// What a grace change did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GraceReply {
    pub version: KeyVersion,
    pub previous: Option<Timestamp>,
    pub grace_until: Timestamp,
    /// The window ended now: the version was retired in the same transaction.
    pub retired: bool,
    pub message: String,
    pub seq: u64,
    #[serde(default)]
    pub replayed: bool,
}

/// Lifecycle of a key version (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Material known, never active yet.
    Provisioned,
    /// Signs; exactly one version at a time.
    Active,
    /// The previous active version: verifies until its grace ends.
    Verifying,
    /// Verifies nothing.
    Retired,
    /// No longer trusted (compromised): neither signs nor verifies, and can
    /// never become active again.
    Revoked,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Provisioned => "provisioned",
            KeyStatus::Active => "active",
            KeyStatus::Verifying => "verifying",
            KeyStatus::Retired => "retired",
            KeyStatus::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub version: KeyVersion,
    pub status: KeyStatus,
    pub fingerprint: Fingerprint,
    pub activated_at: Option<Timestamp>,
    pub grace_until: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    /// Signatures made under this version.
    pub signatures: u64,
    /// Whether this signer holds the material.
    pub held: bool,
    /// Bundles of this version moved to `archive/v<N>/`, and their bytes.
    #[serde(default)]
    pub archived_objects: u64,
    #[serde(default)]
    pub archived_bytes: u64,
    /// An archive batch of this version is planned and not yet finished.
    #[serde(default)]
    pub archiving: bool,
    /// How many times its material was replaced on purpose
    /// (`tes secret put --replace`, a `key_provisioned` with a new fingerprint).
    #[serde(default)]
    pub material_changes: u32,
    /// When and why it was revoked.
    #[serde(default)]
    pub revoked_at: Option<Timestamp>,
    #[serde(default)]
    pub revoked_reason: Option<String>,
    /// When it was first provisioned, when its status last changed, and
    /// when it was retired: with the times above, its timeline.
    #[serde(default)]
    pub provisioned_at: Option<Timestamp>,
    #[serde(default)]
    pub status_since: Option<Timestamp>,
    /// When it last stopped being active (its verifying window began).
    #[serde(default)]
    pub deactivated_at: Option<Timestamp>,
    #[serde(default)]
    pub retired_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntityView {
    pub entity: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusReply {
    /// The active version, or none on a ledger that never activated one.
    pub key_version: Option<KeyVersion>,
    /// The version a rollback would return to.
    pub previous: Option<KeyVersion>,
    /// The version a rotation would move to.
    pub next: Option<KeyVersion>,
    pub last_sig_version: Option<KeyVersion>,
    pub rotation_timestamp: Option<Timestamp>,
    /// Why the active version last changed (`requested`, `expired`,
    /// `bundle_expired`, …; none after a rollback) and who or what asked.
    #[serde(default)]
    pub rotation_reason: Option<crate::event::RotationReason>,
    #[serde(default)]
    pub rotated_by: Option<String>,
    pub keys: Vec<KeyView>,
    pub entities: Vec<EntityView>,
    pub fallbacks: u64,
    pub head_seq: u64,
    pub head_hash: String,
    /// Asked with [`crate::command::Status::applied`]: the first ledger seq
    /// of that command's events, if it was applied.
    #[serde(default)]
    pub applied_seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordReply {
    /// The ledger seq of each recorded event, in order.
    pub seqs: Vec<u64>,
    /// When the events answer a command the ledger had already applied (a
    /// retried sign that an earlier attempt signed): nothing was recorded
    /// and these are that command's events as the ledger holds them, so the
    /// signer can hand out the original outcome.
    #[serde(default)]
    pub applied: Vec<StoredEvent>,
}

/// A ledger event with its seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    pub seq: u64,
    pub event: crate::envelope::Envelope<crate::event::Event>,
}

/// The answer to [`crate::command::History`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryReply {
    /// Oldest first.
    pub events: Vec<StoredEvent>,
    /// The ledger's head when read.
    pub head_seq: u64,
    /// Where older events go on: pass it as `before` for the next page;
    /// none when the ledger's start was reached.
    pub next_before: Option<u64>,
}

/// The answer to [`crate::command::Audit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditReply {
    pub head_seq: u64,
    /// The verifier key checkpoints are signed with (C2SP signed-note
    /// form); none: this writer signs no checkpoints (no audit key).
    pub vkey: Option<String>,
    /// The newest signed checkpoint: this writer's since it started, or
    /// else the newest a witness holds.
    pub checkpoint: Option<CheckpointView>,
    pub witnesses: Vec<WitnessView>,
    /// Asked with `verify`: what the walk found.
    pub verification: Option<VerificationView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointView {
    /// The tree size (the ledger seq it covers).
    pub size: u64,
    /// The RFC 6962 root, hex.
    pub root: String,
    /// When this writer signed it (none: signed before it started).
    pub signed_at: Option<Timestamp>,
    /// The signed note, as witnesses keep it.
    pub note: String,
}

/// What one witness holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WitnessView {
    /// Where it is (`directory …`, `bundle store …`).
    pub name: String,
    /// Its newest checkpoint under our key (none: it holds none).
    pub size: Option<u64>,
    pub root: Option<String>,
    /// Why it could not be read, or why a note it holds was refused.
    pub error: Option<String>,
    /// Asked with `verify`: whether the ledger's tree at its newest
    /// checkpoint has that root. None: not compared.
    pub agrees: Option<bool>,
}

/// A full walk of the ledger against every witnessed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationView {
    pub ok: bool,
    /// Events walked, every row's hash and link checked.
    pub events: u64,
    /// Distinct checkpoint sizes the ledger's tree matched.
    pub checkpoints_agreed: u64,
    /// What is wrong, if anything, and the first seq concerned.
    pub problem: Option<String>,
    pub first_bad_seq: Option<u64>,
    pub took_ms: u64,
}

/// The answer to [`crate::command::SignersQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignersReply {
    /// Every signer heard from within the liveness window, by name.
    pub signers: Vec<SignerView>,
    /// The version a rotation would promote now, if one is provisioned.
    pub next: Option<KeyVersion>,
    /// Why a rotation to `next` would be refused now (the gate's words);
    /// none: it would go through.
    pub refusal: Option<String>,
    /// The live signers that do not hold `next`'s material (with the
    /// fingerprint the ledger knows).
    pub lacking: Vec<String>,
}

/// One live signer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignerView {
    pub name: String,
    /// The versions it holds, with their fingerprints.
    pub held: Vec<crate::event::HeldKey>,
    /// How long ago its last heartbeat came.
    pub heard_ms_ago: u64,
}

/// An alert that has been raised and not resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenAlert {
    /// The id of its `alert` event.
    pub id: crate::MsgId,
    pub alert: crate::alert::AlertRaised,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertsReply {
    pub open: Vec<OpenAlert>,
    /// The last snapshot judged (its time and ledger seq).
    pub at: Timestamp,
    pub seq: u64,
    /// The share thresholds in force, for charts to draw (none: the rule
    /// is off).
    #[serde(default)]
    pub thresholds: UsageThresholds,
}

/// The migration rules' thresholds: the new version's share of signing
/// requests must reach `new_version_usage_below`'s by its `after`, and the
/// old version's must fall under `old_version_usage_above`'s by its.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageThresholds {
    pub new_version_usage_below: Option<UsageThreshold>,
    pub old_version_usage_above: Option<UsageThreshold>,
}

/// A share (basis points) that applies from `after_ms` past the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageThreshold {
    pub after_ms: u64,
    pub threshold_bp: u32,
}

/// What an archive pass did (or, dry, would do) for one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionArchive {
    pub version: KeyVersion,
    /// Bundles moved (dry: that would move).
    pub objects: u64,
    pub bytes: u64,
    /// Batches recorded in this pass.
    pub batches: u64,
    /// Keys of planned batches found in neither place.
    pub missing: Vec<String>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveReply {
    pub versions: Vec<VersionArchive>,
}
