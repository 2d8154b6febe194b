//! The Version Management engine against a real SQLite ledger and real keys:
//! the story of a rotation, bad requests that change nothing, fallback,
//! grace and expiry with a moved clock, idempotency, snapshots, and that the
//! secrets never reach the ledger.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tes_keyring::{KeyStore, Keyring};
use tes_ledger::Ledger;
use tes_proto::command::{Bump, Grace, Revoke, Rollback, Rotate, Scope, Sign, Verify};
use tes_proto::event::Event;
use tes_proto::reply::KeyStatus;
use tes_proto::{Channel, Envelope, ErrorCode, KeyVersion, MsgId, ThreadId, Timestamp};
use tes_version_management::core::Policy;
use tes_version_management::engine::{Clock, Outcome};
use tes_version_management::replay::{replay, Until};
use tes_version_management::{Engine, EngineConfig, Request, Response};

const V1_SECRET: &str = "known-v1-secret-7f3a9c0e55d2b8a1";
const V2_SECRET: &str = "known-v2-secret-19be44c7d0a36f52";

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

fn keyring(secrets: &[(u32, &str)]) -> Keyring {
    let env = secrets.iter().map(|(n, s)| {
        let var = if *n == 1 {
            "VERSION_SIGNING_KEY".to_string()
        } else {
            format!("VERSION_SIGNING_KEY_V{n}")
        };
        (var, s.to_string())
    });
    Keyring::load(env, &KeyStore::new("/nonexistent/keystore.json"), false).unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    now: Arc<AtomicU64>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            now: Arc::new(AtomicU64::new(1_764_000_000_000)),
        }
    }
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("ledger.db")
    }
    fn clock(&self) -> Clock {
        let now = self.now.clone();
        Arc::new(move || Timestamp::from_millis(now.load(Ordering::SeqCst)))
    }
    fn advance(&self, d: Duration) {
        self.now.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
    fn engine(&self, secrets: &[(u32, &str)], policy: Policy, snapshot_every: u64) -> Engine {
        let config = EngineConfig {
            ledger_path: self.path(),
            policy,
            snapshot_every,
            replace: None,
        };
        Engine::open(config, keyring(secrets), self.clock()).unwrap()
    }
}

fn cmd<C>(body: C) -> Envelope<C> {
    Envelope::new(
        MsgId::generate(),
        Timestamp::from_millis(0),
        ThreadId::VersionManagement,
        Channel::Command,
        body,
    )
}

fn one(engine: &mut Engine, request: Request) -> Outcome {
    engine.handle_batch(vec![request]).0.remove(0)
}

fn sign(engine: &mut Engine, payload: &str, pin: Option<KeyVersion>) -> Outcome {
    one(
        engine,
        Request::Sign(cmd(Sign {
            payload: payload.into(),
            key_version: pin,
        })),
    )
}

fn rotate(engine: &mut Engine) -> Outcome {
    one(
        engine,
        Request::Rotate(cmd(Rotate {
            requested_by: "test".into(),
            ..Rotate::default()
        })),
    )
}

fn rollback(engine: &mut Engine) -> Outcome {
    one(
        engine,
        Request::Rollback(cmd(Rollback {
            requested_by: "test".into(),
        })),
    )
}

fn code(outcome: Outcome) -> ErrorCode {
    outcome.expect_err("expected a refusal").code
}

/// HMAC-SHA256 as openssl computes it, independently of the keyring.
fn openssl_hmac(secret: &str, payload: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn assert_secret_absent(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for secret in [V1_SECRET, V2_SECRET] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret reached {dir:?}"
            );
        }
    }
}

#[test]
fn the_rotation_story_with_known_keys() {
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 0);
    assert_eq!(e.state().active, Some(KeyVersion::V1));

    let Response::Sign(s1) = sign(&mut e, "manifest-1", None).unwrap() else {
        panic!()
    };
    assert_eq!(s1.key_version, v(1));
    assert_eq!(s1.signature, openssl_hmac(V1_SECRET, "manifest-1"));
    assert_eq!(
        s1.signatures.len(),
        1,
        "no dual signature outside a grace window"
    );

    let Response::Rotation(r) = rotate(&mut e).unwrap() else {
        panic!()
    };
    assert_eq!((r.from, r.key_version, r.success), (Some(v(1)), v(2), true));
    assert_eq!(r.message, "Key rotation to V2 completed");

    let Response::Sign(s2) = sign(&mut e, "manifest-2", None).unwrap() else {
        panic!()
    };
    assert_eq!(s2.key_version, v(2));
    assert_eq!(s2.signature, openssl_hmac(V2_SECRET, "manifest-2"));
    assert_eq!(s2.signatures.len(), 2, "during grace the old key signs too");
    assert_eq!(
        s2.signatures[1].signature,
        openssl_hmac(V1_SECRET, "manifest-2")
    );

    for (payload, sig, ver) in [
        ("manifest-1", &s1.signature, v(1)),
        ("manifest-2", &s2.signature, v(2)),
    ] {
        let out = one(
            &mut e,
            Request::Verify(cmd(Verify {
                payload: payload.into(),
                signature: sig.clone(),
                key_version: ver,
            })),
        );
        assert!(
            matches!(out, Ok(Response::Verify(ref r)) if r.valid),
            "{ver} verifies: {out:?}"
        );
    }
    let tampered = one(
        &mut e,
        Request::Verify(cmd(Verify {
            payload: "manifest-X".into(),
            signature: s2.signature.clone(),
            key_version: v(2),
        })),
    );
    assert!(matches!(tampered, Ok(Response::Verify(ref r)) if !r.valid));

    let Response::Rotation(back) = rollback(&mut e).unwrap() else {
        panic!()
    };
    assert_eq!((back.from, back.key_version), (Some(v(2)), v(1)));
    assert_eq!(
        code(rollback(&mut e)),
        ErrorCode::NothingToRollBack,
        "one step back only"
    );

    let Response::Bump(b) = one(
        &mut e,
        Request::Bump(cmd(Bump {
            entity: "tes".into(),
            scope: Scope::Minor,
            key_version: None,
        })),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(
        (b.manifest.previous.as_str(), b.manifest.version.as_str()),
        ("1.0.0", "1.1.0")
    );
    assert_eq!(b.signature, openssl_hmac(V1_SECRET, &b.payload));
    assert!(
        b.payload
            .starts_with(r#"{"entity":"tes","keyVersion":"v1","#),
        "{}",
        b.payload
    );

    // Replay gives exactly the live state, and the ledger holds no secret.
    let live = e.state().clone();
    drop(e);
    let replayed = replay(&Ledger::open_reader(&f.path()).unwrap(), Until::Head).unwrap();
    assert_eq!(replayed.state, live);
    assert_secret_absent(f.dir.path());
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET)], Policy::default(), 0);
    let head = e.head();
    assert_eq!(code(rotate(&mut e)), ErrorCode::NoNextVersion);
    let err = rotate(&mut e).unwrap_err();
    assert!(
        err.message.starts_with("v2 key not configured"),
        "{}",
        err.message
    );
    assert_eq!(err.hsl, "#FF0000");
    assert_eq!(code(rollback(&mut e)), ErrorCode::NothingToRollBack);
    assert_eq!(
        code(sign(&mut e, "x", Some(v(7)))),
        ErrorCode::UnknownVersion
    );
    let bad_verify = Request::Verify(cmd(Verify {
        payload: "x".into(),
        signature: "zz".into(),
        key_version: v(9),
    }));
    assert_eq!(code(one(&mut e, bad_verify)), ErrorCode::UnknownVersion);
    let bad_entity = Request::Bump(cmd(Bump {
        entity: String::new(),
        scope: Scope::Patch,
        key_version: None,
    }));
    assert_eq!(code(one(&mut e, bad_entity)), ErrorCode::Malformed);
    assert_eq!(e.head(), head, "nothing was appended");
    assert!(!format!("{:?}", e).contains(V1_SECRET));
}

#[test]
fn retired_versions_neither_sign_nor_verify() {
    let f = Fixture::new();
    let mut e = f.engine(
        &[(1, V1_SECRET), (2, V2_SECRET)],
        Policy {
            grace: Duration::from_secs(3600),
            ..Policy::default()
        },
        0,
    );
    let Response::Sign(old) = sign(&mut e, "p", None).unwrap() else {
        panic!()
    };
    rotate(&mut e).unwrap();
    // Pinned v1 still signs during grace.
    assert!(sign(&mut e, "p", Some(v(1))).is_ok());
    f.advance(Duration::from_secs(3601));
    one(&mut e, Request::Tick).unwrap();
    assert_eq!(e.state().status_of(v(1)), Some(KeyStatus::Retired));
    assert_eq!(
        code(sign(&mut e, "p", Some(v(1)))),
        ErrorCode::RetiredVersion
    );
    let verify_old = Request::Verify(cmd(Verify {
        payload: "p".into(),
        signature: old.signature,
        key_version: v(1),
    }));
    assert_eq!(code(one(&mut e, verify_old)), ErrorCode::RetiredVersion);
    let Response::Sign(now) = sign(&mut e, "p", None).unwrap() else {
        panic!()
    };
    assert_eq!(
        now.signatures.len(),
        1,
        "no dual signature once grace is over"
    );
    assert_eq!(code(rollback(&mut e)), ErrorCode::NothingToRollBack);
}

#[test]
fn missing_active_material_falls_back_with_an_event() {
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 0);
    rotate(&mut e).unwrap();
    drop(e);
    // This signer restarts without v2's material.
    let mut e = f.engine(&[(1, V1_SECRET)], Policy::default(), 0);
    let (outcomes, events) = e.handle_batch(vec![Request::Sign(cmd(Sign {
        payload: "p".into(),
        key_version: None,
    }))]);
    let Ok(Response::Sign(s)) = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert_eq!((s.key_version, s.fallback_from), (v(1), Some(v(2))));
    assert_eq!(s.signature, openssl_hmac(V1_SECRET, "p"));
    assert!(matches!(&events[0].1.body, Event::KeyFallback(f) if f.from == v(2) && f.to == v(1)));
    assert_eq!(events[0].1.body.seed_label(), "key:fallback_v2_to_v1");
    assert_eq!(
        events[1].0,
        events[0].0 + 1,
        "committed events carry their seqs"
    );
    // A pinned v2 does not fall back.
    assert_eq!(code(sign(&mut e, "p", Some(v(2)))), ErrorCode::MissingKey);
}

#[test]
fn an_expired_active_version_rotates_away_or_fails_once() {
    let f = Fixture::new();
    let policy = Policy {
        key_ttl: Some(Duration::from_secs(7200)),
        ..Policy::default()
    };
    let mut e = f.engine(&[(1, V1_SECRET)], policy.clone(), 0);
    f.advance(Duration::from_secs(7201));
    one(&mut e, Request::Tick).unwrap();
    one(&mut e, Request::Tick).unwrap();
    let failures = |e: &Engine| {
        e.ledger()
            .events_from(1)
            .unwrap()
            .iter()
            .filter(|(_, ev)| matches!(ev.body, Event::RotationFailed(_)))
            .count()
    };
    assert_eq!(failures(&e), 1);
    drop(e);
    let mut e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], policy, 0);
    one(&mut e, Request::Tick).unwrap();
    assert_eq!(
        e.state().active,
        Some(v(2)),
        "v2 arrived, expiry rotates to it"
    );
}

#[test]
fn a_command_id_is_applied_at_most_once() {
    let f = Fixture::new();
    let mut e = f.engine(
        &[(1, V1_SECRET), (2, V2_SECRET), (3, "third-secret-of-16+")],
        Policy::default(),
        0,
    );
    let command = cmd(Rotate {
        requested_by: "retry".into(),
        ..Rotate::default()
    });
    let Ok(Response::Rotation(first)) = one(&mut e, Request::Rotate(command.clone())) else {
        panic!("the rotation went through")
    };
    // A retry gets the original outcome back, marked as a replay.
    let Ok(Response::Rotation(again)) = one(&mut e, Request::Rotate(command.clone())) else {
        panic!("a retry is answered with the original outcome")
    };
    assert!(again.replayed && !first.replayed);
    assert_eq!(
        (again.seq, again.key_version, again.from),
        (first.seq, v(2), Some(v(1)))
    );
    assert_eq!(again.rotation_timestamp, first.rotation_timestamp);
    assert_eq!(e.state().active, Some(v(2)), "not rotated twice");
    // The same id with another body is refused.
    let mut other = command.clone();
    other.body.to = Some(v(3));
    assert_eq!(
        code(one(&mut e, Request::Rotate(other))),
        ErrorCode::Duplicate
    );
    // Twice in one batch: applied once.
    let again = cmd(Sign {
        payload: "p".into(),
        key_version: None,
    });
    let (outcomes, _) = e.handle_batch(vec![Request::Sign(again.clone()), Request::Sign(again)]);
    assert!(outcomes[0].is_ok());
    assert_eq!(outcomes[1].as_ref().unwrap_err().code, ErrorCode::Duplicate);
}

#[test]
fn a_batch_is_one_transaction_and_replies_name_their_seq() {
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET)], Policy::default(), 0);
    let start = e.head().seq;
    let requests: Vec<_> = (0..50)
        .map(|i| {
            Request::Sign(cmd(Sign {
                payload: format!("p{i}"),
                key_version: None,
            }))
        })
        .collect();
    let (outcomes, events) = e.handle_batch(requests);
    assert_eq!(events.len(), 50);
    for (i, o) in outcomes.iter().enumerate() {
        let Ok(Response::Sign(s)) = o else { panic!() };
        assert_eq!(s.seq, start + 1 + i as u64);
    }
}

#[test]
fn snapshots_agree_with_a_full_replay() {
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 10);
    for i in 0..25 {
        sign(&mut e, &format!("p{i}"), None).unwrap();
        if i == 12 {
            f.advance(Duration::from_secs(60));
            rotate(&mut e).unwrap();
        }
    }
    let live = e.state().clone();
    drop(e);
    let ledger = Ledger::open_reader(&f.path()).unwrap();
    let snapshots = ledger.snapshots().unwrap();
    assert!(!snapshots.is_empty());
    // Replay verifies and folds from seq 1 (a snapshot is never a starting
    // point); each snapshot is the fold at its seq.
    let full = replay(&ledger, Until::Head).unwrap();
    assert_eq!(full.state, live);
    for snap in snapshots {
        let at = replay(&ledger, Until::Seq(snap.seq)).unwrap();
        assert_eq!(
            tes_version_management::core::state::decode_snapshot(&snap.state),
            Some(at.state),
            "snapshot at seq {}",
            snap.seq
        );
    }
    // A replay to an earlier seq ignores later snapshots.
    let early = replay(&ledger, Until::Seq(5)).unwrap();
    assert_eq!((early.state.seq, early.head.seq), (5, 5));
    // A replay to a time before the rotation shows v1 active.
    let before_rotation = replay(
        &ledger,
        Until::Time(Timestamp::from_millis(1_764_000_000_000)),
    )
    .unwrap();
    assert_eq!(before_rotation.state.active, Some(v(1)));
    // Reopening for writing resumes from the same state.
    let e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 10);
    assert_eq!(e.state(), &live);
}

#[test]
fn a_full_disk_hands_nothing_out_and_loses_nothing() {
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET)], Policy::default(), 0);
    sign(&mut e, "before", None).unwrap();
    let (head, state) = (e.head(), e.state().clone());
    let conn = e.ledger().raw_connection();
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    // The file may not grow any more: the next page SQLite needs fails as
    // SQLITE_FULL, exactly as a full disk does.
    let _: i64 = conn
        .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
            r.get(0)
        })
        .unwrap();
    let requests: Vec<_> = (0..400)
        .map(|i| {
            Request::Sign(cmd(Sign {
                payload: format!("p{i}"),
                key_version: None,
            }))
        })
        .collect();
    let (outcomes, committed) = e.handle_batch(requests);
    assert!(committed.is_empty());
    for o in &outcomes {
        let err = o
            .as_ref()
            .expect_err("no signature without its audit record");
        assert_eq!(err.code, ErrorCode::Storage);
        assert!(err.message.contains("full"), "{}", err.message);
    }
    assert_eq!(
        (e.head(), e.state()),
        (head, &state),
        "nothing half-written"
    );
    // Space again: signing resumes where it left off.
    let _: i64 = e
        .ledger()
        .raw_connection()
        .query_row("PRAGMA max_page_count = 1000000", [], |r| r.get(0))
        .unwrap();
    let Response::Sign(s) = sign(&mut e, "after", None).unwrap() else {
        panic!()
    };
    assert_eq!(s.seq, head.seq + 1);
}

#[test]
fn a_replicas_audit_events_are_recorded_once_with_their_ids() {
    use tes_proto::command::Record;
    use tes_proto::event::{KeyRotate, RotationReason, SignatureGenerated};
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET)], Policy::default(), 0);
    let audit = |n: u64| {
        Envelope::new(
            MsgId::generate(),
            Timestamp::from_millis(1_764_000_000_000 + n),
            ThreadId::VersionManagement,
            Channel::Event,
            Event::SignatureGenerated(SignatureGenerated {
                key_version: v(1),
                signature: "ab".repeat(32),
                payload_sha256: "cd".repeat(32),
                pinned: false,
            }),
        )
    };
    let events = vec![audit(1), audit(2)];
    let record = || {
        Request::Record(cmd(Record {
            events: events.clone(),
        }))
    };
    let Response::Record(first) = one(&mut e, record()).unwrap() else {
        panic!()
    };
    assert_eq!(first.seqs.len(), 2);
    let Response::Record(again) = one(&mut e, record()).unwrap() else {
        panic!()
    };
    assert_eq!(
        again.seqs, first.seqs,
        "a retry is recognised, not stored twice"
    );
    let (outcomes, _) = e.handle_batch(vec![record(), record()]);
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, Ok(Response::Record(r)) if r.seqs == first.seqs)));
    assert_eq!(e.state().keys[&v(1)].signatures, 2);

    let forged = Envelope::new(
        MsgId::generate(),
        Timestamp::from_millis(0),
        ThreadId::VersionManagement,
        Channel::Event,
        Event::KeyRotate(KeyRotate {
            from: Some(v(1)),
            to: v(1),
            reason: RotationReason::Requested,
            requested_by: "replica".into(),
            forced: false,
            grace_until: None,
            expires_at: None,
        }),
    );
    let head = e.head();
    assert_eq!(
        code(one(
            &mut e,
            Request::Record(cmd(Record {
                events: vec![audit(3), forged]
            }))
        )),
        ErrorCode::Malformed
    );
    let mut unknown = audit(4);
    if let Event::SignatureGenerated(s) = &mut unknown.body {
        s.key_version = v(9);
    }
    assert_eq!(
        code(one(
            &mut e,
            Request::Record(cmd(Record {
                events: vec![unknown]
            }))
        )),
        ErrorCode::UnknownVersion
    );
    assert_eq!(e.head(), head, "a refused record stores nothing");
}

fn signed(outcome: Outcome) -> tes_proto::reply::SignReply {
    match outcome {
        Ok(Response::Sign(s)) => s,
        other => panic!("expected a signature, got {other:?}"),
    }
}

fn revoke(engine: &mut Engine, version: u32, force: bool) -> Outcome {
    one(
        engine,
        Request::Revoke(cmd(Revoke {
            version: v(version),
            reason: "leaked in build log 4711".into(),
            requested_by: "test".into(),
            force,
        })),
    )
}

fn grace(engine: &mut Engine, version: u32, change: impl FnOnce(&mut Grace)) -> Outcome {
    let mut body = Grace {
        version: v(version),
        until: None,
        extend_secs: None,
        end_now: false,
        requested_by: "test".into(),
    };
    change(&mut body);
    one(engine, Request::Grace(cmd(body)))
}

#[test]
fn a_retried_sign_or_bump_gets_the_original_back_even_after_a_restart() {
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 0);
    assert!(rotate(&mut e).is_ok());
    let command = cmd(Sign {
        payload: "release-42".into(),
        key_version: None,
    });
    let first = signed(one(&mut e, Request::Sign(command.clone())));
    assert_eq!(first.signatures.len(), 2, "dual signing during grace");
    let bump = cmd(Bump {
        entity: "svc".into(),
        scope: Scope::Minor,
        key_version: None,
    });
    let Ok(Response::Bump(bumped)) = one(&mut e, Request::Bump(bump.clone())) else {
        panic!("bumped")
    };
    let head = e.head().seq;
    drop(e);
    f.advance(Duration::from_secs(5));
    let mut e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 0);
    let again = signed(one(&mut e, Request::Sign(command.clone())));
    assert!(again.replayed);
    assert_eq!(
        (
            &again.signature,
            &again.signatures,
            again.seq,
            again.key_version
        ),
        (
            &first.signature,
            &first.signatures,
            first.seq,
            first.key_version
        )
    );
    let Ok(Response::Bump(rebumped)) = one(&mut e, Request::Bump(bump)) else {
        panic!("the bump's original")
    };
    assert!(rebumped.replayed);
    assert_eq!(
        rebumped.manifest, bumped.manifest,
        "same manifest, same time"
    );
    assert_eq!(rebumped.payload, bumped.payload);
    assert_eq!(rebumped.signature, bumped.signature);
    assert_eq!(e.head().seq, head, "a replay appends nothing");
    // Another payload under the same id is another request: refused.
    let mut other = command.clone();
    other.body.payload = "release-43".into();
    let refusal = one(&mut e, Request::Sign(other)).unwrap_err();
    assert_eq!(refusal.code, ErrorCode::Duplicate);
    assert!(refusal.message.contains("payload"), "{}", refusal.message);
    // A signature whose version was revoked since is not handed out again.
    assert!(
        revoke(&mut e, 2, false).is_err(),
        "v2 active, nothing to take over"
    );
    assert!(revoke(&mut e, 2, true).is_ok());
    assert_eq!(
        code(one(&mut e, Request::Sign(command))),
        ErrorCode::RevokedVersion
    );
}

#[test]
fn revoking_stops_a_version_signing_and_verifying_at_once() {
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 0);
    let old = signed(sign(&mut e, "before", None));
    assert!(rotate(&mut e).is_ok());
    // v1 is verifying (grace): it verifies until revoked.
    let verify = |e: &mut Engine| {
        one(
            e,
            Request::Verify(cmd(Verify {
                payload: "before".into(),
                signature: old.signature.clone(),
                key_version: v(1),
            })),
        )
    };
    assert!(matches!(verify(&mut e), Ok(Response::Verify(r)) if r.valid));
    let Ok(Response::Revoke(r)) = revoke(&mut e, 1, false) else {
        panic!("revoked")
    };
    assert_eq!(
        (r.version, r.rotated_to, r.active),
        (v(1), None, Some(v(2)))
    );
    let refusal = verify(&mut e).unwrap_err();
    assert_eq!(refusal.code, ErrorCode::RevokedVersion);
    assert!(
        refusal.message.contains("revoked at") && refusal.message.contains("build log 4711"),
        "{}",
        refusal.message
    );
    assert_eq!(
        code(sign(&mut e, "x", Some(v(1)))),
        ErrorCode::RevokedVersion
    );
    let now = signed(sign(&mut e, "after", None));
    assert_eq!(
        now.signatures.len(),
        1,
        "no dual signature with a revoked version"
    );
    assert_eq!(code(revoke(&mut e, 1, false)), ErrorCode::RevokedVersion);
    assert_eq!(code(rollback(&mut e)), ErrorCode::NothingToRollBack);
    let status = e.status();
    let v1 = status.keys.iter().find(|k| k.version == v(1)).unwrap();
    assert_eq!(v1.status, KeyStatus::Revoked);
    assert_eq!(
        v1.revoked_reason.as_deref(),
        Some("leaked in build log 4711")
    );
    // The fold gives the same.
    let replayed = replay(&Ledger::open_reader(&f.path()).unwrap(), Until::Head).unwrap();
    assert_eq!(&replayed.state, e.state());
}

#[test]
fn revoking_the_active_version_rotates_or_needs_force() {
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 0);
    let Ok(Response::Revoke(r)) = revoke(&mut e, 1, false) else {
        panic!("revoked")
    };
    assert_eq!(
        (r.rotated_to, r.active, r.forced),
        (Some(v(2)), Some(v(2)), false)
    );
    assert_eq!(e.state().active, Some(v(2)));
    let s = signed(sign(&mut e, "p", None));
    assert_eq!((s.key_version, s.signatures.len()), (v(2), 1));
    // v2 is now active with nothing after it: refused without force.
    let refusal = revoke(&mut e, 2, false).unwrap_err();
    assert_eq!(refusal.code, ErrorCode::NoNextVersion);
    assert!(refusal.message.contains("--force"), "{}", refusal.message);
    assert_eq!(e.state().active, Some(v(2)), "a refusal changes nothing");
    let Ok(Response::Revoke(r)) = revoke(&mut e, 2, true) else {
        panic!("forced")
    };
    assert_eq!((r.active, r.forced), (None, true));
    let refusal = sign(&mut e, "p", None).unwrap_err();
    assert_eq!(refusal.code, ErrorCode::RevokedVersion);
    assert!(
        refusal.message.contains("nothing signs"),
        "{}",
        refusal.message
    );
    // A restart does not bring back a version on its own (no genesis).
    drop(e);
    let e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 0);
    assert_eq!(e.state().active, None);
    // A new version, provisioned and rotated to, signs again.
    drop(e);
    let mut e = f.engine(
        &[(1, V1_SECRET), (2, V2_SECRET), (3, "third-secret-for-v3")],
        Policy::default(),
        0,
    );
    let Ok(Response::Rotation(r)) = rotate(&mut e) else {
        panic!("rotated to v3")
    };
    assert_eq!((r.from, r.key_version), (None, v(3)));
    assert_eq!(signed(sign(&mut e, "p", None)).key_version, v(3));
}

#[test]
fn grace_windows_change_end_now_and_extend() {
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 0);
    assert!(rotate(&mut e).is_ok());
    let until = |e: &Engine| e.state().keys[&v(1)].grace_until.unwrap();
    let before = until(&e);
    let Ok(Response::Grace(g)) = grace(&mut e, 1, |g| g.extend_secs = Some(3600)) else {
        panic!("extended")
    };
    assert_eq!(g.previous, Some(before));
    assert_eq!(until(&e), before.saturating_add(Duration::from_secs(3600)));
    // Exactly one change; not on the active version; not in the past.
    assert_eq!(code(grace(&mut e, 1, |_| {})), ErrorCode::Malformed);
    assert_eq!(
        code(grace(&mut e, 2, |g| g.end_now = true)),
        ErrorCode::InUse
    );
    assert_eq!(
        code(grace(&mut e, 1, |g| g.until = Some(Timestamp::from_millis(1)))),
        ErrorCode::Malformed
    );
    let Ok(Response::Grace(g)) = grace(&mut e, 1, |g| g.end_now = true) else {
        panic!("ended")
    };
    assert!(g.retired);
    assert_eq!(e.state().status_of(v(1)), Some(KeyStatus::Retired));
    assert_eq!(
        code(sign(&mut e, "p", Some(v(1)))),
        ErrorCode::RetiredVersion
    );
    assert_eq!(
        code(grace(&mut e, 1, |g| g.extend_secs = Some(60))),
        ErrorCode::RetiredVersion
    );
}

#[test]
fn a_key_ttl_applies_to_the_version_already_running() {
    let f = Fixture::new();
    let e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 0);
    assert_eq!(e.state().keys[&v(1)].expires_at, None, "no TTL, no expiry");
    drop(e);
    f.advance(Duration::from_secs(10));
    let ttl = Policy {
        key_ttl: Some(Duration::from_secs(3)),
        ..Policy::default()
    };
    let mut e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], ttl.clone(), 0);
    let activated = e.state().keys[&v(1)].activated_at.unwrap();
    assert_eq!(
        e.state().keys[&v(1)].expires_at,
        Some(activated.saturating_add(Duration::from_secs(3))),
        "counted from its activation, recorded"
    );
    // Long expired by now: the next tick rotates it away.
    assert!(one(&mut e, Request::Tick).is_ok());
    assert_eq!(e.state().active, Some(v(2)));
    let expiries = Ledger::open_reader(&f.path())
        .unwrap()
        .events_from(1)
        .unwrap()
        .into_iter()
        .filter(|(_, e)| matches!(e.body, Event::KeyExpirySet(_)))
        .count();
    assert_eq!(expiries, 1);
    // The same TTL again records nothing new.
    let head = e.head().seq;
    drop(e);
    let e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], ttl, 0);
    assert_eq!(e.head().seq, head);
}

/// The admin page's feed on load: the newest events, oldest first, paged
/// back with `before`, filtered by kind and actor; a bad limit or kind is
/// refused before anything is read, and reading writes nothing.
#[test]
fn history_reads_the_newest_events_back_from_the_head() {
    use tes_proto::command::History;
    use tes_version_management::history;
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 0);
    let batch = (0..2500)
        .map(|i| {
            Request::Sign(cmd(Sign {
                payload: format!("manifest-{i}"),
                key_version: None,
            }))
        })
        .collect();
    assert!(e.handle_batch(batch).0.iter().all(Result::is_ok));
    rotate(&mut e).unwrap();
    for i in 0..3 {
        sign(&mut e, &format!("after-{i}"), None).unwrap();
    }
    let head = e.head().seq;
    drop(e);
    let bytes_before = std::fs::read(f.path()).unwrap();

    let page = history::read(&f.path(), &History::default()).unwrap();
    assert_eq!(page.head_seq, head);
    assert_eq!(page.events.len(), 100);
    let seqs: Vec<u64> = page.events.iter().map(|s| s.seq).collect();
    assert_eq!(
        seqs,
        ((head - 99)..=head).collect::<Vec<_>>(),
        "the newest, oldest first"
    );
    assert_eq!(page.next_before, Some(head - 99));
    let older = history::read(
        &f.path(),
        &History {
            before: page.next_before,
            ..History::default()
        },
    )
    .unwrap();
    assert_eq!(
        older.events.last().unwrap().seq,
        head - 100,
        "the page before, no gap"
    );

    // Only rotations: found 2500 rows back, across chunk boundaries.
    let rotations = history::read(
        &f.path(),
        &History {
            kinds: vec!["key_rotate".into()],
            ..History::default()
        },
    )
    .unwrap();
    let kinds: Vec<&str> = rotations
        .events
        .iter()
        .map(|s| s.event.body.kind())
        .collect();
    assert_eq!(
        kinds,
        ["key_rotate", "key_rotate"],
        "the first activation and the rotation"
    );
    assert_eq!(
        rotations.next_before, None,
        "the whole ledger was looked through"
    );

    let by_supervisor = history::read(
        &f.path(),
        &History {
            thread: Some(ThreadId::Supervisor),
            ..History::default()
        },
    )
    .unwrap();
    assert!(
        by_supervisor.events.is_empty(),
        "Version Management wrote every row here"
    );

    let one = history::read(
        &f.path(),
        &History {
            limit: 1,
            before: Some(2),
            ..History::default()
        },
    )
    .unwrap();
    assert_eq!(one.events.iter().map(|s| s.seq).collect::<Vec<_>>(), [1]);
    assert_eq!(one.next_before, None);

    for bad in [
        History {
            limit: 0,
            ..History::default()
        },
        History {
            limit: 1001,
            ..History::default()
        },
        History {
            kinds: vec!["key_rotated".into()],
            ..History::default()
        },
    ] {
        let refused = history::read(&f.path(), &bad).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Malformed, "{bad:?}");
    }
    assert_eq!(
        std::fs::read(f.path()).unwrap(),
        bytes_before,
        "a read wrote nothing"
    );
}

/// The key timeline's times: provisioned, active since, verifying since
/// (deactivated), retired — each from its event's time.
#[test]
fn key_views_carry_their_lifecycle_times() {
    let f = Fixture::new();
    let mut e = f.engine(&[(1, V1_SECRET), (2, V2_SECRET)], Policy::default(), 0);
    let start = Timestamp::from_millis(f.now.load(Ordering::SeqCst));
    f.advance(Duration::from_secs(60));
    sign(&mut e, "m", None).unwrap();
    rotate(&mut e).unwrap();
    let rotated = Timestamp::from_millis(f.now.load(Ordering::SeqCst));
    let status = e.status();
    let key = |n: u32| {
        status
            .keys
            .iter()
            .find(|k| k.version == v(n))
            .unwrap()
            .clone()
    };
    let (v1, v2) = (key(1), key(2));
    assert_eq!(v1.provisioned_at, Some(start));
    assert_eq!(v1.status, KeyStatus::Verifying);
    assert_eq!(v1.deactivated_at, Some(rotated));
    assert_eq!(v1.status_since, Some(rotated));
    assert!(v1.grace_until.is_some_and(|g| g > rotated));
    assert_eq!(v2.status, KeyStatus::Active);
    assert_eq!(v2.activated_at, Some(rotated));
    assert_eq!(v2.deactivated_at, None);
    assert_eq!(v2.retired_at, None);
}
