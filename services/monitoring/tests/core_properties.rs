//! Properties of Monitoring's fold over random event histories: the counts
//! are exactly the events' counts, each seq counts once however often it is
//! seen, the window holds exactly the traffic within it, and a fold split in
//! two (a restart) ends where one fold does.

use std::time::Duration;

use proptest::prelude::*;
use tes_monitoring::Metrics;
use tes_proto::event::{
    Event, KeyFallback, KeyRollback, KeyRotate, RotationFailed, RotationReason, SignatureGenerated,
    SignatureVerified,
};
use tes_proto::{Channel, Envelope, KeyVersion, MsgId, ThreadId, Timestamp};

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

#[derive(Debug, Clone)]
enum Step {
    /// A signing request: its signatures (one, or two when dual), maybe
    /// after a fallback.
    Sign {
        versions: Vec<u32>,
        fallback: bool,
    },
    Verify {
        version: u32,
        valid: bool,
    },
    Rotate {
        to: u32,
    },
    Rollback {
        to: u32,
    },
    Fail,
    /// Minutes pass.
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (proptest::collection::vec(1u32..=3, 1..=2), any::<bool>())
            .prop_map(|(versions, fallback)| Step::Sign { versions, fallback }),
        2 => (1u32..=3, any::<bool>()).prop_map(|(version, valid)| Step::Verify { version, valid }),
        1 => (1u32..=3).prop_map(|to| Step::Rotate { to }),
        1 => (1u32..=3).prop_map(|to| Step::Rollback { to }),
        1 => Just(Step::Fail),
        2 => (0u64..90).prop_map(Step::Wait),
    ]
}

/// The ledger a history makes: (seq, event), seqs from 1.
fn ledger(steps: &[Step]) -> Vec<(u64, Envelope<Event>)> {
    let mut now = 1_764_000_000_000u64;
    let mut out = Vec::new();
    let mut push = |now: u64, cause: Option<MsgId>, body: Event| {
        let mut e = Envelope::new(
            MsgId::generate(),
            Timestamp::from_millis(now),
            ThreadId::VersionManagement,
            Channel::Event,
            body,
        );
        if let Some(c) = cause {
            e = e.caused_by_id(c, None);
        }
        out.push((out.len() as u64 + 1, e));
    };
    for s in steps {
        match s {
            Step::Sign { versions, fallback } => {
                let cause = Some(MsgId::generate());
                if *fallback {
                    push(
                        now,
                        cause,
                        Event::KeyFallback(KeyFallback {
                            from: v(versions[0] + 1),
                            to: v(versions[0]),
                        }),
                    );
                }
                for n in versions {
                    push(
                        now,
                        cause,
                        Event::SignatureGenerated(SignatureGenerated {
                            key_version: v(*n),
                            signature: "00".repeat(32),
                            payload_sha256: "11".repeat(32),
                            pinned: false,
                        }),
                    );
                }
            }
            Step::Verify { version, valid } => push(
                now,
                Some(MsgId::generate()),
                Event::SignatureVerified(SignatureVerified {
                    key_version: v(*version),
                    valid: *valid,
                }),
            ),
            Step::Rotate { to } => push(
                now,
                None,
                Event::KeyRotate(KeyRotate {
                    from: Some(v((*to + 1) % 3 + 1)),
                    to: v(*to),
                    reason: RotationReason::Requested,
                    requested_by: "p".into(),
                    forced: false,
                    grace_until: None,
                    expires_at: None,
                }),
            ),
            Step::Rollback { to } => push(
                now,
                None,
                Event::KeyRollback(KeyRollback {
                    from: v(*to % 3 + 1),
                    to: v(*to),
                    requested_by: "p".into(),
                    grace_until: Timestamp::from_millis(now),
                }),
            ),
            Step::Fail => push(
                now,
                None,
                Event::RotationFailed(RotationFailed {
                    from: None,
                    reason: "nothing to rotate to".into(),
                }),
            ),
            Step::Wait(minutes) => now += minutes * 60_000,
        }
    }
    out
}

const WINDOW: Duration = Duration::from_secs(3600);

/// Every event folded, then a snapshot `probe_minutes` after the last one:
/// that moment (ms) and the snapshot.
fn probed(
    events: &[(u64, Envelope<Event>)],
    probe_minutes: u64,
) -> (u64, tes_proto::event::MetricsSnapshot) {
    let mut m = Metrics::new(WINDOW);
    for (seq, e) in events {
        m.observe(*seq, e);
    }
    let last = events.last().map_or(0, |(_, e)| e.time.as_millis());
    let at = last + probe_minutes * 60_000;
    (at, m.snapshot(Timestamp::from_millis(at)))
}

proptest! {
    #[test]
    fn counts_are_the_ledgers_counts(steps in proptest::collection::vec(step(), 0..80)) {
        let events = ledger(&steps);
        let mut m = Metrics::new(WINDOW);
        for (seq, e) in &events {
            prop_assert!(m.observe(*seq, e));
        }
        let last = events.last().map_or(Timestamp::default(), |(_, e)| e.time);
        let snap = m.snapshot(last);
        for n in 1..=3 {
            let sigs = events.iter().filter(|(_, e)| matches!(&e.body, Event::SignatureGenerated(s) if s.key_version == v(n))).count() as u64;
            prop_assert_eq!(snap.signatures(v(n)), sigs);
            let valid = events.iter().filter(|(_, e)| matches!(&e.body, Event::SignatureVerified(s) if s.key_version == v(n) && s.valid)).count() as u64;
            prop_assert_eq!(snap.version(v(n)).map_or(0, |c| c.verified_valid), valid);
        }
        let requests = steps.iter().filter(|s| matches!(s, Step::Sign { .. })).count() as u64;
        prop_assert_eq!(snap.sign_requests, requests, "a dual signature is one request");
        let primaries: u64 = snap.versions.iter().map(|c| c.primary).sum();
        prop_assert_eq!(primaries, requests, "each request has one primary signature");
        let all: u64 = snap.versions.iter().map(|c| c.signatures).sum();
        prop_assert_eq!(snap.dual_signatures, all - requests);
        let fallbacks = events.iter().filter(|(_, e)| matches!(e.body, Event::KeyFallback(_))).count() as u64;
        prop_assert_eq!(snap.fallback_total(), fallbacks);
        prop_assert_eq!(snap.rotations, steps.iter().filter(|s| matches!(s, Step::Rotate { .. })).count() as u64);
        prop_assert_eq!(snap.rollbacks, steps.iter().filter(|s| matches!(s, Step::Rollback { .. })).count() as u64);
        prop_assert_eq!(snap.seq, events.len() as u64);
    }

    #[test]
    fn a_seq_seen_again_is_not_counted_again(steps in proptest::collection::vec(step(), 1..60), repeat in 0usize..60) {
        let events = ledger(&steps);
        let (mut once, mut twice) = (Metrics::new(WINDOW), Metrics::new(WINDOW));
        for (i, (seq, e)) in events.iter().enumerate() {
            once.observe(*seq, e);
            twice.observe(*seq, e);
            // A resend (JetStream after its duplicate window, or a row both
            // replayed and seen live) of this or an earlier event.
            let (rseq, re) = &events[repeat.min(i)];
            prop_assert!(!twice.observe(*rseq, re));
        }
        let at = Timestamp::from_millis(u64::MAX / 2);
        prop_assert_eq!(once.snapshot(at), twice.snapshot(at));
    }

    #[test]
    fn the_window_holds_exactly_the_recent_traffic(steps in proptest::collection::vec(step(), 0..80), probe_minutes in 0u64..200) {
        let events = ledger(&steps);
        let (at, snap) = probed(&events, probe_minutes);
        let recent = |e: &Envelope<Event>| e.time.as_millis() >= at - WINDOW.as_millis() as u64;
        // The signing requests each version served: the first signature of
        // each request (a dual signature beside it is not a client on that
        // version), and the verifications on their own.
        let mut served = [0u64; 4];
        let mut dual = 0u64;
        let mut last_cause = None;
        for (_, e) in &events {
            if let Event::SignatureGenerated(s) = &e.body {
                let primary = e.causation_id != last_cause;
                last_cause = e.causation_id;
                if recent(e) {
                    if primary { served[s.key_version.get() as usize] += 1 } else { dual += 1 }
                }
            }
        }
        for n in 1..=3 {
            let got = snap.window.usage.iter().find(|u| u.version == v(n)).map_or(0, |u| u.operations);
            prop_assert_eq!(got, served[n as usize], "requests served by v{}", n);
            let verified = events.iter().filter(|(_, e)| recent(e) && matches!(&e.body, Event::SignatureVerified(s) if s.key_version == v(n))).count() as u64;
            let got = snap.window.verifications.iter().find(|u| u.version == v(n)).map_or(0, |u| u.operations);
            prop_assert_eq!(got, verified, "verifications under v{}", n);
        }
        prop_assert_eq!(snap.window.dual_signatures, dual);
        let fallbacks = events.iter().filter(|(_, e)| recent(e) && matches!(e.body, Event::KeyFallback(_))).count() as u64;
        prop_assert_eq!(snap.window.fallbacks, fallbacks);
    }

    #[test]
    fn the_series_holds_each_buckets_requests_by_the_version_that_served_them(steps in proptest::collection::vec(step(), 0..80), probe_minutes in 0u64..200) {
        let events = ledger(&steps);
        let (at, snap) = probed(&events, probe_minutes);
        let width = snap.series.bucket_ms;
        prop_assert_eq!(width, WINDOW.as_millis() as u64 / tes_proto::metrics::SERIES_BUCKETS);
        let cutoff = at.saturating_sub(WINDOW.as_millis() as u64);
        // Expected: per bucket start (every bucket with any part inside
        // the window), the primary signatures per version.
        let mut expected: std::collections::BTreeMap<u64, std::collections::BTreeMap<u32, u64>> = Default::default();
        let mut last_cause = None;
        for (_, e) in &events {
            if let Event::SignatureGenerated(s) = &e.body {
                let primary = e.causation_id != last_cause;
                last_cause = e.causation_id;
                let t = e.time.as_millis();
                let start = t - t % width;
                if primary && start + width > cutoff {
                    *expected.entry(start).or_default().entry(s.key_version.get()).or_default() += 1;
                }
            }
        }
        let got: std::collections::BTreeMap<u64, std::collections::BTreeMap<u32, u64>> = snap
            .series
            .buckets
            .iter()
            .map(|b| (b.start.as_millis(), b.usage.iter().map(|u| (u.version.get(), u.operations)).collect()))
            .collect();
        prop_assert_eq!(&got, &expected);
        let starts: Vec<u64> = snap.series.buckets.iter().map(|b| b.start.as_millis()).collect();
        prop_assert!(starts.windows(2).all(|w| w[0] < w[1]), "oldest first, each once");
    }

    #[test]
    fn a_restart_ends_where_one_fold_does(steps in proptest::collection::vec(step(), 0..80), cut in 0usize..80) {
        let events = ledger(&steps);
        let cut = cut.min(events.len());
        let mut whole = Metrics::new(WINDOW);
        for (seq, e) in &events {
            whole.observe(*seq, e);
        }
        // Rebuilt from the ledger up to `cut`, then the rest live (with the
        // overlap delivered again, as a feed may).
        let mut rebuilt = Metrics::new(WINDOW);
        for (seq, e) in &events[..cut] {
            rebuilt.observe(*seq, e);
        }
        for (seq, e) in &events[cut.saturating_sub(3)..] {
            rebuilt.observe(*seq, e);
        }
        let at = Timestamp::from_millis(2_000_000_000_000);
        prop_assert_eq!(whole.snapshot(at), rebuilt.snapshot(at));
    }
}

#[test]
fn rotation_duration_is_rotation_to_first_signature_under_the_new_version() {
    let steps = [
        Step::Sign {
            versions: vec![1],
            fallback: false,
        },
        Step::Rotate { to: 2 },
        Step::Wait(3),
        // Still v1 (e.g. pinned): not the end of the rotation.
        Step::Sign {
            versions: vec![1],
            fallback: false,
        },
        Step::Wait(2),
        Step::Sign {
            versions: vec![2, 1],
            fallback: false,
        },
        Step::Wait(10),
        Step::Sign {
            versions: vec![2],
            fallback: false,
        },
    ];
    let events = ledger(&steps);
    let mut m = Metrics::new(WINDOW);
    for (seq, e) in &events {
        m.observe(*seq, e);
    }
    let snap = m.snapshot(Timestamp::from_millis(0));
    let migration = snap.migration.expect("a rotation from v1 to v2");
    assert_eq!((migration.from, migration.to), (v(1), v(2)));
    assert_eq!(migration.duration_ms(), Some(5 * 60_000));
    assert_eq!(snap.active, Some(v(2)));
    assert_eq!(
        snap.at,
        events.last().unwrap().1.time,
        "a snapshot never goes back in time"
    );
}

#[test]
fn with_every_request_on_the_new_version_its_share_is_all_despite_dual_signatures() {
    let mut steps = vec![
        Step::Sign {
            versions: vec![1],
            fallback: false,
        },
        Step::Rotate { to: 2 },
        // The request before the rotation leaves the window.
        Step::Wait(61),
    ];
    for _ in 0..10 {
        // Grace window: v2 serves, v1 signs beside it.
        steps.push(Step::Sign {
            versions: vec![2, 1],
            fallback: false,
        });
    }
    let events = ledger(&steps);
    let mut m = Metrics::new(WINDOW);
    for (seq, e) in &events {
        m.observe(*seq, e);
    }
    let snap = m.snapshot(events.last().unwrap().1.time);
    assert_eq!(
        snap.window.usage_bp(v(2)),
        Some(10_000),
        "{:?}",
        snap.window
    );
    assert_eq!(snap.window.usage_bp(v(1)), Some(0));
    assert_eq!(snap.window.dual_signatures, 10);
    assert_eq!(snap.version(v(1)).unwrap().dual, 10);
    assert_eq!(snap.version(v(1)).unwrap().primary, 1);
}
