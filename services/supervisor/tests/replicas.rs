//! Two signer replicas and the ledger writer under continuous signing load
//! on a real nats-server, with a rotation through the Supervisor in the
//! middle: every signature handed out verifies (zero failures), every one
//! is in the ledger, and both replicas sign with v2 once the rotation has
//! committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::Mac;
use tes_bus::jetstream::EventStream;
use tes_bus::test_server::TestServer;
use tes_bus::typed::{self, call};
use tes_bus::{Bus, NatsBus, NatsConfig};
use tes_keyring::{KeyStore, Keyring};
use tes_ledger::Ledger;
use tes_proto::command::{Rotate, Sign};
use tes_proto::event::Event;
use tes_proto::reply::SignReply;
use tes_proto::{ContentType, KeyVersion, ThreadId};
use tes_supervisor::actor::SupervisorConfig;
use tes_version_management::actor::{self, ActorConfig};
use tes_version_management::core::Policy;
use tes_version_management::engine::system_clock;
use tes_version_management::replica::{self, ReplicaConfig};
use tes_version_management::{Engine, EngineConfig};

const V1: &str = "replica-test-v1-secret";
const V2: &str = "replica-test-v2-secret";
const T: Duration = Duration::from_secs(10);

fn keyring(dir: &std::path::Path) -> Keyring {
    let env = vec![
        ("VERSION_SIGNING_KEY".to_string(), V1.to_string()),
        ("VERSION_SIGNING_KEY_V2".to_string(), V2.to_string()),
    ];
    Keyring::load(env, &KeyStore::new(dir.join("ks.json")), false).unwrap()
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

fn hmac_hex(secret: &str, payload: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The ledger writer (with the events stream) on its own connection.
async fn start_writer(server: &TestServer, dir: &std::path::Path) -> actor::Running {
    let bus = connect(server, "writer").await;
    let stream = EventStream::ensure(bus.client().clone()).await.unwrap();
    let config = EngineConfig {
        ledger_path: dir.join("ledger.db"),
        policy: Policy::default(),
        snapshot_every: 0,
        replace: None,
    };
    let engine = Engine::open(config, keyring(dir), system_clock()).unwrap();
    let actor_config = ActorConfig {
        event_stream: Some(stream),
        ..ActorConfig::default()
    };
    actor::start(engine, Arc::new(bus), actor_config)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sign_through_a_rotation_with_zero_failures() {
    let server = TestServer::start();
    server.ready(None).await;
    let dir = tempfile::tempdir().unwrap();

    // The ledger writer (with the events stream) and the Supervisor.
    let writer = start_writer(&server, dir.path()).await;
    let supervisor_bus: Arc<dyn Bus> = Arc::new(connect(&server, "supervisor").await);
    let supervisor = tes_supervisor::actor::start(supervisor_bus, SupervisorConfig::default())
        .await
        .unwrap();

    // Two replicas, each on its own connection.
    let mut replicas = Vec::new();
    for name in ["replica-1", "replica-2"] {
        let bus = connect(&server, name).await;
        let stream = EventStream::ensure(bus.client().clone()).await.unwrap();
        let config = ReplicaConfig {
            name: name.into(),
            wire: ContentType::Binary,
            policy: Policy::default(),
            timeout: T,
        };
        replicas.push(
            replica::start(stream, Arc::new(bus), keyring(dir.path()), config)
                .await
                .unwrap(),
        );
    }

    // Continuous signing from a client.
    let client: Arc<dyn Bus> = Arc::new(connect(&server, "client").await);
    let stop = Arc::new(AtomicBool::new(false));
    let mut loads = Vec::new();
    for worker in 0..6 {
        let (client, stop) = (client.clone(), stop.clone());
        loads.push(tokio::spawn(async move {
            let mut replies: Vec<Result<SignReply, String>> = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let c = typed::command(
                    ThreadId::VersionManagement,
                    Sign {
                        payload: format!("manifest-{worker}-{i}"),
                        key_version: None,
                    },
                );
                replies.push(
                    call::<Sign>(
                        &*client,
                        ThreadId::VersionManagement,
                        ContentType::Binary,
                        &c,
                        T,
                    )
                    .await
                    .map_err(|e| e.to_string()),
                );
                i += 1;
            }
            replies
        }));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let rotated = call::<Rotate>(
        &*client,
        ThreadId::Supervisor,
        ContentType::Json,
        &typed::command(ThreadId::Supervisor, Rotate::default()),
        T,
    )
    .await
    .unwrap();
    assert_eq!(rotated.key_version, KeyVersion::new(2).unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut replies = Vec::new();
    for l in loads {
        replies.extend(l.await.unwrap());
    }

    // Zero failures, and every signature (dual ones too) verifies.
    let failures: Vec<&String> = replies.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} failed, e.g. {:?}",
        failures.len(),
        replies.len(),
        failures.first()
    );
    let replies: Vec<SignReply> = replies.into_iter().map(Result::unwrap).collect();
    assert!(replies.len() > 100, "some load: {}", replies.len());
    for r in &replies {
        for s in &r.signatures {
            let secret = if s.key_version.get() == 1 { V1 } else { V2 };
            assert_eq!(
                s.signature,
                hmac_hex(secret, &r.payload),
                "{} by {}",
                s.key_version,
                r.signer
            );
        }
    }
    // Both replicas signed with v2 after the rotation committed.
    for name in ["replica-1", "replica-2"] {
        assert!(
            replies
                .iter()
                .any(|r| r.signer == name && r.key_version.get() == 2),
            "{name} never signed with v2"
        );
    }

    // Every signature handed out is in the ledger, at the seq its reply named.
    for r in replicas {
        r.stop().await;
    }
    supervisor.abort();
    let engine = writer.stop().await;
    drop(engine);
    let ledger = Ledger::open_reader(&dir.path().join("ledger.db")).unwrap();
    let recorded: std::collections::HashMap<u64, String> = ledger
        .events_from(1)
        .unwrap()
        .into_iter()
        .filter_map(|(seq, e)| match e.body {
            Event::SignatureGenerated(s) => Some((seq, s.signature)),
            _ => None,
        })
        .collect();
    for r in &replies {
        assert_eq!(
            recorded.get(&r.seq),
            Some(&r.signature),
            "signature by {} at seq {} is in the ledger",
            r.signer,
            r.seq
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_waits_for_every_live_signer_to_hold_the_key() {
    use tes_bus::typed::CallError;
    use tes_proto::ErrorCode;
    let server = TestServer::start();
    server.ready(None).await;
    let dir = tempfile::tempdir().unwrap();
    let _writer = start_writer(&server, dir.path()).await;
    let _supervisor = tes_supervisor::actor::start(
        Arc::new(connect(&server, "supervisor").await),
        SupervisorConfig::default(),
    )
    .await
    .unwrap();
    // A replica that was never given v2.
    let only_v1 = Keyring::load(
        vec![("VERSION_SIGNING_KEY".to_string(), V1.to_string())],
        &KeyStore::new(dir.path().join("none.json")),
        false,
    )
    .unwrap();
    let bus = connect(&server, "old-replica").await;
    let stream = EventStream::ensure(bus.client().clone()).await.unwrap();
    let config = ReplicaConfig {
        name: "old-replica".into(),
        wire: ContentType::Binary,
        policy: Policy::default(),
        timeout: T,
    };
    let _replica = replica::start(stream, Arc::new(bus), only_v1, config)
        .await
        .unwrap();
    tokio::time::sleep(tes_proto::event::HEARTBEAT_EVERY + Duration::from_millis(500)).await;

    let client = connect(&server, "operator").await;
    let plain = typed::command(ThreadId::Supervisor, Rotate::default());
    let refused = call::<Rotate>(
        &client,
        ThreadId::Supervisor,
        ContentType::Binary,
        &plain,
        T,
    )
    .await;
    match refused {
        Err(CallError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::Gated);
            assert!(e.message.contains("old-replica"), "{}", e.message);
        }
        other => panic!("expected the gate to refuse: {other:?}"),
    }
    let forced = typed::command(
        ThreadId::Supervisor,
        Rotate {
            force: true,
            ..Rotate::default()
        },
    );
    let ok = call::<Rotate>(
        &client,
        ThreadId::Supervisor,
        ContentType::Binary,
        &forced,
        T,
    )
    .await
    .unwrap();
    assert!(ok.forced);
    // The old replica, once it has seen the rotation, falls back and says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = typed::command(
            ThreadId::VersionManagement,
            Sign {
                payload: "p".into(),
                key_version: None,
            },
        );
        let r = call::<Sign>(
            &client,
            ThreadId::VersionManagement,
            ContentType::Binary,
            &c,
            T,
        )
        .await
        .unwrap();
        if r.signer == "old-replica" && r.fallback_from.is_some() {
            assert_eq!(
                (r.key_version.get(), r.fallback_from.map(|v| v.get())),
                (1, Some(2))
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old replica never signed after the rotation"
        );
    }
}
