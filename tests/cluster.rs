//! The daemon on a three-server NATS cluster (JetStream R3): given the
//! cluster as one comma-separated URL, it signs, loses one server of three
//! (kill -9) and signs on, and every event of its ledger ends up in the
//! replicated `TES_EVENTS` stream. The first piece of the high-availability
//! work; the standby writer and its failover are not here yet.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use tes_bus::test_server::TestCluster;

fn sign(client: &std::path::Path, url: &str, payload: &str) -> Option<Value> {
    let r = run(args(
        tes(client),
        &["--nats", url, "--json", "sign", payload],
    ));
    (r.code == 0).then(|| serde_json::from_str(r.stdout.trim()).unwrap())
}

#[test]
fn a_daemon_on_a_three_server_cluster_signs_on_with_one_server_down() {
    let mut cluster = TestCluster::start(3);
    block_on(cluster.ready());
    let url = cluster.url();
    let (dir, client) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _daemon = Daemon::spawn(with_keys(args(tes(dir.path()), &["--nats", &url])), &[]);
    wait_until_ok(|| args(tes(client.path()), &["--nats", &url, "status"]));

    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let payload = format!("before-{i}");
        let s = sign(client.path(), &url, &payload).expect("signs on the whole cluster");
        acknowledged.push((payload, s));
    }
    cluster.servers[0].kill();
    for i in 0..10 {
        let payload = format!("after-{i}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let s = loop {
            if let Some(s) = sign(client.path(), &url, &payload) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "no signature within 20 s of losing one server of three"
            );
            std::thread::sleep(Duration::from_millis(250));
        };
        acknowledged.push((payload, s));
    }
    for (payload, s) in &acknowledged {
        assert_eq!(s["signature"], outside_hmac(V1, payload).as_str());
    }

    // Everything the ledger holds reaches the three-copy stream.
    let head = |_: ()| -> u64 {
        let r = run(args(
            tes(client.path()),
            &["--nats", &url, "--json", "status"],
        ));
        serde_json::from_str::<Value>(r.stdout.trim()).unwrap()["headSeq"]
            .as_u64()
            .unwrap()
    };
    // (copies, messages) of TES_EVENTS; None while the stream elects a new
    // leader after the loss.
    let stream = || {
        block_on(async {
            let nats = async_nats::connect(cluster.servers[1].url()).await.ok()?;
            let js = async_nats::jetstream::new(nats);
            let mut s = js.get_stream("TES_EVENTS").await.ok()?;
            let info = s.info().await.ok()?;
            Some((info.config.num_replicas, info.state.messages))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let head = head(());
        let seen = stream();
        if let Some((copies, stored)) = seen {
            assert_eq!(copies, 3);
            if stored >= head {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "TES_EVENTS holds {seen:?} (copies, events), the ledger {head}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
