//! The daemon on a three-server NATS cluster (JetStream R3): given the
//! cluster as one comma-separated URL, it signs, loses one server of three
//! (kill -9) and signs on, and every event of its ledger ends up in the
//! replicated `TES_EVENTS` stream; a standby writer that takes over from
//! a writer killed with SIGKILL, with every acknowledged signature; and a
//! writer that cannot renew its lease, which pauses its appends and goes
//! on once it can.

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
    // Its log is kept: a failure here is read there.
    let log = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-artifacts/cluster-one-server-down.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut daemon = with_keys(args(tes(dir.path()), &["--nats", &url]));
    daemon
        .env("TES_LOG_FORMAT", "json")
        .arg("daemon")
        .stderr(std::fs::File::create(&log).unwrap());
    let _daemon = Daemon(daemon.spawn().unwrap());
    wait_until_ok(|| args(tes(client.path()), &["--nats", &url, "status"]));

    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let payload = format!("before-{i}");
        let s = sign(client.path(), &url, &payload).expect("signs on the whole cluster");
        acknowledged.push((payload, s));
    }
    // The worst server to lose: the one leading the lease's bucket. Its
    // stream goes without a leader until the other two elect one (raft
    // waits 4–9 s), and the writer cannot renew meanwhile: it must hold
    // its appends, not end (the lone writer ending was this test's flake).
    let bucket_leader = block_on(async {
        let nats = async_nats::connect(cluster.servers[1].url()).await.unwrap();
        let js = async_nats::jetstream::new(nats);
        let mut bucket = js.get_stream("KV_tes").await.unwrap();
        let info = bucket.info().await.unwrap();
        info.cluster.as_ref().and_then(|c| c.leader.clone())
    })
    .expect("the bucket has a leader");
    let lost: usize = bucket_leader
        .trim_start_matches('n')
        .parse::<usize>()
        .unwrap()
        - 1;
    cluster.servers[lost].kill();
    for i in 0..10 {
        let payload = format!("after-{i}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let s = loop {
            if let Some(s) = sign(client.path(), &url, &payload) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "no signature within 20 s of losing one server of three (the bucket's leader); the daemon's log: target/test-artifacts/cluster-one-server-down.log"
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
            let nats = async_nats::connect(cluster.servers[(lost + 1) % 3].url())
                .await
                .ok()?;
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

/// Two writers on the cluster: one leads, the other stands by following
/// the stream. The leader is killed with SIGKILL (its lease left to lapse):
/// the standby takes over within the lease's time to live and a few
/// seconds, and its ledger holds every signature the leader acknowledged
/// (on a cluster a reply waits until the stream's quorum has its events).
#[test]
fn the_standby_takes_over_from_a_killed_writer_with_every_acknowledged_signature() {
    let cluster = TestCluster::start(3);
    block_on(cluster.ready());
    let url = cluster.url();
    let (a, b, client) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut leader = Daemon::spawn(
        with_keys(args(tes(a.path()), &["--nats", &url])),
        &["--actors", "version"],
    );
    wait_until_ok(|| args(tes(client.path()), &["--nats", &url, "status"]));
    let _standby = Daemon::spawn(
        with_keys(args(tes(b.path()), &["--nats", &url])),
        &["--actors", "version"],
    );

    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let payload = format!("led-{i}");
        acknowledged.push((
            payload.clone(),
            sign(client.path(), &url, &payload).unwrap(),
        ));
    }
    leader.0.kill().unwrap(); // SIGKILL: the lease is not given up
    leader.0.wait().unwrap();
    let killed = Instant::now();
    let resumed = loop {
        if let Some(s) = sign(client.path(), &url, "after-the-failover") {
            break s;
        }
        assert!(
            killed.elapsed() < tes_bus::lease::LEASE_TTL + Duration::from_secs(15),
            "no writer signs {:?} after the leader was killed",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("signing resumed {:?} after the kill", killed.elapsed());
    acknowledged.push(("after-the-failover".into(), resumed));

    // Every acknowledged signature is in the new writer's ledger, at the
    // seq its reply named, exactly once.
    let ledger = rusqlite::Connection::open_with_flags(
        b.path().join("ledger.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    for (payload, s) in &acknowledged {
        let sig = s["signature"].as_str().unwrap();
        assert_eq!(sig, outside_hmac(V1, payload));
        let seqs: Vec<u64> = ledger
            .prepare("SELECT seq FROM events WHERE kind = 'signature_generated' AND instr(payload, ?1) > 0")
            .unwrap()
            .query_map([sig], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(seqs, vec![s["seq"].as_u64().unwrap()], "{payload}");
    }
    drop(ledger);
    let r = run(args(tes(b.path()), &["audit", "verify"]));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

/// A writer on a cluster cut off from every server stops before its lease
/// can lapse (so it never writes on after a standby took over); on a lone
/// server it would wait for NATS instead (tests/cli.rs kills NATS under it).
#[test]
fn a_writer_that_cannot_renew_its_lease_pauses_and_goes_on_when_it_can() {
    let mut cluster = TestCluster::start(3);
    block_on(cluster.ready());
    let url = cluster.url();
    let (dir, client) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let log = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-artifacts/cluster-lease-pause.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut writer = with_keys(args(tes(dir.path()), &["--nats", &url]));
    writer
        .env("TES_LOG_FORMAT", "json")
        .args(["daemon", "--actors", "version"])
        .stderr(std::fs::File::create(&log).unwrap());
    let mut writer = Daemon(writer.spawn().unwrap());
    wait_until_ok(|| args(tes(client.path()), &["--nats", &url, "status"]));
    let before = sign(client.path(), &url, "before").expect("signs");
    let logged = |words: &str| std::fs::read_to_string(&log).unwrap().contains(words);

    // No server answers: the lease cannot be renewed, and could lapse.
    for s in &mut cluster.servers {
        s.kill();
    }
    let cut = Instant::now();
    while !logged("are paused until it is renewed") {
        assert!(
            cut.elapsed() < tes_bus::lease::LEASE_TTL,
            "appends not paused {:?} after the cluster was lost",
            cut.elapsed()
        );
        assert!(writer.0.try_wait().unwrap().is_none(), "the writer ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Past the lease's time to live: nobody could take it meanwhile (the
    // bucket was down for everyone), so the writer keeps it and goes on
    // rather than leave the deployment without one.
    std::thread::sleep(tes_bus::lease::LEASE_TTL + Duration::from_secs(2) - cut.elapsed());
    assert!(writer.0.try_wait().unwrap().is_none(), "the writer ended");
    for s in &mut cluster.servers {
        s.restart();
    }
    let back = Instant::now();
    let after = loop {
        if let Some(s) = sign(client.path(), &url, "after") {
            break s;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no signature within 60 s of the cluster coming back"
        );
        assert!(writer.0.try_wait().unwrap().is_none(), "the writer ended");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(logged("renewed again and nobody took it"));
    assert_eq!(before["signature"], outside_hmac(V1, "before").as_str());
    assert_eq!(after["signature"], outside_hmac(V1, "after").as_str());
    assert!(
        after["seq"].as_u64() > before["seq"].as_u64(),
        "{before} then {after}"
    );
}
