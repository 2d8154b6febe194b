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
use tes_version_management::actor::{self, ActorConfig};
use tes_version_management::engine::system_clock;
use tes_version_management::{Engine, EngineConfig};

const IN_FLIGHT: usize = 64;
const TOTAL: usize = 6_000;

async fn drive(url: String, body: &'static str) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .unwrap();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (client, url, next) = (client.clone(), url.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < TOTAL {
                    let r = client.post(&url).body(body).send().await.unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    r.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    TOTAL as f64 / started.elapsed().as_secs_f64()
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
        let baseline = drive(format!("http://{bare}/echo"), r#"{"scope":"patch"}"#).await;

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
        let _running = actor::start(engine, bus.clone(), ActorConfig::default())
            .await
            .unwrap();
        let csrf = Csrf::in_file(dir.path(), Duration::from_secs(60)).unwrap();
        let mut config = GatewayConfig::new("127.0.0.1:0".parse().unwrap());
        config.rate = std::num::NonZeroU32::new(1_000_000).unwrap();
        config.burst = config.rate;
        let gateway = tes_gateway::start(bus, csrf, config).await.unwrap();
        let ours = drive(
            format!("http://{}/api/dev/bump-version", gateway.addr),
            r#"{"scope":"patch"}"#,
        )
        .await;
        println!(
            "{:<44} {:>10.0}/s   {:<28} {:>10.0}/s   ratio {:.2}",
            "bump-version: durable signed manifests",
            ours,
            "bare axum JSON route",
            baseline,
            ours / baseline
        );
        gateway.stop().await;
    });
}
