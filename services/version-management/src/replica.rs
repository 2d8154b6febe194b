//! A signer replica (`tes daemon --actors version --role signer`): Version
//! Management without the ledger, for signing throughput and availability.
//!
//! It folds the same events into the same [`State`] as the writer, read
//! from the `TES_EVENTS` stream, so it switches version when a rotation
//! commits; it serves `tes.cmd.0x6001.sign` in the `signers` queue group
//! beside the writer; and it hands each signature's audit events to the
//! writer (`record`) and replies only once they are durable — a replica
//! never hands out a signature the ledger lacks.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tes_bus::jetstream::{EventStream, Followed};
use tes_bus::typed::{self, call, decode_command, refuse, respond};
use tes_bus::{Bus, BusError, Message};
use tes_keyring::Keyring;
use tes_proto::command::{BatchCommand, Record, Sign, SignBatch};
use tes_proto::reply::{RecordReply, SignReply};
use tes_proto::subject::{self, verb};
use tes_proto::{
    Channel, ContentType, Envelope, ErrorCode, ErrorReply, Fingerprint, KeyVersion, MsgId, Reply,
    ThreadId, Timestamp,
};
use tokio::task::JoinHandle;

use tes_proto::event::{HeldKey, HEARTBEAT_EVERY};

use crate::actor::heartbeat_publish;
use crate::core::{signing, Context, Policy, State};

const THREAD: ThreadId = ThreadId::VersionManagement;

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Named in every signature it hands out (`signer` in the reply).
    pub name: String,
    pub wire: ContentType,
    pub policy: Policy,
    /// How long to wait for the writer to make an audit record durable.
    pub timeout: Duration,
}

struct Shared {
    state: RwLock<State>,
    keyring: Keyring,
    held: BTreeMap<KeyVersion, Fingerprint>,
    config: ReplicaConfig,
}

pub struct Replica {
    tasks: Vec<JoinHandle<()>>,
}

impl Replica {
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Catches up with the ledger's events, then serves `sign`.
pub async fn start(
    stream: EventStream,
    bus: Arc<dyn Bus>,
    keyring: Keyring,
    config: ReplicaConfig,
) -> Result<Replica, BusError> {
    // Alerts are ledger events too (recorded for Alert, 0x5003). Only the
    // ledger the writer lease names is followed.
    let registered = stream.registered_ledger().await;
    if registered.is_none() {
        tracing::warn!(
            "no writer lease on this NATS server yet: following every ledger event in the stream"
        );
    }
    let mut events = stream
        .follow_ledger(&[THREAD, ThreadId::Alert], registered)
        .await?;
    let mut state = State::default();
    while let Some(followed) = events.recv().await {
        match followed {
            Followed::Event { event, .. } => state.apply_envelope(&event),
            Followed::CaughtUp => break,
        }
    }
    tracing::info!(signer = %config.name, events = state.seq, active = ?state.active, "replica caught up with {}", subject::EVENTS_STREAM);
    let shared = Arc::new(Shared {
        state: RwLock::new(state),
        held: keyring.held(),
        keyring,
        config,
    });
    let follower = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(followed) = events.recv().await {
                if let Followed::Event { event, .. } = followed {
                    let mut state = shared.state.write().expect("state lock poisoned");
                    state.apply_envelope(&event);
                }
            }
        })
    };
    let heartbeat = {
        let (bus, shared) = (bus.clone(), shared.clone());
        tokio::spawn(async move {
            let held: Vec<HeldKey> = shared
                .held
                .iter()
                .map(|(v, f)| HeldKey {
                    version: *v,
                    fingerprint: f.clone(),
                })
                .collect();
            let mut interval = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                interval.tick().await;
                heartbeat_publish(&*bus, shared.config.wire, &shared.config.name, held.clone())
                    .await;
            }
        })
    };
    let mut signs = bus
        .subscribe(
            &subject::command(THREAD, verb::SIGN),
            Some(subject::SIGNERS_QUEUE),
        )
        .await?;
    let mut batches = bus
        .subscribe(
            &subject::command(THREAD, verb::SIGN_BATCH),
            Some(subject::SIGNERS_QUEUE),
        )
        .await?;
    let server = {
        let (bus, shared) = (bus.clone(), shared.clone());
        tokio::spawn(async move {
            while let Some(message) = signs.next().await {
                let (bus, shared) = (bus.clone(), shared.clone());
                tokio::spawn(async move { serve(&*bus, &shared, &message).await });
            }
        })
    };
    let batch_server = tokio::spawn(async move {
        while let Some(message) = batches.next().await {
            let (bus, shared) = (bus.clone(), shared.clone());
            tokio::spawn(async move { serve_batch(bus, shared, &message).await });
        }
    });
    Ok(Replica {
        tasks: vec![follower, heartbeat, server, batch_server],
    })
}

/// A batch on a replica: each item signed and recorded as a single `sign`
/// is (its own id, its own record, its own retry), all at once; one
/// result per item, in order.
async fn serve_batch(bus: Arc<dyn Bus>, shared: Arc<Shared>, message: &Message) {
    let Some((ct, items)) = crate::actor::open_batch::<SignBatch>(&*bus, message).await else {
        return;
    };
    let tasks: Vec<_> = items
        .into_iter()
        .map(|item| {
            let (bus, shared) = (bus.clone(), shared.clone());
            tokio::spawn(async move { sign(&*bus, &shared, &item).await })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(Reply::from(task.await.unwrap_or_else(|e| {
            Err(ErrorReply::new(
                ErrorCode::Unavailable,
                format!("the signer stopped before this item was signed ({e})"),
            ))
        })));
    }
    let _ = respond(&*bus, message, ct, &Reply::Ok(SignBatch::reply(results))).await;
}

async fn serve(bus: &dyn Bus, shared: &Shared, message: &Message) {
    let (ct, command) = match decode_command::<Sign>(message, THREAD) {
        Ok(d) => d,
        Err(e) => {
            let error = ErrorReply::new(ErrorCode::Malformed, format!("sign command refused: {e}"));
            return refuse::<SignReply>(bus, THREAD, message, ContentType::Json, error).await;
        }
    };
    match sign(bus, shared, &command).await {
        Ok(reply) => {
            let _ = respond(bus, message, ct, &Reply::Ok(reply)).await;
        }
        Err(error) => refuse::<SignReply>(bus, THREAD, message, ct, error).await,
    }
}

async fn sign(
    bus: &dyn Bus,
    shared: &Shared,
    command: &Envelope<Sign>,
) -> Result<SignReply, ErrorReply> {
    let now = Timestamp::now();
    let plan = {
        let state = shared.state.read().expect("state lock poisoned");
        let ctx = Context {
            now,
            policy: &shared.config.policy,
            held: &shared.held,
        };
        signing::plan(&state, command.body.key_version, &ctx).map_err(ErrorReply::from)?
    };
    let payload = command.body.payload.as_bytes();
    let (signatures, audit) = crate::engine::sign_under(&shared.keyring, &plan, payload);
    let events: Vec<Envelope<_>> = audit
        .into_iter()
        .map(|body| {
            Envelope::new(MsgId::generate(), now, THREAD, Channel::Event, body).caused_by(command)
        })
        .collect();
    let record = typed::command(THREAD, Record { events });
    let recorded: RecordReply = call::<Record>(bus, THREAD, shared.config.wire, &record, shared.config.timeout)
        .await
        .map_err(|e| {
            ErrorReply::new(
                ErrorCode::Storage,
                format!("no signature handed out: its audit record could not be written by the ledger writer ({e})"),
            )
        })?;
    if !recorded.applied.is_empty() {
        // A retry of a sign an earlier attempt already signed: the ledger's
        // signatures are the ones handed out, not the ones just made.
        let applied: Vec<_> = recorded
            .applied
            .into_iter()
            .map(|s| (s.seq, s.event))
            .collect();
        let reply =
            crate::core::outcome::sign(command.id, &command.body, &applied, &shared.config.name)?;
        let state = shared.state.read().expect("state lock poisoned");
        if state.status_of(reply.key_version) == Some(tes_proto::reply::KeyStatus::Revoked) {
            return Err(crate::core::decide::revoked(&state, reply.key_version).into());
        }
        return Ok(reply);
    }
    let primary = usize::from(plan.fallback_from.is_some());
    Ok(SignReply {
        payload: command.body.payload.clone(),
        signature: signatures[0].signature.clone(),
        key_version: plan.primary,
        signatures,
        fallback_from: plan.fallback_from,
        seq: recorded.seqs[primary],
        signer: shared.config.name.clone(),
        replayed: false,
    })
}
