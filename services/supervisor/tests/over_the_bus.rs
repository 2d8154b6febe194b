//! Supervisor (0x1001) and Version Management (0x6001) together on the
//! in-process bus, driven the way any client drives them: typed commands,
//! bare JSON from "another language", and garbage.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tes_bus::typed::{self, call, decode_event, CallError};
use tes_bus::{Bus, InProcessBus, Message};
use tes_keyring::{KeyStore, Keyring};
use tes_proto::command::{Rollback, Rotate, Sign, Status};
use tes_proto::event::Event;
use tes_proto::reply::{Reply, RotationReply, SignReply, StatusReply};
use tes_proto::subject::{self, CONTENT_TYPE_HEADER};
use tes_proto::{ContentType, ErrorCode, KeyVersion, ThreadId};
use tes_supervisor::actor::SupervisorConfig;
use tes_version_management::actor::{self, ActorConfig, Running};
use tes_version_management::core::Policy;
use tes_version_management::engine::system_clock;
use tes_version_management::{Engine, EngineConfig};

const T: Duration = Duration::from_secs(5);

struct System {
    bus: Arc<dyn Bus>,
    version: Running,
    _dir: tempfile::TempDir,
}

async fn system(secrets: &[(&str, &str)]) -> System {
    let dir = tempfile::tempdir().unwrap();
    let env = secrets.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let keyring = Keyring::load(env, &KeyStore::new(dir.path().join("ks.json")), false).unwrap();
    let config = EngineConfig {
        ledger_path: dir.path().join("ledger.db"),
        policy: Policy::default(),
        snapshot_every: 100,
        replace: None,
    };
    let engine = Engine::open(config, keyring, system_clock()).unwrap();
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let version = actor::start(engine, bus.clone(), ActorConfig::default())
        .await
        .unwrap();
    tes_supervisor::actor::start(bus.clone(), SupervisorConfig::default())
        .await
        .unwrap();
    System {
        bus,
        version,
        _dir: dir,
    }
}

/// Version Management's status, asked in wire form `ct`.
async fn status(bus: &dyn Bus, ct: ContentType) -> StatusReply {
    let c = typed::command(ThreadId::VersionManagement, Status::default());
    call::<Status>(bus, ThreadId::VersionManagement, ct, &c, T)
        .await
        .unwrap()
}

const BOTH: &[(&str, &str)] = &[
    ("VERSION_SIGNING_KEY", "bus-test-v1-secret"),
    ("VERSION_SIGNING_KEY_V2", "bus-test-v2-secret"),
];

async fn raw(bus: &dyn Bus, subject: &str, content_type: Option<&str>, payload: &[u8]) -> Message {
    let mut m = Message::new(subject, Bytes::copy_from_slice(payload));
    if let Some(ct) = content_type {
        m = m.with_header(CONTENT_TYPE_HEADER, ct);
    }
    bus.request(m, T).await.expect("an answer, not silence")
}

fn json_reply<T: serde::de::DeserializeOwned>(m: &Message) -> Reply<T> {
    serde_json::from_slice(&m.payload)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&m.payload)))
}

#[tokio::test]
async fn a_bare_json_rotate_from_another_client_goes_through_the_supervisor() {
    let s = system(BOTH).await;
    let mut events = s.bus.subscribe(subject::ALL_EVENTS, None).await.unwrap();
    let reply = raw(
        &*s.bus,
        "tes.cmd.0x1001.rotate",
        None,
        br#"{"requested_by":"ops"}"#,
    )
    .await;
    let Reply::Ok(r) = json_reply::<RotationReply>(&reply) else {
        panic!("{reply:?}")
    };
    assert_eq!(r.key_version, KeyVersion::new(2).unwrap());
    // The fact is published on the event channel after it commits.
    loop {
        let m = tokio::time::timeout(T, events.next())
            .await
            .unwrap()
            .unwrap();
        if let Event::KeyRotate(k) = decode_event(&m).unwrap().body {
            assert_eq!(m.subject, "tes.evt.0x6001.key_rotate");
            assert_eq!(k.requested_by, "ops");
            break;
        }
    }
}

#[tokio::test]
async fn garbage_gets_an_error_reply_and_a_rejected_event_and_the_actor_lives_on() {
    let s = system(BOTH).await;
    let mut rejected = s.bus.subscribe("tes.evt.*.rejected", None).await.unwrap();
    let before = status(&*s.bus, ContentType::Binary).await;

    let cases: Vec<(&str, Option<&str>, Vec<u8>, ErrorCode)> = vec![
        (
            "tes.cmd.0x6001.sign",
            None,
            b"{not json".to_vec(),
            ErrorCode::Malformed,
        ),
        (
            "tes.cmd.0x6001.sign",
            Some("application/json"),
            br#"{"payload": 5}"#.to_vec(),
            ErrorCode::Malformed,
        ),
        (
            "tes.cmd.0x6001.sign",
            Some("application/x-tes-postcard"),
            vec![0xff; 7],
            ErrorCode::Malformed,
        ),
        (
            "tes.cmd.0x6001.sign",
            Some("text/plain"),
            b"hi".to_vec(),
            ErrorCode::Malformed,
        ),
        (
            "tes.cmd.0x6001.sign",
            None,
            vec![b' '; tes_proto::codec::MAX_PAYLOAD + 10],
            ErrorCode::Malformed,
        ),
        (
            "tes.cmd.0x6001.teleport",
            None,
            b"{}".to_vec(),
            ErrorCode::UnknownVerb,
        ),
        (
            "tes.cmd.0x1001.sign",
            None,
            b"{}".to_vec(),
            ErrorCode::UnknownVerb,
        ),
        (
            "tes.cmd.0x6001.sign",
            None,
            br#"{"payload":"x","keyVersion":"v9"}"#.to_vec(),
            ErrorCode::UnknownVersion,
        ),
        (
            "tes.cmd.0x1001.rollback",
            None,
            b"".to_vec(),
            ErrorCode::NothingToRollBack,
        ),
    ];
    for (subject, ct, payload, code) in cases {
        let reply = raw(&*s.bus, subject, ct, &payload).await;
        match json_reply::<serde_json::Value>(&reply) {
            Reply::Err(e) => assert_eq!(e.code, code, "{subject}: {}", e.message),
            Reply::Ok(v) => panic!("{subject} accepted: {v}"),
        }
        let m = tokio::time::timeout(T, rejected.next())
            .await
            .unwrap()
            .unwrap();
        let Event::Rejected(r) = decode_event(&m).unwrap().body else {
            panic!()
        };
        assert_eq!(r.code, code);
    }
    let after = status(&*s.bus, ContentType::Json).await;
    assert_eq!(
        (after.head_seq, after.head_hash),
        (before.head_seq, before.head_hash),
        "the ledger is unchanged"
    );
}

#[tokio::test]
async fn a_retried_rotate_is_applied_once() {
    let s = system(&[
        ("VERSION_SIGNING_KEY", "a-secret-of-16-bytes"),
        ("VERSION_SIGNING_KEY_V2", "b-secret-of-16-bytes"),
        ("VERSION_SIGNING_KEY_V3", "c-secret-of-16-bytes"),
    ])
    .await;
    let command = typed::command(
        ThreadId::Supervisor,
        Rotate {
            requested_by: "retry".into(),
            ..Rotate::default()
        },
    );
    let first = call::<Rotate>(
        &*s.bus,
        ThreadId::Supervisor,
        ContentType::Binary,
        &command,
        T,
    )
    .await
    .unwrap();
    assert_eq!(first.key_version.get(), 2);
    let again = call::<Rotate>(
        &*s.bus,
        ThreadId::Supervisor,
        ContentType::Binary,
        &command,
        T,
    )
    .await
    .unwrap();
    // The retry skips the gate (which would now judge v2 → v3) and gets
    // the original outcome back.
    assert!(again.replayed, "{again:?}");
    assert_eq!(
        (again.seq, again.key_version),
        (first.seq, first.key_version)
    );
    let status = status(&*s.bus, ContentType::Binary).await;
    assert_eq!(status.key_version.unwrap().get(), 2, "not rotated to v3");
}

#[tokio::test]
async fn the_gate_refuses_a_version_this_signer_lacks_unless_forced() {
    // v2 is known to the ledger (provisioned earlier) but not held now.
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.db");
    let open = |secrets: Vec<(String, String)>| {
        let keyring =
            Keyring::load(secrets, &KeyStore::new(dir.path().join("ks.json")), false).unwrap();
        Engine::open(
            EngineConfig {
                ledger_path: ledger.clone(),
                policy: Policy::default(),
                snapshot_every: 0,
                replace: None,
            },
            keyring,
            system_clock(),
        )
        .unwrap()
    };
    drop(open(
        BOTH.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    ));
    let engine = open(vec![(
        "VERSION_SIGNING_KEY".into(),
        "bus-test-v1-secret".into(),
    )]);
    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let _vm = actor::start(engine, bus.clone(), ActorConfig::default())
        .await
        .unwrap();
    tes_supervisor::actor::start(bus.clone(), SupervisorConfig::default())
        .await
        .unwrap();

    let plain = typed::command(ThreadId::Supervisor, Rotate::default());
    let refused = call::<Rotate>(&*bus, ThreadId::Supervisor, ContentType::Binary, &plain, T).await;
    assert!(
        matches!(refused, Err(CallError::Refused(ref e)) if e.code == ErrorCode::Gated),
        "{refused:?}"
    );
    let forced = typed::command(
        ThreadId::Supervisor,
        Rotate {
            force: true,
            ..Rotate::default()
        },
    );
    let ok = call::<Rotate>(&*bus, ThreadId::Supervisor, ContentType::Binary, &forced, T)
        .await
        .unwrap();
    assert!(ok.forced);
    // Signing now falls back to v1, and says so.
    let signed = call::<Sign>(
        &*bus,
        ThreadId::VersionManagement,
        ContentType::Binary,
        &typed::command(
            ThreadId::VersionManagement,
            Sign {
                payload: "p".into(),
                key_version: None,
            },
        ),
        T,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            signed.key_version.get(),
            signed.fallback_from.map(|v| v.get())
        ),
        (1, Some(2))
    );
}

#[tokio::test]
async fn concurrent_signatures_are_group_committed_and_each_is_in_the_ledger() {
    let s = system(BOTH).await;
    let mut tasks = Vec::new();
    for i in 0..400 {
        let bus = s.bus.clone();
        tasks.push(tokio::spawn(async move {
            let c = typed::command(
                ThreadId::VersionManagement,
                Sign {
                    payload: format!("manifest-{i}"),
                    key_version: None,
                },
            );
            call::<Sign>(
                &*bus,
                ThreadId::VersionManagement,
                ContentType::Binary,
                &c,
                T,
            )
            .await
            .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let r: SignReply = t.await.unwrap();
        seqs.push(r.seq);
    }
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 400, "every signature has its own audit record");
    let engine = s.version.stop().await;
    let recorded = engine
        .ledger()
        .events_from(1)
        .unwrap()
        .into_iter()
        .filter(|(seq, e)| {
            matches!(e.body, Event::SignatureGenerated(_)) && seqs.binary_search(seq).is_ok()
        })
        .count();
    assert_eq!(recorded, 400);
}

#[tokio::test]
async fn rollback_through_the_supervisor_returns_to_the_previous_version() {
    let s = system(BOTH).await;
    call::<Rotate>(
        &*s.bus,
        ThreadId::Supervisor,
        ContentType::Json,
        &typed::command(ThreadId::Supervisor, Rotate::default()),
        T,
    )
    .await
    .unwrap();
    let back = call::<Rollback>(
        &*s.bus,
        ThreadId::Supervisor,
        ContentType::Json,
        &typed::command(ThreadId::Supervisor, Rollback::default()),
        T,
    )
    .await
    .unwrap();
    assert_eq!(
        (back.from.map(|v| v.get()), back.key_version.get()),
        (Some(2), 1)
    );
    assert_eq!(back.hsl, "#FF8C00");
}
