//! End to end: the real `tes` binary, as a new user drives it, checked with
//! tools outside the project where the contract says so (openssl, sqlite).
//! Secrets are known values, so every output can be searched for them.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn demo(dir: &Path) -> Vec<Value> {
    let r = run(args(with_keys(tes(dir)), &["demo", "--json"]));
    assert_eq!(r.code, 0, "demo failed: {}", r.stderr);
    json_lines(&r.stdout)
}

/// A copy of a ledger with the append-only triggers dropped (what an
/// attacker with file access could do).
fn tamperable_copy(from: &Path, to_dir: &Path) -> rusqlite::Connection {
    std::fs::create_dir_all(to_dir).unwrap();
    let target = to_dir.join("ledger.db");
    rusqlite::Connection::open(from.join("ledger.db"))
        .unwrap()
        .execute("VACUUM INTO ?1", [target.to_str().unwrap()])
        .unwrap();
    let c = rusqlite::Connection::open(&target).unwrap();
    c.execute_batch(
        "DROP TRIGGER events_append_only_update; DROP TRIGGER events_append_only_delete;",
    )
    .unwrap();
    c
}

#[test]
fn demo_tells_the_story_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(args(tes(dir.path()), &["demo"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for words in [
        "Signed manifest",
        "under v1",
        "Rotated v1 → v2",
        "under v2",
        "Verified the old signature",
        "Verified the new signature",
        "Rolled back v2 → v1",
        "Replayed all",
        "hash chain is sound",
        "also a bundle",
    ] {
        assert!(
            r.stdout.contains(words),
            "missing {words:?} in:\n{}",
            r.stdout
        );
    }
}

#[test]
fn demo_json_signatures_match_openssl_and_replay_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let lines = demo(dir.path());
    let signs: Vec<&Value> = lines.iter().filter(|l| l["step"] == "sign").collect();
    assert_eq!(signs.len(), 3);
    let versions: Vec<&str> = signs
        .iter()
        .map(|l| l["keyVersion"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["v1", "v2", "v1"]);
    for line in &signs {
        let payload = line["payload"].as_str().unwrap();
        let secret = if line["keyVersion"] == "v1" { V1 } else { V2 };
        assert_eq!(
            line["signature"].as_str().unwrap(),
            outside_hmac(secret, payload),
            "{line}"
        );
        for extra in line["signatures"].as_array().unwrap() {
            let secret = if extra["keyVersion"] == "v1" { V1 } else { V2 };
            assert_eq!(
                extra["signature"].as_str().unwrap(),
                outside_hmac(secret, payload)
            );
        }
    }
    // Each signed manifest is a bundle, under the version that signed it.
    let bundles = lines.iter().find(|l| l["step"] == "bundles").unwrap();
    let objects = |v: &str| {
        bundles["places"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["keyVersion"] == v && p["place"] == "bundle")
            .map_or(0, |p| p["objects"].as_u64().unwrap())
    };
    assert_eq!((objects("v1"), objects("v2")), (2, 1), "{bundles}");
    let ended = signs.last().unwrap()["keyVersion"]
        .as_str()
        .unwrap()
        .trim_start_matches('v')
        .to_string();

    let replay = run(args(tes(dir.path()), &["replay", "--json"]));
    assert_eq!(replay.code, 0, "{}", replay.stderr);
    let state: Value = serde_json::from_str(replay.stdout.trim()).unwrap();
    assert_eq!(state["keyVersion"].as_str().unwrap(), ended);

    let audit = run(args(tes(dir.path()), &["audit", "verify"]));
    assert_eq!(audit.code, 0, "{}{}", audit.stdout, audit.stderr);
    assert_no_secret_in(dir.path());

    // Replay to a seq: the state as it was then (v1 active, three events in).
    let early = run(args(
        tes(dir.path()),
        &["replay", "--to-seq", "3", "--json"],
    ));
    let early: Value = serde_json::from_str(early.stdout.trim()).unwrap();
    assert_eq!(
        (early["events"].as_u64(), early["headSeq"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(early["keyVersion"], "1");
    // Replay to a time before anything happened: nothing.
    let none = run(args(
        tes(dir.path()),
        &["replay", "--until", "2000-01-01T00:00:00Z", "--json"],
    ));
    let none: Value = serde_json::from_str(none.stdout.trim()).unwrap();
    assert_eq!(
        (none["events"].as_u64(), &none["keyVersion"]),
        (Some(0), &Value::Null)
    );
    let bad = run(args(tes(dir.path()), &["replay", "--until", "yesterday"]));
    assert_eq!(bad.code, 2);
}

#[test]
fn one_changed_payload_byte_is_named_by_seq() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let copy = dir.path().join("copy");
    let c = tamperable_copy(dir.path(), &copy);
    let target = 7u64;
    let mut payload: Vec<u8> = c
        .query_row("SELECT payload FROM events WHERE seq = ?1", [target], |r| {
            r.get(0)
        })
        .unwrap();
    let last = payload.len() - 1;
    payload[last] ^= 0x01;
    c.execute(
        "UPDATE events SET payload = ?1 WHERE seq = ?2",
        rusqlite::params![payload, target],
    )
    .unwrap();
    drop(c);
    let r = run(args(tes(&copy), &["audit", "verify"]));
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("seq 7"), "{}", r.stdout);
    let r = run(args(tes(&copy), &["audit", "verify", "--json"]));
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["seq"].as_u64()),
        (Some(false), Some(7))
    );
    // Replay refuses to fold a broken chain.
    assert_eq!(run(args(tes(&copy), &["replay"])).code, 1);
}

#[test]
fn the_database_refuses_update_and_delete_on_events() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let c = rusqlite::Connection::open(dir.path().join("ledger.db")).unwrap();
    assert!(c
        .execute("UPDATE events SET kind = 'x' WHERE seq = 1", [])
        .is_err());
    assert!(c.execute("DELETE FROM events", []).is_err());
    let n: i64 = c
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert!(n > 0);
}

#[test]
fn bad_key_secrets_are_input_errors_that_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = args(tes(dir.path()), &["demo"]);
    c.env("VERSION_SIGNING_KEY", "");
    let empty = run(c);
    assert_eq!(empty.code, 2);
    assert!(
        empty.stderr.contains("VERSION_SIGNING_KEY is empty"),
        "{}",
        empty.stderr
    );
    let mut c = args(tes(dir.path()), &["demo"]);
    c.env("VERSION_SIGNING_KEY_V2_FILE", "/nonexistent/v2");
    let missing = run(c);
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("/nonexistent/v2"),
        "{}",
        missing.stderr
    );
    assert!(
        !dir.path().join("ledger.db").exists(),
        "nothing was written"
    );
}

#[test]
fn refused_commands_leave_the_ledger_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let only_v1 = || {
        let mut c = tes(dir.path());
        c.env("VERSION_SIGNING_KEY", V1);
        c
    };
    assert_eq!(run(args(only_v1(), &["init"])).code, 0);
    let head = |d: &Path| -> Value {
        let r = run(args(tes(d), &["audit", "verify", "--json"]));
        serde_json::from_str(r.stdout.trim()).unwrap()
    };
    let before = head(dir.path());

    let r = run(args(only_v1(), &["rotate"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("v2 key not configured"), "{}", r.stderr);
    let r = run(args(only_v1(), &["rollback"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("nothing to roll back"), "{}", r.stderr);
    let r = run(args(only_v1(), &["sign", "hello", "--key-version", "v7"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("v7 is unknown"), "{}", r.stderr);
    let r = run(args(
        only_v1(),
        &["sign", "hello", "--key-version", "banana"],
    ));
    assert_eq!(r.code, 2, "usage error");
    assert_eq!(head(dir.path()), before);
}

#[test]
fn retired_and_pinned_versions() {
    let dir = tempfile::tempdir().unwrap();
    let t = || with_keys(tes(dir.path()));
    let signed = run(args(t(), &["sign", "payload-a", "--json"]));
    assert_eq!(signed.code, 0, "{}", signed.stderr);
    let sig: Value = serde_json::from_str(signed.stdout.trim()).unwrap();
    let v1_sig = sig["signature"].as_str().unwrap().to_string();
    // Rotate with a grace window that is over at once.
    assert_eq!(run(args(t(), &["rotate", "--grace", "1ms"])).code, 0);
    std::thread::sleep(Duration::from_millis(20));
    let r = run(args(t(), &["sign", "payload-a", "--key-version", "v1"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("retired"), "{}", r.stderr);
    let r = run(args(
        t(),
        &["verify", "payload-a", &v1_sig, "--key-version", "v1"],
    ));
    assert_eq!(
        r.code, 1,
        "a retired version verifies nothing (the check fails): {}",
        r.stderr
    );
    // v2 signs and verifies; a wrong signature exits 1.
    let r = run(args(t(), &["sign", "payload-b", "--json"]));
    let s: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(s["keyVersion"], "v2");
    assert_eq!(
        s["signature"].as_str().unwrap(),
        outside_hmac(V2, "payload-b")
    );
    assert_eq!(
        run(args(
            t(),
            &[
                "verify",
                "payload-b",
                s["signature"].as_str().unwrap(),
                "--key-version",
                "v2"
            ]
        ))
        .code,
        0
    );
    assert_eq!(
        run(args(
            t(),
            &[
                "verify",
                "payload-c",
                s["signature"].as_str().unwrap(),
                "--key-version",
                "v2"
            ]
        ))
        .code,
        1
    );
}

#[test]
fn files_that_are_not_ledgers_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ledger.db"),
        "definitely not sqlite, just some text in a file",
    )
    .unwrap();
    for verb in [&["replay"][..], &["audit", "verify"], &["demo"]] {
        let r = run(args(with_keys(tes(dir.path())), verb));
        assert_eq!(r.code, 2, "{verb:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("not an SQLite database"),
            "{verb:?}: {}",
            r.stderr
        );
    }
    let empty = tempfile::tempdir().unwrap();
    let r = run(args(tes(empty.path()), &["replay"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no ledger"), "{}", r.stderr);
}

#[test]
fn a_truncated_ledger_fails_the_audit() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..4 {
        demo(dir.path());
    }
    let copy = dir.path().join("copy");
    drop(tamperable_copy(dir.path(), &copy));
    let bytes = std::fs::read(copy.join("ledger.db")).unwrap();
    std::fs::write(copy.join("ledger.db"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    let r = run(args(tes(&copy), &["audit", "verify"]));
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

#[test]
fn an_unknown_schema_version_is_named_with_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    demo(dir.path());
    let copy = dir.path().join("copy");
    let c = tamperable_copy(dir.path(), &copy);
    c.execute("UPDATE events SET schema = 42 WHERE seq = 4", [])
        .unwrap();
    drop(c);
    let r = run(args(tes(&copy), &["replay"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("seq 4") && r.stderr.contains("schema version 42"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_second_daemon_on_the_same_ledger_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = with_keys(tes(dir.path()));
    first
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = first.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let lock = dir.path().join("ledger.db.lock");
    while std::fs::read_to_string(&lock)
        .map(|s| s.trim().is_empty())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "first daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = run(args(with_keys(tes(dir.path())), &["daemon"]));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    assert_eq!(second.code, 2);
    assert!(
        second.stderr.contains("already open for writing"),
        "{}",
        second.stderr
    );
    assert!(
        status.success(),
        "the first daemon stops cleanly on SIGTERM"
    );
    assert_eq!(run(args(tes(dir.path()), &["audit", "verify"])).code, 0);
}

/// A stop requested while the daemon is still starting (here: the moment
/// its ledger lock appears, before it is ready) ends it cleanly, exit 0,
/// and leaves a ledger that verifies: process managers send SIGTERM
/// whenever they like.
#[test]
fn a_daemon_stopped_while_starting_exits_cleanly() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = with_keys(tes(dir.path()));
        daemon
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = daemon.spawn().unwrap();
        let lock = dir.path().join("ledger.db.lock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::metadata(&lock).is_ok_and(|m| m.len() > 0) {
            assert!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "stopped while starting: {:?}\n{stderr}",
            out.status
        );
        assert!(stderr.contains("stopped"), "{stderr}");
        assert_eq!(run(args(tes(dir.path()), &["audit", "verify"])).code, 0);
    }
}

#[test]
fn secret_put_reads_stdin_and_list_shows_fingerprints_only() {
    let dir = tempfile::tempdir().unwrap();
    secret_put(tes(dir.path()), &format!("{V2}\n"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("keystore.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let again = run(args(tes(dir.path()), &["secret", "put", "--version", "2"]));
    assert_eq!(again.code, 2, "stdin is /dev/null: empty secret");

    let list = run(args(tes(dir.path()), &["secret", "list", "--json"]));
    assert_eq!(list.code, 0, "{}", list.stderr);
    let rows = json_lines(&list.stdout);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["version"], "v2");
    assert_eq!(rows[0]["fingerprint"].as_str().unwrap().len(), 16);

    // The stored v2 signs exactly as the secret string would with openssl.
    let mut c = tes(dir.path());
    c.env("VERSION_SIGNING_KEY", V1);
    let r = run(args(c, &["sign", "x", "--key-version", "v2", "--json"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(s["signature"].as_str().unwrap(), outside_hmac(V2, "x"));
}

#[test]
fn the_checked_in_v1_fixture_ledger_still_replays_and_verifies() {
    // Written by an earlier build (schema 1); a format change must keep it
    // readable (see tes-ledger's codec for upcasting).
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture.join("ledger-v1/ledger.db"),
        dir.path().join("ledger.db"),
    )
    .unwrap();
    let r = run(args(tes(dir.path()), &["audit", "verify"]));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = run(args(tes(dir.path()), &["replay", "--json"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.join("ledger-v1.replay.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(got, expected);
}

#[test]
fn the_os_key_store_keeps_secrets_off_the_disk() {
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = tes_keyring::kernel::remove_all(&self.0);
        }
    }
    let ns = format!("tes-e2e-{}", std::process::id());
    let _cleanup = Cleanup(ns.clone());
    let store = format!("os:{ns}");
    let dir = tempfile::tempdir().unwrap();

    secret_put(args(tes(dir.path()), &["--key-store", &store]), V2);

    // v1 is generated into the OS store too; the demo rotates to the stored v2.
    let r = run(args(
        tes(dir.path()),
        &["--key-store", &store, "demo", "--json"],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines = json_lines(&r.stdout);
    let v2_sign = lines
        .iter()
        .find(|l| l["step"] == "sign" && l["keyVersion"] == "v2")
        .expect("a v2 signature");
    assert_eq!(
        v2_sign["signature"].as_str().unwrap(),
        outside_hmac(V2, v2_sign["payload"].as_str().unwrap())
    );
    assert!(
        !dir.path().join("keystore.json").exists(),
        "nothing was written to a key store file"
    );
    assert_no_secret_in(dir.path());
}

/// Every `signature_generated` in the ledger of `dir`, by seq.
fn signatures_in_ledger(dir: &Path) -> std::collections::HashMap<u64, String> {
    let ledger = tes_ledger::Ledger::open_reader(&dir.join("ledger.db")).unwrap();
    ledger
        .events_from(1)
        .unwrap()
        .into_iter()
        .filter_map(|(seq, e)| match e.body {
            tes_proto::Event::SignatureGenerated(s) => Some((seq, s.signature)),
            _ => None,
        })
        .collect()
}

/// Signing load from a client in another language's shoes (raw NATS, JSON
/// in and out): `workers` loops until the flag is set. Each result is the
/// reply's `ok` object, or what went wrong (refusals and lost requests —
/// a request outlives neither a kill of its signer nor 2 s).
fn sign_load(
    url: &str,
    workers: usize,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<Vec<Result<Value, String>>>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (flag, url) = (stop.clone(), url.to_string());
    let load = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = async_nats::ConnectOptions::new()
                .max_reconnects(None)
                .connect(url.as_str())
                .await
                .unwrap();
            let loops: Vec<_> = (0..workers)
                .map(|w| {
                    let (client, stop) = (client.clone(), flag.clone());
                    tokio::spawn(async move {
                        let mut out = Vec::new();
                        let mut i = 0;
                        while !stop.load(Ordering::SeqCst) {
                            i += 1;
                            let body = format!(r#"{{"payload":"load-{w}-{i}"}}"#);
                            let request = async_nats::Request::new()
                                .payload(body.into())
                                .timeout(Some(Duration::from_secs(2)));
                            let result =
                                match client.send_request("tes.cmd.0x6001.sign", request).await {
                                    Ok(m) => match serde_json::from_slice::<Value>(&m.payload) {
                                        Ok(v) if v.get("ok").is_some() => Ok(v["ok"].clone()),
                                        Ok(v) => Err(v.to_string()),
                                        Err(e) => Err(e.to_string()),
                                    },
                                    Err(e) => {
                                        tokio::time::sleep(Duration::from_millis(20)).await;
                                        Err(e.to_string())
                                    }
                                };
                            out.push(result);
                        }
                        out
                    })
                })
                .collect();
            let mut all = Vec::new();
            for l in loops {
                all.extend(l.await.unwrap());
            }
            all
        })
    });
    (stop, load)
}

#[test]
fn the_cli_talks_to_a_daemon_over_nats() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let d = NatsDaemon::start(dir.path());
    // The client needs no ledger and no keys of its own.
    let s = run(args(
        d.client(elsewhere.path()),
        &["sign", "over-nats", "--json"],
    ));
    assert_eq!(s.code, 0, "{}", s.stderr);
    let s: Value = serde_json::from_str(s.stdout.trim()).unwrap();
    assert_eq!(
        s["signature"].as_str().unwrap(),
        outside_hmac(V1, "over-nats")
    );
    assert_eq!(run(args(d.client(elsewhere.path()), &["rotate"])).code, 0);
    let st = run(args(d.client(elsewhere.path()), &["status", "--json"]));
    let st: Value = serde_json::from_str(st.stdout.trim()).unwrap();
    assert_eq!(st["keyVersion"], "2");
    let r = run(args(d.client(elsewhere.path()), &["rotate"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("v3 key not configured"), "{}", r.stderr);
    assert!(
        !elsewhere.path().join("ledger.db").exists(),
        "a NATS client never opens a ledger"
    );
}

#[test]
fn json_rotations_from_a_client_that_is_not_tes_are_durable() {
    let server = tes_bus::test_server::TestServer::start();
    block_on(server.ready(None));
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let key_version = || key_version_on(dir.path(), &url);
    let wait_for = |want: &str| wait_for_key_version(dir.path(), &url, want);
    // A first daemon run creates the streams; then no daemon runs at all.
    let daemon = Daemon::spawn(with_keys(args(tes(dir.path()), &["--nats", &url])), &[]);
    wait_for("1");
    drop(daemon);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async_nats::connect(url.as_str())).unwrap();
    // Exactly what `nats request tes.cmd.0x1001.rotate '{"requested_by":"ops"}'`
    // sends: the answer is the stream's receipt — stored, to be applied.
    let receipt = rt
        .block_on(client.request("tes.cmd.0x1001.rotate", r#"{"requested_by":"ops"}"#.into()))
        .unwrap();
    let receipt: Value = serde_json::from_slice(&receipt.payload).unwrap();
    assert_eq!(receipt["stream"], "TES_COMMANDS", "{receipt}");

    // The daemon comes back and applies it, once.
    let daemon = Daemon::spawn(with_keys(args(tes(dir.path()), &["--nats", &url])), &[]);
    wait_for("2");
    // `nats pub tes.cmd.0x1001.rollback ''`: fire and forget, no headers.
    rt.block_on(async {
        client
            .publish("tes.cmd.0x1001.rollback", "".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    });
    wait_for("1");
    drop(daemon);
    let daemon = Daemon::spawn(with_keys(args(tes(dir.path()), &["--nats", &url])), &[]);
    wait_for("1");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        key_version(),
        "1",
        "nothing was applied twice after a restart"
    );
    drop(daemon);
    let rotations = run(args(tes(dir.path()), &["replay", "--json"]));
    let state: Value = serde_json::from_str(rotations.stdout.trim()).unwrap();
    assert_eq!(state["keyVersion"], "1");
}

#[test]
fn with_no_daemon_on_nats_the_cli_says_so() {
    let server = tes_bus::test_server::TestServer::start();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(server.ready(None));
    let dir = tempfile::tempdir().unwrap();
    let r = run(args(
        tes(dir.path()),
        &["--nats", &server.url(), "sign", "x"],
    ));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("no tes daemon is serving"),
        "{}",
        r.stderr
    );
    drop(server);
    let r = run(args(
        tes(dir.path()),
        &["--nats", "nats://127.0.0.1:1", "status"],
    ));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("cannot connect to NATS at nats://127.0.0.1:1"),
        "{}",
        r.stderr
    );
}

#[test]
fn actors_in_separate_daemons_with_their_own_nats_users() {
    let server = tes_bus::test_server::TestServer::start_with_ops_config();
    block_on(server.ready(Some((
        "monitor",
        &tes_bus::test_server::ops_password("monitor"),
    ))));
    let as_user = |dir: &Path, user: &str| args(tes(dir), &["--nats", &server.url_as(user)]);
    let ledger_dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let _version = Daemon::spawn(
        with_keys(as_user(ledger_dir.path(), "version")),
        &["--actors", "version"],
    );
    let _supervisor = Daemon::spawn(
        as_user(other_dir.path(), "supervisor"),
        &["--actors", "supervisor"],
    );
    wait_until_ok(|| args(as_user(other_dir.path(), "operator"), &["status"]));

    // A service signs; it may not rotate.
    let signed = run(args(
        as_user(other_dir.path(), "client"),
        &["sign", "from-a-service", "--json"],
    ));
    assert_eq!(signed.code, 0, "{}", signed.stderr);
    let r = run(args(as_user(other_dir.path(), "client"), &["rotate"]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("not permitted to publish to tes.cmd.0x1001.rotate"),
        "{}",
        r.stderr
    );
    // An operator rotates through the Supervisor (in another process); may not sign.
    let r = run(args(as_user(other_dir.path(), "operator"), &["rotate"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(args(as_user(other_dir.path(), "operator"), &["sign", "x"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not permitted"), "{}", r.stderr);
    let st = run(args(
        as_user(other_dir.path(), "operator"),
        &["status", "--json"],
    ));
    let st: Value = serde_json::from_str(st.stdout.trim()).unwrap();
    assert_eq!(st["keyVersion"], "2");
    assert!(
        !other_dir.path().join("ledger.db").exists(),
        "the Supervisor's process keeps no ledger"
    );

    // The observers, each as its own user, far from the ledger: they follow
    // TES_EVENTS. An alert goes Alert → Supervisor → Version Management.
    let _monitoring = Daemon::spawn(
        as_user(other_dir.path(), "monitoring"),
        &["--actors", "monitoring"],
    );
    let _alert = Daemon::spawn(as_user(other_dir.path(), "alert"), &["--actors", "alert"]);
    let _telemetry = Daemon::spawn(
        as_user(other_dir.path(), "telemetry"),
        &["--actors", "telemetry"],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = run(args(
            as_user(other_dir.path(), "operator"),
            &["metrics", "--json"],
        ));
        let v: Value = serde_json::from_str(m.stdout.trim()).unwrap_or(Value::Null);
        if v["rotations"] == 1 && v["signRequests"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Monitoring never counted: {} {}",
            m.stdout,
            m.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let a = run(args(
        as_user(other_dir.path(), "operator"),
        &["alerts", "--json"],
    ));
    assert_eq!(a.code, 0, "{}", a.stderr);
    let r = run(args(as_user(other_dir.path(), "client"), &["metrics"]));
    assert!(
        r.stderr.contains("not permitted"),
        "a service may not ask Monitoring: {}",
        r.stderr
    );

    // The HTTP gateway as its own user: CSRF tokens in KV, a durable rotation.
    let http_port = free_port();
    let mut gateway = as_user(other_dir.path(), "gateway");
    gateway.env("TES_HTTP_ADDR", format!("127.0.0.1:{http_port}"));
    let _gateway = Daemon::spawn(gateway, &["--actors", "gateway"]);
    let base = format!("http://127.0.0.1:{http_port}");
    let curl = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("BASE", &base)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !curl("curl -s $BASE/api/dev/version-ws/health").contains("\"keyVersion\":\"2\"") {
        assert!(Instant::now() < deadline, "the gateway never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = curl(
        r#"curl -s -w ' %{http_code}' -X POST $BASE/admin/rotate -H "X-CSRF-Token: $(curl -s $BASE/api/auth/csrf-token | jq -r .token)""#,
    );
    assert_eq!(
        r, "V3 key not configured [HSL:#FF0000] 500",
        "through TES_COMMANDS and the gate"
    );
    // A revocation and a grace change from the operator, each actor its own
    // user: the Supervisor may forward them, a client may not ask.
    let r = run(args(
        as_user(other_dir.path(), "operator"),
        &["grace", "v1", "--extend", "1h"],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(args(
        as_user(other_dir.path(), "operator"),
        &["revoke", "v1", "--reason", "drill"],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(args(
        as_user(other_dir.path(), "client"),
        &["revoke", "v2", "--reason", "not mine to say"],
    ));
    assert!(r.stderr.contains("not permitted"), "{}", r.stderr);

    let r = run(args(
        tes(other_dir.path()),
        &["daemon", "--actors", "supervisor"],
    ));
    assert_eq!(r.code, 2, "subsets need NATS");
    assert!(r.stderr.contains("--actors needs --nats"), "{}", r.stderr);
}

#[test]
fn a_kv_rotation_signal_rotates_once_across_restarts() {
    let server = tes_bus::test_server::TestServer::start();
    block_on(server.ready(None));
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let with_three = || {
        let mut c = with_keys(args(tes(dir.path()), &["--nats", &url]));
        c.env(
            "VERSION_SIGNING_KEY_V3",
            "e2e-known-secret-v3-0f1e2d3c4b5a6978",
        );
        c
    };
    let key_version = || key_version_on(dir.path(), &url);
    let wait_for = |want: &str| wait_for_key_version(dir.path(), &url, want);
    // One runtime for the client: its connection lives as long as the runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(async_nats::connect(url.as_str())).unwrap();
    let put = |value: &'static str| {
        rt.block_on(async {
            let kv = async_nats::jetstream::new(client.clone())
                .get_key_value("tes")
                .await
                .unwrap();
            kv.put("rotation-signal", value.into()).await.unwrap()
        })
    };

    let daemon = Daemon::spawn(with_three(), &[]);
    wait_for("1");
    put("rotate");
    wait_for("2");
    drop(daemon);
    let daemon = Daemon::spawn(with_three(), &[]);
    wait_for("2");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        key_version(),
        "2",
        "the same revision did not rotate again (v3 was there to rotate to)"
    );
    drop(daemon);
    let daemon = Daemon::spawn(with_three(), &[]);
    wait_for("2");

    // Garbage is refused (a rejected event from the Supervisor) and changes nothing.
    let mut rejected = rt.block_on(async {
        let s = client.subscribe("tes.evt.0x1001.rejected").await.unwrap();
        client.flush().await.unwrap();
        s
    });
    put("rotate-please");
    let got = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), futures_util_next(&mut rejected)).await
    });
    assert!(got.is_ok(), "a rejected event for a bad signal");
    assert_eq!(key_version(), "2");

    put("rollback");
    wait_for("1");
    drop(daemon);
    let audit = run(args(tes(dir.path()), &["audit", "verify"]));
    assert_eq!(audit.code, 0);
}

async fn futures_util_next(s: &mut async_nats::Subscriber) -> Option<async_nats::Message> {
    use futures_util::StreamExt;
    s.next().await
}

#[test]
fn a_signer_replica_process_shares_the_signing() {
    let server = tes_bus::test_server::TestServer::start();
    block_on(server.ready(None));
    let url = server.url();
    let (ledger_dir, replica_dir, client_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let _writer = Daemon::spawn(
        with_keys(args(tes(ledger_dir.path()), &["--nats", &url])),
        &[],
    );
    wait_until_ok(|| args(tes(client_dir.path()), &["--nats", &url, "status"]));
    let _signer = Daemon::spawn(
        with_keys(args(tes(replica_dir.path()), &["--nats", &url])),
        &["--actors", "version", "--role", "signer"],
    );
    std::thread::sleep(Duration::from_millis(800));

    let mut signers = std::collections::HashSet::new();
    let mut seqs = Vec::new();
    for i in 0..24 {
        let r = run(args(
            tes(client_dir.path()),
            &["--nats", &url, "sign", &format!("m-{i}"), "--json"],
        ));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let s: Value = serde_json::from_str(r.stdout.trim()).unwrap();
        assert_eq!(
            s["signature"].as_str().unwrap(),
            outside_hmac(V1, &format!("m-{i}"))
        );
        signers.insert(s["signer"].as_str().unwrap().to_string());
        seqs.push(s["seq"].as_u64().unwrap());
    }
    assert!(
        signers.contains("writer") && signers.iter().any(|s| s.starts_with("signer-")),
        "both signed: {signers:?}"
    );
    // Batches go to either signer too; a replica records each item.
    let mut batch_signers = std::collections::HashSet::new();
    for b in 0..16 {
        let input: String = (0..5).map(|i| format!("b-{b}-{i}\n")).collect();
        let out = run_with_stdin(
            args(
                tes(client_dir.path()),
                &["--nats", &url, "--json", "sign", "--batch"],
            ),
            &input,
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        let lines = json_lines(&out.stdout);
        assert_eq!(lines.len(), 5);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(
                l["signature"],
                outside_hmac(V1, &format!("b-{b}-{i}")).as_str()
            );
            batch_signers.insert(l["signer"].as_str().unwrap().to_string());
        }
    }
    assert!(
        batch_signers.contains("writer") && batch_signers.iter().any(|s| s.starts_with("signer-")),
        "both signed batches: {batch_signers:?}"
    );
    assert!(
        !replica_dir.path().join("ledger.db").exists(),
        "a replica keeps no ledger"
    );
    let state = run(args(tes(ledger_dir.path()), &["replay", "--json"]));
    let state: Value = serde_json::from_str(state.stdout.trim()).unwrap();
    let v1 = state["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["version"] == "v1")
        .unwrap();
    assert_eq!(
        v1["signatures"].as_u64(),
        Some(24 + 16 * 5),
        "every signature, the replica's too, is in the ledger"
    );

    let r = run(args(
        tes(replica_dir.path()),
        &["daemon", "--role", "signer"],
    ));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--role signer needs --nats"),
        "{}",
        r.stderr
    );
}

#[test]
fn kill_9_of_the_daemon_and_of_nats_loses_no_signature() {
    use std::sync::atomic::Ordering;
    let mut server = tes_bus::test_server::TestServer::start();
    block_on(server.ready(None));
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let client_dir = tempfile::tempdir().unwrap();
    let daemon = || Daemon::spawn(with_keys(args(tes(dir.path()), &["--nats", &url])), &[]);
    let up = || wait_until_ok(|| args(tes(client_dir.path()), &["--nats", &url, "status"]));
    let mut d = daemon();
    up();

    // A client in another language's shoes: raw NATS, JSON in and out.
    let (stop, load) = sign_load(&url, 1);

    std::thread::sleep(Duration::from_millis(700));
    d.0.kill().unwrap(); // SIGKILL: no shutdown, no flush
    d.0.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    d = daemon();
    up();
    std::thread::sleep(Duration::from_millis(500));
    server.kill(); // NATS too
    std::thread::sleep(Duration::from_millis(300));
    server.restart();
    up();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let results = load.join().unwrap();
    let failed = results.iter().filter(|r| r.is_err()).count();
    let received: Vec<Value> = results.into_iter().filter_map(Result::ok).collect();
    drop(d);

    assert!(
        received.len() > 20,
        "signing went on around the kills: {} ok, {failed} refused or lost",
        received.len()
    );
    let audit = run(args(tes(dir.path()), &["audit", "verify"]));
    assert_eq!(audit.code, 0, "{}{}", audit.stdout, audit.stderr);
    let recorded = signatures_in_ledger(dir.path());
    for r in &received {
        let seq = r["seq"].as_u64().unwrap();
        assert_eq!(
            recorded.get(&seq).map(String::as_str),
            r["signature"].as_str(),
            "a signature handed out is in the ledger at seq {seq}"
        );
        assert_eq!(
            r["signature"].as_str().unwrap(),
            fast_hmac(V1, r["payload"].as_str().unwrap())
        );
    }
}

#[test]
fn two_signer_replicas_under_load_rotate_with_zero_failures() {
    use std::sync::atomic::Ordering;
    let server = tes_bus::test_server::TestServer::start();
    block_on(server.ready(None));
    let url = server.url();
    let (ledger_dir, client_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let replica_dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let _writer = Daemon::spawn(
        with_keys(args(tes(ledger_dir.path()), &["--nats", &url])),
        &[],
    );
    wait_until_ok(|| args(tes(client_dir.path()), &["--nats", &url, "status"]));
    let _replicas: Vec<Daemon> = replica_dirs
        .iter()
        .map(|d| {
            Daemon::spawn(
                with_keys(args(tes(d.path()), &["--nats", &url])),
                &["--actors", "version", "--role", "signer"],
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));

    let (stop, load) = sign_load(&url, 4);
    std::thread::sleep(Duration::from_millis(800));
    let rotated = run(args(tes(client_dir.path()), &["--nats", &url, "rotate"]));
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    std::thread::sleep(Duration::from_millis(2000));
    stop.store(true, Ordering::SeqCst);
    let replies = load.join().unwrap();
    let failures: Vec<&String> = replies.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} signatures failed, e.g. {:?}",
        failures.len(),
        replies.len(),
        failures.first()
    );
    let oks: Vec<&Value> = replies.iter().filter_map(|r| r.as_ref().ok()).collect();
    for s in &oks {
        for sig in s["signatures"].as_array().unwrap() {
            let secret = if sig["keyVersion"] == "v1" { V1 } else { V2 };
            assert_eq!(
                sig["signature"].as_str().unwrap(),
                fast_hmac(secret, s["payload"].as_str().unwrap()),
                "every signature verifies"
            );
        }
    }
    let v2_signers: std::collections::HashSet<&str> = oks
        .iter()
        .filter(|s| s["keyVersion"] == "v2" && s["signer"].as_str().unwrap().starts_with("signer-"))
        .map(|s| s["signer"].as_str().unwrap())
        .collect();
    assert_eq!(
        v2_signers.len(),
        2,
        "both replicas sign with v2 after the rotation: {v2_signers:?}"
    );

    drop(_replicas);
    drop(_writer);
    let recorded = signatures_in_ledger(ledger_dir.path());
    for s in &oks {
        let seq = s["seq"].as_u64().unwrap();
        assert_eq!(
            recorded.get(&seq).map(String::as_str),
            s["signature"].as_str(),
            "in the ledger at seq {seq}"
        );
    }
}
