//! What bundles cost beside baselines measured in the same run.
//! Run: `cargo bench -p tes-bundles`.
//!
//! 1. Deriving bundles from ledger events (`Deriver`: rebuild the manifest,
//!    its RFC 8785 form, the SHA-256 check against the recorded payload
//!    hash, the bundle's JSON) vs only canonicalising the same manifests —
//!    the work signing did once already.
//! 2. Writing bundles through the store on the filesystem (OpenDAL, with
//!    `user.*` xattrs for the metadata) vs `std::fs::write` of the same
//!    bytes to the same paths.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tes_bundles::{Bundle, Deriver, Store, StoreConfig, Ttl};
use tes_proto::command::Scope;
use tes_proto::event::{SignatureGenerated, VersionBump};
use tes_proto::reply::Manifest;
use tes_proto::{Channel, Envelope, Event, KeyVersion, MsgId, ThreadId, Timestamp};
use tes_version_management::core::manifest;

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
        "{name:<40} {:>10.0}/s   {baseline_name:<34} {:>10.0}/s   ratio {:.2}",
        ours,
        baseline,
        ours / baseline
    );
}

fn manifest_of(i: u64) -> Manifest {
    Manifest {
        entity: format!("entity-{}", i % 50),
        version: format!("1.0.{}", i + 1),
        previous: format!("1.0.{i}"),
        scope: Scope::Patch,
        key_version: KeyVersion::V1,
        timestamp: Timestamp::from_millis(1_764_000_000_000 + i),
    }
}

/// The events of `n` bumps, as the engine appends them.
fn ledger_events(n: u64) -> Vec<(u64, Envelope<Event>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let m = manifest_of(i);
        let cause = MsgId::generate();
        let env = |body| {
            Envelope::new(
                MsgId::generate(),
                m.timestamp,
                ThreadId::VersionManagement,
                Channel::Event,
                body,
            )
            .caused_by_id(cause, None)
        };
        let payload = manifest::canonical(&m);
        out.push((
            2 * i + 1,
            env(Event::VersionBump(VersionBump {
                entity: m.entity.clone(),
                scope: m.scope,
                from: m.previous.clone(),
                to: m.version.clone(),
                key_version: m.key_version,
            })),
        ));
        out.push((
            2 * i + 2,
            env(Event::SignatureGenerated(SignatureGenerated {
                key_version: m.key_version,
                signature: format!("{i:064x}"),
                payload_sha256: hex::encode(Sha256::digest(payload.as_bytes())),
                pinned: false,
            })),
        ));
    }
    out
}

fn derive(events: &[(u64, Envelope<Event>)]) -> Vec<Bundle> {
    let mut d = Deriver::new(Ttl {
        default: Some(Duration::from_secs(86_400)),
        ..Ttl::default()
    });
    let mut out: Vec<Bundle> = events
        .iter()
        .filter_map(|(s, e)| d.observe(*s, e))
        .collect();
    out.extend(d.finish());
    out
}

fn main() {
    println!("TES bundle benchmarks (best of several rounds; ratio = ours / baseline)\n");
    let n = 20_000u64;
    let events = ledger_events(n);
    assert_eq!(derive(&events).len() as u64, n);
    let ours = best(5, n, || {
        let b = derive(&events);
        std::hint::black_box(b.iter().map(|b| b.bytes().len()).sum::<usize>());
    });
    let manifests: Vec<Manifest> = (0..n).map(manifest_of).collect();
    let base = best(5, n, || {
        std::hint::black_box(
            manifests
                .iter()
                .map(|m| manifest::canonical(m).len())
                .sum::<usize>(),
        );
    });
    row(
        "derive bundle (+ JSON bytes)",
        ours,
        "canonicalise the manifest",
        base,
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let k = 5_000u64;
    let bundles: Vec<Bundle> = derive(&events).into_iter().take(k as usize).collect();
    let ours = best(3, k, || {
        let dir = tempfile::tempdir().unwrap();
        runtime.block_on(async {
            let store = Store::new(&StoreConfig::Fs {
                root: dir.path().into(),
            })
            .unwrap();
            for b in &bundles {
                store.put(&b.key, b.bytes(), b.metadata()).await.unwrap();
            }
        });
    });
    let base = best(3, k, || {
        let dir = tempfile::tempdir().unwrap();
        for b in &bundles {
            let path = dir.path().join(&b.key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b.bytes()).unwrap();
        }
    });
    row(
        "Store::put on fs (OpenDAL + xattrs)",
        ours,
        "std::fs::write, same paths",
        base,
    );
}
