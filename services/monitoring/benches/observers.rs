//! What following the ledger costs the observers, beside baselines measured
//! in the same run. Run: `cargo bench -p tes-monitoring`.
//!
//! 1. Monitoring's fold (`Metrics::observe`, plus a snapshot every 1000
//!    events) vs reading and verifying the same rows from the ledger — the
//!    feed every observer needs anyway.
//! 2. The event log (`EventLog::write`: tracing-subscriber JSON, size
//!    rotation) vs writing the same number of pre-formatted lines of the
//!    same length to a file.

use std::io::Write;
use std::time::{Duration, Instant};

use tes_ledger::{walk, Head, Ledger};
use tes_monitoring::Metrics;
use tes_proto::event::{Event, SignatureGenerated};
use tes_proto::{Channel, Envelope, KeyVersion, MsgId, ThreadId, Timestamp};
use tes_telemetry::event_log::EventLog;

/// The allocator the `tes` binary runs with, so the bench measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn best(rounds: usize, n: u64, mut f: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    n as f64 / best.as_secs_f64()
}

fn row(name: &str, ours: f64, baseline_name: &str, baseline: f64) {
    println!(
        "{name:<40} {:>12.0}/s   {baseline_name:<36} {:>12.0}/s   ratio {:.2}",
        ours,
        baseline,
        ours / baseline
    );
}

fn signature(i: u64) -> Envelope<Event> {
    let v = KeyVersion::new(1 + (i % 2) as u32).unwrap();
    let mut e = Envelope::new(
        MsgId::generate(),
        Timestamp::from_millis(1_764_000_000_000 + i),
        ThreadId::VersionManagement,
        Channel::Event,
        Event::SignatureGenerated(SignatureGenerated {
            key_version: v,
            signature: format!("{:064x}", i),
            payload_sha256: format!("{:064x}", i * 7),
            pinned: false,
        }),
    );
    e = e.caused_by_id(MsgId::generate(), None);
    e
}

fn main() {
    println!("TES observer benchmarks (best of several rounds; ratio = ours / baseline)\n");
    let n = 100_000u64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    {
        let mut ledger = Ledger::open_writer(&path).unwrap();
        let events: Vec<_> = (0..n).map(signature).collect();
        for chunk in events.chunks(1000) {
            ledger.append(chunk).unwrap();
        }
    }
    let reader = Ledger::open_reader(&path).unwrap();
    let mut events = Vec::with_capacity(n as usize);
    walk(&reader, Head::EMPTY, u64::MAX, None, |seq, e| {
        events.push((seq, e));
        true
    })
    .unwrap();

    let baseline = best(3, n, || {
        walk(&reader, Head::EMPTY, u64::MAX, None, |_, e| {
            std::hint::black_box(e);
            true
        })
        .unwrap();
    });
    let ours = best(5, n, || {
        let mut m = Metrics::new(Duration::from_secs(3600));
        for (seq, e) in &events {
            m.observe(*seq, e);
            if seq % 1000 == 0 {
                std::hint::black_box(m.snapshot(e.time));
            }
        }
    });
    row(
        "Monitoring fold (+ snapshot / 1000)",
        ours,
        "ledger read + chain verify",
        baseline,
    );

    let lines = 20_000u64;
    let log_dir = tempfile::tempdir().unwrap();
    let sample_len = {
        let probe = log_dir.path().join("probe.log");
        let log = EventLog::open(&probe, u64::MAX, 1).unwrap();
        log.write(1, &events[0].1);
        std::fs::metadata(&probe).unwrap().len() as usize
    };
    let line = "x".repeat(sample_len - 1) + "\n";
    let baseline = best(3, lines, || {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir.path().join("raw.log"))
            .unwrap();
        for _ in 0..lines {
            f.write_all(line.as_bytes()).unwrap();
        }
    });
    let log = EventLog::open(&log_dir.path().join("worker-events.log"), 64 << 20, 2).unwrap();
    let ours = best(3, lines, || {
        for (seq, e) in events.iter().take(lines as usize) {
            log.write(*seq, e);
        }
    });
    row(
        &format!("event log lines ({sample_len} B)"),
        ours,
        "raw append of equal lines",
        baseline,
    );
}
