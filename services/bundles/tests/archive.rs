//! The bundle store against a real engine and a real filesystem store:
//! bundles derived from the ledger are exactly what the bump handed out,
//! and an archive pass cut short at any step is finished by the next one
//! with every bundle in exactly one place, counted once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tes_bundles::archive::{self, ArchiveError, Limits};
use tes_bundles::layout::archive_key;
use tes_bundles::{Bundle, Deriver, Store, StoreConfig, StoreError, Ttl};
use tes_bus::InProcessBus;
use tes_keyring::{KeyStore, Keyring};
use tes_ledger::Ledger;
use tes_proto::command::{Bump, Rotate, Scope};
use tes_proto::reply::BumpReply;
use tes_proto::{Channel, Envelope, ErrorCode, Event, KeyVersion, MsgId, ThreadId, Timestamp};
use tes_version_management::actor::{self, ActorConfig, EngineHandle, Running};
use tes_version_management::core::{Command, Policy};
use tes_version_management::{Engine, EngineConfig, Request, Response};

const V1: &str = "bundles-test-secret-v1-0f1e2d3c";
const V2: &str = "bundles-test-secret-v2-4b5a6978";

struct Setup {
    dir: tempfile::TempDir,
    running: Running,
    store: Store,
}

async fn setup(grace: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keyring = Keyring::load(
        vec![
            ("VERSION_SIGNING_KEY".into(), V1.into()),
            ("VERSION_SIGNING_KEY_V2".into(), V2.into()),
        ],
        &KeyStore::new(dir.path().join("ks.json")),
        false,
    )
    .unwrap();
    let config = EngineConfig {
        ledger_path: dir.path().join("ledger.db"),
        policy: Policy {
            grace,
            ..Policy::default()
        },
        snapshot_every: 0,
        replace: None,
    };
    let clock = Arc::new(AtomicU64::new(1_764_000_000_000));
    let engine = Engine::open(
        config,
        keyring,
        Arc::new(move || Timestamp::from_millis(clock.fetch_add(1, Ordering::SeqCst))),
    )
    .unwrap();
    let running = actor::start(
        engine,
        Arc::new(InProcessBus::new()),
        ActorConfig::default(),
    )
    .await
    .unwrap();
    let store = Store::open(&StoreConfig::Fs {
        root: dir.path().join("bundles"),
    })
    .await
    .unwrap();
    Setup {
        dir,
        running,
        store,
    }
}

fn command<C>(body: C) -> Envelope<C> {
    Envelope::new(
        MsgId::generate(),
        Timestamp::now(),
        ThreadId::VersionManagement,
        Channel::Command,
        body,
    )
}

async fn bump(engine: &EngineHandle, entity: &str) -> BumpReply {
    let r = engine
        .call(Request::Bump(command(Bump {
            entity: entity.into(),
            scope: Scope::Patch,
            key_version: None,
        })))
        .await
        .unwrap();
    match r {
        Response::Bump(b) => b,
        other => panic!("{other:?}"),
    }
}

async fn rotate(engine: &EngineHandle) {
    engine
        .call(Request::Rotate(command(Rotate {
            to: None,
            requested_by: "test".into(),
            force: false,
        })))
        .await
        .unwrap();
}

/// Stops the actor; its engine thread ends when the last handle is gone.
async fn finish(s: Setup, engine: EngineHandle) {
    drop(engine);
    s.running.stop().await;
}

/// `n` bumps under v1, then a rotation to v2 (v1 leaves the verifying set
/// at once with no grace), and every bundle in the store.
async fn v1_retired_after(n: usize) -> (Setup, EngineHandle, Vec<Bundle>) {
    let s = setup(Duration::ZERO).await;
    let engine = s.running.handle();
    for i in 0..n {
        bump(&engine, &format!("e{i}")).await;
    }
    rotate(&engine).await;
    bump(&engine, "after").await;
    let bundles = derive(&s);
    put_all(&s.store, &bundles).await;
    (s, engine, bundles)
}

/// The bundles the ledger describes, as the worker derives them.
fn derive(s: &Setup) -> Vec<Bundle> {
    let ledger = Ledger::open_reader(&s.dir.path().join("ledger.db")).unwrap();
    let mut deriver = Deriver::new(Ttl {
        default: Some(Duration::from_secs(3600)),
        ..Ttl::default()
    });
    let mut out = Vec::new();
    for (seq, event) in ledger.events_from(1).unwrap() {
        out.extend(deriver.observe(seq, &event));
    }
    out.extend(deriver.finish());
    out
}

async fn put_all(store: &Store, bundles: &[Bundle]) {
    for b in bundles {
        store.put(&b.key, b.bytes(), b.metadata()).await.unwrap();
    }
}

#[tokio::test]
async fn derived_bundles_are_what_the_bump_handed_out() {
    let s = setup(Duration::from_secs(3600)).await;
    let engine = s.running.handle();
    let mut replies = Vec::new();
    for entity in ["tes", "api", "a/b c"] {
        replies.push(bump(&engine, entity).await);
    }
    rotate(&engine).await;
    // In the grace window: dual signatures.
    replies.push(bump(&engine, "tes").await);
    let bundles = derive(&s);
    assert_eq!(bundles.len(), replies.len());
    for (b, r) in bundles.iter().zip(&replies) {
        assert_eq!(b.body.payload, r.payload);
        assert_eq!(b.body.signature, r.signature);
        assert_eq!(b.body.signatures, r.signatures);
        assert_eq!(b.body.manifest, r.manifest);
        assert_eq!(b.body.key_version, r.key_version);
        assert_eq!(
            b.body.seq,
            r.seq - 1,
            "the bump's event comes right before its first signature"
        );
        assert_eq!(
            b.body.expiry,
            Some(
                r.manifest
                    .timestamp
                    .saturating_add(Duration::from_secs(3600))
            )
        );
        assert!(b.key.starts_with(&format!("bundle/{}/", r.key_version)));
    }
    assert_eq!(
        replies[3].signatures.len(),
        2,
        "dual-signed in the grace window"
    );
    assert_eq!(bundles[2].key, "bundle/v1/a%2Fb%20c/1.0.1.json");
    finish(s, engine).await;
}

#[tokio::test]
async fn an_interrupted_pass_is_finished_with_every_bundle_in_one_place() {
    let (s, engine, bundles) = v1_retired_after(7).await;
    let (v1, v2): (Vec<_>, Vec<_>) = bundles
        .iter()
        .partition(|b| b.body.key_version == KeyVersion::V1);
    assert_eq!((v1.len(), v2.len()), (7, 1));

    // A pass planned one batch of all seven, then stopped at a different
    // step for each of the first four.
    let keys: Vec<String> = v1.iter().map(|b| b.key.clone()).collect();
    let planned = engine
        .call(Request::Bundles(Command::BeginArchive {
            version: KeyVersion::V1,
            keys: keys.clone(),
            left: 7,
        }))
        .await
        .unwrap();
    assert!(matches!(planned, Response::Decided { .. }));
    let target = |i: usize| archive_key(&keys[i]).unwrap();
    // 0: copied, not yet deleted.
    s.store
        .put_archive(&target(0), v1[0].bytes(), v1[0].metadata())
        .await
        .unwrap();
    // 1: half-copied.
    let half = v1[1].bytes()[..10].to_vec();
    s.store.put_archive(&target(1), half, vec![]).await.unwrap();
    // 2: copied and deleted, not yet recorded.
    s.store
        .put_archive(&target(2), v1[2].bytes(), v1[2].metadata())
        .await
        .unwrap();
    s.store.delete(&keys[2]).await.unwrap();
    // 3: deleted behind our back.
    s.store.delete(&keys[3]).await.unwrap();

    let summary = archive::run(
        &s.store,
        &engine,
        KeyVersion::V1,
        Limits::default(),
        Timestamp::now(),
    )
    .await
    .unwrap();
    assert_eq!(summary.objects, 6);
    assert_eq!(summary.missing, vec![keys[3].clone()]);
    let expected_bytes: u64 = [0, 1, 2, 4, 5, 6]
        .iter()
        .map(|&i| v1[i].bytes().len() as u64)
        .sum();
    assert_eq!(summary.bytes, expected_bytes);

    // Every v1 bundle is in exactly one place, with its bytes and metadata.
    assert!(s.store.list("bundle/v1/").await.unwrap().is_empty());
    let archived = s.store.list("archive/v1/").await.unwrap();
    assert_eq!(archived.len(), 6);
    for (i, b) in v1.iter().enumerate().filter(|(i, _)| *i != 3) {
        let copy = s.store.read(&target(i)).await.unwrap().unwrap();
        assert_eq!(copy, b.bytes(), "archived copy of {}", b.key);
        let meta = s.store.stat(&target(i)).await.unwrap().unwrap();
        if i != 1 {
            // The half copy carried no metadata; its rewrite does.
            assert_eq!(meta.get("keyversion"), Some("v1"));
        }
        assert_eq!(meta.get("signature"), Some(b.body.signature.as_str()));
    }
    // v2's bundle is untouched.
    let v2_left = s.store.list("bundle/v2/").await.unwrap();
    assert_eq!(v2_left.len(), 1);
    assert!(s.store.list("archive/v2/").await.unwrap().is_empty());

    // The ledger counted each once; a second pass finds nothing to do.
    let again = archive::run(
        &s.store,
        &engine,
        KeyVersion::V1,
        Limits::default(),
        Timestamp::now(),
    )
    .await
    .unwrap();
    assert_eq!((again.objects, again.batches), (0, 0));
    let state = archive::state(&engine).await.unwrap();
    let record = &state.archives[&KeyVersion::V1];
    assert_eq!(
        (record.objects, record.bytes, record.batches),
        (6, expected_bytes, 1)
    );
    assert!(record.open.is_none());
    finish(s, engine).await;
}

#[tokio::test]
async fn passes_go_in_bounded_batches_and_leave_other_versions_alone() {
    let (s, engine, _) = v1_retired_after(23).await;
    let limits = Limits {
        batch: 5,
        concurrency: 3,
    };
    let summary = archive::run(&s.store, &engine, KeyVersion::V1, limits, Timestamp::now())
        .await
        .unwrap();
    assert_eq!((summary.objects, summary.batches), (23, 5));
    let ledger = Ledger::open_reader(&s.dir.path().join("ledger.db")).unwrap();
    let batches: Vec<usize> = ledger
        .events_from(1)
        .unwrap()
        .into_iter()
        .filter_map(|(_, e)| match e.body {
            Event::ArchiveBatch(b) => Some(b.keys.len()),
            _ => None,
        })
        .collect();
    assert_eq!(batches, vec![5, 5, 5, 5, 3]);
    // v2 is active: refused, nothing moved.
    match archive::run(
        &s.store,
        &engine,
        KeyVersion::new(2).unwrap(),
        limits,
        Timestamp::now(),
    )
    .await
    {
        Err(ArchiveError::Refused(r)) => assert_eq!(r.code, ErrorCode::InUse),
        other => panic!("archiving the active version: {other:?}"),
    }
    finish(s, engine).await;
}

#[tokio::test]
async fn a_version_in_its_grace_window_keeps_its_bundles() {
    let s = setup(Duration::from_secs(3600)).await;
    let engine = s.running.handle();
    bump(&engine, "tes").await;
    rotate(&engine).await;
    put_all(&s.store, &derive(&s)).await;
    match archive::run(
        &s.store,
        &engine,
        KeyVersion::V1,
        Limits::default(),
        Timestamp::now(),
    )
    .await
    {
        Err(ArchiveError::Refused(r)) => {
            assert_eq!(r.code, ErrorCode::InUse);
            assert!(r.message.contains("verifying set"), "{}", r.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.store.list("bundle/v1/").await.unwrap().len(), 1);
    finish(s, engine).await;
}

#[tokio::test]
async fn an_unreachable_store_is_named_and_the_secret_is_not() {
    let secret = "s3-secret-that-must-not-appear-9d8c7b";
    let config = StoreConfig::S3(tes_bundles::S3Config {
        endpoint: Some("http://127.0.0.1:1".into()),
        bucket: "tes-bundles".into(),
        region: "us-east-1".into(),
        access_key_id: "AKIDTEST".into(),
        secret_access_key: zeroize::Zeroizing::new(secret.into()),
        archive_class: "STANDARD_IA".into(),
    });
    assert!(!format!("{config:?}").contains(secret));
    let err = Store::open(&config).await.unwrap_err();
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("unreachable") && text.contains("127.0.0.1:1"),
        "{text}"
    );
    assert!(!text.contains(secret) && !format!("{err:?}").contains(secret));
}
