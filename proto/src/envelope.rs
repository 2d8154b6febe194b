//! The envelope every command and event travels in, and its id and time types.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::thread::ThreadId;

/// A message id (a UUIDv7, so ids sort by creation time). It doubles as the
/// `Nats-Msg-Id` that JetStream de-duplicates on and as the ledger's unique
/// event id, which is what makes retried appends idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MsgId(pub uuid::Uuid);

impl MsgId {
    /// A fresh id. Takes the clock and randomness, so only shells call it,
    /// never the pure core.
    pub fn generate() -> MsgId {
        MsgId(uuid::Uuid::now_v7())
    }

    /// The id of item `index` of batch `batch`: the same for the same
    /// batch and index (UUID v5), so a retried batch's items are the
    /// commands the ledger already holds. Pure.
    pub fn item(batch: MsgId, index: u32) -> MsgId {
        MsgId(uuid::Uuid::new_v5(&batch.0, &index.to_be_bytes()))
    }

    pub fn parse(s: &str) -> Result<MsgId, uuid::Error> {
        uuid::Uuid::parse_str(s).map(MsgId)
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl schemars::JsonSchema for MsgId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MsgId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "uuid"})
    }
}

/// Milliseconds since the Unix epoch. RFC 3339 text in JSON
/// (`2026-11-28T18:00:00.000Z`), a plain integer in the binary form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms)
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// Reads the wall clock: shells only.
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    pub fn saturating_add(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Parses RFC 3339 (`2026-11-28T18:00:00Z`, fractions allowed).
    pub fn parse_rfc3339(s: &str) -> Result<Timestamp, humantime::TimestampError> {
        humantime::parse_rfc3339_weak(s).map(Timestamp::from)
    }

    pub fn to_rfc3339(self) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(self.0)).to_string()
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_rfc3339())
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            Timestamp::parse_rfc3339(&s)
                .map_err(|e| D::Error::custom(format!("invalid timestamp {s:?}: {e}")))
        } else {
            u64::deserialize(d).map(Timestamp)
        }
    }
}

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "date-time"})
    }
}

/// Where a shell reads the time: the wall clock in production, a fake one in
/// tests and replays. The pure cores never hold one; they are handed times.
pub type Clock = std::sync::Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    std::sync::Arc::new(Timestamp::now)
}

/// The two channels of DESIGN.md §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Things asked of an actor.
    Command,
    /// Facts that happened.
    Event,
}

/// What every message carries besides its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<T> {
    pub id: MsgId,
    pub time: Timestamp,
    /// The actor that sent it (events) or is asked (commands).
    pub thread: ThreadId,
    pub channel: Channel,
    /// The message that caused this one (an event's command).
    #[serde(default)]
    pub causation_id: Option<MsgId>,
    /// The conversation this message belongs to (the first command's id).
    #[serde(default)]
    pub correlation_id: Option<MsgId>,
    /// [`crate::SCHEMA_VERSION`] at the sender.
    pub schema: u16,
    pub body: T,
}

impl<T> Envelope<T> {
    /// A new envelope for a body; the caller supplies id and time (the core
    /// is given them, never takes them).
    pub fn new(id: MsgId, time: Timestamp, thread: ThreadId, channel: Channel, body: T) -> Self {
        Envelope {
            id,
            time,
            thread,
            channel,
            causation_id: None,
            correlation_id: None,
            schema: crate::SCHEMA_VERSION,
            body,
        }
    }

    /// Marks this message as caused by `cause`, in `cause`'s conversation.
    pub fn caused_by<U>(self, cause: &Envelope<U>) -> Self {
        self.caused_by_id(cause.id, cause.correlation_id)
    }

    /// As [`Envelope::caused_by`], given the cause's id and correlation id:
    /// the conversation is the cause's, or starts with the cause.
    pub fn caused_by_id(mut self, cause: MsgId, correlation: Option<MsgId>) -> Self {
        self.causation_id = Some(cause);
        self.correlation_id = Some(correlation.unwrap_or(cause));
        self
    }
}
