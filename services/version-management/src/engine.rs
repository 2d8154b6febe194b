//! The Version Management shell: owns the ledger (the only writer), the
//! keyring and the folded state, and turns requests into decide → append →
//! reply. It is synchronous and runs on a thread of its own
//! ([`crate::actor`]), because SQLite blocks.
//!
//! Group commit: [`Engine::handle_batch`] takes every request that arrived
//! together, decides each against the state as it evolves, appends all their
//! events in one transaction, and only then hands out replies — so no
//! signature or rotation is acknowledged before its audit record is durable.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use tes_keyring::Keyring;
use tes_ledger::{Head, Ledger, LedgerError, VerifyError};
use tes_proto::command::{Bump, Grace, Record, Revoke, Rollback, Rotate, Sign, Verify};
use tes_proto::event::Event;
use tes_proto::reply::{
    BumpReply, EntityView, GraceReply, KeyView, Manifest, RecordReply, RevokeReply, RotationReply,
    SignReply, StatusReply, StoredEvent, VerifyReply, VersionedSignature,
};
use tes_proto::thread::colour;
use tes_proto::{
    Channel, Envelope, ErrorCode, ErrorReply, Fingerprint, KeyVersion, MsgId, ThreadId, Timestamp,
};

use crate::core::signing::{self, SigningPlan};
use crate::core::state::{encode_snapshot, STATE_SCHEMA};
use crate::core::{decide, manifest, outcome, Command, Context, GraceChange, Policy, State};
use crate::replay::{replay, Until};

/// How the ledger writer signs its replies (`signer`); replicas use their names.
pub const WRITER: &str = tes_proto::event::WRITER_SIGNER;

/// The clock the shell reads; injectable so tests can move time.
pub use tes_proto::envelope::{system_clock, Clock};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub ledger_path: PathBuf,
    pub policy: Policy,
    /// Save a snapshot every this many events (0: never).
    pub snapshot_every: u64,
    /// Record new material for this version on open (`tes secret put
    /// --replace`); without it, material that differs from the ledger's
    /// record is refused.
    pub replace: Option<KeyVersion>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("no signing key material here: set VERSION_SIGNING_KEY (and _V2, …, or their _FILE forms), or run `tes init` to generate v1 into the key store")]
    NoKeys,
    #[error("{0}")]
    Refused(String),
}

/// What can be asked of Version Management.
#[derive(Debug, Clone)]
pub enum Request {
    Rotate(Envelope<Rotate>),
    Rollback(Envelope<Rollback>),
    Sign(Envelope<Sign>),
    Verify(Envelope<Verify>),
    Bump(Envelope<Bump>),
    Revoke(Envelope<Revoke>),
    Grace(Envelope<Grace>),
    /// The status; with a command id, also whether that command was applied.
    Status(Option<MsgId>),
    /// A copy of the folded state (the bundle worker reads archive progress
    /// and the verifying set from it).
    State,
    /// Time passed (grace windows, expiry).
    Tick,
    /// The keyring changed (a `tes secret put` while running).
    Rekey(Keyring),
    /// New material for a version the ledger knows, on purpose
    /// (`tes secret put --replace`): recorded as a `key_provisioned`.
    Replace(Keyring, KeyVersion),
    /// A signer replica's audit events.
    Record(Envelope<Record>),
    /// From the bundle worker ([`crate::bundles`]): an archive batch planned
    /// or finished, or an expired bundle. Only those three commands.
    Bundles(Command),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Rotation(RotationReply),
    Sign(SignReply),
    Verify(VerifyReply),
    Bump(BumpReply),
    Revoke(RevokeReply),
    Grace(GraceReply),
    Status(StatusReply),
    State(Box<State>),
    Record(RecordReply),
    /// What a [`Request::Bundles`] decided, once durable; `seq` is the first
    /// event's (0 when nothing was decided).
    Decided {
        events: Vec<Event>,
        seq: u64,
    },
    Done,
}

pub type Outcome = Result<Response, ErrorReply>;

/// A request's decision, waiting for its events to become durable.
struct Pending {
    /// Index into the batch's events of the event whose seq the reply names.
    primary: Option<usize>,
    /// For a record: where each recorded event is (in this batch, or
    /// already in the ledger).
    recorded: Vec<Slot>,
    response: Response,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Index into the batch's events.
    New(usize),
    /// Already in the ledger at this seq.
    Stored(u64),
}

/// What a signer replica may record: the audit trail of signing.
/// What `record` takes, and from whom: a signer replica's audit events
/// (thread 0x6001) and Alert's alerts, brought by the Supervisor (0x5003).
fn recordable(event: &Envelope<Event>) -> bool {
    match event.body {
        Event::SignatureGenerated(_) | Event::SignatureVerified(_) | Event::KeyFallback(_) => {
            event.thread == ThreadId::VersionManagement
        }
        Event::Alert(_) | Event::Resolved(_) => event.thread == ThreadId::Alert,
        _ => false,
    }
}

pub struct Engine {
    ledger: Ledger,
    state: State,
    keyring: Keyring,
    held: BTreeMap<KeyVersion, Fingerprint>,
    policy: Policy,
    snapshot_every: u64,
    clock: Clock,
    /// Whether the last batch answered a request from events the ledger
    /// already held (a retried command's original outcome) rather than
    /// from what it appended: on a cluster that reply too must wait until
    /// the stream holds the ledger's head.
    answered_from_ledger: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("ledger", &self.ledger)
            .field("keyring", &self.keyring)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens the ledger for writing, rebuilds the state (every row from
    /// seq 1, checked against the chain), and records the keys this signer
    /// holds (activating v1 on a new ledger; refusing material that differs
    /// from what the ledger recorded, unless `config.replace` names it).
    pub fn open(
        config: EngineConfig,
        keyring: Keyring,
        clock: Clock,
    ) -> Result<Engine, EngineError> {
        if keyring.is_empty() {
            return Err(EngineError::NoKeys);
        }
        let ledger = Ledger::open_writer(&config.ledger_path)?;
        let replayed = replay(&ledger, Until::Head)?;
        let held = keyring.held();
        let mut engine = Engine {
            ledger,
            state: replayed.state,
            keyring,
            held,
            policy: config.policy,
            snapshot_every: config.snapshot_every,
            clock,
            answered_from_ledger: false,
        };
        let first = match config.replace {
            Some(version) => Request::Replace(engine.keyring.clone(), version),
            None => Request::Rekey(engine.keyring.clone()),
        };
        let (outcomes, _) = engine.handle_batch(vec![first]);
        if let Some(Err(e)) = outcomes.into_iter().next() {
            return Err(EngineError::Refused(e.message));
        }
        Ok(engine)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether the last [`Engine::handle_batch`] answered any request
    /// from events already in the ledger (a retry's original outcome).
    pub fn answered_from_ledger(&self) -> bool {
        self.answered_from_ledger
    }

    pub fn head(&self) -> Head {
        self.ledger.head()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Handles requests that arrived together. Returns one outcome per
    /// request, in order, and the events that were committed with their
    /// ledger seqs, in ledger order.
    pub fn handle_batch(
        &mut self,
        requests: Vec<Request>,
    ) -> (Vec<Outcome>, Vec<(u64, Envelope<Event>)>) {
        let now = (self.clock)();
        self.answered_from_ledger = false;
        // Each command's idempotency lookup reads the ledger: one read
        // transaction for the whole batch rather than one per lookup. If it
        // cannot start, each lookup starts its own, as without it.
        if let Err(error) = self.ledger.begin_reads() {
            tracing::warn!(%error, "no read transaction for this batch");
        }
        let mut events: Vec<Envelope<Event>> = Vec::new();
        let mut decided: Vec<Result<Pending, ErrorReply>> = Vec::with_capacity(requests.len());
        let mut seen_ids = HashSet::new();
        for request in requests {
            let first = events.len();
            let result = self.prepare(request, now, &mut seen_ids, &mut events);
            if result.is_err() {
                // A refused request leaves nothing behind.
                events.truncate(first);
            }
            decided.push(result);
        }
        if events.is_empty() {
            if let Err(error) = self.ledger.end_reads() {
                tracing::warn!(%error, "could not end the batch's read transaction");
            }
            return (
                decided.into_iter().map(|d| d.map(|p| p.response)).collect(),
                Vec::new(),
            );
        }
        let before = self.ledger.head().seq;
        match self.ledger.append(&events) {
            Ok(appended) => {
                self.maybe_snapshot(before);
                let outcomes = decided
                    .into_iter()
                    .map(|d| {
                        d.map(|mut p| {
                            if let Some(i) = p.primary {
                                set_seq(&mut p.response, appended[i].seq);
                            }
                            if let Response::Record(r) = &mut p.response {
                                for (seq, slot) in r.seqs.iter_mut().zip(&p.recorded) {
                                    if let Slot::New(i) = slot {
                                        *seq = appended[*i].seq;
                                    }
                                }
                            }
                            p.response
                        })
                    })
                    .collect();
                let committed = appended.iter().map(|a| a.seq).zip(events).collect();
                (outcomes, committed)
            }
            Err(error) => {
                tracing::error!(%error, "ledger append failed; nothing from this batch was handed out");
                // The state already folded the lost events: rebuild it from
                // what is durable.
                match replay(&self.ledger, Until::Head) {
                    Ok(r) => self.state = r.state,
                    Err(e) => {
                        tracing::error!(error = %e, "could not rebuild state after a failed append")
                    }
                }
                let refusal = ErrorReply::new(
                    ErrorCode::Storage,
                    format!(
                        "the ledger could not be written ({error}); nothing was signed or changed"
                    ),
                );
                let outcomes = decided
                    .into_iter()
                    .map(|d| match d {
                        Ok(p)
                            if p.primary.is_some()
                                || p.recorded.iter().any(|s| matches!(s, Slot::New(_))) =>
                        {
                            Err(refusal.clone())
                        }
                        other => other.map(|p| p.response),
                    })
                    .collect();
                (outcomes, Vec::new())
            }
        }
    }

    /// Decides one request; its events are pushed (and folded into the
    /// state) only if it is accepted.
    fn prepare(
        &mut self,
        request: Request,
        now: Timestamp,
        seen: &mut HashSet<MsgId>,
        events: &mut Vec<Envelope<Event>>,
    ) -> Result<Pending, ErrorReply> {
        let cause = request.cause();
        if let Some((id, _)) = cause {
            if !seen.insert(id) {
                return Err(ErrorReply::new(
                    ErrorCode::Duplicate,
                    format!("command {id} was sent twice in one batch; applied once"),
                ));
            }
            if self.ledger.caused_by(&id).map_err(storage)?.is_some() {
                // A retry of a command the ledger holds: its original outcome.
                let applied = self.ledger.events_caused_by(&id).map_err(storage)?;
                let response = self.replayed(request, id, &applied, now)?;
                self.answered_from_ledger = true;
                return Ok(Pending {
                    primary: None,
                    recorded: Vec::new(),
                    response,
                });
            }
        }
        // A new keyring changes what this signer holds before anything is decided.
        if let Request::Rekey(keyring) | Request::Replace(keyring, _) = &request {
            self.held = keyring.held();
            self.keyring = keyring.clone();
        }
        let ctx = Context {
            now,
            policy: &self.policy,
            held: &self.held,
        };
        let (state, keyring) = (&mut self.state, &self.keyring);
        let start = events.len();
        let mut emit = |state: &mut State, body: Event| {
            state.apply_caused(now, cause.map(|c| c.0), &body);
            let mut env = Envelope::new(
                MsgId::generate(),
                now,
                ThreadId::VersionManagement,
                Channel::Event,
                body,
            );
            if let Some((id, correlation)) = cause {
                env = env.caused_by_id(id, correlation);
            }
            events.push(env);
        };
        let pending = match request {
            Request::Record(cmd) => {
                if let Some(applied) = applied_elsewhere(&self.ledger, &cmd.body.events)? {
                    self.answered_from_ledger = true;
                    return Ok(Pending {
                        primary: None,
                        recorded: Vec::new(),
                        response: Response::Record(RecordReply {
                            seqs: Vec::new(),
                            applied,
                        }),
                    });
                }
                let mut recorded = Vec::with_capacity(cmd.body.events.len());
                for event in &cmd.body.events {
                    if !recordable(event) {
                        return Err(ErrorReply::new(
                            ErrorCode::Malformed,
                            format!(
                                "a {} event from {} cannot be recorded",
                                event.body.kind(),
                                event.thread
                            ),
                        ));
                    }
                    if let Some(v) = event
                        .body
                        .key_version()
                        .filter(|v| !state.keys.contains_key(v))
                    {
                        return Err(ErrorReply::new(
                            ErrorCode::UnknownVersion,
                            format!("key version {v} is unknown to this ledger"),
                        ));
                    }
                }
                for event in cmd.body.events {
                    let stored = self.ledger.seq_of(&event.id).map_err(|e| {
                        ErrorReply::new(ErrorCode::Storage, format!("ledger lookup failed: {e}"))
                    })?;
                    match stored {
                        Some(seq) => recorded.push(Slot::Stored(seq)),
                        None if !seen.insert(event.id) => {
                            // Sent twice in this batch: stored with the first.
                            let i = events
                                .iter()
                                .position(|e| e.id == event.id)
                                .expect("seen in this batch");
                            recorded.push(Slot::New(i));
                        }
                        None => {
                            state.apply_envelope(&event);
                            recorded.push(Slot::New(events.len()));
                            events.push(event);
                        }
                    }
                }
                // Stored events' seqs are known now; new ones after the append.
                let seqs = recorded
                    .iter()
                    .map(|slot| {
                        if let Slot::Stored(seq) = slot {
                            *seq
                        } else {
                            0
                        }
                    })
                    .collect();
                Pending {
                    primary: None,
                    recorded,
                    response: Response::Record(RecordReply {
                        seqs,
                        applied: Vec::new(),
                    }),
                }
            }
            Request::Rekey(_) | Request::Tick | Request::Replace(..) => {
                let command = match request {
                    Request::Tick => Command::Tick,
                    Request::Replace(_, version) => Command::Replace { version },
                    _ => Command::Provision,
                };
                let decided = decide(state, &command, &ctx).map_err(ErrorReply::from)?;
                let primary = (!decided.is_empty()).then_some(start);
                decided.into_iter().for_each(|e| emit(state, e));
                Pending {
                    recorded: Vec::new(),
                    primary,
                    response: Response::Done,
                }
            }
            Request::Bundles(command) => {
                if !matches!(
                    command,
                    Command::BeginArchive { .. }
                        | Command::FinishArchive { .. }
                        | Command::BundleExpired { .. }
                ) {
                    return Err(ErrorReply::new(
                        ErrorCode::Malformed,
                        "the bundle worker may only plan or finish archive batches and report expired bundles",
                    ));
                }
                let decided = decide(state, &command, &ctx).map_err(ErrorReply::from)?;
                let primary = (!decided.is_empty()).then_some(start);
                decided.iter().for_each(|e| emit(state, e.clone()));
                Pending {
                    recorded: Vec::new(),
                    primary,
                    response: Response::Decided {
                        events: decided,
                        seq: 0,
                    },
                }
            }
            Request::State => Pending {
                primary: None,
                recorded: Vec::new(),
                response: Response::State(Box::new(state.clone())),
            },
            Request::Status(applied) => {
                let mut view = status_view(state, ctx.held, self.ledger.head());
                if let Some(id) = applied {
                    view.applied_seq = self.ledger.caused_by(&id).map_err(storage)?;
                }
                Pending {
                    primary: None,
                    recorded: Vec::new(),
                    response: Response::Status(view),
                }
            }
            Request::Revoke(cmd) => {
                let command = Command::Revoke {
                    version: cmd.body.version,
                    reason: cmd.body.reason.clone(),
                    requested_by: cmd.body.requested_by.clone(),
                    force: cmd.body.force,
                };
                let decided = decide(state, &command, &ctx).map_err(ErrorReply::from)?;
                let at = decided
                    .iter()
                    .position(|e| matches!(e, Event::KeyRevoked(_)))
                    .expect("a revocation decides a key_revoked event");
                let numbered = unnumbered(cmd.id, now, &decided);
                let mut reply = outcome::revocation(cmd.id, &cmd.body, &numbered, false)
                    .map_err(ErrorReply::from)?;
                decided.into_iter().for_each(|e| emit(state, e));
                reply.active = state.active;
                Pending {
                    recorded: Vec::new(),
                    primary: Some(start + at),
                    response: Response::Revoke(reply),
                }
            }
            Request::Grace(cmd) => {
                let change = grace_change(&cmd.body)?;
                let command = Command::Grace {
                    version: cmd.body.version,
                    change,
                    requested_by: cmd.body.requested_by.clone(),
                };
                let decided = decide(state, &command, &ctx).map_err(ErrorReply::from)?;
                let numbered = unnumbered(cmd.id, now, &decided);
                let reply = outcome::grace(cmd.id, &cmd.body, &numbered, false)
                    .map_err(ErrorReply::from)?;
                decided.into_iter().for_each(|e| emit(state, e));
                Pending {
                    recorded: Vec::new(),
                    primary: Some(start),
                    response: Response::Grace(reply),
                }
            }
            Request::Rotate(cmd) => {
                let from = state.active;
                let Rotate {
                    to,
                    requested_by,
                    force,
                } = cmd.body;
                let command = Command::Rotate {
                    to,
                    requested_by,
                    forced: force,
                };
                decide(state, &command, &ctx)
                    .map_err(ErrorReply::from)?
                    .into_iter()
                    .for_each(|e| emit(state, e));
                Pending {
                    recorded: Vec::new(),
                    primary: Some(start),
                    response: rotation_reply(state, from, now, force, "rotation"),
                }
            }
            Request::Rollback(cmd) => {
                let from = state.active;
                let command = Command::Rollback {
                    requested_by: cmd.body.requested_by,
                };
                decide(state, &command, &ctx)
                    .map_err(ErrorReply::from)?
                    .into_iter()
                    .for_each(|e| emit(state, e));
                Pending {
                    recorded: Vec::new(),
                    primary: Some(start),
                    response: rotation_reply(state, from, now, false, "rollback"),
                }
            }
            Request::Sign(cmd) => {
                let plan =
                    signing::plan(state, cmd.body.key_version, &ctx).map_err(ErrorReply::from)?;
                let (signatures, audit) = sign_under(keyring, &plan, cmd.body.payload.as_bytes());
                let primary = start + usize::from(plan.fallback_from.is_some());
                audit.into_iter().for_each(|e| emit(state, e));
                Pending {
                    primary: Some(primary),
                    recorded: Vec::new(),
                    response: Response::Sign(SignReply {
                        payload: cmd.body.payload,
                        signature: signatures[0].signature.clone(),
                        key_version: plan.primary,
                        signatures,
                        fallback_from: plan.fallback_from,
                        seq: 0,
                        signer: WRITER.to_string(),
                        replayed: false,
                    }),
                }
            }
            Request::Verify(cmd) => {
                let v = cmd.body.key_version;
                signing::check_verifiable(state, v, &ctx).map_err(ErrorReply::from)?;
                let key = keyring
                    .get(v)
                    .expect("check_verifiable checks the key is held");
                let valid = key.verify_hex(cmd.body.payload.as_bytes(), &cmd.body.signature);
                emit(state, signing::verification_event(v, valid));
                Pending {
                    recorded: Vec::new(),
                    primary: Some(start),
                    response: Response::Verify(VerifyReply {
                        valid,
                        key_version: v,
                    }),
                }
            }
            Request::Bump(cmd) => {
                let plan =
                    signing::plan(state, cmd.body.key_version, &ctx).map_err(ErrorReply::from)?;
                let command = Command::Bump {
                    entity: cmd.body.entity,
                    scope: cmd.body.scope,
                    key_version: plan.primary,
                };
                let bumped = decide(state, &command, &ctx).map_err(ErrorReply::from)?;
                let Some(Event::VersionBump(b)) = bumped.first() else {
                    unreachable!("a bump decides one version_bump event");
                };
                let manifest = Manifest {
                    entity: b.entity.clone(),
                    version: b.to.clone(),
                    previous: b.from.clone(),
                    scope: b.scope,
                    key_version: plan.primary,
                    timestamp: now,
                };
                let payload = manifest::canonical(&manifest);
                let (signatures, audit) = sign_under(keyring, &plan, payload.as_bytes());
                let primary = start + bumped.len() + usize::from(plan.fallback_from.is_some());
                bumped.into_iter().chain(audit).for_each(|e| emit(state, e));
                Pending {
                    primary: Some(primary),
                    recorded: Vec::new(),
                    response: Response::Bump(BumpReply {
                        manifest,
                        payload,
                        signature: signatures[0].signature.clone(),
                        key_version: plan.primary,
                        signatures,
                        fallback_from: plan.fallback_from,
                        seq: 0,
                        replayed: false,
                    }),
                }
            }
        };
        Ok(pending)
    }

    fn still_trusted(&self, v: KeyVersion) -> Result<(), ErrorReply> {
        if self.state.status_of(v) == Some(tes_proto::reply::KeyStatus::Revoked) {
            return Err(crate::core::decide::revoked(&self.state, v).into());
        }
        Ok(())
    }

    /// The original outcome of command `id`, which the ledger already
    /// applied (its events are `applied`); nothing is appended.
    fn replayed(
        &self,
        request: Request,
        id: MsgId,
        applied: &[(u64, Envelope<Event>)],
        now: Timestamp,
    ) -> Result<Response, ErrorReply> {
        let response = match request {
            // The original signature, unless its version was revoked since:
            // a signature that no longer verifies is not handed out again.
            Request::Sign(cmd) => {
                let reply = outcome::sign(id, &cmd.body, applied, WRITER)?;
                self.still_trusted(reply.key_version)?;
                Response::Sign(reply)
            }
            Request::Bump(cmd) => {
                let reply = outcome::bump(id, &cmd.body, applied)?;
                self.still_trusted(reply.key_version)?;
                Response::Bump(reply)
            }
            Request::Rotate(cmd) => {
                Response::Rotation(outcome::rotation(id, Some(&cmd.body), applied)?)
            }
            Request::Rollback(_) => Response::Rotation(outcome::rotation(id, None, applied)?),
            Request::Revoke(cmd) => {
                let mut reply = outcome::revocation(id, &cmd.body, applied, true)?;
                reply.active = self.state.active;
                Response::Revoke(reply)
            }
            Request::Grace(cmd) => Response::Grace(outcome::grace(id, &cmd.body, applied, true)?),
            // A verification changes nothing: answer it again, record it once.
            Request::Verify(cmd) => {
                let ctx = Context {
                    now,
                    policy: &self.policy,
                    held: &self.held,
                };
                let v = cmd.body.key_version;
                signing::check_verifiable(&self.state, v, &ctx).map_err(ErrorReply::from)?;
                let key = self.keyring.get(v).expect("checked: the key is held");
                Response::Verify(VerifyReply {
                    valid: key.verify_hex(cmd.body.payload.as_bytes(), &cmd.body.signature),
                    key_version: v,
                })
            }
            _ => unreachable!("only commands with an id are looked up"),
        };
        Ok(response)
    }

    pub fn status(&self) -> StatusReply {
        status_view(&self.state, &self.held, self.ledger.head())
    }

    fn maybe_snapshot(&mut self, before: u64) {
        let every = self.snapshot_every;
        if every == 0 || self.ledger.head().seq / every == before / every {
            return;
        }
        let bytes = encode_snapshot(&self.state);
        if let Err(error) = self.ledger.put_snapshot(STATE_SCHEMA, &bytes) {
            // Snapshots are a cache; the events are safe.
            tracing::warn!(%error, "could not save a snapshot");
        }
    }
}

/// A replica's audit events for a command the ledger already holds
/// events of (a retried sign one attempt already signed, by this or
/// another signer): those events, so the replica hands out the original.
fn applied_elsewhere(
    ledger: &Ledger,
    events: &[Envelope<Event>],
) -> Result<Option<Vec<StoredEvent>>, ErrorReply> {
    let Some(first) = events
        .first()
        .filter(|e| e.thread == ThreadId::VersionManagement)
    else {
        return Ok(None);
    };
    let Some(cause) = first.causation_id else {
        return Ok(None);
    };
    let applied = ledger.events_caused_by(&cause).map_err(storage)?;
    // The same record sent again (same event ids) is stored once, below.
    if applied.is_empty() || applied.iter().any(|(_, e)| e.id == first.id) {
        return Ok(None);
    }
    Ok(Some(
        applied
            .into_iter()
            .map(|(seq, event)| StoredEvent { seq, event })
            .collect(),
    ))
}

/// Signs under every version of the plan; returns the signatures and their
/// audit events.
pub(crate) fn sign_under(
    keyring: &Keyring,
    plan: &SigningPlan,
    payload: &[u8],
) -> (Vec<VersionedSignature>, Vec<Event>) {
    let signatures: Vec<VersionedSignature> = plan
        .versions()
        .map(|v| VersionedSignature {
            key_version: v,
            signature: keyring
                .get(v)
                .expect("plans use held keys only")
                .sign_hex(payload),
        })
        .collect();
    let digest = outcome::sha256_hex(payload);
    let pairs: Vec<(KeyVersion, String)> = signatures
        .iter()
        .map(|s| (s.key_version, s.signature.clone()))
        .collect();
    let audit = signing::audit_events(plan, &pairs, &digest);
    (signatures, audit)
}

/// Events just decided, shaped as the ledger will hold them (their seqs
/// come with the append), so a fresh reply and a retried one are built by
/// the same [`outcome`] function.
fn unnumbered(cause: MsgId, now: Timestamp, decided: &[Event]) -> Vec<(u64, Envelope<Event>)> {
    decided
        .iter()
        .map(|e| {
            let env = Envelope::new(
                cause,
                now,
                ThreadId::VersionManagement,
                Channel::Event,
                e.clone(),
            );
            (0, env.caused_by_id(cause, None))
        })
        .collect()
}

fn storage(e: LedgerError) -> ErrorReply {
    ErrorReply::new(ErrorCode::Storage, format!("ledger lookup failed: {e}"))
}

/// The one grace change a command asks for.
fn grace_change(cmd: &Grace) -> Result<GraceChange, ErrorReply> {
    match (cmd.until, cmd.extend_secs, cmd.end_now) {
        (Some(t), None, false) => Ok(GraceChange::Until(t)),
        (None, Some(s), false) => Ok(GraceChange::Extend(std::time::Duration::from_secs(s))),
        (None, None, true) => Ok(GraceChange::EndNow),
        _ => Err(ErrorReply::new(
            ErrorCode::Malformed,
            "a grace change takes exactly one of until, extendSecs or endNow",
        )),
    }
}

fn rotation_reply(
    state: &State,
    from: Option<KeyVersion>,
    now: Timestamp,
    forced: bool,
    what: &str,
) -> Response {
    let to = state
        .active
        .expect("a rotation or rollback leaves a version active");
    let grace_until = from
        .and_then(|f| state.keys.get(&f))
        .and_then(|k| k.grace_until);
    let hsl = if what == "rollback" {
        colour::FALLBACK_ORANGE
    } else {
        colour::VERSION_PURPLE
    };
    Response::Rotation(RotationReply {
        success: true,
        message: outcome::rotation_message(what, to),
        from,
        key_version: to,
        rotation_timestamp: now,
        grace_until,
        forced,
        seq: 0,
        hsl: hsl.to_string(),
        replayed: false,
    })
}

impl Request {
    /// The command id and correlation id of a request that came as a command.
    fn cause(&self) -> Option<(MsgId, Option<MsgId>)> {
        match self {
            Request::Rotate(e) => Some((e.id, e.correlation_id)),
            Request::Rollback(e) => Some((e.id, e.correlation_id)),
            Request::Sign(e) => Some((e.id, e.correlation_id)),
            Request::Verify(e) => Some((e.id, e.correlation_id)),
            Request::Bump(e) => Some((e.id, e.correlation_id)),
            Request::Revoke(e) => Some((e.id, e.correlation_id)),
            Request::Grace(e) => Some((e.id, e.correlation_id)),
            // A record carries events with their own ids; those are what make
            // its retry idempotent, not the command id.
            Request::Status(_)
            | Request::State
            | Request::Tick
            | Request::Rekey(_)
            | Request::Replace(..)
            | Request::Record(_)
            | Request::Bundles(_) => None,
        }
    }
}

fn set_seq(response: &mut Response, seq: u64) {
    match response {
        Response::Rotation(r) => r.seq = seq,
        Response::Sign(r) => r.seq = seq,
        Response::Bump(r) => r.seq = seq,
        Response::Revoke(r) => r.seq = seq,
        Response::Grace(r) => r.seq = seq,
        Response::Decided { seq: s, .. } => *s = seq,
        Response::Verify(_)
        | Response::Status(_)
        | Response::State(_)
        | Response::Record(_)
        | Response::Done => {}
    }
}

/// The status reply for a state (also what `tes replay` prints).
pub fn status_view(
    state: &State,
    held: &BTreeMap<KeyVersion, Fingerprint>,
    head: Head,
) -> StatusReply {
    StatusReply {
        key_version: state.active,
        previous: state.previous,
        next: state.next_version(),
        last_sig_version: state.last_sig_version,
        rotation_timestamp: state.rotation_timestamp,
        rotation_reason: state.rotation_reason,
        rotated_by: state.rotated_by.clone(),
        keys: state
            .keys
            .iter()
            .map(|(v, k)| KeyView {
                version: *v,
                status: k.status,
                fingerprint: k.fingerprint.clone(),
                activated_at: k.activated_at,
                grace_until: k.grace_until,
                expires_at: k.expires_at,
                signatures: k.signatures,
                held: held.contains_key(v),
                archived_objects: state.archives.get(v).map_or(0, |a| a.objects),
                archived_bytes: state.archives.get(v).map_or(0, |a| a.bytes),
                archiving: state.archives.get(v).is_some_and(|a| a.open.is_some()),
                material_changes: k.material_changes,
                revoked_at: k.revoked_at,
                revoked_reason: k.revoked_reason.clone(),
                provisioned_at: k.provisioned_at,
                status_since: k.status_since,
                deactivated_at: k.deactivated_at,
                retired_at: k.retired_at,
            })
            .collect(),
        entities: state
            .entities
            .iter()
            .map(|(e, v)| EntityView {
                entity: e.clone(),
                version: v.clone(),
            })
            .collect(),
        fallbacks: state.fallbacks,
        head_seq: head.seq,
        head_hash: head.hash_hex(),
        applied_seq: None,
    }
}
