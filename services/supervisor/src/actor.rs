//! The Supervisor's shell. Commands are handled one at a time, in arrival
//! order, so there is never more than one rotation in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tes_bus::typed::{call, decode_command, decode_event, refuse, respond, CallError};
use tes_bus::{Bus, BusError, Message};
use tes_proto::command::{Grace, Revoke, Rollback, Rotate, SignersQuery, Status};
use tes_proto::event::{kind, Event};
use tes_proto::reply::{RotationReply, SignersReply, StatusReply};
use tes_proto::subject::{self, verb};
use tes_proto::{
    Channel, CommandBody, ContentType, Envelope, ErrorCode, ErrorReply, MsgId, Reply, ThreadId,
    Timestamp,
};
use tokio::task::JoinHandle;

use crate::gate;
use crate::signers::{LiveSigner, Signers};

const THREAD: ThreadId = ThreadId::Supervisor;

pub(crate) const ROTATE_GATE: Check<Rotate> =
    |status, live, cmd| gate::check_rotate(status, live, cmd).map(|_| ());
pub(crate) const ROLLBACK_GATE: Check<Rollback> =
    |status, _, _| gate::check_rollback(status).map(|_| ());
/// A revocation is not gated on the signers: a leaked key is revoked even
/// if a replica cannot take over (it then refuses to sign, and says why);
/// Version Management decides what may be revoked.
pub(crate) const REVOKE_GATE: Check<Revoke> = |_, _, _| Ok(());
pub(crate) const GRACE_GATE: Check<Grace> = |_, _, _| Ok(());

#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub wire: ContentType,
    /// How long to wait for Version Management.
    pub timeout: Duration,
    /// On NATS `rotate` and `rollback` come through the durable stream
    /// ([`crate::durable`]), not the plain subscription.
    pub durable: bool,
    /// The live signers, from their heartbeats (shared by every task of
    /// this Supervisor).
    pub signers: Signers,
    /// Held while one rotation or rollback is gated and forwarded: the
    /// plain subscription, the durable consumer and the KV watch share it,
    /// so there is never more than one in flight.
    pub in_flight: Arc<tokio::sync::Mutex<()>>,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            wire: ContentType::Json,
            timeout: Duration::from_secs(10),
            durable: false,
            signers: Signers::default(),
            in_flight: Arc::default(),
        }
    }
}

/// Subscribes to `tes.cmd.0x1001.*` and serves until the task is aborted.
pub async fn start(
    bus: Arc<dyn Bus>,
    config: SupervisorConfig,
) -> Result<JoinHandle<()>, BusError> {
    let mut commands = bus.subscribe(&subject::commands_of(THREAD), None).await?;
    let heartbeat_subject = subject::event(ThreadId::VersionManagement, kind::SIGNER_HEARTBEAT);
    let mut heartbeats = bus.subscribe(&heartbeat_subject, None).await?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(message) = commands.next() => serve(&*bus, &config, &message).await,
                Some(message) = heartbeats.next() => {
                    if let Ok(Envelope { body: Event::SignerHeartbeat(hb), .. }) = decode_event(&message) {
                        config.signers.observe(hb, Instant::now());
                    }
                }
                else => break,
            }
        }
    }))
}

async fn serve(bus: &dyn Bus, config: &SupervisorConfig, message: &Message) {
    let verb = subject::parse(&message.subject).map(|p| p.last);
    if config.durable && matches!(verb, Some(verb::ROTATE | verb::ROLLBACK)) {
        // The stream stores it (and answers a request with its PubAck); the
        // durable consumer acts on it.
        return;
    }
    match verb {
        Some(verb::ROTATE) => gated(bus, config, message, ROTATE_GATE).await,
        Some(verb::ROLLBACK) => gated(bus, config, message, ROLLBACK_GATE).await,
        Some(verb::REVOKE) => gated(bus, config, message, REVOKE_GATE).await,
        Some(verb::GRACE) => gated(bus, config, message, GRACE_GATE).await,
        Some(verb::ALERT) => crate::alerts::record(bus, config, message).await,
        Some(verb::SIGNERS) => serve_signers(bus, config, message).await,
        _ => {
            let error = ErrorReply::new(
                ErrorCode::UnknownVerb,
                format!(
                    "the Supervisor takes rotate, rollback, revoke, grace, alert and signers, not {:?}",
                    message.subject
                ),
            );
            refuse::<RotationReply>(bus, THREAD, message, ContentType::Json, error).await;
        }
    }
}

/// Who signs and whether the next version may be promoted: Version
/// Management's status and the heartbeats, through the gate, nothing
/// forwarded.
async fn serve_signers(bus: &dyn Bus, config: &SupervisorConfig, message: &Message) {
    let (ct, envelope) = match decode_command::<SignersQuery>(message, THREAD) {
        Ok(d) => d,
        Err(e) => {
            let error =
                ErrorReply::new(ErrorCode::Malformed, format!("signers query refused: {e}"));
            return refuse::<SignersReply>(bus, THREAD, message, ContentType::Json, error).await;
        }
    };
    match ask_status(bus, config, &envelope, None).await {
        Ok(status) => {
            let heard = config.signers.heard(Instant::now());
            let report = gate::signers_report(&status, &heard);
            let _ = respond(bus, message, ct, &Reply::Ok(report)).await;
        }
        Err(error) => refuse::<SignersReply>(bus, THREAD, message, ct, error).await,
    }
}

/// Decodes a command message, gates and forwards it, answers.
async fn gated<C>(bus: &dyn Bus, config: &SupervisorConfig, message: &Message, check: Check<C>)
where
    C: CommandBody,
{
    let (ct, envelope) = match decode_command::<C>(message, THREAD) {
        Ok(d) => d,
        Err(e) => {
            let error = ErrorReply::new(
                ErrorCode::Malformed,
                format!("{} command refused: {e}", C::VERB),
            );
            return refuse::<C::Reply>(bus, THREAD, message, ContentType::Json, error).await;
        }
    };
    match gate_and_forward(bus, config, &envelope, check).await {
        Ok(reply) => {
            let _ = respond(bus, message, ct, &Reply::Ok(reply)).await;
        }
        Err(error) => refuse::<C::Reply>(bus, THREAD, message, ct, error).await,
    }
}

/// The gate a command of type `C` must pass, given Version Management's status.
pub(crate) type Check<C> = fn(&StatusReply, &[LiveSigner], &C) -> Result<(), ErrorReply>;

/// Asks 0x6001 for its status, applies the gate, and forwards the command
/// under its own id: Version Management applies a command id at most once,
/// so a retry (a client's, or a KV revision seen again) cannot act twice —
/// and a retry of an applied command skips the gate (which would judge the
/// state the command left behind) to get its original outcome back.
pub(crate) async fn gate_and_forward<C>(
    bus: &dyn Bus,
    config: &SupervisorConfig,
    envelope: &Envelope<C>,
    check: Check<C>,
) -> Result<C::Reply, ErrorReply>
where
    C: CommandBody,
{
    let _one_at_a_time = config.in_flight.lock().await;
    let status = ask_status(bus, config, envelope, Some(envelope.id)).await?;
    if status.applied_seq.is_none() {
        check(
            &status,
            &config.signers.live(Instant::now()),
            &envelope.body,
        )?;
    }
    let mut forward = envelope.clone();
    forward.thread = ThreadId::VersionManagement;
    let reply = call::<C>(
        bus,
        ThreadId::VersionManagement,
        config.wire,
        &forward,
        config.timeout,
    )
    .await
    .map_err(unavailable)?;
    tracing::info!(verb = C::VERB, id = %envelope.id, "forwarded and applied");
    Ok(reply)
}

/// Version Management's status, asked on behalf of `cause` (and, with
/// `applied`, whether that command id was applied already).
async fn ask_status<C>(
    bus: &dyn Bus,
    config: &SupervisorConfig,
    cause: &Envelope<C>,
    applied: Option<MsgId>,
) -> Result<StatusReply, ErrorReply> {
    let request = Envelope::new(
        MsgId::generate(),
        Timestamp::now(),
        ThreadId::VersionManagement,
        Channel::Command,
        Status { applied },
    )
    .caused_by(cause);
    call::<Status>(
        bus,
        ThreadId::VersionManagement,
        config.wire,
        &request,
        config.timeout,
    )
    .await
    .map_err(unavailable)
}

pub(crate) fn unavailable(e: CallError) -> ErrorReply {
    match e {
        CallError::Refused(r) => r,
        CallError::Bus(BusError::NoResponders(_)) => ErrorReply::new(
            ErrorCode::Unavailable,
            "Version Management (0x6001) is not running",
        ),
        other => ErrorReply::new(
            ErrorCode::Unavailable,
            format!("Version Management (0x6001): {other}"),
        ),
    }
}
