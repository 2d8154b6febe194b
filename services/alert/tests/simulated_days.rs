//! Alert rules against real ledgers written by the real engine with a moved
//! clock: eight simulated days of a migration that drags and then completes,
//! and fallback rates either side of the 5% threshold. Every alert must come
//! at the event that makes it hold, and go when the traffic changes.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tes_alert::replay::{replay_ledger, Transition};
use tes_alert::Rules;
use tes_keyring::{KeyStore, Keyring};
use tes_proto::alert::Rule;
use tes_proto::command::{Rotate, Sign};
use tes_proto::event::Event;
use tes_proto::{Channel, Envelope, KeyVersion, MsgId, ThreadId, Timestamp};
use tes_version_management::core::Policy;
use tes_version_management::{Engine, EngineConfig, Request};

const T0: u64 = 1_764_000_000_000;
const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const WINDOW: Duration = Duration::from_secs(3600);

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

struct World {
    dir: tempfile::TempDir,
    now: Arc<AtomicU64>,
}

impl World {
    fn new() -> World {
        World {
            dir: tempfile::tempdir().unwrap(),
            now: Arc::new(AtomicU64::new(T0)),
        }
    }

    fn ledger(&self) -> std::path::PathBuf {
        self.dir.path().join("ledger.db")
    }

    /// The engine, holding the material of `versions`.
    fn engine(&self, versions: &[u32]) -> Engine {
        self.engine_with(versions, None)
    }

    fn engine_with(&self, versions: &[u32], key_ttl: Option<Duration>) -> Engine {
        let env = versions.iter().map(|n| {
            let var = if *n == 1 {
                "VERSION_SIGNING_KEY".to_string()
            } else {
                format!("VERSION_SIGNING_KEY_V{n}")
            };
            (var, format!("simulated-secret-{n}"))
        });
        let keyring =
            Keyring::load(env, &KeyStore::new("/nonexistent/keystore.json"), false).unwrap();
        let policy = Policy {
            grace: Duration::from_secs(30 * 24 * 3600),
            key_ttl,
            dual_sign: false,
        };
        let now = self.now.clone();
        let config = EngineConfig {
            ledger_path: self.ledger(),
            policy,
            snapshot_every: 0,
            replace: None,
        };
        Engine::open(
            config,
            keyring,
            Arc::new(move || Timestamp::from_millis(now.load(Ordering::SeqCst))),
        )
        .unwrap()
    }

    fn at(&self, t: u64) {
        self.now.store(t, Ordering::SeqCst);
    }
}

fn command<C>(body: C) -> Envelope<C> {
    Envelope::new(
        MsgId::generate(),
        Timestamp::from_millis(0),
        ThreadId::VersionManagement,
        Channel::Command,
        body,
    )
}

/// One batch (one transaction, one timestamp): `v2` default signatures
/// (the active version) and `v1` pinned to v1.
fn traffic(engine: &mut Engine, default: usize, pinned_v1: usize) {
    let mut requests = Vec::new();
    for i in 0..default + pinned_v1 {
        let key_version = (i >= default).then(|| v(1));
        requests.push(Request::Sign(command(Sign {
            payload: format!("manifest {i}"),
            key_version,
        })));
    }
    let (outcomes, _) = engine.handle_batch(requests);
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
}

fn rotate(engine: &mut Engine) {
    let (outcomes, _) = engine.handle_batch(vec![Request::Rotate(command(Rotate {
        requested_by: "sim".into(),
        ..Rotate::default()
    }))]);
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
}

fn time_of(path: &Path, seq: u64) -> u64 {
    let ledger = tes_ledger::Ledger::open_reader(path).unwrap();
    ledger.events_from(seq).unwrap()[0].1.time.as_millis()
}

fn raised(transitions: &[Transition], rule: Rule) -> Vec<&Transition> {
    transitions
        .iter()
        .filter(|t| matches!(&t.event.body, Event::Alert(a) if a.rule == rule))
        .collect()
}

fn resolved(transitions: &[Transition], rule: Rule) -> Vec<&Transition> {
    transitions
        .iter()
        .filter(|t| matches!(&t.event.body, Event::Resolved(r) if r.rule == rule))
        .collect()
}

#[test]
fn eight_days_of_a_dragging_migration_raise_and_resolve_at_the_right_events() {
    let world = World::new();
    let mut engine = world.engine(&[1, 2]);
    // The first hour: everything on v1.
    for slot in 0..4 {
        world.at(T0 + slot * 15 * MINUTE);
        traffic(&mut engine, 10, 0);
    }
    let rotation = T0 + HOUR;
    world.at(rotation);
    rotate(&mut engine);
    // Clients follow slowly: 1 request in 40 on v2 until day 7½, then all.
    let flip = rotation + 7 * DAY + 11 * HOUR;
    let mut t = rotation;
    while t < T0 + 8 * DAY {
        world.at(t);
        let first_of_hour = (t - rotation).is_multiple_of(HOUR);
        match (t >= flip, first_of_hour) {
            (false, true) => traffic(&mut engine, 1, 9),
            (false, false) => traffic(&mut engine, 0, 10),
            (true, _) => traffic(&mut engine, 10, 0),
        }
        t += 15 * MINUTE;
    }
    drop(engine);

    let path = world.ledger();
    let (transitions, evaluator) = replay_ledger(&path, WINDOW, Rules::default()).unwrap();

    // "V2 usage < 10% after 24 hours": at the first event 24 h after the rotation.
    let low = raised(&transitions, Rule::NewVersionUsageBelow);
    assert_eq!(low.len(), 1, "raised once: {transitions:#?}");
    assert_eq!(time_of(&path, low[0].seq), rotation + DAY);
    assert!(
        time_of(&path, low[0].seq - 1) < rotation + DAY,
        "not a moment earlier"
    );
    let Event::Alert(a) = &low[0].event.body else {
        unreachable!()
    };
    assert_eq!(
        (a.from, a.to, a.threshold_bp),
        (Some(v(1)), Some(v(2)), Some(1_000))
    );
    assert!(
        a.observed_bp.unwrap() < 1_000 && a.message.contains("v2"),
        "{a:?}"
    );
    // Resolved when the mix changes, and not before.
    let low_end = resolved(&transitions, Rule::NewVersionUsageBelow);
    assert_eq!(low_end.len(), 1);
    assert_eq!(time_of(&path, low_end[0].seq), flip);

    // "V1 usage > 90% after 7 days": at the first event 7 days after it.
    let high = raised(&transitions, Rule::OldVersionUsageAbove);
    assert_eq!(high.len(), 1);
    assert_eq!(time_of(&path, high[0].seq), rotation + 7 * DAY);
    assert!(time_of(&path, high[0].seq - 1) < rotation + 7 * DAY);
    let high_end = resolved(&transitions, Rule::OldVersionUsageAbove);
    assert_eq!(high_end.len(), 1);
    assert_eq!(time_of(&path, high_end[0].seq), flip);

    // The old version's share never fell: stalled once the stall window
    // (6 h) has passed since the rotation, resolved by the change.
    let stalled = raised(&transitions, Rule::MigrationStalled);
    assert_eq!(stalled.len(), 1);
    assert_eq!(time_of(&path, stalled[0].seq), rotation + 6 * HOUR);
    assert_eq!(
        time_of(&path, resolved(&transitions, Rule::MigrationStalled)[0].seq),
        flip
    );

    // Nothing else held, and nothing is open at the end.
    assert!(raised(&transitions, Rule::FallbackRateAbove).is_empty());
    assert!(raised(&transitions, Rule::RotationFailed).is_empty());
    assert_eq!(evaluator.open().count(), 0);

    // A replay is a function of the ledger: same alerts, same ids, same events.
    let (again, _) = replay_ledger(&path, WINDOW, Rules::default()).unwrap();
    assert_eq!(again, transitions);
}

/// A ledger with `fallbacks` of 100 signing requests falling back from v2
/// (a signer that lost v2's material) within one hour.
fn fallback_ledger(fallbacks: u64) -> World {
    let world = World::new();
    let mut engine = world.engine(&[1, 2]);
    rotate(&mut engine);
    drop(engine);
    let mut t = T0 + MINUTE;
    for i in 0..100 {
        world.at(t);
        // The signer without v2 takes these; the one with v2 the rest.
        let mut engine = if i < fallbacks {
            world.engine(&[1])
        } else {
            world.engine(&[1, 2])
        };
        traffic(&mut engine, 1, 0);
        t += 10_000;
    }
    world
}

#[test]
fn a_six_percent_fallback_rate_raises_the_alert_and_four_percent_does_not() {
    let six = fallback_ledger(6);
    let (transitions, evaluator) = replay_ledger(&six.ledger(), WINDOW, Rules::default()).unwrap();
    let alerts = raised(&transitions, Rule::FallbackRateAbove);
    assert_eq!(alerts.len(), 1, "{transitions:#?}");
    let Event::Alert(a) = &alerts[0].event.body else {
        unreachable!()
    };
    // It starts to hold once 20 requests (the minimum) are in the window.
    assert_eq!(a.observed_bp, Some(600 * 100 / 20));
    assert_eq!(
        evaluator.open().map(|(_, a)| a.rule).collect::<Vec<_>>(),
        [Rule::FallbackRateAbove]
    );
    let open = evaluator.open().next().unwrap().1;
    assert!(open.message.contains("v2"), "{}", open.message);

    let four = fallback_ledger(4);
    let (transitions, _) = replay_ledger(&four.ledger(), WINDOW, Rules::default()).unwrap();
    // 4 of the first 20 is 20%: the alert holds early on, and is resolved
    // once the rate falls to 4 in 100.
    let final_rate = {
        let mut m = tes_monitoring::fold_ledger(&four.ledger(), WINDOW).unwrap();
        let at = m.last_event_at();
        m.snapshot(at).window.fallback_rate_bp()
    };
    assert_eq!(final_rate, Some(400));
    assert_eq!(
        raised(&transitions, Rule::FallbackRateAbove).len(),
        resolved(&transitions, Rule::FallbackRateAbove).len(),
        "at 4% nothing stays open: {transitions:#?}"
    );
}

#[test]
fn a_rotation_failure_alerts_the_supervisor_until_a_rotation_succeeds() {
    let world = World::new();
    // v1 expires after a day, and there is nothing to rotate to.
    let mut engine = world.engine_with(&[1], Some(Duration::from_secs(24 * 3600)));
    traffic(&mut engine, 1, 0);
    world.at(T0 + DAY + MINUTE);
    let (outcomes, committed) = engine.handle_batch(vec![Request::Tick]);
    assert!(outcomes[0].is_ok());
    assert!(
        committed
            .iter()
            .any(|(_, e)| matches!(e.body, Event::RotationFailed(_))),
        "{committed:?}"
    );
    drop(engine);
    // v2 arrives; the operator rotates.
    world.at(T0 + DAY + HOUR);
    let mut engine = world.engine_with(&[1, 2], Some(Duration::from_secs(24 * 3600)));
    rotate(&mut engine);
    drop(engine);

    let path = world.ledger();
    let (transitions, evaluator) = replay_ledger(&path, WINDOW, Rules::default()).unwrap();
    let failed = raised(&transitions, Rule::RotationFailed);
    assert_eq!(failed.len(), 1, "{transitions:#?}");
    assert_eq!(time_of(&path, failed[0].seq), T0 + DAY + MINUTE);
    let ended = resolved(&transitions, Rule::RotationFailed);
    assert_eq!(ended.len(), 1);
    assert_eq!(time_of(&path, ended[0].seq), T0 + DAY + HOUR);
    assert_eq!(evaluator.open().count(), 0);
}
