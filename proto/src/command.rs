//! One struct per command, as it travels on `tes.cmd.<thread>.<verb>`.
//!
//! Every field has a default where one makes sense, so the smallest JSON
//! body works from any NATS client: `nats pub tes.cmd.0x1001.rotate '{}'`.
//! Multi-word fields are camelCase (the seed's style); the snake_case
//! spelling is accepted too (`requested_by`).

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::event::Event;
use crate::key_version::KeyVersion;
use crate::metrics::MetricsSnapshot;
use crate::reply::{
    AlertsReply, AuditReply, BumpReply, GraceReply, HistoryReply, RecordReply, Reply, RevokeReply,
    RotationReply, SignBatchReply, SignReply, SignersReply, StatusReply, VerifyBatchReply,
    VerifyReply,
};
use crate::subject::verb;
use crate::thread::ThreadId;

/// What a command body declares about itself: its verb and the body of a
/// successful reply. The thread is chosen by the sender: `rotate` goes to the
/// Supervisor (0x1001) from people and to Version Management (0x6001) only
/// from the Supervisor.
pub trait CommandBody:
    Serialize + DeserializeOwned + JsonSchema + Clone + Send + Sync + 'static
{
    const VERB: &'static str;
    type Reply: Serialize + DeserializeOwned + JsonSchema + Clone + Send + Sync + 'static;

    fn subject(thread: ThreadId) -> String {
        crate::subject::command(thread, Self::VERB)
    }
}

fn default_requester() -> String {
    "unknown".to_string()
}

/// Move the active key to the next provisioned version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Rotate {
    /// Who asked (an operator name, `kv`, `admin-ui`); recorded in the ledger.
    #[serde(alias = "requested_by")]
    pub requested_by: String,
    /// Skip the propagation gate (recorded as forced).
    pub force: bool,
    /// A specific target version; by default the next one after the active.
    pub to: Option<KeyVersion>,
}

impl Default for Rotate {
    fn default() -> Self {
        Rotate {
            requested_by: default_requester(),
            force: false,
            to: None,
        }
    }
}

impl CommandBody for Rotate {
    const VERB: &'static str = verb::ROTATE;
    type Reply = RotationReply;
}

/// Move the active key back to the previous version while it still verifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Rollback {
    #[serde(alias = "requested_by")]
    pub requested_by: String,
}

impl Default for Rollback {
    fn default() -> Self {
        Rollback {
            requested_by: default_requester(),
        }
    }
}

impl CommandBody for Rollback {
    const VERB: &'static str = verb::ROLLBACK;
    type Reply = RotationReply;
}

/// Sign an exact payload string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sign {
    /// The exact bytes (UTF-8) to sign.
    pub payload: String,
    /// Pin a version (the seed's `X-Key-Version`); default: the active one.
    #[serde(default, alias = "key_version")]
    pub key_version: Option<KeyVersion>,
}

impl CommandBody for Sign {
    const VERB: &'static str = verb::SIGN;
    type Reply = SignReply;
}

/// Check a signature against a version in the verifying set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Verify {
    pub payload: String,
    /// Lowercase or uppercase hex, 64 characters.
    pub signature: String,
    #[serde(alias = "key_version")]
    pub key_version: KeyVersion,
}

impl CommandBody for Verify {
    const VERB: &'static str = verb::VERIFY;
    type Reply = VerifyReply;
}

/// The most items one batch may hold: a batch of 1000 signatures is about
/// 0.3 MB of reply, well inside NATS's default 1 MB message limit.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// Many payloads signed in one request (Vault Transit's `batch_input`).
/// Each item is a [`Sign`] of its own: its own signature, its own
/// `signature_generated` audit record (caused by the item's id,
/// [`crate::MsgId::item`] of the batch's id), its own error if it fails;
/// all of them durable before the reply. A retried batch (same envelope
/// id) gets the same results back.
///
/// Its own verb rather than a second shape on `sign`: postcard bodies do
/// not say which shape they are, and a permission can allow one without
/// the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignBatch {
    /// 1 to [`MAX_BATCH_ITEMS`] items, answered in this order.
    pub items: Vec<Sign>,
}

impl CommandBody for SignBatch {
    const VERB: &'static str = verb::SIGN_BATCH;
    type Reply = SignBatchReply;
}

/// A command made of items that are commands of their own
/// ([`SignBatch`], [`VerifyBatch`]): what every side (actor, replica,
/// gateway, CLI) needs to take one apart and answer it.
pub trait BatchCommand: CommandBody {
    type Item: CommandBody;
    fn items(&self) -> &[Self::Item];
    fn into_items(self) -> Vec<Self::Item>;
    /// The reply: one result per item, in order.
    fn reply(results: Vec<Reply<<Self::Item as CommandBody>::Reply>>) -> Self::Reply;

    /// Why this batch is refused as a whole, if it is: empty or too large.
    fn refusal(&self) -> Option<String> {
        let n = self.items().len();
        (n == 0 || n > MAX_BATCH_ITEMS).then(|| {
            format!(
                "{} refused: a batch holds 1 to {MAX_BATCH_ITEMS} items, this one {n}",
                Self::VERB
            )
        })
    }
}

impl BatchCommand for SignBatch {
    type Item = Sign;
    fn items(&self) -> &[Sign] {
        &self.items
    }
    fn into_items(self) -> Vec<Sign> {
        self.items
    }
    fn reply(results: Vec<Reply<SignReply>>) -> SignBatchReply {
        SignBatchReply { results }
    }
}

/// Many signatures checked in one request; each item is a [`Verify`] of
/// its own, recorded as its own `signature_verified` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyBatch {
    /// 1 to [`MAX_BATCH_ITEMS`] items, answered in this order.
    pub items: Vec<Verify>,
}

impl CommandBody for VerifyBatch {
    const VERB: &'static str = verb::VERIFY_BATCH;
    type Reply = VerifyBatchReply;
}

impl BatchCommand for VerifyBatch {
    type Item = Verify;
    fn items(&self) -> &[Verify] {
        &self.items
    }
    fn into_items(self) -> Vec<Verify> {
        self.items
    }
    fn reply(results: Vec<Reply<VerifyReply>>) -> VerifyBatchReply {
        VerifyBatchReply { results }
    }
}

/// A semver bump of a versioned entity (the seed's `/api/dev/bump-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Patch,
    Minor,
    Major,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Patch => "patch",
            Scope::Minor => "minor",
            Scope::Major => "major",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "patch" => Ok(Scope::Patch),
            "minor" => Ok(Scope::Minor),
            "major" => Ok(Scope::Major),
            other => Err(format!(
                "unknown scope {other:?}: expected patch, minor or major"
            )),
        }
    }
}

/// The entity bumped when a request names none.
pub const DEFAULT_ENTITY: &str = "tes";

fn default_entity() -> String {
    DEFAULT_ENTITY.to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bump {
    #[serde(default = "default_entity")]
    pub entity: String,
    pub scope: Scope,
    #[serde(default, alias = "key_version")]
    pub key_version: Option<KeyVersion>,
}

impl CommandBody for Bump {
    const VERB: &'static str = verb::BUMP;
    type Reply = BumpReply;
}

/// Stop trusting a key version now: from the `key_revoked` event on it
/// neither signs nor verifies, on every signer. Revoking the active version
/// rotates to the next provisioned one in the same transaction; with none,
/// it is refused unless `force` (then nothing signs until a new version is
/// provisioned and rotated to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Revoke {
    pub version: KeyVersion,
    /// Why (required): recorded in the ledger and shown by every verifier
    /// that refuses the version.
    pub reason: String,
    #[serde(default = "default_requester", alias = "requested_by")]
    pub requested_by: String,
    /// Revoke the active version even when no version can take over.
    #[serde(default)]
    pub force: bool,
}

impl CommandBody for Revoke {
    const VERB: &'static str = verb::REVOKE;
    type Reply = RevokeReply;
}

/// Change a verifying version's grace window: exactly one of `until` (a new
/// verify-until), `extendSecs` (move it later) or `endNow` (retire it now).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grace {
    pub version: KeyVersion,
    #[serde(default)]
    pub until: Option<crate::envelope::Timestamp>,
    #[serde(default, alias = "extend_secs")]
    pub extend_secs: Option<u64>,
    #[serde(default, alias = "end_now")]
    pub end_now: bool,
    #[serde(default = "default_requester", alias = "requested_by")]
    pub requested_by: String,
}

impl CommandBody for Grace {
    const VERB: &'static str = verb::GRACE;
    type Reply = GraceReply;
}

/// Ask an actor for its current view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// Also say whether this command id was already applied (the
    /// Supervisor asks before gating a retried command: a retry of an
    /// applied command gets its original outcome, not the gate's verdict
    /// on the state it left behind).
    #[serde(default)]
    pub applied: Option<crate::envelope::MsgId>,
}

impl CommandBody for Status {
    const VERB: &'static str = verb::STATUS;
    type Reply = StatusReply;
}

/// The newest events of Version Management's ledger, newest last: the
/// admin page's feed on load. Read-only (a reader connection of its own; the
/// engine is not asked). With `kinds` or `thread`, only matching events,
/// looked for among at most [`HISTORY_SCAN`] rows below `before`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct History {
    /// At most this many events (1 ..= [`MAX_HISTORY`]).
    pub limit: u32,
    /// Only events with a seq below this one (paging back); none: from the
    /// head.
    pub before: Option<u64>,
    /// Only these kinds (`key_rotate`, …); empty: every kind.
    pub kinds: Vec<String>,
    /// Only events of this actor.
    pub thread: Option<ThreadId>,
}

impl Default for History {
    fn default() -> Self {
        History {
            limit: 100,
            before: None,
            kinds: Vec::new(),
            thread: None,
        }
    }
}

/// The most events one `history` reply holds.
pub const MAX_HISTORY: u32 = 1000;
/// The most rows one filtered `history` request looks through.
pub const HISTORY_SCAN: u64 = 200_000;

impl CommandBody for History {
    const VERB: &'static str = verb::HISTORY;
    type Reply = HistoryReply;
}

/// A signer replica's audit events for the ledger writer (Version
/// Management's writer only). Appended as they are — same ids, so a retry is
/// stored once — and the reply names their seqs once they are durable. Only
/// `signature_generated`, `signature_verified` and `key_fallback` may be
/// recorded this way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub events: Vec<Envelope<Event>>,
}

impl CommandBody for Record {
    const VERB: &'static str = verb::RECORD;
    type Reply = RecordReply;
}

/// Ask Version Management (0x6001) for the audit view of its ledger: the
/// newest signed checkpoint and what each witness holds; with `verify`,
/// also walk the whole chain and compare it with every checkpoint the
/// witnesses hold (what `tes audit verify` does). Read-only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Audit {
    pub verify: bool,
}

impl CommandBody for Audit {
    const VERB: &'static str = verb::AUDIT;
    type Reply = AuditReply;
}

/// Ask the Supervisor (0x1001) who signs now and whether a rotation to
/// the next version would pass its gate. Read-only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignersQuery {}

impl CommandBody for SignersQuery {
    const VERB: &'static str = verb::SIGNERS;
    type Reply = SignersReply;
}

/// Ask Monitoring (0x5000) for its current snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {}

impl CommandBody for MetricsQuery {
    const VERB: &'static str = verb::METRICS;
    type Reply = MetricsSnapshot;
}

/// Ask Alert (0x5003) for the alerts that are open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {}

impl CommandBody for AlertsQuery {
    const VERB: &'static str = verb::ALERTS;
    type Reply = AlertsReply;
}

/// Alert (0x5003) hands an `alert` or `resolved` event to the Supervisor
/// (0x1001), which has Version Management record it in the ledger; Version
/// Management then publishes it on `tes.evt.0x5003.<kind>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertNotice {
    pub event: Envelope<Event>,
}

impl CommandBody for AlertNotice {
    const VERB: &'static str = verb::ALERT;
    type Reply = RecordReply;
}

/// Run (or, with `dry_run`, preview) an archive pass: the bundles of
/// `version`, or of every version that left the verifying set, move from
/// `bundle/v<N>/` to `archive/v<N>/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Archive {
    #[serde(default)]
    pub version: Option<KeyVersion>,
    #[serde(default)]
    pub dry_run: bool,
}

impl CommandBody for Archive {
    const VERB: &'static str = verb::ARCHIVE;
    type Reply = crate::reply::ArchiveReply;
}
