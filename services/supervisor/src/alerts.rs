//! Alerts reach the Supervisor (the seed: "Rotation Failures → Alert
//! Supervisor (0x1001)"). It has Version Management record each in the
//! ledger — the only writer — and Version Management then publishes it on
//! `tes.evt.0x5003.alert|resolved`, after it is durable. Recording is
//! idempotent by event id, so Alert may retry.

use tes_bus::typed::{call, decode_command, refuse, respond};
use tes_bus::{Bus, Message};
use tes_proto::command::{AlertNotice, Record};
use tes_proto::reply::RecordReply;
use tes_proto::{ContentType, Envelope, ErrorCode, ErrorReply, Event, Reply, ThreadId};

use crate::actor::{unavailable, SupervisorConfig};

const THREAD: ThreadId = ThreadId::Supervisor;

pub(crate) async fn record(bus: &dyn Bus, config: &SupervisorConfig, message: &Message) {
    let (ct, notice) = match decode_command::<AlertNotice>(message, THREAD) {
        Ok(d) => d,
        Err(e) => {
            let error = ErrorReply::new(ErrorCode::Malformed, format!("alert refused: {e}"));
            return refuse::<RecordReply>(bus, THREAD, message, ContentType::Json, error).await;
        }
    };
    let alert = &notice.body.event;
    if alert.thread != ThreadId::Alert
        || !matches!(alert.body, Event::Alert(_) | Event::Resolved(_))
    {
        let error = ErrorReply::new(
            ErrorCode::Malformed,
            format!(
                "the Supervisor records alert and resolved events from Alert (0x5003), not a {} event from {}",
                alert.body.kind(),
                alert.thread
            ),
        );
        return refuse::<RecordReply>(bus, THREAD, message, ct, error).await;
    }
    // Forwarded under the notice's id, as rotations are.
    let forward = Envelope {
        id: notice.id,
        time: notice.time,
        thread: ThreadId::VersionManagement,
        channel: notice.channel,
        causation_id: notice.causation_id,
        correlation_id: notice.correlation_id,
        schema: notice.schema,
        body: Record {
            events: vec![alert.clone()],
        },
    };
    match call::<Record>(
        bus,
        ThreadId::VersionManagement,
        config.wire,
        &forward,
        config.timeout,
    )
    .await
    {
        Ok(reply) => {
            if let Event::Alert(a) = &alert.body {
                tracing::warn!(rule = %a.rule, seq = ?reply.seqs.first(), "alert recorded: {}", a.message);
            }
            let _ = respond(bus, message, ct, &Reply::Ok(reply)).await;
        }
        Err(e) => refuse::<RecordReply>(bus, THREAD, message, ct, unavailable(e)).await,
    }
}
