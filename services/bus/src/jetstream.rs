//! JetStream: the durable side of the bus.
//!
//! - [`EventStream`]: committed events go to `TES_EVENTS` (the events of
//!   0x6001, 0x5003 and 0x1001; not Monitoring's snapshots) with
//!   `Nats-Msg-Id` = event id, so a publish retried after a reconnect or a
//!   restart is stored once.
//! - [`CommandStream`]: the commands that must not be lost (`rotate`,
//!   `rollback` to the Supervisor) go to `TES_COMMANDS`, read by a durable
//!   consumer; the sender names an inbox for the outcome (`Tes-Reply-To`).

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tes_proto::subject::{self, CONTENT_TYPE_HEADER, LEDGER_SEQ_HEADER, REPLY_TO_HEADER};
use tes_proto::{CommandBody, ContentType, Envelope, Event, Reply, ThreadId};
use tokio::sync::mpsc;

use crate::typed::CallError;
use crate::NatsBus;

use crate::BusError;

/// How long JetStream remembers a message id for de-duplication.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

#[derive(Clone)]
pub struct EventStream {
    js: jetstream::Context,
    /// The writer's ledger identity, sent with every event it publishes.
    ledger: Option<String>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream(TES_EVENTS)")
    }
}

pub(crate) fn transport(e: impl std::fmt::Display) -> BusError {
    BusError::Transport(e.to_string())
}

/// How many copies a stream or bucket tes makes keeps: three on a cluster
/// (JetStream's R3: it goes on with one server down), one on a lone
/// server. Read from the server's INFO (the cluster name its config
/// gives), so no flag says "cluster mode". Not from the members the INFO
/// lists: right after a cluster starts they are not all known yet, and a
/// stream made then would keep one copy for good. A cluster of fewer than
/// three JetStream servers is refused at the first stream (too few
/// servers for three copies). A stream keeps the replicas it was made with
/// (nobody may update one).
pub fn replicas(client: &async_nats::Client) -> usize {
    match client.server_info().cluster {
        Some(name) if !name.is_empty() => 3,
        _ => 1,
    }
}

/// Opens the stream `config` names, or creates it (see [`ensure_stream`])
/// with the copies [`replicas`] says.
pub(crate) async fn open_stream(
    client: async_nats::Client,
    config: stream::Config,
) -> Result<jetstream::Context, BusError> {
    let copies = replicas(&client);
    let js = jetstream::new(client);
    ensure_stream(&js, copies, config).await?;
    Ok(js)
}

/// A stream named `name` capturing `subjects` (the rest as
/// [`ensure_stream`] sets it).
pub(crate) fn stream_config(name: &str, subjects: Vec<String>) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects,
        ..Default::default()
    }
}

/// Opens the stream `config` names, or creates it: on files, with
/// de-duplication, and never deleted from or purged through the API.
async fn ensure_stream(
    js: &jetstream::Context,
    replicas: usize,
    config: stream::Config,
) -> Result<(), BusError> {
    let name = config.name.clone();
    let wanted = config.subjects.clone();
    let mut stream = js
        .get_or_create_stream(stream::Config {
            duplicate_window: DUPLICATE_WINDOW,
            storage: stream::StorageType::File,
            deny_delete: true,
            deny_purge: true,
            num_replicas: replicas,
            ..config
        })
        .await
        .map_err(|e| transport(format!("cannot create or open stream {name}: {e}")))?;
    // A stream made by an older build lacks the subjects of newer kinds
    // (a revocation, say). Nobody may update a stream (ops/nats-server.conf),
    // and a revocation the replicas never see would be a silent hole: stop.
    let have = stream
        .info()
        .await
        .map_err(|e| transport(format!("cannot read stream {name}: {e}")))?
        .config
        .subjects
        .clone();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !have.iter().any(|h| crate::subject::matches(h, w)))
        .collect();
    if !missing.is_empty() {
        return Err(transport(format!(
            "stream {name} does not capture {} (made by an older tes): add them as the NATS account's \
             administrator, e.g. `nats stream edit {name} --subjects {}`",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            wanted.join(",")
        )));
    }
    Ok(())
}

impl EventStream {
    /// Creates `TES_EVENTS` if it does not exist yet.
    pub async fn ensure(client: async_nats::Client) -> Result<EventStream, BusError> {
        // History is never erased through the API (nor by anyone's NATS
        // rights: ops/nats-server.conf denies it too).
        let js = open_stream(
            client,
            stream_config(subject::EVENTS_STREAM, subject::durable_events()),
        )
        .await?;
        Ok(EventStream { js, ledger: None })
    }

    /// The writer's side: every event published names the ledger
    /// (`Tes-Ledger`: the hex hash of its seq 1).
    pub fn for_ledger(mut self, identity: String) -> EventStream {
        self.ledger = Some(identity);
        self
    }

    /// The ledger the writer lease names, if a writer holds or held one.
    pub async fn registered_ledger(&self) -> Option<String> {
        let kv = self.js.get_key_value(subject::kv::BUCKET).await.ok()?;
        let entry = kv.entry(subject::kv::WRITER_LEASE).await.ok()??;
        serde_json::from_slice::<crate::lease::LeaseValue>(&entry.value)
            .ok()
            .map(|v| v.ledger)
    }

    /// Publishes ledger events (with their seqs) in order and waits until
    /// the stream has stored each (pipelined: all are sent, then the acks
    /// are awaited in order). Returns how many, from the front, are stored;
    /// the rest are to be sent again.
    pub async fn publish_all(
        &self,
        ct: ContentType,
        events: &[(u64, Envelope<Event>)],
    ) -> (usize, Option<BusError>) {
        let mut pending = Vec::with_capacity(events.len());
        for (seq, event) in events {
            let payload = match ct.encode(event) {
                Ok(p) => p,
                Err(e) => return (0, Some(transport(e))),
            };
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE_HEADER, ct.mime());
            headers.insert(LEDGER_SEQ_HEADER, seq.to_string().as_str());
            if let Some(ledger) = &self.ledger {
                headers.insert(subject::LEDGER_ID_HEADER, ledger.as_str());
            }
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

/// What the stream holds of one ledger past a seq (see
/// [`EventStream::ledger_tail`]).
#[derive(Debug, Default)]
pub struct LedgerTail {
    /// The id of the event the stream holds at the seq asked from, if it
    /// holds one: the caller compares it with its own row there.
    pub at: Option<tes_proto::MsgId>,
    /// The events after that seq, in ledger order, each once.
    pub after: Vec<(u64, Envelope<Event>)>,
}

impl EventStream {
    /// The events of ledger `ledger` (its identity, as in `Tes-Ledger`)
    /// that the stream holds after ledger seq `after`. Read backwards from
    /// the stream's end, one message at a time, until a message of that
    /// ledger at or before `after`, or one stored before `not_before` (Unix
    /// seconds: nothing after `after` can be older than the event at
    /// `after`, so the walk never runs through another ledger's history):
    /// cheap when the ledger is up to date (one read), proportional to the
    /// gap after a restore.
    pub async fn ledger_tail(
        &self,
        ledger: &str,
        after: u64,
        not_before: i64,
    ) -> Result<LedgerTail, BusError> {
        let mut tail = LedgerTail::default();
        let mut newer: Vec<(u64, Envelope<Event>)> = Vec::new();
        self.walk_back(
            ledger,
            |_| 1,
            |seq, m| {
                if m.time.unix_timestamp() < not_before {
                    return Ok(false);
                }
                let header = |name| m.headers.get(name).map(|v| v.as_str());
                let event = ContentType::from_header(header(CONTENT_TYPE_HEADER))
                    .and_then(|ct| ct.decode::<Envelope<Event>>(&m.payload))
                    .map_err(|e| {
                        transport(format!(
                            "{} message {} (ledger seq {seq}) does not decode: {e}",
                            subject::EVENTS_STREAM,
                            m.sequence
                        ))
                    })?;
                if seq <= after {
                    tail.at = (seq == after).then_some(event.id);
                    return Ok(false);
                }
                newer.push((seq, event));
                Ok(true)
            },
        )
        .await?;
        // Oldest first; a seq the stream holds twice (the same event, resent
        // after the duplicate window) once.
        newer.sort_by_key(|(seq, _)| *seq);
        newer.dedup_by_key(|(seq, _)| *seq);
        tail.after = newer;
        Ok(tail)
    }
}

impl EventStream {
    /// The newest ledger seq of `ledger` the stream holds (0: none), read
    /// backwards from the stream's end past other messages (an alert from
    /// the Alert actor, another ledger's events), at most `MAX_WALK` of
    /// them. For a writer taking over on a cluster: its predecessor may
    /// have stopped between `TES_LEDGER` and this stream.
    pub async fn last_ledger_seq(&self, ledger: &str) -> Result<u64, BusError> {
        const MAX_WALK: u64 = 10_000;
        let mut last = 0;
        let floor = |last_sequence: u64| last_sequence.saturating_sub(MAX_WALK);
        self.walk_back(ledger, floor, |seq, _| {
            last = seq;
            Ok(false)
        })
        .await?;
        Ok(last)
    }

    /// Reads the stream backwards from its last message down to
    /// `floor(last sequence)` (never below its first), handing `visit` each
    /// ledger event of `ledger` (its ledger seq and the message; bus-only
    /// events and other ledgers' skipped), until `visit` says stop. A
    /// message that is gone (the stream's limits) leaves a hole, skipped.
    async fn walk_back(
        &self,
        ledger: &str,
        floor: impl FnOnce(u64) -> u64,
        mut visit: impl FnMut(u64, &jetstream::message::StreamMessage) -> Result<bool, BusError>,
    ) -> Result<(), BusError> {
        let stream = self
            .js
            .get_stream(subject::EVENTS_STREAM)
            .await
            .map_err(|e| transport(format!("stream {}: {e}", subject::EVENTS_STREAM)))?;
        let state = stream.cached_info().state.clone();
        let first = state.first_sequence.max(1).max(floor(state.last_sequence));
        let mut s = state.last_sequence;
        while s >= first && s > 0 {
            let m = match stream.get_raw_message(s).await {
                Ok(m) => m,
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    s -= 1;
                    continue;
                }
                Err(e) => {
                    return Err(transport(format!(
                        "reading {}: {e}",
                        subject::EVENTS_STREAM
                    )))
                }
            };
            s -= 1;
            let header = |name| m.headers.get(name).map(|v| v.as_str());
            let Some(seq) = header(LEDGER_SEQ_HEADER).and_then(|v| v.parse::<u64>().ok()) else {
                continue; // a bus-only event
            };
            if header(subject::LEDGER_ID_HEADER).is_some_and(|id| id != ledger) {
                continue;
            }
            if !visit(seq, &m)? {
                break;
            }
        }
        Ok(())
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

/// What following `TES_EVENTS` yields.
#[derive(Debug, Clone)]
pub enum Followed {
    /// An event, with its ledger seq if it is a ledger event (the `Tes-Seq`
    /// header). A ledger seq already yielded is not yielded again: the
    /// stream can hold an event twice if it was resent after the duplicate
    /// window, and every follower must see each ledger event once.
    Event {
        ledger_seq: Option<u64>,
        event: Box<Envelope<Event>>,
    },
    /// Everything the stream held when following began has been yielded;
    /// what follows is new. Yielded once.
    CaughtUp,
}

impl EventStream {
    /// Follows the events of `threads` from the start of the stream: the
    /// receiver yields them in order, [`Followed::CaughtUp`] once the
    /// backlog is through, then new ones as they come.
    pub async fn follow(&self, threads: &[ThreadId]) -> Result<mpsc::Receiver<Followed>, BusError> {
        self.follow_ledger(threads, None).await
    }

    /// [`EventStream::follow`], keeping only the events of `ledger` (by their
    /// `Tes-Ledger` header; events published without one are kept): a
    /// stream that once carried another ledger's events — a writer started
    /// on another data directory — does not mix them in.
    pub async fn follow_ledger(
        &self,
        threads: &[ThreadId],
        ledger: Option<String>,
    ) -> Result<mpsc::Receiver<Followed>, BusError> {
        let stream = self
            .js
            .get_stream(subject::EVENTS_STREAM)
            .await
            .map_err(|e| transport(format!("stream {}: {e}", subject::EVENTS_STREAM)))?;
        let filters = threads
            .iter()
            .map(|t| format!("{}.{}.>", subject::EVENT_PREFIX, t.token()))
            .collect();
        let mut raw = follow_raw(stream, filters, 1).await?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(async move {
            let mut last_ledger_seq = 0;
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
                let seq = m.seq;
                if let (Some(want), Some(got)) = (&ledger, m.header(subject::LEDGER_ID_HEADER)) {
                    if want != got {
                        tracing::warn!(seq, ledger = %got, "an event of another ledger in the stream; not followed");
                        continue;
                    }
                }
                let ledger_seq = m
                    .header(LEDGER_SEQ_HEADER)
                    .and_then(|s| s.parse::<u64>().ok());
                let repeat = ledger_seq.is_some_and(|s| s <= last_ledger_seq);
                let ct = ContentType::from_header(m.header(CONTENT_TYPE_HEADER));
                match ct.and_then(|ct| ct.decode::<Envelope<Event>>(&m.payload)) {
                    Ok(_) if repeat => {}
                    Ok(event) => {
                        last_ledger_seq = ledger_seq.unwrap_or(last_ledger_seq);
                        let followed = Followed::Event {
                            ledger_seq,
                            event: Box::new(event),
                        };
                        if tx.send(followed).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, seq, "an event in the stream does not decode; skipped")
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// How long a follower hears nothing before it asks the stream whether it
/// holds more than was delivered. An ordered consumer whose server died
/// goes silent: async-nats recreates it only after two missed 15 s
/// heartbeats, and a standby that is 30 s behind cannot take over within
/// the lease TTL.
const FOLLOW_STALL: Duration = Duration::from_secs(2);

/// One message a follower is given, as the stream stored it.
pub(crate) struct Stored {
    /// The stream's sequence number.
    pub seq: u64,
    pub headers: Option<HeaderMap>,
    pub payload: bytes::Bytes,
}

impl Stored {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }
}

pub(crate) enum Raw {
    Stored(Stored),
    /// Everything the stream held when following began has been given.
    CaughtUp,
}

/// Follows `stream` from seq `from`, keeping the subjects of `filters`
/// (all when empty): every stored message once, in order, with
/// [`Raw::CaughtUp`] once after the backlog.
///
/// An ordered consumer lives on one server. When it stops delivering
/// (its server died, the client moved) while the stream holds more, it is
/// recreated from the next seq not yet given; anything delivered twice
/// across the change is dropped by seq. The first consumer's failure is
/// the caller's error; later ones are retried until the receiver is
/// dropped.
pub(crate) async fn follow_raw(
    stream: jetstream::stream::Stream,
    filters: Vec<String>,
    from: u64,
) -> Result<mpsc::Receiver<Raw>, BusError> {
    let mut next = from.max(1);
    let (first, backlog) = ordered_from(&stream, &filters, next).await?;
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(async move {
        let mut messages = Some(first);
        let mut caught_up = backlog == 0;
        if caught_up && tx.send(Raw::CaughtUp).await.is_err() {
            return;
        }
        loop {
            let Some(current) = messages.as_mut() else {
                match ordered_from(&stream, &filters, next).await {
                    Ok((again, backlog)) => {
                        messages = Some(again);
                        if !caught_up && backlog == 0 {
                            caught_up = true;
                            if tx.send(Raw::CaughtUp).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, next, "following {}: cannot recreate the consumer yet", stream.cached_info().config.name);
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            };
            match tokio::time::timeout(FOLLOW_STALL, current.next()).await {
                Ok(Some(Ok(m))) => {
                    let Ok((seq, pending)) = m.info().map(|i| (i.stream_sequence, i.pending))
                    else {
                        continue;
                    };
                    if seq < next {
                        continue; // given already, before a recreation
                    }
                    next = seq + 1;
                    let m = m.message;
                    let stored = Stored {
                        seq,
                        headers: m.headers,
                        payload: m.payload,
                    };
                    if tx.send(Raw::Stored(stored)).await.is_err() {
                        return;
                    }
                    if !caught_up && pending == 0 {
                        caught_up = true;
                        if tx.send(Raw::CaughtUp).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Some(Err(error))) => {
                    tracing::warn!(%error, next, "following {}; recreating the consumer", stream.cached_info().config.name);
                    messages = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(None) => messages = None,
                Err(_quiet) => {
                    if tx.is_closed() {
                        return;
                    }
                    if holds_more(&stream, &filters, next).await {
                        tracing::warn!(next, "following {}: the consumer stopped delivering while the stream holds more; recreating it", stream.cached_info().config.name);
                        messages = None;
                    }
                }
            }
        }
    });
    Ok(rx)
}

/// An ordered consumer on `stream` from seq `from`, and how many messages
/// it has pending at its creation.
async fn ordered_from(
    stream: &jetstream::stream::Stream,
    filters: &[String],
    from: u64,
) -> Result<(jetstream::consumer::pull::Ordered, u64), BusError> {
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subjects: filters.to_vec(),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(transport)?;
    let backlog = consumer.cached_info().num_pending;
    Ok((consumer.messages().await.map_err(transport)?, backlog))
}

/// Whether `stream` holds a message at or after `next` that `filters` keep
/// (asked of the stream's leader; an error answers no, and the follower
/// asks again after its next quiet spell).
async fn holds_more(stream: &jetstream::stream::Stream, filters: &[String], next: u64) -> bool {
    if filters.is_empty() {
        return stream
            .get_info()
            .await
            .is_ok_and(|info| info.state.last_sequence >= next);
    }
    for filter in filters {
        if stream
            .get_first_raw_message_by_subject(filter, next)
            .await
            .is_ok()
        {
            return true;
        }
    }
    false
}

/// `TES_CHECKPOINTS`: the signed checkpoints the writer publishes (a
/// witness on the server; only the writer's user may publish its subject,
/// and no one may delete from it or purge it).
#[derive(Clone)]
pub struct CheckpointStream {
    js: jetstream::Context,
}

impl std::fmt::Debug for CheckpointStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointStream(TES_CHECKPOINTS)")
    }
}

impl CheckpointStream {
    /// Creates `TES_CHECKPOINTS` if it does not exist yet (the writer).
    pub async fn ensure(client: async_nats::Client) -> Result<CheckpointStream, BusError> {
        let js = open_stream(
            client,
            stream_config(subject::CHECKPOINTS_STREAM, vec![subject::checkpoints()]),
        )
        .await?;
        Ok(CheckpointStream { js })
    }

    /// Publishes a `checkpoint` event and waits until the stream has it.
    /// Core subscribers of the subject see it as any event.
    pub async fn publish(&self, ct: ContentType, event: &Envelope<Event>) -> Result<(), BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, ct.mime());
        let message = jetstream::message::PublishMessage::build()
            .payload(ct.encode(event).map_err(transport)?.into())
            .headers(headers)
            .message_id(event.id.to_string());
        self.js
            .send_publish(subject::checkpoints(), message)
            .await
            .map_err(transport)?
            .await
            .map_err(transport)?;
        Ok(())
    }

    /// The newest checkpoint event in the stream, if there is a stream and
    /// anything in it (reads only: never creates the stream).
    pub async fn latest(client: async_nats::Client) -> Result<Option<Envelope<Event>>, BusError> {
        use jetstream::context::GetStreamErrorKind;
        use jetstream::stream::LastRawMessageErrorKind;
        let js = jetstream::new(client);
        let unreadable = |e: &dyn std::fmt::Display| {
            transport(format!(
                "cannot read {} (is the NATS user allowed to?): {e}",
                subject::CHECKPOINTS_STREAM
            ))
        };
        // No stream, or nothing in it, is no checkpoint; anything else (a
        // refusal, no answer) is said, not taken for "nothing there".
        let stream = match js.get_stream(subject::CHECKPOINTS_STREAM).await {
            Ok(stream) => stream,
            Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {
                return Ok(None)
            }
            Err(e) => return Err(unreadable(&e)),
        };
        let raw = match stream
            .get_last_raw_message_by_subject(&subject::checkpoints())
            .await
        {
            Ok(raw) => raw,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(unreadable(&e)),
        };
        let ct = ContentType::from_header(raw.headers.get(CONTENT_TYPE_HEADER).map(|v| v.as_str()))
            .map_err(transport)?;
        Ok(Some(ct.decode(&raw.payload).map_err(transport)?))
    }
}

/// `TES_COMMANDS`: durable commands.
#[derive(Clone)]
pub struct CommandStream {
    js: jetstream::Context,
}

impl CommandStream {
    /// The sending side only: publishes to the stream's subjects and needs
    /// no JetStream API rights (the Supervisor creates the stream).
    pub fn sender(client: async_nats::Client) -> CommandStream {
        CommandStream {
            js: jetstream::new(client),
        }
    }

    /// Creates `TES_COMMANDS` if it does not exist yet.
    pub async fn ensure(client: async_nats::Client) -> Result<CommandStream, BusError> {
        let js = open_stream(
            client,
            stream::Config {
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..stream_config(subject::COMMANDS_STREAM, subject::durable_commands())
            },
        )
        .await?;
        Ok(CommandStream { js })
    }

    /// The durable pull consumer `name` over the commands of `thread`. It
    /// remembers what was acknowledged across restarts of its reader.
    pub async fn consumer(
        &self,
        name: &str,
        thread: ThreadId,
    ) -> Result<jetstream::consumer::PullConsumer, BusError> {
        let stream = self
            .js
            .get_stream(subject::COMMANDS_STREAM)
            .await
            .map_err(|e| transport(format!("stream {}: {e}", subject::COMMANDS_STREAM)))?;
        stream
            .get_or_create_consumer(
                name,
                jetstream::consumer::pull::Config {
                    durable_name: Some(name.to_string()),
                    filter_subject: subject::commands_of(thread).replace('*', ">"),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(60),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| transport(format!("consumer {name}: {e}")))
    }

    /// Sends a durable command (its id as `Nats-Msg-Id`, so a retry is stored
    /// once), waits until the stream has it, then waits up to `timeout` for
    /// its outcome on a private inbox.
    pub async fn call<C: CommandBody>(
        &self,
        bus: &NatsBus,
        thread: ThreadId,
        ct: ContentType,
        envelope: &Envelope<C>,
        timeout: Duration,
    ) -> Result<C::Reply, CallError> {
        let subject = C::subject(thread);
        let client = bus.client();
        if !consumer_exists(
            client,
            subject::COMMANDS_STREAM,
            subject::SUPERVISOR_CONSUMER,
        )
        .await
        {
            return Err(BusError::NoConsumer {
                subject,
                stream: subject::COMMANDS_STREAM.to_string(),
                consumer: subject::SUPERVISOR_CONSUMER.to_string(),
            }
            .into());
        }
        let refused = bus.refusal(&subject);
        let inbox = client.new_inbox();
        let mut outcome = client.subscribe(inbox.clone()).await.map_err(transport)?;
        client.flush().await.map_err(transport)?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE_HEADER, ct.mime());
        headers.insert(REPLY_TO_HEADER, inbox.as_str());
        let message = jetstream::message::PublishMessage::build()
            .payload(ct.encode(envelope)?.into())
            .headers(headers)
            .message_id(envelope.id.to_string());
        let stored = async {
            self.js
                .send_publish(subject.clone(), message)
                .await
                .map_err(transport)?
                .await
                .map_err(|e| match e.kind() {
                    PublishErrorKind::StreamNotFound => transport(format!(
                        "{subject} was not stored: there is no {} stream yet (no Supervisor has run on this NATS server)",
                        subject::COMMANDS_STREAM
                    )),
                    _ => transport(format!("{subject} was not stored: {e}")),
                })
        };
        let ack = tokio::select! {
            ack = stored => ack?,
            () = refused => return Err(BusError::Forbidden(subject).into()),
        };
        let reply = match tokio::time::timeout(timeout, outcome.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(BusError::Closed.into()),
            Err(_) => {
                return Err(BusError::Queued {
                    subject,
                    stream: ack.stream,
                    seq: ack.sequence,
                    after: timeout,
                }
                .into())
            }
        };
        let ct = ContentType::from_header(
            reply
                .headers
                .as_ref()
                .and_then(|h| h.get(CONTENT_TYPE_HEADER))
                .map(|v| v.as_str()),
        )?;
        let reply: Reply<C::Reply> = ct.decode(&reply.payload)?;
        reply.into_result().map_err(CallError::Refused)
    }
}

/// Whether the durable consumer `consumer` of `stream` exists. Only a
/// definite "not found" from JetStream says no: a user without the right to
/// ask (an older ops/nats-server.conf) or a slow answer is given the
/// benefit of the doubt, as before this check existed.
async fn consumer_exists(client: &async_nats::Client, stream: &str, consumer: &str) -> bool {
    let request = async_nats::Request::new()
        .payload(bytes::Bytes::new())
        .timeout(Some(Duration::from_secs(2)));
    let info = format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}");
    match client.send_request(info, request).await {
        Ok(reply) => {
            serde_json::from_slice::<serde_json::Value>(&reply.payload)
                .ok()
                .and_then(|v| {
                    v.get("error")
                        .and_then(|e| e.get("code"))
                        .and_then(|c| c.as_u64())
                })
                != Some(404)
        }
        Err(_) => true,
    }
}

/// The KV bucket `tes` (rotation signal, the Supervisor's cursor, the
/// writer lease): opened, or created when it is not there yet — never
/// reconfigured (no actor may update or delete a stream that keeps history).
pub async fn tes_bucket(
    client: async_nats::Client,
) -> Result<async_nats::jetstream::kv::Store, BusError> {
    tes_bucket_answering_within(client, None).await
}

/// [`tes_bucket`] whose operations give up after `timeout` (the writer
/// lease: while a cluster elects a new leader for the bucket, a short
/// timeout tries again sooner than the client's default would).
pub async fn tes_bucket_answering_within(
    client: async_nats::Client,
    timeout: Option<Duration>,
) -> Result<async_nats::jetstream::kv::Store, BusError> {
    use async_nats::jetstream::kv;
    let copies = replicas(&client);
    let mut js = jetstream::new(client);
    if let Some(timeout) = timeout {
        js.set_timeout(timeout);
    }
    if let Ok(store) = js.get_key_value(subject::kv::BUCKET).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: subject::kv::BUCKET.to_string(),
            description:
                "TES: rotation-signal (rotate|rollback), the Supervisor's cursor, the writer lease"
                    .to_string(),
            history: 16,
            num_replicas: copies,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Created meanwhile by another actor: open it.
        Err(_) => js.get_key_value(subject::kv::BUCKET).await.map_err(|e| {
            transport(format!(
                "cannot create or open KV bucket {}: {e}",
                subject::kv::BUCKET
            ))
        }),
    }
}
