//! Full verification of a ledger of 1 M events, against a raw read of the
//! same rows from SQLite measured in the same run (`cargo bench -p tes-audit`).
//! The goal (issue 12): verifying costs about a second per million events.

use std::time::Instant;

use tes_ledger::{Head, Ledger};
use tes_proto::event::SignatureGenerated;
use tes_proto::{Channel, Envelope, Event, KeyVersion, MsgId, ThreadId, Timestamp};

/// The allocator the `tes` binary runs with, so the bench measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: u64 = 1_000_000;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let started = Instant::now();
    {
        let mut ledger = Ledger::open_writer(&path).unwrap();
        let mut t = 1_764_000_000_000u64;
        for _ in 0..EVENTS / 10_000 {
            let batch: Vec<Envelope<Event>> = (0..10_000)
                .map(|i| {
                    t += 1;
                    Envelope::new(
                        MsgId::generate(),
                        Timestamp::from_millis(t),
                        ThreadId::VersionManagement,
                        Channel::Event,
                        Event::SignatureGenerated(SignatureGenerated {
                            key_version: KeyVersion::new(1 + i % 2).unwrap(),
                            signature: format!("{:064x}", t),
                            payload_sha256: format!("{:064x}", t * 31),
                            pinned: false,
                        }),
                    )
                    .caused_by_id(MsgId::generate(), None)
                })
                .collect();
            ledger.append(&batch).unwrap();
        }
    }
    println!(
        "TES full verification of {EVENTS} events (made in {:.1} s); best of 3\n",
        started.elapsed().as_secs_f64()
    );
    let ledger = Ledger::open_reader(&path).unwrap();

    // Baseline: SQLite handing every row's columns to Rust, nothing checked.
    let raw = best(|| {
        let mut n = 0u64;
        ledger
            .for_each_row(1, u64::MAX, |row| {
                n += row.payload.len() as u64 + row.hash.len() as u64;
                Ok::<_, tes_ledger::LedgerError>(true)
            })
            .unwrap();
        std::hint::black_box(n);
    });
    let verify = best(|| {
        tes_ledger::verify(&ledger, None).unwrap();
    });
    let audit = best(|| {
        tes_audit::check_ledger(&ledger, &[], |_, _| {}).unwrap();
    });
    let walk = best(|| {
        let mut n = 0u64;
        tes_ledger::walk(&ledger, Head::EMPTY, u64::MAX, None, |_, e| {
            n += e.time.as_millis() & 1;
            true
        })
        .unwrap();
        std::hint::black_box(n);
    });
    let rate = |secs: f64| EVENTS as f64 / secs;
    println!("| what | events/s | raw read of the rows | ratio |");
    println!("|---|---:|---:|---:|");
    for (what, secs) in [
        ("tes_ledger::verify (chain)", verify),
        ("walk handing every event on (what replay folds)", walk),
        ("tes audit verify's walk (chain + Merkle tree)", audit),
    ] {
        println!(
            "| {what} | {:.0} k | {:.0} k | {:.2} |",
            rate(secs) / 1e3,
            rate(raw) / 1e3,
            raw / secs
        );
    }
}

fn best(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
