//! TES messages on the bus: typed commands with their replies, events with
//! their envelopes, in either wire form (DESIGN.md §2).

use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tes_proto::codec::{decode_incoming, Incoming};
use tes_proto::subject::{CONTENT_TYPE_HEADER, LEDGER_SEQ_HEADER, MSG_ID_HEADER};
use tes_proto::{
    Channel, CodecError, CommandBody, ContentType, Envelope, ErrorReply, Event, MsgId, Reply,
    ThreadId, Timestamp,
};

use crate::{Bus, BusError, Message};

/// How long a client waits for an actor by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The actor answered with a refusal.
    #[error("{0}")]
    Refused(ErrorReply),
    #[error("the reply could not be decoded: {0}")]
    BadReply(#[from] CodecError),
}

/// A message carrying `value` in wire form `ct`, with the TES headers.
pub fn message<T: Serialize>(
    subject: String,
    ct: ContentType,
    id: Option<MsgId>,
    value: &T,
) -> Result<Message, CodecError> {
    let mut m = Message::new(subject, Bytes::from(ct.encode(value)?))
        .with_header(CONTENT_TYPE_HEADER, ct.mime());
    if let Some(id) = id {
        m = m.with_header(MSG_ID_HEADER, id.to_string());
    }
    Ok(m)
}

/// Sends command `body` to `thread` and waits for its typed reply.
pub async fn call<C: CommandBody>(
    bus: &dyn Bus,
    thread: ThreadId,
    ct: ContentType,
    envelope: &Envelope<C>,
    timeout: Duration,
) -> Result<C::Reply, CallError> {
    let request = message(C::subject(thread), ct, Some(envelope.id), envelope)?;
    let reply = bus.request(request, timeout).await?;
    let ct = ContentType::from_header(reply.header(CONTENT_TYPE_HEADER))?;
    let reply: Reply<C::Reply> = ct.decode(&reply.payload)?;
    reply.into_result().map_err(CallError::Refused)
}

/// A fresh command envelope (a client's shell: takes the clock and an id).
pub fn command<C>(thread: ThreadId, body: C) -> Envelope<C> {
    Envelope::new(
        MsgId::generate(),
        Timestamp::now(),
        thread,
        Channel::Command,
        body,
    )
}

/// Takes a request that must be command `C` (an actor with one verb, such
/// as a query): refuses another verb or an undecodable body (a `rejected`
/// event and an error reply) and returns `None`; else the decoded command.
pub async fn accept<C: CommandBody>(
    bus: &dyn Bus,
    thread: ThreadId,
    message: &Message,
) -> Option<(ContentType, Envelope<C>)> {
    let verb = tes_proto::subject::parse(&message.subject).map(|p| p.last);
    let error = if verb != Some(C::VERB) {
        ErrorReply::new(
            tes_proto::ErrorCode::UnknownVerb,
            format!(
                "{} ({thread}) takes {}, not {:?}",
                thread.name(),
                C::VERB,
                message.subject
            ),
        )
    } else {
        match decode_command::<C>(message, thread) {
            Ok(decoded) => return Some(decoded),
            Err(e) => ErrorReply::new(
                tes_proto::ErrorCode::Malformed,
                format!("{} command refused: {e}", C::VERB),
            ),
        }
    };
    refuse::<C::Reply>(bus, thread, message, ContentType::Json, error).await;
    None
}

/// Decodes a command as an actor receives it. A bare JSON body (from `nats
/// pub` or another language) gets an envelope: its id from `Nats-Msg-Id`
/// when present, so a retried publish is still recognised.
pub fn decode_command<C: CommandBody>(
    message: &Message,
    thread: ThreadId,
) -> Result<(ContentType, Envelope<C>), CodecError> {
    let ct = ContentType::from_header(message.header(CONTENT_TYPE_HEADER))?;
    let envelope = match decode_incoming::<C>(ct, &message.payload)? {
        Incoming::Envelope(e) => e,
        Incoming::Bare(body) => {
            let id = message
                .header(MSG_ID_HEADER)
                .and_then(|h| MsgId::parse(h).ok())
                .unwrap_or_else(MsgId::generate);
            Envelope::new(id, Timestamp::now(), thread, Channel::Command, body)
        }
    };
    Ok((ct, envelope))
}

/// Publishes an event on `tes.evt.<thread>.<kind>`.
pub async fn publish_event(
    bus: &dyn Bus,
    ct: ContentType,
    event: &Envelope<Event>,
) -> Result<(), BusError> {
    publish_on_its_subject(bus, ct, event, None).await
}

/// Publishes a committed ledger event, its seq in the `Tes-Seq` header.
pub async fn publish_ledgered(
    bus: &dyn Bus,
    ct: ContentType,
    seq: u64,
    event: &Envelope<Event>,
) -> Result<(), BusError> {
    publish_on_its_subject(bus, ct, event, Some(seq)).await
}

/// An event with no subscriber is not encoded at all: the bus would drop
/// it unread (in one process, with no `tes watch` and no console open,
/// that is every signature's event).
async fn publish_on_its_subject(
    bus: &dyn Bus,
    ct: ContentType,
    event: &Envelope<Event>,
    seq: Option<u64>,
) -> Result<(), BusError> {
    let subject = tes_proto::subject::event(event.thread, event.body.kind());
    if !bus.has_interest(&subject) {
        return Ok(());
    }
    let mut m = message(subject, ct, Some(event.id), event)
        .map_err(|e| BusError::Transport(e.to_string()))?;
    if let Some(seq) = seq {
        m = m.with_header(LEDGER_SEQ_HEADER, seq.to_string());
    }
    bus.publish(m).await
}

/// The ledger seq a published event carries, if it is a ledger event.
pub fn ledger_seq(message: &Message) -> Option<u64> {
    message.header(LEDGER_SEQ_HEADER)?.parse().ok()
}

/// Decodes an event as a subscriber receives it.
pub fn decode_event(message: &Message) -> Result<Envelope<Event>, CodecError> {
    ContentType::from_header(message.header(CONTENT_TYPE_HEADER))?.decode(&message.payload)
}

/// Sends a typed reply (if the message asked for one), in the requester's form.
pub async fn respond<T: Serialize>(
    bus: &dyn Bus,
    request: &Message,
    ct: ContentType,
    reply: &Reply<T>,
) -> Result<(), BusError> {
    let Some(to) = request.reply.clone() else {
        return Ok(());
    };
    let m = message(to, ct, None, reply).map_err(|e| BusError::Transport(e.to_string()))?;
    bus.publish(m).await
}

/// Tells everyone watching that something arriving on `subject` was refused
/// by `thread` (a `rejected` event). It changed nothing.
pub async fn publish_rejected(bus: &dyn Bus, thread: ThreadId, subject: &str, error: &ErrorReply) {
    tracing::info!(%subject, code = ?error.code, reason = %error.message, "refused");
    let rejected = Envelope::new(
        MsgId::generate(),
        Timestamp::now(),
        thread,
        Channel::Event,
        Event::Rejected(tes_proto::event::Rejected {
            subject: subject.to_string(),
            code: error.code,
            reason: error.message.clone(),
        }),
    );
    // Always JSON, whatever the refused request spoke: one subject, one
    // encoding (refusals are few and read by people and outside tools).
    if let Err(e) = publish_event(bus, ContentType::Json, &rejected).await {
        tracing::warn!(error = %e, "could not publish a rejected event");
    }
}

/// Refuses a command: a `rejected` event for everyone watching, and the
/// error as the reply to the requester.
pub async fn refuse<T: Serialize>(
    bus: &dyn Bus,
    thread: ThreadId,
    request: &Message,
    ct: ContentType,
    error: ErrorReply,
) {
    publish_rejected(bus, thread, &request.subject, &error).await;
    if let Err(e) = respond(bus, request, ct, &Reply::<T>::Err(error)).await {
        tracing::warn!(error = %e, "could not send an error reply");
    }
}
