//! JetStream: the durable side of the bus. Committed events are published to
//! the `TES_EVENTS` stream (`tes.evt.>`) with `Nats-Msg-Id` = event id, so a
//! publish retried after a reconnect or a restart is stored once.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use tes_proto::subject::{self, CONTENT_TYPE_HEADER};
use tes_proto::{ContentType, Envelope, Event};

use crate::BusError;

/// How long JetStream remembers a message id for de-duplication.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct EventStream {
    js: jetstream::Context,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream(TES_EVENTS)")
    }
}

fn transport(e: impl std::fmt::Display) -> BusError {
    BusError::Transport(e.to_string())
}

impl EventStream {
    /// Creates `TES_EVENTS` if it does not exist yet.
    pub async fn ensure(client: async_nats::Client) -> Result<EventStream, BusError> {
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: subject::EVENTS_STREAM.to_string(),
            subjects: vec![subject::ALL_EVENTS.to_string()],
            duplicate_window: DUPLICATE_WINDOW,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            transport(format!(
                "cannot create or open stream {}: {e}",
                subject::EVENTS_STREAM
            ))
        })?;
        Ok(EventStream { js })
    }

    /// Publishes `events` in order and waits until the stream has stored each
    /// (pipelined: all are sent, then the acks are awaited in order). Returns
    /// how many, from the front, are stored; the rest are to be sent again.
    pub async fn publish_all(
        &self,
        ct: ContentType,
        events: &[Envelope<Event>],
    ) -> (usize, Option<BusError>) {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let payload = match ct.encode(event) {
                Ok(p) => p,
                Err(e) => return (0, Some(transport(e))),
            };
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE_HEADER, ct.mime());
            let message = jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .headers(headers)
                .message_id(event.id.to_string());
            let subject = subject::event(event.thread, event.body.kind());
            match self.js.send_publish(subject, message).await {
                Ok(ack) => pending.push(ack),
                Err(e) => {
                    let error = transport(e);
                    return (confirmed(pending).await.0, Some(error));
                }
            }
        }
        confirmed(pending).await
    }
}

async fn confirmed(
    pending: Vec<jetstream::context::PublishAckFuture>,
) -> (usize, Option<BusError>) {
    let mut n = 0;
    for ack in pending {
        match ack.await {
            Ok(_) => n += 1,
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                return (
                    n,
                    Some(transport(format!(
                        "stream {} is gone: {e}",
                        subject::EVENTS_STREAM
                    ))),
                )
            }
            Err(e) => return (n, Some(transport(e))),
        }
    }
    (n, None)
}
