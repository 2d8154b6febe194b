//! The bundle worker: the part of Version Management (0x6001) that keeps
//! the store in step with the ledger. It runs beside the engine, in the
//! ledger writer's process, as two tasks:
//!
//! - the **writer** follows the ledger from its own cursor (`BUNDLES` in the
//!   ledger file's outbox table), writes each bump's bundle, advances the
//!   cursor only once the store has them (a crash rewrites the same bytes),
//!   watches the expiry of the active version's bundles and asks the engine
//!   to move signing on when one has passed;
//! - the **archiver** runs archive passes ([`crate::archive`]): for a
//!   version that retired (once the writer has written everything signed
//!   before the retirement), for what is left open at start-up, and for
//!   `tes archive` (`tes.cmd.0x6001.archive`).
//!
//! Neither ever blocks signing: a store that is down delays bundles and
//! archives, logged and retried with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use tes_ledger::Outbox;
use tes_proto::command::Archive;
use tes_proto::envelope::Clock;
use tes_proto::reply::{ArchiveReply, KeyStatus};
use tes_proto::{Envelope, ErrorCode, ErrorReply, Event, KeyVersion, Timestamp};
use tes_version_management::actor::{Archiver, EngineHandle};
use tes_version_management::core::{Command, State};
use tes_version_management::engine::Request;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::archive::{self, Limits};
use crate::bundle::{meta, parse_expiry, Bundle, Deriver, Ttl};
use crate::layout::bundle_prefix;
use crate::store::{Store, StoreError};

/// The writer's cursor in the ledger's outbox table.
pub const CURSOR: &str = "BUNDLES";
/// Ledger events read per round.
const CHUNK: usize = 256;
/// Bundles written at once.
const WRITE_CONCURRENCY: usize = 16;
/// How long the writer sleeps when it has caught up.
const IDLE: Duration = Duration::from_millis(100);
/// How often the earliest known expiry is compared with the clock.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);
/// When a listing for expiries failed, the next try.
const SCAN_RETRY: Duration = Duration::from_secs(30);
/// The longest wait between retries against a store that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub ledger_path: PathBuf,
    pub ttl: Ttl,
    pub limits: Limits,
    /// Archive a version as soon as it retires (and finish open batches at
    /// start-up). Off: only `tes archive` moves bundles.
    pub auto_archive: bool,
    /// How often the active version's bundles are listed again for their
    /// expiry (bundles the worker writes are tracked as it writes them).
    pub expiry_scan_every: Duration,
}

/// The running worker; dropping it does not stop it, [`Worker::stop`] does.
pub struct Worker {
    writer: JoinHandle<()>,
    archiver: JoinHandle<()>,
    jobs: mpsc::Sender<Job>,
    stopping: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

/// What the archiver is asked to do.
enum Job {
    /// A version left the verifying set and its bundles are all written.
    Retired(KeyVersion),
    Request {
        request: Archive,
        reply: oneshot::Sender<Result<ArchiveReply, ErrorReply>>,
    },
}

/// Serves the `archive` verb by handing it to the archiver task.
#[derive(Debug, Clone)]
pub struct ArchiveHandle {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Retired(v) => write!(f, "Retired({v})"),
            Job::Request { request, .. } => write!(f, "Request({request:?})"),
        }
    }
}

#[async_trait::async_trait]
impl Archiver for ArchiveHandle {
    async fn archive(&self, request: Archive) -> Result<ArchiveReply, ErrorReply> {
        let gone = || ErrorReply::new(ErrorCode::Unavailable, "the bundle worker has stopped");
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Request { request, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

impl Worker {
    /// Starts the writer and the archiver against an opened store.
    pub fn start(
        store: Store,
        engine: EngineHandle,
        config: WorkerConfig,
        clock: Clock,
    ) -> Result<Worker, tes_ledger::LedgerError> {
        let outbox = Outbox::open(&config.ledger_path, CURSOR)?;
        let (jobs, jobs_rx) = mpsc::channel(64);
        let stopping = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Notify::new());
        let writer = Writer {
            stopping: stopping.clone(),
            wake: wake.clone(),
            store: store.clone(),
            engine: engine.clone(),
            outbox: Arc::new(Mutex::new(outbox)),
            ttl: config.ttl.clone(),
            jobs: jobs.clone(),
            clock: clock.clone(),
            earliest: BTreeMap::new(),
            active: None,
            retired: BTreeSet::new(),
            scan_every: config.expiry_scan_every,
        };
        let archiver = ArchiverTask {
            store,
            engine,
            limits: config.limits,
            auto: config.auto_archive,
            clock,
        };
        Ok(Worker {
            writer: tokio::spawn(writer.run()),
            archiver: tokio::spawn(archiver.run(jobs_rx)),
            jobs,
            stopping,
            wake,
        })
    }

    pub fn handle(&self) -> ArchiveHandle {
        ArchiveHandle {
            jobs: self.jobs.clone(),
        }
    }

    /// Writes the bundles of what is committed (for up to `flush`, so a
    /// one-shot `tes bump` leaves its bundle), then stops both tasks where
    /// they are. Safe at any point: the cursor and the ledger say what is
    /// done, and the next start goes on from there.
    pub async fn stop(self, flush: Duration) {
        self.archiver.abort();
        let _ = self.archiver.await;
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let mut writer = self.writer;
        if tokio::time::timeout(flush, &mut writer).await.is_err() {
            tracing::warn!(
                "bundle writer still busy after {flush:?}; the next start writes the rest"
            );
            writer.abort();
            let _ = writer.await;
        }
    }
}

struct Writer {
    store: Store,
    engine: EngineHandle,
    outbox: Arc<Mutex<Outbox>>,
    ttl: Ttl,
    jobs: mpsc::Sender<Job>,
    clock: Clock,
    /// The earliest bundle expiry seen per version, and its key.
    earliest: BTreeMap<KeyVersion, (Timestamp, String)>,
    active: Option<KeyVersion>,
    /// Versions that left the verifying set.
    retired: BTreeSet<KeyVersion>,
    scan_every: Duration,
    stopping: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

impl Writer {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(500);
        let mut next_scan = Instant::now();
        let mut next_check = Instant::now();
        match archive::state(&self.engine).await {
            Ok(state) => self.learn(&state),
            Err(e) => tracing::warn!(error = %e, "bundle worker could not read the state"),
        }
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                while let Ok(true) = self.round().await {}
                return;
            }
            if Instant::now() >= next_scan {
                next_scan = Instant::now()
                    + match self.scan_active().await {
                        Ok(()) => self.scan_every,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not read the active version's bundles for their expiry; will retry");
                            SCAN_RETRY.min(self.scan_every)
                        }
                    };
            }
            if Instant::now() >= next_check {
                next_check = Instant::now() + EXPIRY_CHECK;
                self.check_expiry().await;
            }
            match self.round().await {
                Ok(true) => {
                    backoff = Duration::from_millis(500);
                }
                Ok(false) => self.pause(IDLE).await,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "bundles not written yet; signing goes on, will retry");
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.wake.notified() => {}
        }
    }

    fn learn(&mut self, state: &State) {
        self.active = state.active;
        self.retired = state
            .keys
            .iter()
            .filter(|(_, k)| matches!(k.status, KeyStatus::Retired | KeyStatus::Revoked))
            .map(|(v, _)| *v)
            .collect();
    }

    /// Reads what the ledger has after the cursor, writes its bundles, and
    /// advances the cursor. `Ok(false)`: nothing new.
    async fn round(&mut self) -> Result<bool, BundleError> {
        let outbox = self.outbox.clone();
        let (cursor, chunk) = tokio::task::spawn_blocking(move || {
            let outbox = outbox.lock().expect("outbox lock");
            let cursor = outbox.cursor()?;
            outbox.after(cursor, CHUNK).map(|c| (cursor, c))
        })
        .await
        .expect("ledger read task")?;
        if chunk.is_empty() {
            return Ok(false);
        }
        let complete = chunk.len() < CHUNK;
        let mut deriver = Deriver::new(self.ttl.clone());
        let mut bundles = Vec::new();
        let mut retired_here = Vec::new();
        let mut revoked_here = Vec::new();
        let mut upto = cursor;
        for (seq, event) in &chunk {
            if let Some(b) = deriver.observe(*seq, event) {
                bundles.push(b);
            }
            self.follow(event, &mut retired_here);
            if let Event::KeyRevoked(r) = &event.body {
                revoked_here.push((*seq, event.time, r.clone()));
            }
            upto = *seq;
        }
        match deriver.open_since() {
            // At the head: the group's transaction is all there.
            Some(_) if complete => bundles.extend(deriver.finish()),
            // The chunk ends inside a bump's group: read it whole next round.
            Some(since) if since > cursor + 1 => upto = since - 1,
            // One group longer than a chunk cannot happen (a bump signs
            // with at most a few versions); take what there is.
            Some(_) => bundles.extend(deriver.finish()),
            None => {}
        }
        bundles.retain(|b| b.body.seq <= upto);
        revoked_here.retain(|(seq, _, _)| *seq <= upto);
        self.write(&bundles).await?;
        self.mark_revoked(&revoked_here).await?;
        for b in &bundles {
            if let Some(expiry) = b.body.expiry {
                self.note_expiry(b.body.key_version, expiry, &b.key);
            }
        }
        let outbox = self.outbox.clone();
        tokio::task::spawn_blocking(move || outbox.lock().expect("outbox lock").advance(upto))
            .await
            .expect("ledger write task")?;
        // Only now, with every bundle up to here written, may a retired
        // version be archived: learning of the retirement earlier (before
        // a failed write, say) would let a pass run ahead of its bundles.
        // A bundle of a version already retired (the writer was behind) is
        // archived again, so nothing is left under bundle/.
        let late: BTreeSet<KeyVersion> = bundles
            .iter()
            .map(|b| b.body.key_version)
            .filter(|v| self.retired.contains(v))
            .collect();
        let newly: Vec<KeyVersion> = retired_here
            .into_iter()
            .filter(|v| self.retired.insert(*v))
            .collect();
        for v in newly.into_iter().chain(late) {
            let _ = self.jobs.send(Job::Retired(v)).await;
        }
        Ok(true)
    }

    /// Keeps the active version current and collects retirements (taken
    /// in only once the round's bundles are written).
    fn follow(&mut self, event: &Envelope<Event>, retired_here: &mut Vec<KeyVersion>) {
        match &event.body {
            Event::KeyRotate(r) => self.active = Some(r.to),
            Event::KeyRollback(r) => self.active = Some(r.to),
            Event::KeyRetired(r) => retired_here.push(r.version),
            // A revoked version left the verifying set: its bundles are
            // archived like a retired version's (and marked, see below).
            Event::KeyRevoked(r) => {
                if self.active == Some(r.version) {
                    self.active = None;
                }
                retired_here.push(r.version)
            }
            _ => {}
        }
    }

    /// Writes `revoked/v<N>.json` for each revocation (again, harmlessly,
    /// if a round is repeated): the listing that marks the bundles of a
    /// revoked version as no longer trusted.
    async fn mark_revoked(
        &self,
        revoked: &[(u64, Timestamp, tes_proto::event::KeyRevoked)],
    ) -> Result<(), StoreError> {
        for (seq, at, r) in revoked {
            let body = serde_json::json!({
                "keyVersion": r.version,
                "revokedAt": at,
                "reason": r.reason,
                "requestedBy": r.requested_by,
                "seq": seq,
            });
            let bytes = serde_json::to_vec_pretty(&body).expect("json");
            self.store
                .put(
                    &crate::layout::revoked_key(r.version),
                    bytes,
                    vec![
                        ("revoked-at".to_string(), at.to_string()),
                        ("seq".to_string(), seq.to_string()),
                    ],
                )
                .await?;
        }
        Ok(())
    }

    async fn write(&self, bundles: &[Bundle]) -> Result<(), StoreError> {
        // Owned futures: a spawned task cannot hold a stream of borrows.
        let puts: Vec<_> = bundles
            .iter()
            .map(|b| {
                let store = self.store.clone();
                let (key, bytes, metadata) = (b.key.clone(), b.bytes(), b.metadata());
                async move { store.put(&key, bytes, metadata).await }
            })
            .collect();
        futures::stream::iter(puts)
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }

    fn note_expiry(&mut self, v: KeyVersion, expiry: Timestamp, key: &str) {
        let slot = self.earliest.entry(v).or_insert((expiry, key.to_string()));
        if expiry < slot.0 {
            *slot = (expiry, key.to_string());
        }
    }

    /// Lists the active version's bundles and reads their expiry: bundles
    /// written before this start, or by someone else.
    async fn scan_active(&mut self) -> Result<(), StoreError> {
        let Some(active) = self.active else {
            return Ok(());
        };
        let listed = self.store.list(&bundle_prefix(active)).await?;
        let store = self.store.clone();
        let expiries: Vec<Option<(Timestamp, String)>> = futures::stream::iter(listed)
            .map(|l| {
                let store = store.clone();
                async move {
                    let meta = store.stat(&l.key).await?;
                    Ok::<_, StoreError>(
                        meta.and_then(|m| m.get(meta::EXPIRY).and_then(parse_expiry))
                            .map(|e| (e, l.key)),
                    )
                }
            })
            .buffer_unordered(WRITE_CONCURRENCY)
            .try_collect()
            .await?;
        self.earliest.remove(&active);
        for (expiry, key) in expiries.into_iter().flatten() {
            self.note_expiry(active, expiry, &key);
        }
        Ok(())
    }

    /// If a bundle of the active version has expired, asks the engine to
    /// move signing on (it decides: rotation, or a rotation failure and an
    /// alert when there is nothing to move to).
    async fn check_expiry(&mut self) {
        let Some(active) = self.active else { return };
        let Some((expiry, key)) = self.earliest.get(&active).cloned() else {
            return;
        };
        if expiry > (self.clock)() {
            return;
        }
        let command = Command::BundleExpired {
            version: active,
            key: key.clone(),
            expiry,
        };
        match self.engine.call(Request::Bundles(command)).await {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, %key, "expired bundle not acted on"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum BundleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ledger(#[from] tes_ledger::LedgerError),
}

struct ArchiverTask {
    store: Store,
    engine: EngineHandle,
    limits: Limits,
    auto: bool,
    clock: Clock,
}

impl ArchiverTask {
    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        // Versions whose automatic pass failed, retried with backoff.
        let mut owed: BTreeSet<KeyVersion> = BTreeSet::new();
        if self.auto {
            match archive::state(&self.engine).await {
                Ok(state) => owed.extend(left_to_archive(&state)),
                Err(e) => tracing::warn!(error = %e, "archiver could not read the state"),
            }
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            if !owed.is_empty() {
                let before = owed.len();
                let mut still = BTreeSet::new();
                for v in std::mem::take(&mut owed) {
                    let now = (self.clock)();
                    if let Err(e) =
                        archive::run(&self.store, &self.engine, v, self.limits, now).await
                    {
                        tracing::warn!(version = %v, error = %e, retry_in = ?backoff, "archive pass did not finish; will retry");
                        still.insert(v);
                    }
                }
                backoff = if still.len() < before {
                    Duration::from_secs(1)
                } else {
                    (backoff * 2).min(MAX_BACKOFF)
                };
                owed = still;
            }
            let wait = if owed.is_empty() {
                Duration::MAX
            } else {
                backoff
            };
            let job = match tokio::time::timeout(wait, jobs.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(_) => continue,
            };
            match job {
                Job::Retired(v) if self.auto => {
                    owed.insert(v);
                }
                Job::Retired(_) => {}
                Job::Request { request, reply } => {
                    let _ = reply.send(self.serve(request).await);
                }
            }
        }
    }

    async fn serve(&self, request: Archive) -> Result<ArchiveReply, ErrorReply> {
        let state = archive::state(&self.engine).await?;
        let now = (self.clock)();
        let versions = archive::candidates(&state, request.version, now)?;
        let mut out = Vec::new();
        for v in versions {
            let done = if request.dry_run {
                archive::dry_run(&self.store, v).await
            } else {
                archive::run(&self.store, &self.engine, v, self.limits, now).await
            };
            out.push(done.map_err(ErrorReply::from)?);
        }
        Ok(ArchiveReply { versions: out })
    }
}

/// Retired versions with an open batch or possibly bundles left.
fn left_to_archive(state: &State) -> Vec<KeyVersion> {
    state
        .keys
        .iter()
        .filter(|(_, k)| matches!(k.status, KeyStatus::Retired | KeyStatus::Revoked))
        .map(|(v, _)| *v)
        .collect()
}
