//! The seed's `KV.put('rotation-signal', 'rotate')`: the Supervisor watches
//! the JetStream KV bucket `tes`, key `rotation-signal`, and puts each new
//! revision (`rotate` or `rollback`) through the same gate as a bus command.
//!
//! Each revision is acted on at most once, however often the Supervisor
//! restarts, by two means:
//! - the command a revision becomes has an id derived from the revision
//!   (UUIDv5), and Version Management applies a command id at most once;
//! - the Supervisor keeps the last revision it handled in the same bucket
//!   (`supervisor-signal-cursor`) and resumes after it, so a revision that
//!   was refused is not tried again later either.

use std::sync::Arc;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use tes_bus::typed::publish_rejected;
use tes_bus::Bus;
use tes_proto::command::{Rollback, Rotate};
use tes_proto::subject::kv::{
    BUCKET, ROLLBACK, ROTATE, ROTATION_SIGNAL, SIGNAL_CURSOR, SIGNAL_SUBJECT,
};
use tes_proto::{Channel, Envelope, ErrorCode, ErrorReply, MsgId, ThreadId, Timestamp};
use tokio::task::JoinHandle;

use crate::actor::{gate_and_forward, SupervisorConfig, ROLLBACK_GATE, ROTATE_GATE};

/// Fixed namespace of the ids of KV-signal commands. Part of the format:
/// changing it would make old revisions look new to Version Management.
const SIGNAL_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x7e5c_0a1d_4b2f_4f0e_9d6c_51a8_3e27_b901);

#[derive(Debug, thiserror::Error)]
#[error("KV bucket {BUCKET:?}: {0}")]
pub struct KvSignalError(String);

/// The command id a revision of `rotation-signal` becomes.
pub fn command_id(revision: u64) -> MsgId {
    MsgId(uuid::Uuid::new_v5(
        &SIGNAL_NAMESPACE,
        format!("{BUCKET}/{ROTATION_SIGNAL}/{revision}").as_bytes(),
    ))
}

/// Creates the bucket if needed and watches `rotation-signal` from just after
/// the last revision handled.
pub async fn start(
    client: async_nats::Client,
    bus: Arc<dyn Bus>,
    config: SupervisorConfig,
) -> Result<JoinHandle<()>, KvSignalError> {
    let store = tes_bus::jetstream::tes_bucket(client)
        .await
        .map_err(|e| KvSignalError(format!("cannot create or open: {e}")))?;
    let cursor = match store
        .get(SIGNAL_CURSOR)
        .await
        .map_err(|e| KvSignalError(e.to_string()))?
    {
        Some(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                KvSignalError(format!("{SIGNAL_CURSOR} does not hold a revision number"))
            })?,
        None => 0,
    };
    let mut watch = store
        .watch_from_revision(ROTATION_SIGNAL, cursor + 1)
        .await
        .map_err(|e| KvSignalError(format!("cannot watch {ROTATION_SIGNAL}: {e}")))?;
    tracing::info!(
        after_revision = cursor,
        "watching KV {BUCKET}/{ROTATION_SIGNAL}"
    );
    Ok(tokio::spawn(async move {
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(entry) => handle(&*bus, &config, &store, entry).await,
                Err(e) => tracing::warn!(error = %e, "KV watch error"),
            }
        }
        tracing::warn!("KV watch ended");
    }))
}

async fn handle(bus: &dyn Bus, config: &SupervisorConfig, store: &kv::Store, entry: kv::Entry) {
    if entry.operation == kv::Operation::Put {
        let outcome = act(bus, config, entry.revision, &entry.value).await;
        match outcome {
            Ok(to) => tracing::info!(revision = entry.revision, %to, "rotation-signal applied"),
            Err(e) if e.code == ErrorCode::Duplicate => {
                tracing::info!(
                    revision = entry.revision,
                    "rotation-signal revision already applied; not again"
                )
            }
            Err(e) => publish_rejected(bus, ThreadId::Supervisor, SIGNAL_SUBJECT, &e).await,
        }
    }
    if let Err(e) = store
        .put(SIGNAL_CURSOR, entry.revision.to_string().into())
        .await
    {
        // The command id still keeps an accepted revision from acting twice.
        tracing::warn!(error = %e, revision = entry.revision, "could not record the KV cursor");
    }
}

async fn act(
    bus: &dyn Bus,
    config: &SupervisorConfig,
    revision: u64,
    value: &[u8],
) -> Result<String, ErrorReply> {
    let requested_by = format!("kv:{BUCKET}/{ROTATION_SIGNAL}@{revision}");
    match std::str::from_utf8(value).map(str::trim) {
        Ok(ROTATE) => {
            let cmd = signal_command(revision, Rotate { requested_by, ..Rotate::default() });
            gate_and_forward(bus, config, &cmd, ROTATE_GATE).await.map(|r| r.key_version.to_string())
        }
        Ok(ROLLBACK) => {
            let cmd = signal_command(revision, Rollback { requested_by });
            gate_and_forward(bus, config, &cmd, ROLLBACK_GATE).await.map(|r| r.key_version.to_string())
        }
        _ => Err(ErrorReply::new(
            ErrorCode::Malformed,
            format!("{ROTATION_SIGNAL} revision {revision} is neither {ROTATE:?} nor {ROLLBACK:?}; ignored"),
        )),
    }
}

fn signal_command<C>(revision: u64, body: C) -> Envelope<C> {
    Envelope::new(
        command_id(revision),
        Timestamp::now(),
        ThreadId::Supervisor,
        Channel::Command,
        body,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_revision_always_becomes_the_same_command_id() {
        assert_eq!(super::command_id(7), super::command_id(7));
        assert_ne!(super::command_id(7), super::command_id(8));
    }
}
