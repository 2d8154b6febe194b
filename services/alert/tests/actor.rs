//! The Alert actor on the in-process bus with a stand-in Supervisor: a rule
//! that starts to hold is handed over once, a snapshot it cannot read (a
//! newer schema, garbage) is skipped without harm, what the ledger already
//! holds is not raised again after a restart, and the open alerts answer
//! `tes.cmd.0x5003.alerts`.

use std::sync::Arc;
use std::time::Duration;

use tes_alert::actor::{start, AlertConfig};
use tes_bus::typed::{self, decode_command, publish_event, respond};
use tes_bus::{Bus, InProcessBus, Message};
use tes_monitoring::feed::Item;
use tes_proto::alert::Rule;
use tes_proto::command::{AlertNotice, AlertsQuery};
use tes_proto::event::{kind, MetricsSnapshot};
use tes_proto::reply::RecordReply;
use tes_proto::subject;
use tes_proto::{Channel, ContentType, Envelope, Event, MsgId, Reply, ThreadId, Timestamp};
use tokio::sync::mpsc;

/// Stands in for the Supervisor: accepts every alert and passes it on.
async fn supervisor(bus: Arc<dyn Bus>) -> mpsc::UnboundedReceiver<Envelope<Event>> {
    let mut sub = bus
        .subscribe(&subject::command(ThreadId::Supervisor, "alert"), None)
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let (ct, notice) = decode_command::<AlertNotice>(&m, ThreadId::Supervisor).unwrap();
            let _ = tx.send(notice.body.event);
            respond(
                &*bus,
                &m,
                ct,
                &Reply::Ok(RecordReply {
                    seqs: vec![1],
                    applied: Vec::new(),
                }),
            )
            .await
            .unwrap();
        }
    });
    rx
}

fn snapshot(failures: u64, seq: u64) -> MetricsSnapshot {
    MetricsSnapshot {
        at: Timestamp::from_millis(1_764_000_000_000 + seq),
        seq,
        failures_since_rotation: failures,
        rotation_failures: failures,
        ..Default::default()
    }
}

async fn publish(bus: &dyn Bus, snap: MetricsSnapshot, schema: u16) {
    let mut e = Envelope::new(
        MsgId::generate(),
        snap.at,
        ThreadId::Monitoring,
        Channel::Event,
        Event::Metrics(Box::new(snap)),
    );
    e.schema = schema;
    publish_event(bus, ContentType::Binary, &e).await.unwrap();
}

async fn nothing_within(rx: &mut mpsc::UnboundedReceiver<Envelope<Event>>, ms: u64) {
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(ms), rx.recv()).await {
        panic!("unexpected {e:?}");
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Envelope<Event>>) -> Envelope<Event> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an alert in time")
        .unwrap()
}

#[tokio::test]
async fn rules_start_and_stop_holding_once_and_unreadable_snapshots_are_skipped() {
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let mut recorded = supervisor(bus.clone()).await;
    let (feed, rx) = mpsc::channel(16);
    feed.send(Item::CaughtUp).await.unwrap();
    let task = start(bus.clone(), rx, AlertConfig::default())
        .await
        .unwrap();

    // A snapshot from a newer schema would raise an alert if it were read.
    publish(&*bus, snapshot(1, 1), tes_proto::SCHEMA_VERSION + 1).await;
    // And bytes that are no snapshot at all.
    let subject = subject::event(ThreadId::Monitoring, kind::METRICS);
    bus.publish(
        Message::new(subject, &b"\xff\x00not a snapshot"[..])
            .with_header("Content-Type", "application/x-postcard"),
    )
    .await
    .unwrap();
    nothing_within(&mut recorded, 300).await;

    publish(&*bus, snapshot(1, 2), tes_proto::SCHEMA_VERSION).await;
    let raised = next(&mut recorded).await;
    let Event::Alert(a) = &raised.body else {
        panic!("{raised:?}")
    };
    assert_eq!((a.rule, a.seq), (Rule::RotationFailed, 2));
    assert_eq!(raised.thread, ThreadId::Alert);
    assert_eq!(raised.body.hsl(), "#FF00FF", "CH3 magenta");

    // Still holding: not raised again.
    publish(&*bus, snapshot(1, 3), tes_proto::SCHEMA_VERSION).await;
    nothing_within(&mut recorded, 300).await;

    let query = typed::command(ThreadId::Alert, AlertsQuery {});
    let open = typed::call::<AlertsQuery>(
        &*bus,
        ThreadId::Alert,
        ContentType::Json,
        &query,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(open.open.len(), 1);
    assert_eq!((open.open[0].id, open.seq), (raised.id, 3));
    // Another verb, or a body that is not the query: a clear refusal.
    let bogus = bus
        .request(
            Message::new("tes.cmd.0x5003.silence", &b"{}"[..]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bogus.payload);
    assert!(
        text.contains("unknown_verb") && text.contains("takes alerts"),
        "{text}"
    );
    let bad = bus
        .request(
            Message::new("tes.cmd.0x5003.alerts", &b"{\"mute\": true}"[..]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.payload).contains("malformed"));

    // A rotation succeeded: resolved, naming the alert it ends.
    publish(&*bus, snapshot(0, 4), tes_proto::SCHEMA_VERSION).await;
    let ended = next(&mut recorded).await;
    let Event::Resolved(r) = &ended.body else {
        panic!("{ended:?}")
    };
    assert_eq!((r.rule, r.raised), (Rule::RotationFailed, raised.id));
    task.abort();

    // A restart: the ledger (through the feed) already holds an open alert.
    let (feed, rx) = mpsc::channel(16);
    feed.send(Item::Event(5, Box::new(raised.clone())))
        .await
        .unwrap();
    feed.send(Item::CaughtUp).await.unwrap();
    let task = start(bus.clone(), rx, AlertConfig::default())
        .await
        .unwrap();
    publish(&*bus, snapshot(1, 6), tes_proto::SCHEMA_VERSION).await;
    nothing_within(&mut recorded, 300).await;
    task.abort();
}
