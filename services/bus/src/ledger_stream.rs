//! `TES_LEDGER`: on a cluster, the ledger replicated by JetStream, with
//! fenced appends.
//!
//! Only ledger events go in, once each, in order, so the stream sequence of
//! ledger seq N is N. That makes every append checkable by the server: the
//! event at seq N is published with `Nats-Expected-Last-Sequence: N-1`, and
//! the stream refuses it unless it holds exactly seqs 1..N-1. Two writers
//! (one that lost its lease without knowing, and its successor) can
//! therefore never interleave: the second to append at a seq is refused,
//! and stops. Because the expected value is known in advance, a whole
//! chunk is still sent before any acknowledgement is awaited.
//!
//! `TES_EVENTS` (which observers, replicas and clients follow) gets an
//! event only after this stream accepted it (the actor's outbox), so an
//! append refused here never reaches anyone.

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tes_proto::subject::{self, CONTENT_TYPE_HEADER, LEDGER_SEQ_HEADER};
use tes_proto::{ContentType, Envelope, Event, MsgId};
use tokio::sync::mpsc;

use crate::jetstream::{ensure_stream, replicas, transport, Followed};
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
}

impl std::fmt::Debug for LedgerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LedgerStream(TES_LEDGER)")
    }
}

impl LedgerStream {
    /// Opens `TES_LEDGER`, or creates it (as every tes stream: on files,
    /// de-duplicated, never deleted from or purged; three copies on a
    /// cluster).
    pub async fn ensure(client: async_nats::Client) -> Result<LedgerStream, BusError> {
        let copies = replicas(&client);
        let js = jetstream::new(client);
        ensure_stream(
            &js,
            copies,
            stream::Config {
                name: subject::LEDGER_STREAM.to_string(),
                subjects: vec![subject::ledger_append()],
                ..Default::default()
            },
        )
        .await?;
        Ok(LedgerStream { js })
    }

    /// Appends `events` (consecutive ledger seqs, in order), each fenced by
    /// the seq before it; all are sent, then the acknowledgements awaited.
    /// Returns how many, from the front, the stream holds now, and why it
    /// stopped there. An event refused for its expected sequence that the
    /// stream already holds at its seq (a resend after a lost ack, past
    /// the de-duplication window) counts as held; another event there is
    /// [`AppendError::Fenced`].
    pub async fn append(
        &self,
        ct: ContentType,
        events: &[(u64, Envelope<Event>)],
    ) -> (usize, Option<AppendError>) {
        let mut acks = Vec::with_capacity(events.len());
        for (seq, event) in events {
            let payload = match ct.encode(event) {
                Ok(p) => p,
                Err(e) => return (0, Some(transport(e).into())),
            };
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE_HEADER, ct.mime());
            headers.insert(LEDGER_SEQ_HEADER, seq.to_string().as_str());
            let message = jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .headers(headers)
                .message_id(event.id.to_string())
                .expected_last_sequence(seq - 1);
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
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    match self.id_at(*seq).await {
                        Ok(Some(id)) if id == event.id.to_string() => held += 1,
                        Ok(theirs) => {
                            return (
                                held,
                                Some(AppendError::Fenced {
                                    seq: *seq,
                                    ours: event.id,
                                    theirs: theirs.unwrap_or_else(|| "nothing".into()),
                                }),
                            )
                        }
                        Err(e) => return (held, Some(e.into())),
                    }
                }
                Err(e) => return (held, Some(transport(e).into())),
            }
        }
        (held, None)
    }

    /// The id of the event the stream holds at ledger seq `seq`, if any.
    pub async fn id_at(&self, seq: u64) -> Result<Option<String>, BusError> {
        let stream = self
            .js
            .get_stream(subject::LEDGER_STREAM)
            .await
            .map_err(|e| transport(format!("stream {}: {e}", subject::LEDGER_STREAM)))?;
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(m
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_string())),
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(transport(format!(
                "reading {}: {e}",
                subject::LEDGER_STREAM
            ))),
        }
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
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(transport)?;
        let backlog = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.map_err(transport)?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(async move {
            let mut caught_up = backlog == 0;
            if caught_up && tx.send(Followed::CaughtUp).await.is_err() {
                return;
            }
            while let Some(next) = messages.next().await {
                let m = match next {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "following {}", subject::LEDGER_STREAM);
                        continue;
                    }
                };
                let Ok((seq, pending)) = m.info().map(|i| (i.stream_sequence, i.pending)) else {
                    continue;
                };
                let header = |name| {
                    m.headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str())
                };
                let ct = ContentType::from_header(header(CONTENT_TYPE_HEADER));
                match ct.and_then(|ct| ct.decode::<Envelope<Event>>(&m.payload)) {
                    Ok(event) => {
                        let followed = Followed::Event {
                            ledger_seq: Some(seq),
                            event: Box::new(event),
                        };
                        if tx.send(followed).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // A hole in the ledger: the follower sees the gap
                        // and stops (it never skips a seq).
                        tracing::error!(error = %e, seq, "a ledger event in {} does not decode", subject::LEDGER_STREAM);
                    }
                }
                if !caught_up && pending == 0 {
                    caught_up = true;
                    if tx.send(Followed::CaughtUp).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}
