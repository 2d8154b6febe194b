//! The key lifecycle on a bad day, on the real binary: revoking a leaked
//! version (on the writer and a signer replica, with and without a version
//! to take over), changing a grace window, a key TTL given to a daemon on a
//! ledger that had none, migration figures that count clients rather than
//! dual signatures, and a retried sign that gets its original signature
//! back after a kill -9.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn json(r: &Run) -> Value {
    serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", r.stdout, r.stderr))
}

fn key<'a>(status: &'a Value, version: &str) -> &'a Value {
    status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["version"] == version)
        .unwrap_or_else(|| panic!("{version} in {status}"))
}

/// Polls `check` until it holds or `within` passes.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http_get(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "2", url])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn revoking_v1_during_grace_stops_it_on_the_writer_and_a_replica() {
    let server = tes_bus::test_server::TestServer::start();
    block_on(server.ready(None));
    let url = server.url();
    let (ledger_dir, replica_dir, client_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let _writer = Daemon::spawn(
        with_keys(args(tes(ledger_dir.path()), &["--nats", &url])),
        &["--metrics-addr", &metrics],
    );
    let client = || args(tes(client_dir.path()), &["--nats", &url]);
    wait_until_ok(|| args(client(), &["status"]));
    let _replica = Daemon::spawn(
        with_keys(args(tes(replica_dir.path()), &["--nats", &url])),
        &["--actors", "version", "--role", "signer"],
    );
    std::thread::sleep(Duration::from_millis(800));

    let before = json(&run(args(client(), &["sign", "before", "--json"])));
    let old_sig = before["signature"].as_str().unwrap().to_string();
    assert_eq!(old_sig, outside_hmac(V1, "before"));
    assert_eq!(run(args(client(), &["rotate"])).code, 0);
    let after = json(&run(args(client(), &["sign", "after", "--json"])));
    let new_sig = after["signature"].as_str().unwrap().to_string();
    assert_eq!(after["keyVersion"], "v2");
    // During grace v1 still verifies.
    let verify_old = || {
        run(args(
            client(),
            &["verify", "before", &old_sig, "--key-version", "v1"],
        ))
    };
    assert_eq!(verify_old().code, 0);

    let revoked = run(args(
        client(),
        &[
            "revoke",
            "v1",
            "--reason",
            "leaked in build log 4711",
            "--json",
        ],
    ));
    assert_eq!(revoked.code, 0, "{}", revoked.stderr);
    let revoked = json(&revoked);
    assert_eq!(revoked["version"], "v1");
    assert_eq!(revoked["active"], "v2");

    // On the writer: at once.
    let r = verify_old();
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("revoked at") && r.stderr.contains("leaked in build log 4711"),
        "{}",
        r.stderr
    );
    // On the replica too, within a second: a pinned sign (served by the
    // `signers` queue group, the replica included) is refused every time.
    std::thread::sleep(Duration::from_secs(1));
    for i in 0..12 {
        let r = run(args(
            client(),
            &["sign", &format!("pinned-{i}"), "--key-version", "v1"],
        ));
        assert_eq!(r.code, 2, "{}", r.stdout);
        assert!(r.stderr.contains("revoked"), "{}", r.stderr);
    }
    // The replica still signs under v2, with no v1 signature beside it.
    let signers: std::collections::HashSet<String> = (0..12)
        .map(|i| {
            let s = json(&run(args(client(), &["sign", &format!("p-{i}"), "--json"])));
            assert_eq!(s["signatures"].as_array().unwrap().len(), 1, "{s}");
            s["signer"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(
        signers.len() == 2,
        "writer and replica both signed: {signers:?}"
    );
    let r = run(args(
        client(),
        &["verify", "after", &new_sig, "--key-version", "v2"],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);

    // In the ledger, the status, Prometheus and an alert.
    let status = json(&run(args(client(), &["status", "--json"])));
    let v1 = key(&status, "v1");
    assert_eq!(v1["status"], "revoked");
    assert_eq!(v1["revokedReason"], "leaked in build log 4711");
    eventually(
        Duration::from_secs(10),
        "/metrics shows the revocation",
        || {
            let text = http_get(&format!("http://{metrics}/metrics"));
            text.contains("tes_revocations_total 1")
                && text.contains("tes_key_revoked_timestamp_seconds{key_version=\"v1\"}")
        },
    );
    eventually(Duration::from_secs(10), "a key_revoked alert", || {
        let r = run(args(client(), &["alerts", "--json"]));
        r.stdout.contains("key_revoked")
    });
    let ledger = tes_ledger::Ledger::open_reader(&ledger_dir.path().join("ledger.db")).unwrap();
    assert!(ledger.events_from(1).unwrap().iter().any(|(_, e)| matches!(
        &e.body,
        tes_proto::Event::KeyRevoked(r) if r.reason == "leaked in build log 4711"
    )));
}

#[test]
fn revoking_the_active_version_rotates_or_needs_force() {
    // With a version to take over: one transaction, v2 signs.
    let dir = tempfile::tempdir().unwrap();
    let t = || with_keys(tes(dir.path()));
    assert_eq!(run(args(t(), &["sign", "x"])).code, 0);
    let r = run(args(t(), &["revoke", "v1", "--reason", "lost laptop"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("signing moved to v2"), "{}", r.stdout);
    let s = json(&run(args(t(), &["sign", "y", "--json"])));
    assert_eq!(s["keyVersion"], "v2");
    assert_eq!(s["signature"], outside_hmac(V2, "y"));

    // With none: refused (nothing changes) unless --force, after which
    // nothing signs until a new version is provisioned and rotated to.
    let dir = tempfile::tempdir().unwrap();
    let t = || {
        let mut c = tes(dir.path());
        c.env("VERSION_SIGNING_KEY", V1);
        c
    };
    assert_eq!(run(args(t(), &["sign", "x"])).code, 0);
    let r = run(args(t(), &["revoke", "v1", "--reason", "lost laptop"]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("nothing to sign with") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(
        json(&run(args(t(), &["status", "--json"])))["keyVersion"],
        "1"
    );
    let r = run(args(
        t(),
        &["revoke", "v1", "--reason", "lost laptop", "--force"],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(args(t(), &["sign", "z"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("nothing signs"), "{}", r.stderr);
    let status = run(args(t(), &["status"]));
    assert!(status.stdout.contains("REVOKED"), "{}", status.stdout);
    secret_put(t(), V2);
    let r = run(args(t(), &["rotate"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = json(&run(args(t(), &["sign", "z", "--json"])));
    assert_eq!(s["signature"], outside_hmac(V2, "z"));
    assert_eq!(run(args(t(), &["audit", "verify"])).code, 0);
}

#[test]
fn grace_windows_are_extended_and_ended_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let t = || with_keys(tes(dir.path()));
    let old = json(&run(args(t(), &["sign", "old", "--json"])));
    let old_sig = old["signature"].as_str().unwrap().to_string();
    assert_eq!(run(args(t(), &["rotate"])).code, 0);
    let until = |dir: &Path| {
        let s = json(&run(args(tes(dir), &["status", "--json"])));
        key(&s, "v1")["graceUntil"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let before = tes_proto::Timestamp::parse_rfc3339(&until(dir.path())).unwrap();
    let r = run(args(t(), &["grace", "v1", "--extend", "1h"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let after = tes_proto::Timestamp::parse_rfc3339(&until(dir.path())).unwrap();
    assert_eq!(after.as_millis() - before.as_millis(), 3_600_000);
    // One change at a time; a time in the past is refused.
    assert_eq!(run(args(t(), &["grace", "v1"])).code, 2);
    let r = run(args(
        t(),
        &["grace", "v1", "--until", "2020-01-01T00:00:00Z"],
    ));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--end-now"), "{}", r.stderr);
    let r = run(args(t(), &["grace", "v1", "--end-now", "--json"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(json(&r)["retired"], true);
    let s = json(&run(args(t(), &["status", "--json"])));
    assert_eq!(key(&s, "v1")["status"], "retired");
    let r = run(args(
        t(),
        &["verify", "old", &old_sig, "--key-version", "v1"],
    ));
    assert_eq!(r.code, 1, "{}", r.stderr);
}

#[test]
fn a_key_ttl_given_to_a_daemon_applies_to_the_running_key() {
    let dir = tempfile::tempdir().unwrap();
    // A ledger whose v1 was activated with no TTL.
    assert_eq!(run(args(with_keys(tes(dir.path())), &["init"])).code, 0);
    let status = || json(&run(args(tes(dir.path()), &["status", "--json"])));
    assert_eq!(key(&status(), "v1")["expiresAt"], Value::Null);
    let _daemon = Daemon::spawn(with_keys(tes(dir.path())), &["--key-ttl", "3s"]);
    eventually(
        Duration::from_secs(15),
        "v1 expires and v2 takes over",
        || status()["keyVersion"] == "2",
    );
    let s = status();
    assert_eq!(s["rotationReason"], "expired");
    let ledger = tes_ledger::Ledger::open_reader(&dir.path().join("ledger.db")).unwrap();
    let expiry = ledger
        .events_from(1)
        .unwrap()
        .into_iter()
        .find_map(|(_, e)| match e.body {
            tes_proto::Event::KeyExpirySet(x) => Some(x),
            _ => None,
        })
        .expect("the TTL is recorded as a policy event");
    assert_eq!((expiry.version.get(), expiry.ttl_secs), (1, 3));
}

/// Signs on NATS: `n` requests, unpinned or pinned to v1, 60 ms apart.
fn traffic(d: &NatsDaemon, dir: &Path, n: usize, pin_every_other: bool) {
    for i in 0..n {
        let mut a = vec!["sign".to_string(), format!("t-{i}")];
        if pin_every_other && i % 2 == 0 {
            a.extend(["--key-version".into(), "v1".into()]);
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let r = run(args(d.client(dir), &a));
        assert_eq!(r.code, 0, "{}", r.stderr);
        std::thread::sleep(Duration::from_millis(60));
    }
}

#[test]
fn shares_count_the_requests_each_version_served_not_dual_signatures() {
    let rules = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        rules.path(),
        "[migration_stalled]\nwindow = \"1s\"\nmin_drop = \"5%\"\nabove = \"1%\"\n",
    )
    .unwrap();
    let alerts = |dir: &Path| {
        let r = run(args(
            tes(dir),
            &[
                "alerts",
                "--replay",
                "--json",
                "--alert-rules",
                rules.path().to_str().unwrap(),
            ],
        ));
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.stdout
    };

    // Every request on v2 during grace (dual signing on).
    let dir = tempfile::tempdir().unwrap();
    let d = NatsDaemon::start(dir.path());
    assert_eq!(run(args(d.client(dir.path()), &["rotate"])).code, 0);
    traffic(&d, dir.path(), 30, false);
    let m = json(&run(args(d.client(dir.path()), &["metrics", "--json"])));
    let usage = m["window"]["usage"].as_array().unwrap();
    assert_eq!(usage.len(), 1, "only v2 served requests: {usage:?}");
    assert_eq!(usage[0]["version"], "v2");
    assert_eq!(m["window"]["dualSignatures"], 30, "{m}");
    let s = json(&run(args(d.client(dir.path()), &["status", "--json"])));
    assert_eq!(s["lastSigVersion"], "v2");
    drop(d);
    let raised = alerts(dir.path());
    assert!(!raised.contains("migration_stalled"), "{raised}");

    // Half the clients pinned to v1: the migration does stall.
    let dir = tempfile::tempdir().unwrap();
    let d = NatsDaemon::start(dir.path());
    assert_eq!(run(args(d.client(dir.path()), &["rotate"])).code, 0);
    traffic(&d, dir.path(), 30, true);
    drop(d);
    let raised = alerts(dir.path());
    assert!(raised.contains("migration_stalled"), "{raised}");
}

#[test]
fn a_sign_retried_with_the_same_id_after_kill_9_returns_the_original() {
    use tes_proto::command::Sign;
    use tes_proto::{Channel, Envelope, MsgId, ThreadId, Timestamp};
    let server = tes_bus::test_server::TestServer::start();
    block_on(server.ready(None));
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let client_dir = tempfile::tempdir().unwrap();
    let daemon = || Daemon::spawn(with_keys(args(tes(dir.path()), &["--nats", &url])), &[]);
    let up = || wait_until_ok(|| args(tes(client_dir.path()), &["--nats", &url, "status"]));
    let mut d = daemon();
    up();
    let envelope = |payload: &str| {
        let e = Envelope::new(
            MsgId::parse("0193a5b0-7c1e-7d2a-9f00-00000000c0de").unwrap(),
            Timestamp::now(),
            ThreadId::VersionManagement,
            Channel::Command,
            Sign {
                payload: payload.into(),
                key_version: None,
            },
        );
        serde_json::to_vec(&e).unwrap()
    };
    let ask = |body: Vec<u8>| -> Value {
        block_on(async {
            let client = async_nats::connect(url.as_str()).await.unwrap();
            let m = client
                .request("tes.cmd.0x6001.sign", body.into())
                .await
                .unwrap();
            serde_json::from_slice(&m.payload).unwrap()
        })
    };
    let first = ask(envelope("release-7"));
    let first = &first["ok"];
    assert_eq!(first["signature"], outside_hmac(V1, "release-7"));

    d.0.kill().unwrap(); // SIGKILL between the commit and whatever came next
    d.0.wait().unwrap();
    d = daemon();
    up();
    let again = ask(envelope("release-7"));
    let again = &again["ok"];
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["signature"], first["signature"]);
    assert_eq!(again["seq"], first["seq"]);
    assert_eq!(again["signatures"], first["signatures"]);
    // Another payload under the same id is refused, not signed.
    let other = ask(envelope("release-8"));
    assert_eq!(other["err"]["code"], "duplicate", "{other}");
    drop(d);
    let ledger = tes_ledger::Ledger::open_reader(&dir.path().join("ledger.db")).unwrap();
    let signed = ledger
        .events_from(1)
        .unwrap()
        .into_iter()
        .filter(|(_, e)| matches!(e.body, tes_proto::Event::SignatureGenerated(_)))
        .count();
    assert_eq!(signed, 1, "signed once");
}
