//! `tes status` on a large ledger: the state from the newest snapshot with
//! the rows after it verified (`replay::latest`), against the full fold
//! from seq 1 (`replay::replay`, what `tes replay` and a writer's start do),
//! on a ledger of 1 M events (`cargo bench -p tes-version-management --bench status`).
//! The goal (issue 15): a status answer well under 100 ms.

use std::time::Instant;

use tes_ledger::Ledger;
use tes_proto::event::{KeyProvisioned, KeyRotate, RotationReason, SignatureGenerated};
use tes_proto::{Channel, Envelope, Event, Fingerprint, KeyVersion, MsgId, ThreadId, Timestamp};
use tes_version_management::core::state::{encode_snapshot, STATE_SCHEMA};
use tes_version_management::replay::{latest, replay, Until};

/// The allocator the `tes` binary runs with, so the bench measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: u64 = 1_000_000;
/// Rows after the snapshot (a writer snapshots every 1000 by default).
const TAIL: u64 = 999;

fn envelope(t: u64, body: Event) -> Envelope<Event> {
    Envelope::new(
        MsgId::generate(),
        Timestamp::from_millis(t),
        ThreadId::VersionManagement,
        Channel::Event,
        body,
    )
    .caused_by_id(MsgId::generate(), None)
}

fn signatures(t: &mut u64, n: u64) -> Vec<Envelope<Event>> {
    (0..n)
        .map(|_| {
            *t += 1;
            envelope(
                *t,
                Event::SignatureGenerated(SignatureGenerated {
                    key_version: KeyVersion::V1,
                    signature: format!("{:064x}", *t),
                    payload_sha256: format!("{:064x}", *t * 31),
                    pinned: false,
                }),
            )
        })
        .collect()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut t = 1_764_000_000_000u64;
    {
        let mut ledger = Ledger::open_writer(&path).unwrap();
        ledger
            .append(&[
                envelope(
                    t,
                    Event::KeyProvisioned(KeyProvisioned {
                        version: KeyVersion::V1,
                        fingerprint: Fingerprint::parse("0123456789abcdef").unwrap(),
                    }),
                ),
                envelope(
                    t,
                    Event::KeyRotate(KeyRotate {
                        from: None,
                        to: KeyVersion::V1,
                        reason: RotationReason::Initial,
                        requested_by: "bench".into(),
                        forced: false,
                        grace_until: None,
                        expires_at: None,
                    }),
                ),
            ])
            .unwrap();
        let body = EVENTS - 2 - TAIL;
        for _ in 0..body / 10_000 {
            ledger.append(&signatures(&mut t, 10_000)).unwrap();
        }
        ledger.append(&signatures(&mut t, body % 10_000)).unwrap();
        let state = replay(&ledger, Until::Head).unwrap().state;
        ledger
            .put_snapshot(STATE_SCHEMA, &encode_snapshot(&state))
            .unwrap();
        ledger.append(&signatures(&mut t, TAIL)).unwrap();
    }
    let ledger = Ledger::open_reader(&path).unwrap();
    let time = |f: &dyn Fn()| {
        (0..3)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let full = time(&|| {
        std::hint::black_box(replay(&ledger, Until::Head).unwrap());
    });
    let quick = time(&|| {
        let (r, from) = latest(&ledger).unwrap();
        assert_eq!(from, EVENTS - TAIL);
        std::hint::black_box(r);
    });
    println!("TES status on a ledger of {EVENTS} events (best of 3)\n");
    println!("| what | time | goal |");
    println!("|---|---:|---:|");
    println!(
        "| status: snapshot + {TAIL} rows verified (replay::latest) | {:.1} ms | < 100 ms |",
        quick * 1000.0
    );
    println!(
        "| full fold from seq 1 (replay::replay; tes replay, a writer's start) | {:.0} ms ({:.2} M events/s) | |",
        full * 1000.0,
        EVENTS as f64 / full / 1e6
    );
}
