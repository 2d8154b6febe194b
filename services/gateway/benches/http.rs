//! What the HTTP edge costs, beside a baseline measured in the same run.
//! Run: `cargo bench -p tes-gateway`.
//!
//! `POST /api/dev/bump-version` (parse, a request/reply to Version
//! Management over the in-process bus, a durable signed manifest, JSON out)
//! with 64 requests in flight over keep-alive connections, vs a bare axum
//! route answering a small JSON body on the same machine, same client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use tes_bus::{Bus, InProcessBus};
use tes_gateway::csrf::Csrf;
use tes_gateway::GatewayConfig;
use tes_keyring::{KeyStore, Keyring};
use tes_proto::ContentType;
use tes_version_management::actor::{self, ActorConfig};
use tes_version_management::engine::system_clock;
use tes_version_management::{Engine, EngineConfig};

/// The allocator the `tes` binary runs with, so the bench measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const IN_FLIGHT: usize = 64;
/// Requests per phase; `TES_BENCH_REQUESTS` raises it (a longer phase to
/// profile: `perf record -D <ms>` then sees the bump phase alone).
fn total() -> usize {
    std::env::var("TES_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6_000)
}
/// The form of the hop between the gateway and Version Management:
/// postcard, as the embedded daemon carries it, or `TES_BENCH_WIRE=json`
/// (what a NATS deployment with `--wire json` pays) to compare.
fn wire() -> ContentType {
    match std::env::var("TES_BENCH_WIRE").as_deref() {
        Ok("json") => ContentType::Json,
        _ => ContentType::Binary,
    }
}
/// The engine thread's name as the kernel keeps it (15 bytes at most).
const ENGINE_THREAD: &str = "tes-0x6001-engi";

/// Drives [`total`] requests, `IN_FLIGHT` at a time: a POST of `body`, or a
/// GET without one.
async fn drive(url: String, body: Option<&'static str>) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .unwrap();
    let total = total();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (client, url, next) = (client.clone(), url.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                    let request = match body {
                        Some(body) => client.post(&url).body(body),
                        None => client.get(&url),
                    };
                    let r = request.send().await.unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    r.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// CPU time (user + system) of this process, or of its threads whose
/// name starts with `thread` (`/proc/self/task/*/comm`).
fn cpu(thread: Option<&str>) -> Duration {
    use tes_bus::test_server::cpu_time;
    match thread {
        None => cpu_time(std::path::Path::new("/proc/self/stat")),
        Some(name) => std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(name))
            })
            .map(|t| cpu_time(&t.path().join("stat")))
            .sum(),
    }
}

/// Microseconds of CPU per request between two readings.
fn per_request(before: Duration, after: Duration) -> f64 {
    (after - before).as_secs_f64() * 1e6 / total() as f64
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("TES gateway benchmark ({IN_FLIGHT} in flight; ratio = ours / baseline)\n");
        // Baseline: a bare axum route.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare: SocketAddr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/echo",
            post(|| async { axum::Json(serde_json::json!({"keyVersion": "v1", "ok": true})) }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let cpu0 = cpu(None);
        let baseline = drive(format!("http://{bare}/echo"), Some(r#"{"scope":"patch"}"#)).await;
        let bare_cpu = per_request(cpu0, cpu(None));

        // Ours: the gateway in front of Version Management.
        let dir = tempfile::tempdir().unwrap();
        let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
        let keyring = Keyring::load(
            vec![(
                "VERSION_SIGNING_KEY".to_string(),
                "bench-secret-0123456789abcdef".to_string(),
            )],
            &KeyStore::new(dir.path().join("ks")),
            false,
        )
        .unwrap();
        let config = EngineConfig {
            ledger_path: dir.path().join("ledger.db"),
            policy: Default::default(),
            snapshot_every: 0,
            replace: None,
        };
        let engine = Engine::open(config, keyring, system_clock()).unwrap();
        // The hop's form as the embedded daemon has it: postcard.
        let wire = wire();
        let actor_config = ActorConfig {
            wire,
            ..ActorConfig::default()
        };
        let _running = actor::start(engine, bus.clone(), actor_config)
            .await
            .unwrap();
        let csrf = Csrf::in_file(dir.path(), Duration::from_secs(60)).unwrap();
        let mut config = GatewayConfig::new("127.0.0.1:0".parse().unwrap());
        config.rate = std::num::NonZeroU32::new(1_000_000).unwrap();
        config.burst = config.rate;
        config.wire = wire;
        let gateway = tes_gateway::start(bus, csrf, config).await.unwrap();
        // The same path without the write: the gateway's edge, a request
        // and reply over the bus, the engine answering from memory.
        let (cpu0, engine0) = (cpu(None), cpu(Some(ENGINE_THREAD)));
        let read = drive(
            format!("http://{}/api/dev/bump-version", gateway.addr),
            None,
        )
        .await;
        let (read_cpu, read_engine_cpu) = (
            per_request(cpu0, cpu(None)),
            per_request(engine0, cpu(Some(ENGINE_THREAD))),
        );
        let (cpu0, engine0) = (cpu(None), cpu(Some(ENGINE_THREAD)));
        let ours = drive(
            format!("http://{}/api/dev/bump-version", gateway.addr),
            Some(r#"{"scope":"patch"}"#),
        )
        .await;
        let (ours_cpu, engine_cpu) = (
            per_request(cpu0, cpu(None)),
            per_request(engine0, cpu(Some(ENGINE_THREAD))),
        );
        println!(
            "{:<44} {:>10.0}/s   {:<28} {:>10.0}/s   ratio {:.2}",
            "bump-version: durable signed manifests",
            ours,
            "bare axum JSON route",
            baseline,
            ours / baseline
        );
        println!(
            "{:<44} {:>10.0}/s   {:<28} {:>10.0}/s   ratio {:.2}",
            "bump preview (GET): the same path, no write",
            read,
            "bare axum JSON route",
            baseline,
            read / baseline
        );
        // Where a request's CPU goes (client and server are both in this
        // process in every phase).
        println!(
            "CPU per request: bare route {bare_cpu:.1} µs; preview {read_cpu:.1} µs \
             (engine thread {read_engine_cpu:.1} µs); bump {ours_cpu:.1} µs (engine thread {engine_cpu:.1} µs)"
        );
        gateway.stop().await;
    });
}
