//! The bus-facing side of Version Management.
//!
//! The [`Engine`] runs on a thread of its own and takes jobs from a channel;
//! everything that arrived while it was committing the last batch becomes
//! the next batch (group commit without a timer). Commands arrive on
//! `tes.cmd.0x6001.*`, each handled in its own task so many can be in
//! flight; committed events are published on `tes.evt.0x6001.<kind>` in
//! ledger order by one publisher task, after their transaction commits.

use std::sync::Arc;
use std::time::Duration;

use tes_bus::jetstream::EventStream;
use tes_bus::typed::{decode_command, publish_event, publish_ledgered, refuse, respond};
use tes_bus::{Bus, Message};
use tes_ledger::merkle::Frontier;
use tes_ledger::{Head, Outbox};
use tes_proto::command::{
    Archive, Audit, BatchCommand, Bump, Grace, History, Record, Revoke, Rollback, Rotate, Sign,
    SignBatch, Status, Verify, VerifyBatch,
};
use tes_proto::event::{Checkpoint, Event, HeldKey, SignerHeartbeat, HEARTBEAT_EVERY};
use tes_proto::reply::{ArchiveReply, SignReply, VerifyReply};
use tes_proto::subject::{self, verb};
use tes_proto::{
    Channel, CommandBody, ContentType, Envelope, ErrorCode, ErrorReply, MsgId, Reply, ThreadId,
    Timestamp,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::audit::AuditSource;
use crate::engine::{Engine, Outcome, Request, Response, WRITER};
use tes_bus::ledger_stream::{AppendError, LedgerStream};

const THREAD: ThreadId = ThreadId::VersionManagement;
/// The most requests one transaction takes.
const MAX_BATCH: usize = 1024;

#[derive(Debug, Clone)]
pub struct ActorConfig {
    /// The wire form of what this actor publishes.
    pub wire: ContentType,
    /// How often time is checked (grace windows, expiry).
    pub tick_every: Duration,
    /// How often a checkpoint is signed and published while the head moves
    /// (a rotation, rollback or retirement gets one at once).
    pub checkpoint_every: Duration,
    /// The audit key and the witnesses its checkpoints go to. `None`: the
    /// head is still published on the bus, unsigned.
    pub auditor: Option<Auditor>,
    /// On NATS: `TES_CHECKPOINTS`, where each checkpoint is stored (and
    /// acknowledged) as it is published. `None`: core publish only.
    pub checkpoint_stream: Option<tes_bus::jetstream::CheckpointStream>,
    /// Where committed events go durably (NATS): through the ledger's
    /// outbox into this stream. `None` (the embedded bus): published on
    /// the bus directly after each commit.
    pub event_stream: Option<EventStream>,
    /// Who serves `tes.cmd.0x6001.archive`: the bundle worker, set once it
    /// has started (it needs this actor's engine handle first). Empty:
    /// bundles are off and the verb is refused.
    pub archiver: ArchiverSlot,
    /// With an event stream: answer a request only once the events its
    /// batch committed are stored in the stream too (by its quorum, on a
    /// cluster), not as soon as the ledger has them. What lets a standby
    /// writer take over with every acknowledged signature: on by default
    /// where the stream keeps more than one copy. While the stream does not
    /// answer, replies wait (and, [`MAX_HELD`] batches on, so does signing).
    pub ack_after_stream: bool,
    /// Called (from the engine thread) when the ledger could not be
    /// written: a cluster writer gives its lease to a standby rather than
    /// refuse every request until its disk is freed.
    pub on_storage_failure: Option<StepDown>,
    /// On a cluster: `TES_LEDGER`, where every committed event is appended
    /// (fenced by the seq before it) before it goes to `event_stream`.
    pub ledger_stream: Option<LedgerStream>,
    /// Called when `ledger_stream` refuses an append because another writer
    /// appended there: this one must stop writing at once.
    pub on_fenced: Option<StepDown>,
    /// With `ledger_stream`: whether this writer may append now. False
    /// while its lease has gone unrenewed long enough to lapse (a standby
    /// may take over); appends, and the replies that wait for them, wait
    /// until it is renewed. `None`: always.
    pub may_append: Option<watch::Receiver<bool>>,
}

/// What a writer does when its ledger cannot be written (see
/// [`ActorConfig::on_storage_failure`]); given the error's words.
#[derive(Clone)]
pub struct StepDown(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for StepDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepDown")
    }
}

/// Committed batches whose replies may wait for the stream at once; the
/// engine stops taking work past this (backpressure, not memory).
pub const MAX_HELD: usize = 64;

/// Runs archive passes for the `archive` verb (the bundle worker).
#[async_trait::async_trait]
pub trait Archiver: Send + Sync + std::fmt::Debug {
    async fn archive(&self, request: Archive) -> Result<ArchiveReply, ErrorReply>;
}

pub type ArchiverSlot = Arc<std::sync::OnceLock<Arc<dyn Archiver>>>;

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            wire: ContentType::Json,
            tick_every: Duration::from_secs(1),
            checkpoint_every: Duration::from_secs(1),
            auditor: None,
            checkpoint_stream: None,
            event_stream: None,
            archiver: ArchiverSlot::default(),
            ack_after_stream: false,
            on_storage_failure: None,
            ledger_stream: None,
            on_fenced: None,
            may_append: None,
        }
    }
}

/// Work for the engine thread: one request, or a client's batch whose
/// items go into the same engine batch (one transaction) and come back
/// together.
enum Job {
    One {
        request: Request,
        reply: oneshot::Sender<Outcome>,
    },
    Many {
        requests: Vec<Request>,
        reply: oneshot::Sender<Vec<Outcome>>,
    },
}

impl Job {
    fn len(&self) -> usize {
        match self {
            Job::One { .. } => 1,
            Job::Many { requests, .. } => requests.len(),
        }
    }
}

/// Where the outcomes of one job go once its batch has committed.
enum Waiting {
    One(oneshot::Sender<Outcome>),
    Many(usize, oneshot::Sender<Vec<Outcome>>),
}

/// One outcome per request, in order: each job takes its own.
fn answer(replies: Vec<Waiting>, outcomes: Vec<Outcome>) {
    let mut outcomes = outcomes.into_iter();
    for waiting in replies {
        match waiting {
            Waiting::One(reply) => {
                if let Some(outcome) = outcomes.next() {
                    let _ = reply.send(outcome);
                }
            }
            Waiting::Many(n, reply) => {
                let _ = reply.send(outcomes.by_ref().take(n).collect());
            }
        }
    }
}

/// A committed batch's replies, waiting until the stream holds its events
/// up to ledger seq `upto`.
struct Held {
    upto: u64,
    replies: Vec<Waiting>,
    outcomes: Vec<Outcome>,
}

/// Answers held batches in order as the outbox confirms their events in
/// the stream. If the publisher ends first (shutdown with the stream
/// away), the events stay committed and are published at the next start;
/// the clients hear so and a retry (same id) gets the original outcome.
async fn release_when_stored(
    mut held: mpsc::Receiver<Held>,
    mut stored: watch::Receiver<u64>,
    mut stopping: watch::Receiver<bool>,
) {
    while let Some(h) = held.recv().await {
        let waited = tokio::select! {
            waited = stored.wait_for(|seq| *seq >= h.upto) => Some(waited.is_ok()),
            _ = stopping.wait_for(|s| *s) => None,
        };
        let confirmed = waited.unwrap_or_else(|| *stored.borrow() >= h.upto);
        if confirmed {
            answer(h.replies, h.outcomes);
            continue;
        }
        let unconfirmed = ErrorReply::new(
            ErrorCode::Unavailable,
            format!(
                "committed at ledger seq {} but not yet stored in {}: retry with the same id for the original outcome",
                h.upto,
                subject::EVENTS_STREAM
            ),
        );
        let outcomes = h
            .outcomes
            .iter()
            .map(|_| Err(unconfirmed.clone()))
            .collect();
        answer(h.replies, outcomes);
    }
}

struct Committed {
    /// With their ledger seqs; empty when an outbox publishes them (it
    /// reads them back from the ledger, so the queue holds no event bodies
    /// however far the stream falls behind).
    events: Vec<(u64, Envelope<Event>)>,
    head: Head,
    /// The Merkle tree at `head` (its root is computed only for the
    /// checkpoints actually signed, at most one a second).
    tree: Frontier,
    /// The batch changed the keys in force: checkpointed at once.
    lifecycle: bool,
}

/// A change of the keys in force: what an attacker would most like to
/// rewrite, so it is checkpointed at once.
fn changes_keys(event: &Event) -> bool {
    matches!(
        event,
        Event::KeyRotate(_)
            | Event::KeyRollback(_)
            | Event::KeyRetired(_)
            | Event::KeyRevoked(_)
            | Event::GraceChanged(_)
            | Event::KeyExpirySet(_)
    )
}

/// Signs checkpoints and hands them to witnesses.
#[derive(Debug, Clone)]
pub struct Auditor {
    pub key: tes_audit::AuditKey,
    pub witnesses: Vec<Arc<dyn tes_audit::Witness>>,
}

/// A way to hand requests to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Job>,
}

/// What a caller hears when the engine thread has stopped.
fn gone() -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Unavailable,
        "Version Management is shutting down",
    )
}

impl EngineHandle {
    pub async fn call(&self, request: Request) -> Outcome {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::One { request, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Hands `requests` to the engine together: they are decided in order
    /// in one engine batch, committed in one transaction, and answered one
    /// outcome each, in order.
    pub async fn call_many(&self, requests: Vec<Request>) -> Result<Vec<Outcome>, ErrorReply> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Many { requests, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// Version Management, running.
pub struct Running {
    handle: EngineHandle,
    /// Set at stop: held replies stop waiting for the stream.
    stopping: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    publisher: JoinHandle<()>,
    engine: std::thread::JoinHandle<Engine>,
}

impl Running {
    /// A handle for in-process callers (the demo, tests).
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Stops taking commands, lets requests in flight finish, publishes
    /// what was committed, and returns the engine (and its ledger lock).
    pub async fn stop(self) -> Engine {
        // Replies held for a stream that is away would keep their
        // requests' engine handles, so the engine would never see its
        // queue close and the stop would wait for the stream for ever.
        // They are answered "not yet stored, retry" instead; what is
        // committed is published at the next start.
        let _ = self.stopping.send(true);
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        drop(self.handle);
        let engine = tokio::task::spawn_blocking(move || self.engine.join())
            .await
            .expect("join task")
            .expect("engine thread panicked");
        let _ = self.publisher.await;
        engine
    }
}

/// Starts the engine thread and the actor's tasks on `bus`.
pub async fn start(
    engine: Engine,
    bus: Arc<dyn Bus>,
    config: ActorConfig,
) -> Result<Running, tes_bus::BusError> {
    let open = |name| {
        Outbox::open(engine.ledger().path(), name)
            .map(std::sync::Mutex::new)
            .map_err(|e| tes_bus::BusError::Transport(e.to_string()))
    };
    let outbox = match &config.event_stream {
        Some(stream) => Some(Outboxes {
            events: (open(OUTBOX)?, stream.clone()),
            ledger: match &config.ledger_stream {
                Some(ledger) => Some((open(LEDGER_OUTBOX)?, ledger.clone())),
                None => None,
            },
            on_fenced: config.on_fenced.clone(),
            may_append: config.may_append.clone(),
        }),
        None => None,
    };
    let (tx, rx) = mpsc::channel::<Job>(MAX_BATCH * 8);
    let (committed_tx, committed_rx) = mpsc::unbounded_channel();
    let step_down = config.on_storage_failure.clone();
    let keep_events = outbox.is_none();
    // How far the stream has confirmed (the outbox cursor), for replies
    // that wait for it.
    let cursor = match &outbox {
        Some(o) => o
            .confirmed()
            .map_err(|e| tes_bus::BusError::Transport(e.to_string()))?,
        None => 0,
    };
    let (stored_tx, stored_rx) = watch::channel(cursor);
    let (stopping, stopping_rx) = watch::channel(false);
    let hold = if config.ack_after_stream && outbox.is_some() {
        let (hold_tx, hold_rx) = mpsc::channel::<Held>(MAX_HELD);
        tokio::spawn(release_when_stored(hold_rx, stored_rx.clone(), stopping_rx));
        Some((hold_tx, stored_rx))
    } else {
        None
    };
    let engine_ledger_path = engine.ledger().path().to_path_buf();
    let (latest_tx, latest_rx) = watch::channel(None);
    let engine = std::thread::Builder::new()
        .name("tes-0x6001-engine".into())
        .spawn(move || engine_loop(engine, rx, committed_tx, keep_events, hold, step_down))
        .expect("spawn engine thread");
    let handle = EngineHandle { tx };
    // One subscription, in the signers' queue group: a `sign` request goes
    // to one member of the group (this writer or a replica, which subscribe
    // to `sign` only); every other verb matches this subscription alone.
    let mut commands = bus
        .subscribe(&subject::commands_of(THREAD), Some(subject::SIGNERS_QUEUE))
        .await?;
    let listener = {
        let (bus, handle) = (bus.clone(), handle.clone());
        let archiver = config.archiver.clone();
        let ledger_path: Arc<std::path::Path> = Arc::from(engine_ledger_path.as_path());
        // The read-only verbs (history, audit) read beside the engine.
        let reads = AuditSource {
            ledger_path,
            auditor: config.auditor.clone(),
            latest: latest_rx,
            walking: Arc::default(),
        };
        tokio::spawn(async move {
            while let Some(message) = commands.next().await {
                let (bus, handle, archiver) = (bus.clone(), handle.clone(), archiver.clone());
                let reads = reads.clone();
                tokio::spawn(
                    async move { serve(&*bus, &handle, &archiver, &reads, &message).await },
                );
            }
        })
    };
    let ticker = {
        let handle = handle.clone();
        let every = config.tick_every;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if let Err(e) = handle.call(Request::Tick).await {
                    tracing::warn!(error = %e, "tick failed");
                }
            }
        })
    };
    let heartbeat = {
        let (handle, bus, wire) = (handle.clone(), bus.clone(), config.wire);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                interval.tick().await;
                let Ok(Response::Status(status)) = handle.call(Request::Status(None)).await else {
                    continue;
                };
                let held = status
                    .keys
                    .into_iter()
                    .filter(|k| k.held)
                    .map(|k| HeldKey {
                        version: k.version,
                        fingerprint: k.fingerprint,
                    })
                    .collect();
                heartbeat_publish(&*bus, wire, WRITER, held).await;
            }
        })
    };
    let publisher = tokio::spawn(publish_committed(
        bus,
        committed_rx,
        config,
        outbox,
        stored_tx,
        latest_tx,
    ));
    Ok(Running {
        handle,
        stopping,
        tasks: vec![listener, ticker, heartbeat],
        publisher,
        engine,
    })
}

fn engine_loop(
    mut engine: Engine,
    mut rx: mpsc::Receiver<Job>,
    committed: mpsc::UnboundedSender<Committed>,
    keep_events: bool,
    hold: Option<(mpsc::Sender<Held>, watch::Receiver<u64>)>,
    step_down: Option<StepDown>,
) -> Engine {
    while let Some(first) = rx.blocking_recv() {
        let mut size = first.len();
        let mut jobs = vec![first];
        while size < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    size += job.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut requests = Vec::with_capacity(size);
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            match job {
                Job::One { request, reply } => {
                    requests.push(request);
                    replies.push(Waiting::One(reply));
                }
                Job::Many {
                    requests: many,
                    reply,
                } => {
                    replies.push(Waiting::Many(many.len(), reply));
                    requests.extend(many);
                }
            }
        }
        let (outcomes, events) = engine.handle_batch(requests);
        let appended = !events.is_empty();
        if let Some(StepDown(step_down)) = &step_down {
            let failed = outcomes
                .iter()
                .find_map(|o| o.as_ref().err().filter(|e| e.code == ErrorCode::Storage));
            if let (false, Some(error)) = (appended, failed) {
                step_down(&error.message);
            }
        }
        if appended {
            let lifecycle = events.iter().any(|(_, e)| changes_keys(&e.body));
            let _ = committed.send(Committed {
                events: if keep_events { events } else { Vec::new() },
                head: engine.head(),
                tree: engine.ledger().frontier().clone(),
                lifecycle,
            });
        }
        // A reply waits for the stream when its batch appended, and also
        // when it was answered from events already in the ledger but maybe
        // not yet in the stream (a retry of a request whose first reply was
        // lost while the stream was away must not be acknowledged before
        // its record is replicated). Reads (status, and anything else that
        // neither appended nor replayed) and refusals are answered at once:
        // they acknowledge nothing, and holding a refusal kept a writer
        // whose disk was full from ever finishing its stop.
        let must_wait = hold.as_ref().is_some_and(|(_, stored)| {
            appended || (engine.answered_from_ledger() && *stored.borrow() < engine.head().seq)
        });
        match &hold {
            Some((hold, _)) if must_wait => {
                let held = Held {
                    upto: engine.head().seq,
                    replies,
                    outcomes,
                };
                // Blocks while MAX_HELD batches wait for the stream.
                if let Err(mpsc::error::SendError(h)) = hold.blocking_send(held) {
                    answer(h.replies, h.outcomes);
                }
            }
            _ => answer(replies, outcomes),
        }
    }
    engine
}

/// The name of Version Management's cursor in the ledger's outbox table.
pub const OUTBOX: &str = "TES_EVENTS";
/// Events sent to JetStream per round trip.
const OUTBOX_CHUNK: usize = 256;

/// Publishes committed events in ledger order: through the outbox into
/// JetStream when there is an event stream, else straight onto the bus.
/// Ends when the engine thread has ended and everything is out.
async fn publish_committed(
    bus: Arc<dyn Bus>,
    mut rx: mpsc::UnboundedReceiver<Committed>,
    config: ActorConfig,
    outbox: Option<Outboxes>,
    stored: watch::Sender<u64>,
    latest: watch::Sender<Option<(Timestamp, tes_audit::SignedCheckpoint)>>,
) {
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checkpoint_tick = tokio::time::interval(config.checkpoint_every);
    checkpoint_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The newest head not yet checkpointed.
    let mut unsigned: Option<(Head, Frontier)> = None;
    let (witness_tx, witness_task) = match &config.auditor {
        Some(auditor) => {
            let (tx, rx) = tokio::sync::watch::channel(None);
            (
                Some(tx),
                Some(tokio::spawn(feed_witnesses(auditor.clone(), rx))),
            )
        }
        None => (None, None),
    };
    let checkpoint = |head: Head, tree: Frontier| {
        let root = tree.root();
        let signed = config
            .auditor
            .as_ref()
            .map(|a| tes_audit::SignedCheckpoint::sign(&a.key, head.seq, root));
        if let (Some(tx), Some(signed)) = (&witness_tx, &signed) {
            let _ = tx.send(Some(signed.clone()));
        }
        if let Some(signed) = &signed {
            latest.send_replace(Some((Timestamp::now(), signed.clone())));
        }
        let body = Event::Checkpoint(Checkpoint {
            seq: head.seq,
            hash: head.hash_hex(),
            root: tes_ledger::chain::to_hex(&root),
            note: signed.map(|s| s.note).unwrap_or_default(),
        });
        let bus = bus.clone();
        let wire = config.wire;
        let stream = config.checkpoint_stream.clone();
        async move {
            let event = bus_event(body);
            match stream {
                Some(stream) => {
                    if let Err(error) = stream.publish(wire, &event).await {
                        tracing::warn!(%error, "checkpoint not stored in the checkpoint stream; the next one will be");
                    }
                }
                None => {
                    let _ = publish_event(&*bus, wire, &event).await;
                }
            }
        }
    };
    // A checkpoint signs only what the event stream has stored: a writer
    // lost before publishing its tail has signed nothing a successor's
    // history contradicts (that tail is set aside, see standby.rs).
    let has_outbox = outbox.is_some();
    let published = |head: &Head| !has_outbox || *stored.borrow() >= head.seq;
    if let Some(outbox) = &outbox {
        while drain(outbox, config.wire, &stored).await {}
    }
    loop {
        // Biased: a due checkpoint first (once per period, so a steady
        // queue cannot starve it), then the queue, then the retry. With the
        // queue before the retry, the loop ends as soon as the engine has
        // ended; unbiased, a due retry won half the draws and with the
        // stream away each costs an ack timeout (5 s), so a stop could take
        // many of them (a CI run waited over 20 s).
        let batch = tokio::select! {
            biased;
            _ = checkpoint_tick.tick(), if unsigned.is_some() => {
                if let Some((head, tree)) = unsigned.take() {
                    if published(&head) {
                        checkpoint(head, tree).await;
                    } else {
                        unsigned = Some((head, tree));
                    }
                }
                continue;
            }
            batch = rx.recv() => batch,
            _ = retry.tick(), if outbox.is_some() => {
                if let Some(outbox) = &outbox {
                    while drain(outbox, config.wire, &stored).await && rx.is_empty() {}
                }
                continue;
            }
        };
        let Some(mut batch) = batch else { break };
        match &outbox {
            Some(outbox) => {
                // The outbox reads the events from the ledger: what queued
                // up meanwhile is only heads, folded into the newest.
                while let Ok(next) = rx.try_recv() {
                    batch = Committed {
                        lifecycle: batch.lifecycle || next.lifecycle,
                        ..next
                    };
                }
                // Behind: go on sending until caught up or more queues up.
                while drain(outbox, config.wire, &stored).await && rx.is_empty() {}
            }
            None => {
                for (seq, event) in &batch.events {
                    if let Err(error) = publish_ledgered(&*bus, config.wire, *seq, event).await {
                        tracing::warn!(%error, kind = event.body.kind(), "could not publish event");
                    }
                }
            }
        }
        if batch.lifecycle && published(&batch.head) {
            unsigned = None;
            checkpoint(batch.head, batch.tree).await;
        } else {
            unsigned = Some((batch.head, batch.tree));
        }
    }
    if let Some(outbox) = &outbox {
        while drain(outbox, config.wire, &stored).await {}
    }
    if let Some((head, tree)) = unsigned.take().filter(|(head, _)| published(head)) {
        checkpoint(head, tree).await;
    }
    drop(witness_tx);
    if let Some(task) = witness_task {
        let _ = task.await;
    }
}

/// Hands the newest signed checkpoint to every witness. A slow or absent
/// witness skips to the newest when it is back (each checkpoint covers all
/// before it); the last one is written before the task ends.
async fn feed_witnesses(
    auditor: Auditor,
    mut rx: tokio::sync::watch::Receiver<Option<tes_audit::SignedCheckpoint>>,
) {
    let mut written = None;
    loop {
        let ended = rx.changed().await.is_err();
        let latest = rx.borrow_and_update().clone();
        // At the end the last value is seen again: written once is enough.
        if let Some(signed) = latest.filter(|s| written != Some(s.checkpoint.size)) {
            written = Some(signed.checkpoint.size);
            for witness in &auditor.witnesses {
                if let Err(error) = witness.put(&signed).await {
                    tracing::warn!(witness = %witness.describe(), %error, size = signed.checkpoint.size, "checkpoint not written to a witness; the next one will be");
                }
            }
        }
        if ended {
            return;
        }
    }
}

/// Chunks one drain sends before it returns, so that under sustained load
/// the publisher still takes in (and folds) what queued up and signs its
/// checkpoints; the rest goes on the next call.
const DRAIN_CHUNKS: usize = 64;

/// The cursor of the writer's appends to `TES_LEDGER` (on a cluster).
pub const LEDGER_OUTBOX: &str = "TES_LEDGER";

/// Where committed events go, each with its cursor in the ledger file: on
/// a cluster first `TES_LEDGER` (fenced), then `TES_EVENTS`; else
/// `TES_EVENTS` alone.
struct Outboxes {
    events: (std::sync::Mutex<Outbox>, EventStream),
    ledger: Option<(std::sync::Mutex<Outbox>, LedgerStream)>,
    on_fenced: Option<StepDown>,
    may_append: Option<watch::Receiver<bool>>,
}

fn locked(outbox: &std::sync::Mutex<Outbox>) -> std::sync::MutexGuard<'_, Outbox> {
    outbox.lock().expect("outbox lock poisoned")
}

impl Outboxes {
    /// The last seq every stream has stored.
    fn confirmed(&self) -> Result<u64, tes_ledger::LedgerError> {
        let events = locked(&self.events.0).cursor()?;
        match &self.ledger {
            Some((outbox, _)) => Ok(events.min(locked(outbox).cursor()?)),
            None => Ok(events),
        }
    }
}

/// What one [`send_chunk`] did.
struct Sent {
    /// A full chunk went: there may be more.
    full: bool,
    /// The outbox cursor now.
    cursor: u64,
}

/// Sends one chunk after `outbox`'s cursor (no further than `upto`) with
/// `send`, and advances the cursor past what was stored. With `chained`,
/// `send` also gets the id of the event at the cursor (what the first one
/// sent follows: `TES_LEDGER`'s fence).
async fn send_chunk<E: std::fmt::Display, F, Fut>(
    outbox: &std::sync::Mutex<Outbox>,
    upto: u64,
    chained: bool,
    send: F,
) -> Result<Sent, Option<E>>
where
    F: FnOnce(Option<MsgId>, Vec<(u64, Envelope<Event>)>) -> Fut,
    Fut: std::future::Future<Output = (Vec<(u64, Envelope<Event>)>, usize, Option<E>)>,
{
    // SQLite calls are brief; the lock is never held across an await.
    let read = {
        let guard = locked(outbox);
        guard.cursor().and_then(|c| {
            let from = if chained { c.saturating_sub(1) } else { c };
            Ok((c, guard.after(from, OUTBOX_CHUNK + 1)?))
        })
    };
    let (cursor, mut pending) = match read {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(%error, "cannot read the outbox");
            return Err(None);
        }
    };
    let previous = match pending.first() {
        Some((seq, event)) if chained && cursor > 0 && *seq == cursor => Some(event.id),
        _ => None,
    };
    pending.retain(|(seq, _)| *seq > cursor && *seq <= upto);
    pending.truncate(OUTBOX_CHUNK);
    if pending.is_empty() {
        return Ok(Sent {
            full: false,
            cursor,
        });
    }
    let (pending, stored, error) = send(previous, pending).await;
    let mut now = cursor;
    if stored > 0 {
        now = pending[stored - 1].0;
        if let Err(error) = locked(outbox).advance(now) {
            tracing::error!(%error, "cannot advance the outbox cursor");
            return Err(None);
        }
    }
    match error {
        Some(error) => {
            tracing::warn!(%error, behind = pending.len() - stored, "events not yet in the stream; will retry");
            Err(Some(error))
        }
        None => Ok(Sent {
            full: pending.len() == OUTBOX_CHUNK,
            cursor: now,
        }),
    }
}

/// Sends what follows the outbox cursors (up to [`DRAIN_CHUNKS`] chunks):
/// on a cluster to `TES_LEDGER` first, fenced, then what it holds to
/// `TES_EVENTS`. A failure (NATS away) leaves the rest for the next try; a
/// resend after a partial success is de-duplicated by the streams
/// (`Nats-Msg-Id` = event id; `TES_LEDGER` also by its seq). A refused
/// append (another writer) calls `on_fenced`. True when it stopped at the
/// cap with more to send.
async fn drain(outboxes: &Outboxes, ct: ContentType, confirmed: &watch::Sender<u64>) -> bool {
    for _ in 0..DRAIN_CHUNKS {
        let mut more = false;
        let upto = match &outboxes.ledger {
            Some(_) if outboxes.may_append.as_ref().is_some_and(|m| !*m.borrow()) => {
                // The lease may lapse: nothing more goes to TES_LEDGER (nor,
                // after it, to TES_EVENTS) until it is renewed.
                return false;
            }
            Some((outbox, ledger)) => {
                let sent = send_chunk(outbox, u64::MAX, true, |previous, pending| async move {
                    let (stored, error) = ledger.append(ct, previous, &pending).await;
                    (pending, stored, error)
                })
                .await;
                match sent {
                    Ok(sent) => {
                        more |= sent.full;
                        sent.cursor
                    }
                    Err(Some(error @ AppendError::Fenced { .. })) => {
                        tracing::error!(%error, "stopping: another writer appended to the replicated ledger");
                        if let Some(StepDown(fenced)) = &outboxes.on_fenced {
                            fenced(&error.to_string());
                        }
                        return false;
                    }
                    Err(_) => return false,
                }
            }
            None => u64::MAX,
        };
        let (outbox, stream) = &outboxes.events;
        let sent = send_chunk(outbox, upto, false, |_, pending| async move {
            let (stored, error) = stream.publish_all(ct, &pending).await;
            (pending, stored, error)
        })
        .await;
        match sent {
            Ok(sent) => {
                more |= sent.full;
                // Both streams hold everything up to here.
                confirmed.send_replace(sent.cursor.min(upto));
            }
            Err(_) => return false,
        }
        if !more {
            return false;
        }
    }
    true
}

/// Says that signer `name` is alive and holds `held` (bus-only).
pub(crate) async fn heartbeat_publish(
    bus: &dyn Bus,
    wire: ContentType,
    name: &str,
    held: Vec<HeldKey>,
) {
    let body = Event::SignerHeartbeat(SignerHeartbeat {
        signer: name.to_string(),
        held,
    });
    if let Err(e) = publish_event(bus, wire, &bus_event(body)).await {
        tracing::debug!(error = %e, "heartbeat not published");
    }
}

fn bus_event(body: Event) -> Envelope<Event> {
    Envelope::new(
        MsgId::generate(),
        Timestamp::now(),
        THREAD,
        Channel::Event,
        body,
    )
}

/// Handles one command message end to end.
async fn serve(
    bus: &dyn Bus,
    engine: &EngineHandle,
    archiver: &ArchiverSlot,
    reads: &AuditSource,
    message: &Message,
) {
    let verb = subject::parse(&message.subject).map(|p| p.last);
    match verb {
        Some(verb::ARCHIVE) => serve_archive(bus, archiver, message).await,
        Some(verb::HISTORY) => serve_history(bus, reads.ledger_path.clone(), message).await,
        Some(verb::AUDIT) => serve_audit(bus, reads, message).await,
        Some(verb::SIGN) => serve_as::<Sign>(bus, engine, message, Request::Sign, sign_reply).await,
        Some(verb::VERIFY) => {
            serve_as::<Verify>(bus, engine, message, Request::Verify, verify_reply).await
        }
        Some(verb::SIGN_BATCH) => {
            serve_batch::<SignBatch>(bus, engine, message, Request::Sign, sign_reply).await
        }
        Some(verb::VERIFY_BATCH) => {
            serve_batch::<VerifyBatch>(bus, engine, message, Request::Verify, verify_reply).await
        }
        Some(verb::BUMP) => {
            serve_as::<Bump>(bus, engine, message, Request::Bump, |r| match r {
                Response::Bump(b) => Some(b),
                _ => None,
            })
            .await
        }
        Some(verb::ROTATE) => {
            serve_as::<Rotate>(bus, engine, message, Request::Rotate, |r| match r {
                Response::Rotation(b) => Some(b),
                _ => None,
            })
            .await
        }
        Some(verb::ROLLBACK) => {
            serve_as::<Rollback>(bus, engine, message, Request::Rollback, |r| match r {
                Response::Rotation(b) => Some(b),
                _ => None,
            })
            .await
        }
        Some(verb::REVOKE) => {
            serve_as::<Revoke>(bus, engine, message, Request::Revoke, |r| match r {
                Response::Revoke(b) => Some(b),
                _ => None,
            })
            .await
        }
        Some(verb::GRACE) => {
            serve_as::<Grace>(bus, engine, message, Request::Grace, |r| match r {
                Response::Grace(b) => Some(b),
                _ => None,
            })
            .await
        }
        Some(verb::RECORD) => {
            serve_as::<Record>(bus, engine, message, Request::Record, |r| match r {
                Response::Record(s) => Some(s),
                _ => None,
            })
            .await
        }
        Some(verb::STATUS) => {
            serve_as::<Status>(
                bus,
                engine,
                message,
                |e| Request::Status(e.body.applied),
                |r| match r {
                    Response::Status(s) => Some(s),
                    _ => None,
                },
            )
            .await
        }
        _ => {
            let error = ErrorReply::new(
                ErrorCode::UnknownVerb,
                format!("unknown command subject {:?} (verbs: rotate, rollback, revoke, grace, sign, verify, sign_batch, verify_batch, bump, status, archive, history, audit)", message.subject),
            );
            refuse::<()>(bus, THREAD, message, ContentType::Json, error).await;
        }
    }
}

/// The audit view; with `verify`, a full walk (one at a time).
async fn serve_audit(bus: &dyn Bus, source: &AuditSource, message: &Message) {
    serve_beside::<Audit, _, _>(bus, message, |request| source.report(request.verify)).await
}

/// The newest ledger events, read on a reader connection off the async
/// workers: the engine is not asked and nothing is written.
async fn serve_history(bus: &dyn Bus, ledger_path: Arc<std::path::Path>, message: &Message) {
    serve_beside::<History, _, _>(bus, message, |request| async move {
        tokio::task::spawn_blocking(move || crate::history::read(&ledger_path, &request))
            .await
            .unwrap_or_else(|e| {
                Err(ErrorReply::new(
                    ErrorCode::Unavailable,
                    format!("the ledger read did not finish: {e}"),
                ))
            })
    })
    .await
}

/// An archive pass can take minutes: it runs in the bundle worker, and the
/// reply comes when it is done (progress is in the `archive_batch` and
/// `bundle_archived` events meanwhile).
async fn serve_archive(bus: &dyn Bus, archiver: &ArchiverSlot, message: &Message) {
    serve_beside::<Archive, _, _>(bus, message, |request| async move {
        let Some(archiver) = archiver.get() else {
            return Err(ErrorReply::new(
                ErrorCode::Unavailable,
                "bundles are off on this daemon (--bundle-store none): there is nothing to archive",
            ));
        };
        archiver.archive(request).await
    })
    .await
}

/// A command answered beside the engine (archive, history, audit): decoded
/// (malformed: refused, naming the verb), run, and its reply or refusal
/// sent back in the caller's wire form.
async fn serve_beside<C, F, Fut>(bus: &dyn Bus, message: &Message, run: F)
where
    C: CommandBody,
    F: FnOnce(C) -> Fut,
    Fut: std::future::Future<Output = Result<C::Reply, ErrorReply>>,
{
    let (ct, envelope) = match decode_command::<C>(message, THREAD) {
        Ok(decoded) => decoded,
        Err(e) => {
            let error = ErrorReply::new(
                ErrorCode::Malformed,
                format!("{} command refused: {e}", C::VERB),
            );
            return refuse::<C::Reply>(bus, THREAD, message, ContentType::Json, error).await;
        }
    };
    match run(envelope.body).await {
        Ok(reply) => {
            if let Err(error) = respond(bus, message, ct, &Reply::Ok(reply)).await {
                tracing::warn!(%error, "could not send reply");
            }
        }
        Err(error) => refuse::<C::Reply>(bus, THREAD, message, ct, error).await,
    }
}

/// The items of batch `id` as commands of their own: item `i` has id
/// [`MsgId::item`]`(id, i)` (the same on a retry) and is correlated with
/// the batch, so its audit events point back to it.
pub(crate) fn item_commands<I>(
    id: MsgId,
    time: Timestamp,
    correlation: Option<MsgId>,
    items: Vec<I>,
) -> Vec<Envelope<I>> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let mut item = Envelope::new(
                MsgId::item(id, i as u32),
                time,
                THREAD,
                Channel::Command,
                body,
            );
            item.correlation_id = Some(correlation.unwrap_or(id));
            item
        })
        .collect()
}

/// Reads a batch and takes it apart into its item commands (see
/// [`item_commands`]); a batch that cannot be read, is empty or is too
/// large is refused here, as a whole (`None`: already answered). The
/// writer and the signer replicas both start a batch with it.
pub(crate) async fn open_batch<B: BatchCommand>(
    bus: &dyn Bus,
    message: &Message,
) -> Option<(ContentType, Vec<Envelope<B::Item>>)> {
    let (ct, envelope) = match decode_command::<B>(message, THREAD) {
        Ok(decoded) => decoded,
        Err(e) => {
            let error = ErrorReply::new(
                ErrorCode::Malformed,
                format!("{} command refused: {e}", B::VERB),
            );
            refuse::<B::Reply>(bus, THREAD, message, ContentType::Json, error).await;
            return None;
        }
    };
    if let Some(why) = envelope.body.refusal() {
        let error = ErrorReply::new(ErrorCode::Malformed, why);
        refuse::<B::Reply>(bus, THREAD, message, ct, error).await;
        return None;
    }
    let (id, time, correlation) = (envelope.id, envelope.time, envelope.correlation_id);
    let items = item_commands(id, time, correlation, envelope.body.into_items());
    Some((ct, items))
}

/// A batch on the writer: its items handed to the engine together (one
/// engine batch, one transaction); one result per item, in order.
async fn serve_batch<B: BatchCommand>(
    bus: &dyn Bus,
    engine: &EngineHandle,
    message: &Message,
    wrap: fn(Envelope<B::Item>) -> Request,
    unwrap: fn(Response) -> Option<<B::Item as CommandBody>::Reply>,
) {
    let Some((ct, items)) = open_batch::<B>(bus, message).await else {
        return;
    };
    match engine
        .call_many(items.into_iter().map(wrap).collect())
        .await
    {
        Ok(outcomes) => {
            let results = outcomes
                .into_iter()
                .map(|o| {
                    Reply::from(o.map(|r| {
                        unwrap(r)
                            .expect("the engine answers each request with its own response type")
                    }))
                })
                .collect();
            if let Err(error) = respond(bus, message, ct, &Reply::Ok(B::reply(results))).await {
                tracing::warn!(%error, "could not send reply");
            }
        }
        Err(error) => refuse::<B::Reply>(bus, THREAD, message, ct, error).await,
    }
}

/// What a sign or verify request was answered with (single or in a batch).
fn sign_reply(r: Response) -> Option<SignReply> {
    match r {
        Response::Sign(s) => Some(s),
        _ => None,
    }
}

fn verify_reply(r: Response) -> Option<VerifyReply> {
    match r {
        Response::Verify(v) => Some(v),
        _ => None,
    }
}

async fn serve_as<C: CommandBody>(
    bus: &dyn Bus,
    engine: &EngineHandle,
    message: &Message,
    wrap: fn(Envelope<C>) -> Request,
    unwrap: fn(Response) -> Option<C::Reply>,
) {
    let (ct, envelope) = match decode_command::<C>(message, THREAD) {
        Ok(decoded) => decoded,
        Err(e) => {
            let error = ErrorReply::new(
                ErrorCode::Malformed,
                format!("{} command refused: {e}", C::VERB),
            );
            return refuse::<C::Reply>(bus, THREAD, message, ContentType::Json, error).await;
        }
    };
    match engine.call(wrap(envelope)).await {
        Ok(response) => {
            let reply = unwrap(response)
                .expect("the engine answers each request with its own response type");
            if let Err(error) = respond(bus, message, ct, &Reply::Ok(reply)).await {
                tracing::warn!(%error, "could not send reply");
            }
        }
        Err(error) => refuse::<C::Reply>(bus, THREAD, message, ct, error).await,
    }
}
