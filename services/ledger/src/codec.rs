//! Events to ledger payloads and back.
//!
//! The payload column holds the event body in the binary form (postcard) of
//! the schema version in the `schema` column. Rows are never rewritten: when
//! a body changes shape, [`tes_proto::SCHEMA_VERSION`] goes up, the old
//! shape's type moves into a module here (`v1`, …), and [`decode_event`]
//! upcasts old rows to the current type on read. The fixture ledgers under
//! `tests/fixtures/` hold rows of every schema version ever written, and the
//! tests replay them.

use tes_proto::{Channel, Envelope, Event, KeyVersion, MsgId, ThreadId, Timestamp};

use crate::DecodeError;

/// An event laid out as a row, before it has a seq and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub id: [u8; 16],
    pub ts: u64,
    pub thread: ThreadId,
    pub kind: &'static str,
    pub key_version: Option<u32>,
    pub causation_id: Option<[u8; 16]>,
    pub correlation_id: Option<[u8; 16]>,
    pub schema: u16,
    pub payload: Vec<u8>,
}

pub fn encode(event: &Envelope<Event>) -> Draft {
    Draft {
        id: *event.id.0.as_bytes(),
        ts: event.time.as_millis(),
        thread: event.thread,
        kind: event.body.kind(),
        key_version: event.body.key_version().map(KeyVersion::get),
        causation_id: event.causation_id.map(|m| *m.0.as_bytes()),
        correlation_id: event.correlation_id.map(|m| *m.0.as_bytes()),
        // Rows are always written in the current schema.
        schema: tes_proto::SCHEMA_VERSION,
        payload: postcard::to_stdvec(&event.body).expect("events always serialize"),
    }
}

/// Decodes a payload of any schema version this build knows.
pub fn decode_event(schema: u16, kind: &str, payload: &[u8]) -> Result<Event, DecodeError> {
    let event = match schema {
        1 => postcard::from_bytes::<Event>(payload).map_err(|e| {
            if tes_proto::event::kind::ALL.contains(&kind) {
                DecodeError::BadPayload {
                    kind: kind.to_string(),
                    schema,
                    detail: e.to_string(),
                }
            } else {
                DecodeError::UnknownKind(kind.to_string())
            }
        })?,
        other => return Err(DecodeError::UnknownSchema(other)),
    };
    if event.kind() != kind {
        return Err(DecodeError::KindMismatch {
            column: kind.to_string(),
            payload: event.kind().to_string(),
        });
    }
    Ok(event)
}

/// Rebuilds the envelope of a stored row.
#[allow(clippy::too_many_arguments)]
pub fn decode_row(
    id: &str,
    ts: u64,
    thread: &str,
    kind: &str,
    causation_id: Option<&str>,
    correlation_id: Option<&str>,
    schema: u16,
    payload: &[u8],
) -> Result<Envelope<Event>, DecodeError> {
    let parse_id = |field: &'static str, s: &str| {
        MsgId::parse(s).map_err(|e| DecodeError::BadField {
            field,
            detail: e.to_string(),
        })
    };
    let thread: ThreadId = thread
        .parse()
        .map_err(|_| DecodeError::UnknownThread(thread.to_string()))?;
    let body = decode_event(schema, kind, payload)?;
    Ok(Envelope {
        id: parse_id("id", id)?,
        time: Timestamp::from_millis(ts),
        thread,
        channel: Channel::Event,
        causation_id: causation_id
            .map(|s| parse_id("causation_id", s))
            .transpose()?,
        correlation_id: correlation_id
            .map(|s| parse_id("correlation_id", s))
            .transpose()?,
        schema: tes_proto::SCHEMA_VERSION,
        body,
    })
}
