//! `TES_LEDGER`: on a cluster, the ledger replicated by JetStream, with
//! fenced appends.
//!
//! Only ledger events go in, once each, in order, so the stream sequence of
//! ledger seq N is N. That makes every append checkable by the server: the
//! event at seq N is published with `Nats-Expected-Last-Sequence: N-1`, and
//! the stream refuses it unless it holds exactly seqs 1..N-1. Two writers
//! (one that lost its lease without knowing, and its successor) can
//! therefore never interleave: the second to append at a seq is refused,
//! and stops. Each event also names the id of the one before it
//! (`Nats-Expected-Last-Msg-Id`), so the chain is checked by content, not
//! only by position. Because both are known in advance, a whole chunk is
//! still sent before any acknowledgement is awaited.
//!
//! `TES_EVENTS` (which observers, replicas and clients follow) gets an
//! event only after this stream accepted it (the actor's outbox), so an
//! append refused here never reaches anyone.

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tes_proto::subject::{self, CONTENT_TYPE_HEADER, LEDGER_SEQ_HEADER};
use tes_proto::{ContentType, Envelope, Event, MsgId};
use tokio::sync::mpsc;

use crate::jetstream::{follow_raw, open_stream, stream_config, transport, Followed, Raw};
use crate::BusError;

/// Why an append did not (all) happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("{} holds another event at seq {seq} ({theirs}) than this writer's ({ours}): another writer has appended; this one must stop writing", subject::LEDGER_STREAM)]
    Fenced {
        seq: u64,
        ours: MsgId,
        theirs: String,
    },
}

#[derive(Clone)]
pub struct LedgerStream {
    js: jetstream::Context,
    /// Set at the start and after any append that did not end cleanly: the
    /// stream may hold some of what is about to be sent (an ack lost, a
    /// writer restarted), so the next append looks first instead of
    /// resending (a resend of a stored event with its expectations is not
    /// reliably answered on a cluster).
    unsure: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for LedgerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerStream(TES_LEDGER)")
    }
}

/// How long an append's acknowledgement, or a look at what the stream
/// holds, is waited for before the writer tries again. Short: when the
/// stream's leader was on a server that died, what was asked of it is never
/// answered, and the election of the next one takes a few seconds; with the
/// client's 5 s default an append waited for its ack and then for two
/// look-ups (15 s with one server of three killed: the fault harness).
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Empty fetches in a row, of what the stream's state says it holds,
/// before a read gives up (and is tried again by its caller).
const EMPTY_FETCHES: u32 = 5;

async fn stream_last(js: &jetstream::Context) -> Result<u64, BusError> {
    let info =
        |e: &dyn std::fmt::Display| transport(format!("stream {}: {e}", subject::LEDGER_STREAM));
    let mut stream = js
        .get_stream(subject::LEDGER_STREAM)
        .await
        .map_err(|e| info(&e))?;
    Ok(stream
        .info()
        .await
        .map_err(|e| info(&e))?
        .state
        .last_sequence)
}

/// The stream holds nothing at `seq` (yet): worth trying again, never a
/// fence — only an event of another writer at our seq is.
fn not_there_yet(seq: u64) -> BusError {
    transport(format!(
        "{} holds nothing at seq {seq} yet (an earlier publish was lost on the way); sending again from the gap",
        subject::LEDGER_STREAM
    ))
}

impl LedgerStream {
    /// Opens `TES_LEDGER`, or creates it (as every tes stream: on files,
    /// de-duplicated, never deleted from or purged; three copies on a
    /// cluster).
    pub async fn ensure(client: async_nats::Client) -> Result<LedgerStream, BusError> {
        let mut js = open_stream(
            client,
            stream_config(subject::LEDGER_STREAM, vec![subject::ledger_append()]),
        )
        .await?;
        js.set_timeout(REQUEST_TIMEOUT);
        Ok(LedgerStream {
            js,
            unsure: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        })
    }

    /// Appends `events` (consecutive ledger seqs, in order), each fenced by
    /// the seq and the id of the event before it (`previous`: the id of the
    /// event before the first; `None` only for seq 1); all are sent, then
    /// the acknowledgements awaited.
    /// Returns how many, from the front, the stream holds now, and why it
    /// stopped there. An event refused for its expected sequence that the
    /// stream already holds at its seq (a resend after a lost ack, past
    /// the de-duplication window) counts as held; another event there is
    /// [`AppendError::Fenced`].
    pub async fn append(
        &self,
        ct: ContentType,
        previous: Option<MsgId>,
        events: &[(u64, Envelope<Event>)],
    ) -> (usize, Option<AppendError>) {
        use std::sync::atomic::Ordering;
        let mut held = 0;
        if self.unsure.load(Ordering::Relaxed) {
            match self.already_held(events).await {
                Ok(n) => held = n,
                Err(e) => return (0, Some(e)),
            }
            self.unsure.store(false, Ordering::Relaxed);
        }
        let previous = match held {
            0 => previous,
            n => Some(events[n - 1].1.id),
        };
        let (sent, error) = self.send(ct, previous, &events[held..]).await;
        if error.is_some() {
            self.unsure.store(true, Ordering::Relaxed);
        }
        (held + sent, error)
    }

    /// How many of `events`, from the front, the stream holds already
    /// (each checked by id: another event at one of their seqs is
    /// [`AppendError::Fenced`]).
    async fn already_held(&self, events: &[(u64, Envelope<Event>)]) -> Result<usize, AppendError> {
        let last = self.last_seq().await?;
        let ours: Vec<_> = events.iter().take_while(|(seq, _)| *seq <= last).collect();
        let (Some((first, _)), Some((upto, _))) = (ours.first(), ours.last()) else {
            return Ok(0);
        };
        // One read for the whole overlap (a writer that took over may
        // resend a chunk the stream holds: one consumer, not one each).
        let theirs = self.ids(*first, *upto).await?;
        let mut held = 0;
        for (seq, event) in ours {
            match theirs.get(held) {
                Some((at, id)) if at == seq && *id == event.id.to_string() => held += 1,
                Some((at, theirs)) if at == seq => {
                    return Err(AppendError::Fenced {
                        seq: *seq,
                        ours: event.id,
                        theirs: theirs.clone(),
                    })
                }
                _ => return Err(not_there_yet(*seq).into()),
            }
        }
        Ok(held)
    }

    /// The ids the stream holds at seqs `from..=to`, each with its seq.
    async fn ids(&self, from: u64, to: u64) -> Result<Vec<(u64, String)>, BusError> {
        Ok(self
            .read(from, to)
            .await?
            .into_iter()
            .filter_map(|m| {
                let seq = m.info().ok()?.stream_sequence;
                let id = m
                    .headers
                    .as_ref()?
                    .get(async_nats::header::NATS_MESSAGE_ID)?;
                Some((seq, id.as_str().to_string()))
            })
            .collect())
    }

    async fn send(
        &self,
        ct: ContentType,
        previous: Option<MsgId>,
        events: &[(u64, Envelope<Event>)],
    ) -> (usize, Option<AppendError>) {
        let mut acks = Vec::with_capacity(events.len());
        let mut previous = previous.map(|id| id.to_string());
        for (seq, event) in events {
            let payload = match ct.encode(event) {
                Ok(p) => p,
                Err(e) => return (0, Some(transport(e).into())),
            };
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE_HEADER, ct.mime());
            headers.insert(LEDGER_SEQ_HEADER, seq.to_string().as_str());
            let mut message = jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .headers(headers)
                .message_id(event.id.to_string())
                .expected_last_sequence(seq - 1);
            // The position alone is not enough: a stale writer's event N+1
            // would pass once its successor has stored exactly N. Chained
            // by id it cannot (its N is not the stream's N).
            if let Some(previous) = previous.replace(event.id.to_string()) {
                message = message.expected_last_message_id(previous);
            }
            match self
                .js
                .send_publish(subject::ledger_append(), message)
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    let error = transport(e).into();
                    return (self.confirmed(events, acks).await.0, Some(error));
                }
            }
        }
        self.confirmed(events, acks).await
    }

    async fn confirmed(
        &self,
        events: &[(u64, Envelope<Event>)],
        acks: Vec<jetstream::context::PublishAckFuture>,
    ) -> (usize, Option<AppendError>) {
        let mut held = 0;
        for ((seq, event), ack) in events.iter().zip(acks) {
            match ack.await {
                Ok(_) => held += 1,
                Err(e)
                    if matches!(
                        e.kind(),
                        PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId
                    ) =>
                {
                    match self.id_at(*seq).await {
                        Ok(Some(id)) if id == event.id.to_string() => held += 1,
                        Ok(Some(theirs)) => {
                            return (
                                held,
                                Some(AppendError::Fenced {
                                    seq: *seq,
                                    ours: event.id,
                                    theirs,
                                }),
                            )
                        }
                        // Refused for its position with nothing stored
                        // there: an event before it was lost on the way
                        // (a leader change), not taken by another writer.
                        // The next append looks and sends from the gap.
                        Ok(None) => return (held, Some(not_there_yet(*seq).into())),
                        Err(e) => return (held, Some(e.into())),
                    }
                }
                Err(e) => return (held, Some(transport(e).into())),
            }
        }
        (held, None)
    }

    /// The last ledger seq the stream holds (0: none).
    pub async fn last_seq(&self) -> Result<u64, BusError> {
        stream_last(&self.js).await
    }

    /// The events the stream holds from ledger seq `from` to `to`
    /// (inclusive), in order, with the ids they were published under.
    pub async fn range(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, String, Envelope<Event>)>, BusError> {
        let mut out = Vec::new();
        for m in self.read(from, to).await? {
            let seq = m.info().map(|i| i.stream_sequence).map_err(transport)?;
            let header = |name| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_string())
            };
            let event = ContentType::from_header(header(CONTENT_TYPE_HEADER).as_deref())
                .and_then(|ct| ct.decode::<Envelope<Event>>(&m.payload))
                .map_err(|e| {
                    transport(format!(
                        "{} seq {seq} does not decode: {e}",
                        subject::LEDGER_STREAM
                    ))
                })?;
            let id = header(subject::MSG_ID_HEADER).unwrap_or_default();
            out.push((seq, id, event));
        }
        Ok(out)
    }

    /// The messages at stream sequences `from..=to` (fewer only if the
    /// stream's state says it ends first; an error if it holds them but
    /// does not deliver them), read through a short-lived consumer: on a cluster the
    /// message-get API can answer "temporarily unavailable" from a member
    /// that has not heard of the group's leader yet, while consumers (and
    /// publishes) work.
    async fn read(&self, from: u64, to: u64) -> Result<Vec<jetstream::Message>, BusError> {
        let unreadable = |e: &dyn std::fmt::Display| {
            transport(format!("reading {}: {e}", subject::LEDGER_STREAM))
        };
        if to < from {
            return Ok(Vec::new());
        }
        let stream = self
            .js
            .get_stream(subject::LEDGER_STREAM)
            .await
            .map_err(|e| unreadable(&e))?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ack_policy: jetstream::consumer::AckPolicy::None,
                inactive_threshold: std::time::Duration::from_secs(10),
                ..Default::default()
            })
            .await
            .map_err(|e| unreadable(&e))?;
        let mut out: Vec<jetstream::Message> = Vec::new();
        let mut next = from;
        let mut empty_fetches = 0;
        while next <= to {
            let want = (to - next + 1).min(256) as usize;
            let mut batch = consumer
                .fetch()
                .max_messages(want)
                .expires(std::time::Duration::from_secs(1))
                .messages()
                .await
                .map_err(|e| unreadable(&e))?;
            let before = out.len();
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| unreadable(&e))?;
                let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                if seq > to {
                    break;
                }
                next = seq + 1;
                out.push(m);
            }
            if out.len() > before {
                empty_fetches = 0;
                continue;
            }
            // Nothing came. The stream may end here — or its leader (just
            // restarted, or slow) did not deliver in time: an empty fetch is
            // not "nothing there" until the stream's own state says so.
            let last = stream_last(&self.js).await?;
            if last < next {
                break;
            }
            empty_fetches += 1;
            if empty_fetches >= EMPTY_FETCHES {
                return Err(transport(format!(
                    "{} holds seqs up to {last} but did not deliver seq {next} in {EMPTY_FETCHES} fetches of 1 s: not known yet, try again",
                    subject::LEDGER_STREAM
                )));
            }
        }
        Ok(out)
    }

    /// The id of the event the stream holds at ledger seq `seq`, if any.
    /// Retried for a few seconds while the stream answers "temporarily
    /// unavailable" (it is electing a leader).
    pub async fn id_at(&self, seq: u64) -> Result<Option<String>, BusError> {
        let mut tries = 0;
        loop {
            match self.try_id_at(seq).await {
                Err(e) if tries < 20 => {
                    tries += 1;
                    tracing::debug!(error = %e, seq, "reading TES_LEDGER; trying again");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_id_at(&self, seq: u64) -> Result<Option<String>, BusError> {
        Ok(self
            .ids(seq, seq)
            .await?
            .into_iter()
            .find(|(at, _)| *at == seq)
            .map(|(_, id)| id))
    }

    /// Follows the ledger from seq `from`: every event with its seq, in
    /// order, [`Followed::CaughtUp`] once what the stream held at the start
    /// is through, then new ones as they are appended.
    pub async fn follow_from(&self, from: u64) -> Result<mpsc::Receiver<Followed>, BusError> {
        let stream = self
            .js
            .get_stream(subject::LEDGER_STREAM)
            .await
            .map_err(|e| transport(format!("stream {}: {e}", subject::LEDGER_STREAM)))?;
        let mut raw = follow_raw(stream, Vec::new(), from).await?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(async move {
            while let Some(next) = raw.recv().await {
                let m = match next {
                    Raw::CaughtUp => {
                        if tx.send(Followed::CaughtUp).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Raw::Stored(m) => m,
                };
                let ct = ContentType::from_header(m.header(CONTENT_TYPE_HEADER));
                match ct.and_then(|ct| ct.decode::<Envelope<Event>>(&m.payload)) {
                    Ok(event) => {
                        let followed = Followed::Event {
                            ledger_seq: Some(m.seq),
                            event: Box::new(event),
                        };
                        if tx.send(followed).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // A hole in the ledger: the follower sees the gap
                        // and stops (it never skips a seq).
                        tracing::error!(error = %e, seq = m.seq, "a ledger event in {} does not decode", subject::LEDGER_STREAM);
                    }
                }
            }
        });
        Ok(rx)
    }
}
