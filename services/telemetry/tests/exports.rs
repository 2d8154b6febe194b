//! Telemetry's two exports on their own: the event log's lines (what the
//! seed's `rg` commands look for, and only where they should find it), its
//! rotation by size and its behaviour on a full disk; and the Prometheus
//! text of a snapshot.

use std::path::Path;

use tes_proto::command::Scope;
use tes_proto::event::{
    Event, KeyFallback, KeyRotate, RotationReason, SignatureGenerated, SignatureVerified,
    VersionBump,
};
use tes_proto::metrics::{FallbackCount, VersionCounts, VersionUsage, WindowCounts};
use tes_proto::{Channel, Envelope, KeyVersion, MsgId, ThreadId, Timestamp};
use tes_telemetry::event_log::{EventLog, LogHealth};

fn v(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

fn event(body: Event) -> Envelope<Event> {
    Envelope::new(
        MsgId::generate(),
        Timestamp::from_millis(1_764_000_000_000),
        ThreadId::VersionManagement,
        Channel::Event,
        body,
    )
}

fn signature(n: u32) -> Event {
    Event::SignatureGenerated(SignatureGenerated {
        key_version: v(n),
        signature: "ab".repeat(32),
        payload_sha256: "cd".repeat(32),
        pinned: false,
    })
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn only_signature_lines_carry_the_key_version_the_seed_greps_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs/worker-events.log");
    let log = EventLog::open(&path, 1 << 20, 3).unwrap();
    let history = [
        event(Event::KeyRotate(KeyRotate {
            from: Some(v(1)),
            to: v(2),
            reason: RotationReason::Requested,
            requested_by: "ops".into(),
            forced: false,
            grace_until: None,
            expires_at: None,
        })),
        event(signature(2)),
        event(signature(1)),
        event(Event::KeyFallback(KeyFallback {
            from: v(2),
            to: v(1),
        })),
        event(signature(1)),
        event(Event::SignatureVerified(SignatureVerified {
            key_version: v(2),
            valid: true,
        })),
        event(Event::VersionBump(VersionBump {
            entity: "tes".into(),
            scope: Scope::Patch,
            from: "1.0.0".into(),
            to: "1.0.1".into(),
            key_version: v(2),
        })),
        event(signature(2)),
    ];
    for (i, e) in history.iter().enumerate() {
        log.write(i as u64 + 1, e);
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    // The seed's three commands, as fixed strings (the JSON has no spaces).
    assert_eq!(count(r#""keyVersion":"v2""#), 2, "{text}");
    assert_eq!(count(r#""keyVersion":"v1""#), 2);
    assert_eq!(count(r#""[META:KEY-VERSION]":"2""#), 2);
    assert_eq!(count("key:fallback_v2_to_v1"), 1);
    let parsed = lines(&path);
    assert_eq!(parsed.len(), history.len());
    assert_eq!(parsed[1]["message"], "signature:generated");
    assert_eq!(parsed[1]["seq"], 2);
    assert_eq!(parsed[1]["hsl"], "#9D4EDD");
    assert_eq!(parsed[5]["verifiedKeyVersion"], "v2");
    assert_eq!(parsed[6]["signedWith"], "v2");
    assert_eq!(EventLog::last_seq(&path), Some(8));
    assert_eq!(
        log.health(),
        LogHealth {
            written: 8,
            dropped: 0,
            failing: false
        }
    );
}

#[test]
fn the_log_rotates_by_size_and_keeps_every_line_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker-events.log");
    let log = EventLog::open(&path, 4_000, 2).unwrap();
    for seq in 1..=40 {
        log.write(seq, &event(signature(1)));
    }
    let rotated = |n| dir.path().join(format!("worker-events.log.{n}"));
    for file in [path.clone(), rotated(1), rotated(2)] {
        let size = std::fs::metadata(&file).unwrap().len();
        assert!(size <= 4_000, "{} is {size} bytes", file.display());
    }
    assert!(!rotated(3).exists(), "only two rotated files are kept");
    // Oldest last; the newest lines are in the file itself, in order.
    let seqs = |p: &Path| {
        lines(p)
            .iter()
            .map(|l| l["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let (older, newer, current) = (seqs(&rotated(2)), seqs(&rotated(1)), seqs(&path));
    assert_eq!(older.last().unwrap() + 1, newer[0]);
    assert_eq!(newer.last().unwrap() + 1, current[0]);
    assert_eq!(*current.last().unwrap(), 40);
    assert_eq!(EventLog::last_seq(&path), Some(40));
}

#[test]
fn a_full_disk_drops_lines_counts_them_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker-events.log");
    // Every write to /dev/full fails with ENOSPC, as on a full disk.
    std::os::unix::fs::symlink("/dev/full", &path).unwrap();
    let log = EventLog::open(&path, 1 << 20, 2).unwrap();
    for seq in 1..=3 {
        log.write(seq, &event(signature(2)));
    }
    assert_eq!(
        log.health(),
        LogHealth {
            written: 0,
            dropped: 3,
            failing: true
        }
    );
    // Space again.
    std::fs::remove_file(&path).unwrap();
    log.write(4, &event(signature(2)));
    assert_eq!(
        log.health(),
        LogHealth {
            written: 1,
            dropped: 3,
            failing: false
        }
    );
    assert_eq!(EventLog::last_seq(&path), Some(4));
}

#[test]
fn a_log_directory_that_cannot_be_made_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = EventLog::open(&file.join("worker-events.log"), 1 << 20, 2)
        .err()
        .expect("refused");
    assert!(!err.to_string().is_empty());
}

#[test]
fn prometheus_text_has_help_type_and_per_version_labels() {
    let snapshot = tes_proto::event::MetricsSnapshot {
        at: Timestamp::from_millis(1_764_000_000_000),
        seq: 42,
        active: Some(v(2)),
        versions: vec![
            VersionCounts {
                version: v(1),
                signatures: 7,
                primary: 5,
                dual: 2,
                verified_valid: 2,
                verified_invalid: 1,
            },
            VersionCounts {
                version: v(2),
                signatures: 3,
                primary: 3,
                dual: 0,
                verified_valid: 0,
                verified_invalid: 0,
            },
        ],
        fallbacks: vec![FallbackCount {
            from: v(2),
            to: v(1),
            count: 4,
        }],
        sign_requests: 9,
        rotations: 1,
        window: WindowCounts {
            span_ms: 3_600_000,
            sign_requests: 9,
            fallbacks: 4,
            usage: vec![
                VersionUsage {
                    version: v(1),
                    operations: 3,
                },
                VersionUsage {
                    version: v(2),
                    operations: 1,
                },
            ],
            ..Default::default()
        },
        ..Default::default()
    };
    let text = tes_telemetry::prometheus::render(
        Some(&snapshot),
        Some(LogHealth {
            written: 5,
            dropped: 1,
            failing: false,
        }),
    );
    for line in [
        "# HELP tes_signatures Signatures made, per key version (signature_generated)",
        "# TYPE tes_signatures counter",
        r#"tes_signatures_total{key_version="v1"} 7"#,
        r#"tes_signatures_total{key_version="v2"} 3"#,
        r#"tes_verifications_total{key_version="v1",result="invalid"} 1"#,
        r#"tes_fallbacks_total{from="v2",to="v1"} 4"#,
        r#"tes_signing_requests_served_total{key_version="v1"} 5"#,
        r#"tes_dual_signatures_total{key_version="v1"} 2"#,
        "tes_sign_requests_total 9",
        "tes_active_key_version 2",
        "tes_ledger_seq 42",
        r#"tes_key_usage_ratio{key_version="v1"} 0.75"#,
        "tes_event_log_dropped_lines_total 1",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let before_monitoring = tes_telemetry::prometheus::render(None, Some(LogHealth::default()));
    assert!(
        !before_monitoring.contains("tes_signatures"),
        "{before_monitoring}"
    );
}
