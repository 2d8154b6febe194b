//! The bus: what actors publish to, subscribe on and make requests over.
//!
//! One trait, [`Bus`], with NATS semantics (subjects with `*` and `>`,
//! queue groups, request/reply with "no responders"), so the same actors run
//! in one process over [`InProcessBus`] (the embedded default) or as
//! separate processes over a NATS server ([`NatsBus`]). [`conformance`] is the behaviour
//! both must show; each implementation's tests run it.

pub mod conformance;
pub mod control;
mod in_process;
pub mod jetstream;
pub mod lease;
pub mod ledger_stream;
pub mod nats;
pub mod subject;
#[cfg(feature = "test-server")]
pub mod test_server;
pub mod typed;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use in_process::InProcessBus;
pub use nats::{NatsBus, NatsConfig};

/// Header name → value.
pub type Headers = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    /// Where a reply goes (request/reply).
    pub reply: Option<String>,
    pub headers: Headers,
    pub payload: Bytes,
}

impl Message {
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Message {
        Message {
            subject: subject.into(),
            reply: None,
            headers: Headers::new(),
            payload: payload.into(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Message {
        self.headers.insert(name.to_string(), value.into());
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Nobody is subscribed: the actor is down.
    #[error("no responders on {0}: the actor that serves it is not running")]
    NoResponders(String),
    #[error("no reply on {subject} within {after:?}: the actor is running but did not answer")]
    TimedOut { subject: String, after: Duration },
    /// The server refused this client the subject (NATS permissions).
    #[error(
        "not permitted to publish to {0}: the NATS user lacks the right (see ops/nats-server.conf)"
    )]
    Forbidden(String),
    /// A durable command was stored but nothing answered in time.
    #[error("{subject} was accepted ({stream} seq {seq}) but not answered within {after:?}: the Supervisor or Version Management is not running; it will be applied when they are")]
    Queued {
        subject: String,
        stream: String,
        seq: u64,
        after: Duration,
    },
    /// A durable command was not sent: nothing consumes the stream.
    #[error("{subject} was not sent: no Supervisor consumes {stream} (its durable consumer `{consumer}` does not exist); start the Supervisor (it makes the consumer) and try again")]
    NoConsumer {
        subject: String,
        stream: String,
        consumer: String,
    },
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
    #[error("the bus is closed")]
    Closed,
    #[error("bus transport: {0}")]
    Transport(String),
}

/// A stream of messages on a subscription; dropping it unsubscribes.
pub struct Subscription {
    rx: tokio::sync::mpsc::Receiver<Message>,
}

impl Subscription {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Message>) -> Subscription {
        Subscription { rx }
    }

    /// The next message; `None` once the bus is gone.
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Fire and forget (core NATS semantics: at most once).
    async fn publish(&self, message: Message) -> Result<(), BusError>;

    /// Subscribes to a subject pattern; with a queue group, each message goes
    /// to one member of the group.
    async fn subscribe(&self, pattern: &str, queue: Option<&str>)
        -> Result<Subscription, BusError>;

    /// Sends `message` and waits for one reply.
    async fn request(&self, message: Message, timeout: Duration) -> Result<Message, BusError>;

    /// Whether a publish on `subject` would reach a subscriber now. A
    /// publisher may skip encoding what nobody would receive: the message
    /// would be dropped anyway, as a NATS server drops one without
    /// interest. A bus that cannot tell cheaply says yes.
    fn has_interest(&self, _subject: &str) -> bool {
        true
    }
}
