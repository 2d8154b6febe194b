//! The outbox against a real nats-server: committed events reach the
//! `TES_EVENTS` stream in ledger order, exactly once — after a daemon died
//! before publishing, after NATS was down while signing went on, and across
//! restarts of Version Management.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tes_bus::jetstream::EventStream;
use tes_bus::test_server::TestServer;
use tes_bus::{NatsBus, NatsConfig};
use tes_keyring::{KeyStore, Keyring};
use tes_ledger::Ledger;
use tes_proto::command::Sign;
use tes_proto::{Channel, ContentType, Envelope, Event, MsgId, ThreadId, Timestamp};
use tes_version_management::actor::{self, ActorConfig};
use tes_version_management::core::Policy;
use tes_version_management::{Engine, EngineConfig, Request};

fn engine(dir: &std::path::Path) -> Engine {
    let keyring = Keyring::load(
        vec![(
            "VERSION_SIGNING_KEY".to_string(),
            "outbox-test-secret".to_string(),
        )],
        &KeyStore::new(dir.join("ks.json")),
        false,
    )
    .unwrap();
    let config = EngineConfig {
        ledger_path: dir.join("ledger.db"),
        policy: Policy::default(),
        snapshot_every: 0,
        replace: None,
    };
    let n = Arc::new(AtomicU64::new(1_764_000_000_000));
    Engine::open(
        config,
        keyring,
        Arc::new(move || Timestamp::from_millis(n.fetch_add(1, Ordering::SeqCst))),
    )
    .unwrap()
}

fn sign(i: usize) -> Request {
    Request::Sign(Envelope::new(
        MsgId::generate(),
        Timestamp::now(),
        ThreadId::VersionManagement,
        Channel::Command,
        Sign {
            payload: format!("manifest-{i}"),
            key_version: None,
        },
    ))
}

/// The ids of the ledgered events in the stream, in stream order.
async fn streamed(client: &async_nats::Client) -> Vec<MsgId> {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js
        .get_stream(tes_proto::subject::EVENTS_STREAM)
        .await
        .unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        // The deployment's wire: JSON by default.
        let e: Envelope<Event> = ContentType::Json.decode(&m.payload).unwrap();
        if e.body.is_ledgered() {
            out.push(e.id);
        }
    }
    out
}

fn ledgered(dir: &std::path::Path) -> Vec<MsgId> {
    Ledger::open_reader(&dir.join("ledger.db"))
        .unwrap()
        .events_from(1)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.id)
        .collect()
}

async fn until_streamed(client: &async_nats::Client, want: &[MsgId]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = streamed(client).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stream has {} of {} events (or in another order)",
            got.len(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_reach_the_stream_in_order_exactly_once() {
    let mut server = TestServer::start();
    server.ready(None).await;
    let dir = tempfile::tempdir().unwrap();

    // A daemon committed events and died before publishing any of them.
    let mut e = engine(dir.path());
    e.handle_batch((0..5).map(sign).collect());
    drop(e);

    let bus = NatsBus::connect(&NatsConfig {
        url: server.url(),
        name: "outbox-test".into(),
        ..NatsConfig::default()
    })
    .await
    .unwrap();
    let watcher = async_nats::connect(server.url()).await.unwrap();
    let path = dir.path().to_path_buf();
    let start = |bus: NatsBus| {
        let path = path.clone();
        async move {
            let stream = EventStream::ensure(bus.client().clone()).await.unwrap();
            let config = ActorConfig {
                event_stream: Some(stream),
                ..ActorConfig::default()
            };
            actor::start(engine(&path), Arc::new(bus), config)
                .await
                .unwrap()
        }
    };

    // Version Management starts on NATS and publishes what it missed.
    let running = start(bus.clone()).await;
    until_streamed(&watcher, &ledgered(dir.path())).await;

    // NATS goes away; signing goes on (the ledger is the truth); NATS comes back.
    server.kill();
    for i in 0..5 {
        running
            .handle()
            .call(sign(100 + i))
            .await
            .expect("signing needs the ledger, not NATS");
    }
    server.restart();
    let watcher = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match async_nats::connect(server.url()).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
            }
        }
    };
    until_streamed(&watcher, &ledgered(dir.path())).await;

    // A restart of Version Management publishes nothing twice.
    drop(running.stop().await);
    let running = start(bus).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    until_streamed(&watcher, &ledgered(dir.path())).await;
    drop(running.stop().await);
}
