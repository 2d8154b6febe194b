//! What every [`Bus`] implementation must do. Each implementation's tests
//! call [`run_all`] with a fresh bus (the NATS one against a real server).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{Bus, BusError, Message};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(200);

/// Runs every check; panics with the name of the first that fails. Each
/// check uses its own subject prefix so they can share one bus.
pub async fn run_all(bus: Arc<dyn Bus>) {
    wildcards_deliver_to_every_matching_subscriber(bus.clone()).await;
    queue_group_delivers_each_message_once(bus.clone()).await;
    request_reply_round_trips_headers_and_payload(bus.clone()).await;
    a_reply_also_reaches_a_watcher_of_every_inbox(bus.clone()).await;
    a_subscription_is_interest(bus.clone()).await;
    request_without_subscriber_is_no_responders(bus.clone()).await;
    request_to_silent_subscriber_times_out(bus.clone()).await;
    invalid_subjects_are_refused(bus.clone()).await;
}

async fn next(sub: &mut crate::Subscription, what: &str) -> Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing arrived within {WAIT:?}"))
        .unwrap_or_else(|| panic!("{what}: subscription closed"))
}

async fn nothing_more(sub: &mut crate::Subscription, what: &str) {
    if let Ok(Some(m)) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("{what}: unexpected message on {}", m.subject);
    }
}

pub async fn wildcards_deliver_to_every_matching_subscriber(bus: Arc<dyn Bus>) {
    let mut star = bus.subscribe("conf.wild.*.sign", None).await.unwrap();
    let mut tail = bus.subscribe("conf.wild.>", None).await.unwrap();
    let mut other = bus.subscribe("conf.other.>", None).await.unwrap();
    bus.publish(Message::new("conf.wild.0x6001.sign", "a"))
        .await
        .unwrap();
    bus.publish(Message::new("conf.wild.0x6001.verify", "b"))
        .await
        .unwrap();
    assert_eq!(next(&mut star, "star").await.payload, Bytes::from("a"));
    assert_eq!(next(&mut tail, "tail 1").await.payload, Bytes::from("a"));
    assert_eq!(next(&mut tail, "tail 2").await.payload, Bytes::from("b"));
    nothing_more(&mut star, "star only matches sign").await;
    nothing_more(&mut other, "other prefix").await;
}

pub async fn queue_group_delivers_each_message_once(bus: Arc<dyn Bus>) {
    let mut a = bus
        .subscribe("conf.queue.sign", Some("signers"))
        .await
        .unwrap();
    let mut b = bus
        .subscribe("conf.queue.sign", Some("signers"))
        .await
        .unwrap();
    let mut watcher = bus.subscribe("conf.queue.sign", None).await.unwrap();
    const N: usize = 40;
    for i in 0..N {
        bus.publish(Message::new("conf.queue.sign", i.to_string()))
            .await
            .unwrap();
    }
    for _ in 0..N {
        next(&mut watcher, "plain subscriber sees all").await;
    }
    let mut got = 0;
    for sub in [&mut a, &mut b] {
        while let Ok(Some(_)) = tokio::time::timeout(QUIET, sub.next()).await {
            got += 1;
        }
    }
    assert_eq!(
        got, N,
        "each message reaches exactly one member of the group"
    );
}

pub async fn request_reply_round_trips_headers_and_payload(bus: Arc<dyn Bus>) {
    let mut server = bus.subscribe("conf.rr.echo", None).await.unwrap();
    let responder = bus.clone();
    let task = tokio::spawn(async move {
        let m = next(&mut server, "server").await;
        let reply = Message::new(
            m.reply.clone().expect("request has a reply subject"),
            m.payload.clone(),
        )
        .with_header(
            "Content-Type",
            m.header("Content-Type").unwrap_or("").to_string(),
        );
        responder.publish(reply).await.unwrap();
    });
    let request = Message::new("conf.rr.echo", Bytes::from_static(&[0, 1, 2, 255]))
        .with_header("Content-Type", "application/x-tes-postcard");
    let reply = bus.request(request, WAIT).await.unwrap();
    assert_eq!(reply.payload, Bytes::from_static(&[0, 1, 2, 255]));
    assert_eq!(
        reply.header("content-type"),
        Some("application/x-tes-postcard")
    );
    task.await.unwrap();
}

/// The requester takes its reply, and a subscriber to `_INBOX.>` sees it
/// as well, as on a NATS server.
pub async fn a_reply_also_reaches_a_watcher_of_every_inbox(bus: Arc<dyn Bus>) {
    let mut watcher = bus.subscribe("_INBOX.>", None).await.unwrap();
    let mut server = bus.subscribe("conf.inbox.echo", None).await.unwrap();
    let responder = bus.clone();
    let task = tokio::spawn(async move {
        let m = next(&mut server, "server").await;
        let inbox = m.reply.clone().expect("request has a reply subject");
        responder
            .publish(Message::new(inbox.clone(), "pong"))
            .await
            .unwrap();
        inbox
    });
    let reply = bus
        .request(Message::new("conf.inbox.echo", "ping"), WAIT)
        .await
        .unwrap();
    assert_eq!(reply.payload, Bytes::from("pong"));
    let inbox = task.await.unwrap();
    let seen = next(&mut watcher, "inbox watcher").await;
    assert_eq!(seen.subject, inbox);
    assert_eq!(seen.payload, Bytes::from("pong"));
}

/// Whoever subscribes makes a subject interesting: a publisher that skips
/// subjects without interest never skips one with a subscriber.
pub async fn a_subscription_is_interest(bus: Arc<dyn Bus>) {
    let _sub = bus.subscribe("conf.interest.*", None).await.unwrap();
    assert!(bus.has_interest("conf.interest.sign"));
}

pub async fn request_without_subscriber_is_no_responders(bus: Arc<dyn Bus>) {
    let err = bus
        .request(Message::new("conf.rr.nobody", "x"), WAIT)
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::NoResponders(_)), "{err}");
}

pub async fn request_to_silent_subscriber_times_out(bus: Arc<dyn Bus>) {
    let _silent = bus.subscribe("conf.rr.silent", None).await.unwrap();
    let err = bus
        .request(
            Message::new("conf.rr.silent", "x"),
            Duration::from_millis(150),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::TimedOut { .. }), "{err}");
}

pub async fn invalid_subjects_are_refused(bus: Arc<dyn Bus>) {
    for bad in ["", "a..b", "a.*", "a.>", "has space"] {
        let err = bus.publish(Message::new(bad, "x")).await.unwrap_err();
        assert!(
            matches!(err, BusError::InvalidSubject(_)),
            "publish {bad:?}: {err}"
        );
    }
    assert!(bus.subscribe("a.>.b", None).await.is_err());
}
