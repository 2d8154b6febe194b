//! The Supervisor's durable commands on NATS: `rotate` and `rollback` sent to
//! `tes.cmd.0x1001.*` are stored in `TES_COMMANDS` and read through the
//! durable consumer `supervisor`, so a command published while the
//! Supervisor (or Version Management) is down is applied when it is back.
//!
//! A message is acknowledged only once it has a definite outcome: applied,
//! or refused (gate, Version Management, malformed). When Version
//! Management cannot be reached it is left unacknowledged and redelivered;
//! a redelivery of an applied command is recognised by its id.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use tes_bus::jetstream::CommandStream;
use tes_bus::nats::from_nats;
use tes_bus::typed::{decode_command, message, publish_rejected};
use tes_bus::{Bus, Message};
use tes_proto::reply::RotationReply;
use tes_proto::subject::{self, verb, REPLY_TO_HEADER};
use tes_proto::{CommandBody, ContentType, ErrorCode, ErrorReply, Reply, ThreadId};
use tokio::task::JoinHandle;

use crate::actor::{gate_and_forward, Check, SupervisorConfig, ROLLBACK_GATE, ROTATE_GATE};

/// The consumer's durable name.
pub const CONSUMER: &str = subject::SUPERVISOR_CONSUMER;
/// How long before a command that could not reach Version Management is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
#[error("durable commands: {0}")]
pub struct DurableError(String);

pub async fn start(
    client: async_nats::Client,
    bus: Arc<dyn Bus>,
    config: SupervisorConfig,
) -> Result<JoinHandle<()>, DurableError> {
    let stream = CommandStream::ensure(client.clone())
        .await
        .map_err(|e| DurableError(e.to_string()))?;
    // The first opening is checked here, so a start-up that cannot read
    // the commands fails loudly; later ones are retried.
    let first = open(&stream).await?;
    tracing::info!("reading durable commands from {}", subject::COMMANDS_STREAM);
    Ok(tokio::spawn(async move {
        let mut messages = Some(first);
        loop {
            let mut current = match messages.take() {
                Some(m) => m,
                None => match open(&stream).await {
                    Ok(m) => {
                        tracing::info!("durable consumer {CONSUMER} open again");
                        m
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the durable consumer; trying again");
                        tokio::time::sleep(REOPEN_AFTER).await;
                        continue;
                    }
                },
            };
            while let Some(next) = current.next().await {
                match next {
                    Ok(m) => handle(&*bus, &config, m).await,
                    // Someone deleted it (or it vanished with its stream):
                    // make it again rather than stop reading commands.
                    Err(e) if e.kind() == MessagesErrorKind::ConsumerDeleted => {
                        tracing::warn!(
                            "durable consumer {CONSUMER} was deleted; creating it again"
                        );
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, "durable command stream error"),
                }
            }
            tokio::time::sleep(REOPEN_AFTER).await;
        }
    }))
}

/// How long before a vanished consumer is made again.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

async fn open(stream: &CommandStream) -> Result<jetstream::consumer::pull::Stream, DurableError> {
    let consumer = stream
        .consumer(CONSUMER, ThreadId::Supervisor)
        .await
        .map_err(|e| DurableError(e.to_string()))?;
    consumer
        .messages()
        .await
        .map_err(|e| DurableError(e.to_string()))
}

async fn handle(bus: &dyn Bus, config: &SupervisorConfig, m: jetstream::Message) {
    let request = from_nats(m.message.clone());
    let outcome = match subject::parse(&request.subject).map(|p| p.last) {
        Some(verb::ROTATE) => apply(bus, config, &request, ROTATE_GATE).await,
        Some(verb::ROLLBACK) => apply(bus, config, &request, ROLLBACK_GATE).await,
        _ => Some((
            ContentType::Json,
            Err(ErrorReply::new(
                ErrorCode::UnknownVerb,
                format!("{} is not a durable command", request.subject),
            )),
        )),
    };
    let Some((ct, outcome)) = outcome else {
        // Version Management is unreachable: not acknowledged, tried again.
        let _ = m.ack_with(AckKind::Nak(Some(RETRY_AFTER))).await;
        return;
    };
    if let Err(error) = &outcome {
        if error.code != ErrorCode::Duplicate {
            publish_rejected(bus, ThreadId::Supervisor, &request.subject, error).await;
        }
    }
    if let Some(to) = request.header(REPLY_TO_HEADER) {
        let reply: Reply<RotationReply> = outcome.into();
        match message(to.to_string(), ct, None, &reply) {
            Ok(r) => {
                let _ = bus.publish(r).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the outcome"),
        }
    }
    if let Err(e) = m.double_ack().await {
        tracing::warn!(error = %e, "could not acknowledge a durable command; it may be redelivered (and recognised)");
    }
}

/// The outcome of one durable command, or `None` when it should be retried.
async fn apply<C>(
    bus: &dyn Bus,
    config: &SupervisorConfig,
    request: &Message,
    check: Check<C>,
) -> Option<(ContentType, Result<RotationReply, ErrorReply>)>
where
    C: CommandBody<Reply = RotationReply>,
{
    let (ct, envelope) = match decode_command::<C>(request, ThreadId::Supervisor) {
        Ok(d) => d,
        Err(e) => {
            return Some((
                ContentType::Json,
                Err(ErrorReply::new(
                    ErrorCode::Malformed,
                    format!("{} command refused: {e}", C::VERB),
                )),
            ))
        }
    };
    match gate_and_forward(bus, config, &envelope, check).await {
        Err(e) if e.code == ErrorCode::Unavailable => {
            tracing::warn!(id = %envelope.id, reason = %e.message, "Version Management unreachable; the command waits in the stream");
            None
        }
        outcome => Some((ct, outcome)),
    }
}
