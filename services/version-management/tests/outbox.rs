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

async fn connect(server: &TestServer, name: &str) -> NatsBus {
    NatsBus::connect(&NatsConfig {
        url: server.url(),
        name: name.into(),
        ..NatsConfig::default()
    })
    .await
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

/// A writer on `server` whose replies wait until `TES_EVENTS` holds their
/// events (as on a cluster), its ledger in `dir`.
async fn writer_acking_after_stream(
    server: &TestServer,
    dir: &std::path::Path,
    name: &str,
) -> actor::Running {
    let bus = connect(server, name).await;
    let stream = EventStream::ensure(bus.client().clone()).await.unwrap();
    let config = ActorConfig {
        event_stream: Some(stream),
        ack_after_stream: true,
        ..ActorConfig::default()
    };
    actor::start(engine(dir), Arc::new(bus), config)
        .await
        .unwrap()
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

    let bus = connect(&server, "outbox-test").await;
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

/// RUNBOOK §9 on NATS: a ledger restored from a backup takes back, from
/// `TES_EVENTS`, the events it published after the backup — the same rows,
/// so the same hashes — and one that was written to on its own after the
/// backup (a fork) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_ledger_takes_back_what_the_stream_holds_and_a_forked_one_is_refused() {
    use tes_version_management::catch_up::{self, CatchUpError};
    let server = TestServer::start();
    server.ready(None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut e = engine(dir.path());
    e.handle_batch((0..3).map(sign).collect());
    drop(e);
    let backup = dir.path().join("backup.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();

    // After the backup: more signatures, published.
    let bus = connect(&server, "catch-up-test").await;
    let stream = EventStream::ensure(bus.client().clone()).await.unwrap();
    let config = ActorConfig {
        event_stream: Some(stream.clone()),
        ..ActorConfig::default()
    };
    let running = actor::start(engine(dir.path()), Arc::new(bus.clone()), config)
        .await
        .unwrap();
    for i in 10..17 {
        running.handle().call(sign(i)).await.unwrap();
    }
    until_streamed(bus.client(), &ledgered(dir.path())).await;
    drop(running.stop().await);
    let original = Ledger::open_reader(&path).unwrap();
    let backed_up = Ledger::open_reader(&backup).unwrap().head().seq;
    assert!(original.head().seq > backed_up);

    // Restored: everything comes back, row for row.
    let restored = dir.path().join("restored.db");
    std::fs::copy(&backup, &restored).unwrap();
    let mut ledger = Ledger::open_writer(&restored).unwrap();
    let taken = catch_up::from_stream(&mut ledger, &stream, actor::OUTBOX)
        .await
        .unwrap();
    assert_eq!(taken, original.head().seq - backed_up);
    assert_eq!(
        ledger.head(),
        original.head(),
        "the same chain, hash for hash"
    );
    let outbox = tes_ledger::Outbox::open(&restored, actor::OUTBOX).unwrap();
    assert_eq!(
        outbox.cursor().unwrap(),
        original.head().seq,
        "not sent again"
    );
    // Up to date: nothing more to take.
    assert_eq!(
        catch_up::from_stream(&mut ledger, &stream, actor::OUTBOX)
            .await
            .unwrap(),
        0
    );
    drop(ledger);

    // Restored, then written to without NATS: refused, naming the seq.
    let forked = dir.path().join("forked");
    std::fs::create_dir(&forked).unwrap();
    std::fs::copy(&backup, forked.join("ledger.db")).unwrap();
    let mut e = engine(&forked);
    e.handle_batch(vec![sign(99)]);
    drop(e);
    let mut ledger = Ledger::open_writer(&forked.join("ledger.db")).unwrap();
    let head = ledger.head();
    match catch_up::from_stream(&mut ledger, &stream, actor::OUTBOX).await {
        Err(CatchUpError::Forked { seq, .. }) => assert_eq!(seq, head.seq),
        other => panic!("a fork must be refused: {other:?}"),
    }
    assert_eq!(ledger.head(), head, "nothing appended to a forked ledger");
    drop(ledger);

    // A restored copy someone edited: refused before anything is appended.
    let tampered = dir.path().join("tampered.db");
    std::fs::copy(&backup, &tampered).unwrap();
    rusqlite::Connection::open(&tampered)
        .unwrap()
        .execute_batch(
            "DROP TRIGGER events_append_only_update;
             UPDATE events SET ts = ts + 1 WHERE seq = 2;",
        )
        .unwrap();
    let mut ledger = Ledger::open_writer(&tampered).unwrap();
    let head = ledger.head();
    match catch_up::from_stream(&mut ledger, &stream, actor::OUTBOX).await {
        Err(CatchUpError::Broken(_)) => {}
        other => panic!("a tampered ledger must be refused: {other:?}"),
    }
    assert_eq!(ledger.head(), head, "nothing appended to a tampered ledger");
}

/// On a cluster a reply waits for the stream (`ack_after_stream`): when a
/// signature comes back its event is in `TES_EVENTS` already; with the
/// stream away the reply waits (nothing acknowledged that a standby would
/// not have), and comes once the stream is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ack_after_stream_a_reply_waits_until_the_stream_holds_its_events() {
    let mut server = TestServer::start();
    server.ready(None).await;
    let dir = tempfile::tempdir().unwrap();
    let running = writer_acking_after_stream(&server, dir.path(), "ack-after-stream").await;
    let watcher = async_nats::connect(server.url()).await.unwrap();
    for i in 0..5 {
        running.handle().call(sign(i)).await.unwrap();
        // Acknowledged: in the stream already, not merely on its way.
        assert_eq!(streamed(&watcher).await, ledgered(dir.path()));
    }

    server.kill();
    let request = sign(99);
    let handle = running.handle();
    let first = request.clone();
    let waiting = tokio::spawn(async move { handle.call(first).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !waiting.is_finished(),
        "a signature was acknowledged while the stream could not store it"
    );
    // A client that gave up retries with the same id: the signature is in
    // the ledger already, not yet in the stream, so the retry waits too.
    let handle = running.handle();
    let retried = tokio::spawn(async move { handle.call(request).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !retried.is_finished(),
        "a retried signature was acknowledged while its record was not in the stream"
    );
    // A read acknowledges nothing: answered at once, stream or no stream.
    let status = tokio::time::timeout(
        Duration::from_secs(2),
        running.handle().call(Request::Status(None)),
    )
    .await
    .expect("a status is not held for the stream");
    assert!(status.is_ok(), "{status:?}");
    server.restart();
    for waiting in [waiting, retried] {
        let reply = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the reply comes once the stream is back")
            .unwrap();
        assert!(reply.is_ok(), "{reply:?}");
    }
    assert_eq!(streamed(&watcher).await, ledgered(dir.path()));
    drop(running.stop().await);
}

/// A writer stopping while the stream is away (a full disk, a lost lease)
/// must not wait for the stream: held replies are answered "not yet
/// stored, retry" and the stop ends; the committed events stay in the
/// ledger for the next start to publish.
#[tokio::test]
async fn a_writer_stops_while_its_replies_wait_for_an_absent_stream() {
    let mut server = TestServer::start();
    server.ready(None).await;
    let dir = tempfile::tempdir().unwrap();
    let running = writer_acking_after_stream(&server, dir.path(), "stop-while-held").await;
    running.handle().call(sign(0)).await.unwrap();
    let before = ledgered(dir.path()).len();
    server.kill();
    let handle = running.handle();
    let waiting = tokio::spawn(async move { handle.call(sign(1)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "held while the stream is away");
    // At most the publish in flight and the last one, each given up after
    // JetStream's 5 s wait for an ack (9.5 s measured; without the release
    // of held replies it never ends).
    tokio::time::timeout(Duration::from_secs(20), running.stop())
        .await
        .expect("the stop does not wait for the stream");
    let reply = waiting.await.unwrap();
    let error = reply.expect_err("not acknowledged: the stream never stored it");
    assert!(
        error.message.contains("retry with the same id"),
        "{error:?}"
    );
    // Committed all the same: in the ledger, for the next start to publish.
    assert!(ledgered(dir.path()).len() > before);
}
