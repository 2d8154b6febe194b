//! Trust beyond the process, as an attacker with the file, an auditor with
//! the vkey and an operator on NATS see it: tampered copies of a ledger
//! against checkpoints signed before (given, or held by a witness), a third
//! party's verifier (Python), verbs that only read, no silent re-keying,
//! one writer per deployment, and a Supervisor whose durable consumer
//! cannot be taken away.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;
use tes_ledger::Ledger;

/// A ledger with some history: init, signatures, a rotation, more signatures.
fn history(dir: &Path) {
    let r = run(args(with_keys(tes(dir)), &["init"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for i in 0..6 {
        let r = run(args(with_keys(tes(dir)), &["sign", &format!("before-{i}")]));
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let r = run(args(with_keys(tes(dir)), &["rotate"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for i in 0..6 {
        let r = run(args(with_keys(tes(dir)), &["sign", &format!("after-{i}")]));
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
}

fn checkpoint(dir: &Path, out: &Path) {
    let r = run(args(tes(dir), &["audit", "checkpoint"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::fs::write(out, r.stdout).unwrap();
}

/// A copy of the data dir (ledger, key store, bundle store with its
/// checkpoints) under `name`, with the ledger's triggers dropped as an
/// attacker with the file would.
fn copy(src: &Path, root: &Path, name: &str) -> PathBuf {
    let dst = root.join(name);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(status.success());
    let conn = rusqlite::Connection::open(dst.join("ledger.db")).unwrap();
    conn.execute_batch(
        "DROP TRIGGER events_append_only_update; DROP TRIGGER events_append_only_delete;",
    )
    .unwrap();
    dst
}

fn sql(dir: &Path, statements: &str) {
    let conn = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
    conn.execute_batch(statements).unwrap();
}

/// The events of `src`, written again through our own library (so every
/// hash is recomputed and the chain is self-consistent), after `edit`.
fn rechain(
    src: &Path,
    dst_dir: &Path,
    edit: impl FnOnce(&mut Vec<tes_proto::Envelope<tes_proto::Event>>),
) {
    let reader = Ledger::open_reader(&src.join("ledger.db")).unwrap();
    let mut events: Vec<_> = reader
        .events_from(1)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    drop(reader);
    edit(&mut events);
    std::fs::remove_file(dst_dir.join("ledger.db")).unwrap();
    let _ = std::fs::remove_file(dst_dir.join("ledger.db-wal"));
    let _ = std::fs::remove_file(dst_dir.join("ledger.db-shm"));
    let mut w = Ledger::open_writer(&dst_dir.join("ledger.db")).unwrap();
    w.append(&events).unwrap();
}

fn verify_fails(c: std::process::Command, what: &str) -> String {
    let r = run(c);
    assert_eq!(
        r.code, 1,
        "{what}: expected a failed check\n{}\n{}",
        r.stdout, r.stderr
    );
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(said.contains("seq "), "{what}: the seq is named: {said}");
    said
}

#[test]
fn every_tampering_is_caught_against_a_checkpoint_taken_before() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    history(&good);
    let note = tmp.path().join("before.note");
    checkpoint(&good, &note);
    let head = Ledger::open_reader(&good.join("ledger.db"))
        .unwrap()
        .head()
        .seq;
    assert!(head >= 14, "a real history: {head}");

    // The untouched ledger agrees with its checkpoint and its witnesses.
    let r = run(args(
        tes(&good),
        &["audit", "verify", "--checkpoint", note.to_str().unwrap()],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(args(tes(&good), &["audit", "verify"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("agrees with"), "{}", r.stdout);

    let mut cases: Vec<(&str, PathBuf)> = Vec::new();
    let d = copy(&good, tmp.path(), "byte");
    sql(&d, "UPDATE events SET payload = CAST(replace(CAST(payload AS TEXT), 'before-3', 'before-X') AS BLOB) WHERE seq = 7; UPDATE events SET payload = X'00' || payload WHERE seq = 5;");
    cases.push(("a byte edit", d));
    let d = copy(&good, tmp.path(), "deleted");
    sql(&d, "DELETE FROM events WHERE seq = 6;");
    cases.push(("a deleted row", d));
    let d = copy(&good, tmp.path(), "swapped");
    sql(&d, "UPDATE events SET seq = -1 WHERE seq = 5; UPDATE events SET seq = 5 WHERE seq = 6; UPDATE events SET seq = 6 WHERE seq = -1;");
    cases.push(("swapped rows", d));
    let d = copy(&good, tmp.path(), "truncated");
    sql(&d, &format!("DELETE FROM events WHERE seq > {};", head - 3));
    cases.push(("a truncated tail", d));
    let d = copy(&good, tmp.path(), "recomputed");
    rechain(&good, &d, |events| {
        // A signature's audit record says another payload hash.
        let e = events
            .iter_mut()
            .find(|e| e.body.kind() == "signature_generated")
            .unwrap();
        if let tes_proto::Event::SignatureGenerated(s) = &mut e.body {
            s.signature = "00".repeat(32);
        }
    });
    cases.push(("an edit with the chain recomputed", d));
    let d = copy(&good, tmp.path(), "renumbered");
    rechain(&good, &d, |events| {
        // The rotation to v2 (the last key_rotate; the first is the genesis).
        let i = events
            .iter()
            .rposition(|e| e.body.kind() == "key_rotate")
            .unwrap();
        events.remove(i);
    });
    cases.push(("a dropped key_rotate, renumbered and re-chained", d));
    let other = tmp.path().join("other-src");
    history(&other);
    let d = copy(&good, tmp.path(), "swapped-file");
    std::fs::copy(other.join("ledger.db"), d.join("ledger.db")).unwrap();
    let _ = std::fs::remove_file(d.join("ledger.db-wal"));
    let _ = std::fs::remove_file(d.join("ledger.db-shm"));
    cases.push(("another ledger's file", d));

    for (what, dir) in &cases {
        verify_fails(
            args(
                tes(dir),
                &["audit", "verify", "--checkpoint", note.to_str().unwrap()],
            ),
            what,
        );
        // The bundle store beside it witnessed a newer checkpoint: no option needed.
        verify_fails(
            args(tes(dir), &["audit", "verify"]),
            &format!("{what} (witness)"),
        );
    }
}

#[test]
fn replay_fails_on_an_edit_before_the_newest_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let r = run(args(with_keys(tes(&good)), &["init"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for i in 0..8 {
        let r = run(args(
            with_keys(tes(&good)),
            &["sign", "--snapshot-every", "3", &format!("p{i}")],
        ));
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let conn = rusqlite::Connection::open(good.join("ledger.db")).unwrap();
    let newest: u64 = conn
        .query_row("SELECT max(seq) FROM snapshots", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    assert!(newest > 4, "a snapshot well after seq 3: {newest}");
    let d = copy(&good, tmp.path(), "edited");
    sql(
        &d,
        "UPDATE events SET payload = X'00' || payload WHERE seq = 3;",
    );
    let r = run(args(tes(&d), &["replay"]));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("seq 3"), "{}", r.stderr);
    // A damaged snapshot is named by the audit.
    let d = copy(&good, tmp.path(), "snapshot");
    sql(&d, "UPDATE snapshots SET state = X'00' || state;");
    let r = run(args(tes(&d), &["audit", "verify"]));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("snapshot at seq"), "{}", r.stdout);
}

#[test]
fn a_third_party_verifies_checkpoints_and_proofs_with_the_vkey_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    history(&dir);
    let note = tmp.path().join("cp.note");
    checkpoint(&dir, &note);
    let vkey = run(args(tes(&dir), &["audit", "key"]))
        .stdout
        .trim()
        .to_string();
    assert!(vkey.starts_with("tes-ledger/"), "{vkey}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/audit/verify.py");
    let head = Ledger::open_reader(&dir.join("ledger.db"))
        .unwrap()
        .head()
        .seq;
    for seq in [1, 2, head / 2, head] {
        let r = run(args(
            tes(&dir),
            &[
                "audit",
                "prove",
                &seq.to_string(),
                "--checkpoint",
                note.to_str().unwrap(),
                "--json",
            ],
        ));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let proof = tmp.path().join(format!("p{seq}.json"));
        std::fs::write(&proof, &r.stdout).unwrap();
        let out = std::process::Command::new(python())
            .arg(&script)
            .arg(&vkey)
            .arg(&note)
            .arg(&proof)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains(&format!("inclusion OK: seq {seq} ")),
            "{said}"
        );
    }
    // A checkpoint with another size (and the same signature) is refused.
    let forged = tmp.path().join("forged.note");
    let text = std::fs::read_to_string(&note).unwrap();
    std::fs::write(
        &forged,
        text.replacen(&format!("\n{head}\n"), &format!("\n{}\n", head + 1), 1),
    )
    .unwrap();
    let out = std::process::Command::new(python())
        .arg(&script)
        .arg(&vkey)
        .arg(&forged)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = run(args(
        tes(&dir),
        &["audit", "verify", "--checkpoint", forged.to_str().unwrap()],
    ));
    assert_eq!(r.code, 1, "{}", r.stdout);
}

#[test]
fn reads_create_nothing_and_keys_are_never_made_behind_the_operators_back() {
    let tmp = tempfile::tempdir().unwrap();
    let nowhere = tmp.path().join("no-such");
    for verb in [
        &["status"][..],
        &["replay"],
        &["audit", "verify"],
        &["audit", "key"],
    ] {
        let r = run(args(tes(&nowhere), verb));
        assert_eq!(r.code, 2, "{verb:?}: {}", r.stderr);
        assert!(!nowhere.exists(), "{verb:?} created {}", nowhere.display());
    }

    // A bad audit key source stops `tes init` before a key or a ledger is made.
    let mut init = args(tes(&nowhere), &["init"]);
    init.env("TES_AUDIT_KEY_FILE", tmp.path().join("no-such-key"));
    let r = run(init);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("TES_AUDIT_KEY_FILE"), "{}", r.stderr);
    assert!(!nowhere.exists(), "init created {}", nowhere.display());

    // A daemon-less one-shot on an empty dir without secrets says to init.
    let empty = tmp.path().join("empty");
    let r = run(args(tes(&empty), &["sign", "x"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("tes init"), "{}", r.stderr);
    assert!(
        !empty.join("keystore.json").exists(),
        "no key was generated"
    );

    // v1 recorded from VERSION_SIGNING_KEY; then the variable is gone: refuse.
    let dir = tmp.path().join("d");
    assert_eq!(run(args(with_keys(tes(&dir)), &["sign", "a"])).code, 0);
    let r = run(args(tes(&dir), &["sign", "b"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        !dir.join("keystore.json").exists()
            || !std::fs::read_to_string(dir.join("keystore.json"))
                .unwrap()
                .contains("\"1\""),
        "no v1 was generated"
    );
    // Other material for v1: refused, naming the version, never the value.
    let mut other = args(tes(&dir), &["sign", "c"]);
    other.env("VERSION_SIGNING_KEY", "another-secret-for-v1");
    let r = run(other);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("v1") && r.stderr.contains("--replace"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("another-secret-for-v1"));
    // Replaced on purpose: recorded, shown, and signing goes on under it.
    secret_put_as(
        tes(&dir),
        &["--version", "1", "--replace"],
        "a-replacement-for-v1\n",
    );
    let r = run(args(tes(&dir), &["status"]));
    assert!(
        r.stdout.contains("material replaced 1 time"),
        "{}",
        r.stdout
    );
    assert_eq!(run(args(tes(&dir), &["sign", "d"])).code, 0);
    let before = std::fs::read(dir.join("ledger.db")).unwrap();
    assert_eq!(run(args(tes(&dir), &["status"])).code, 0);
    assert_eq!(
        before,
        std::fs::read(dir.join("ledger.db")).unwrap(),
        "status wrote nothing"
    );

    // A file that is not a ledger stays byte for byte as it was.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    let conn = rusqlite::Connection::open(foreign.join("ledger.db")).unwrap();
    conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(conn);
    let bytes = std::fs::read(foreign.join("ledger.db")).unwrap();
    for verb in [
        &["status"][..],
        &["replay"],
        &["audit", "verify"],
        &["sign", "x"],
    ] {
        let r = run(args(with_keys(tes(&foreign)), verb));
        assert_eq!(r.code, 2, "{verb:?}: {}", r.stderr);
        assert_eq!(
            bytes,
            std::fs::read(foreign.join("ledger.db")).unwrap(),
            "{verb:?}"
        );
    }
    let mut left: Vec<_> = std::fs::read_dir(&foreign)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("ledger.db")],
        "nothing beside it"
    );
}

#[test]
fn a_second_writer_stands_by_follows_the_first_and_takes_over_when_it_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let nats = NatsDaemon::start(&first);
    let sign = |payload: &str| run(args(nats.client(&first), &["sign", payload, "--json"]));
    assert_eq!(sign("before").code, 0);

    // Another data dir, same NATS: it does not write; it stands by,
    // following TES_EVENTS into a ledger of its own.
    let second = tmp.path().join("second");
    let mut standby = Daemon::spawn(
        with_keys(args(tes(&second), &["--nats", &nats.url])),
        &["--actors", "version"],
    );

    // The first writer signs on, and its seqs go on from its own ledger.
    let seqs: Vec<u64> = (0..5)
        .map(|i| {
            let r = sign(&format!("after-{i}"));
            assert_eq!(r.code, 0, "{}", r.stderr);
            serde_json::from_str::<serde_json::Value>(r.stdout.trim()).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    let head = Ledger::open_reader(&first.join("ledger.db"))
        .unwrap()
        .head()
        .seq;
    assert!(head >= *seqs.last().unwrap());

    // The checkpoint stream on NATS is a witness `tes audit verify` reads.
    let last = *seqs.last().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = run(args(nats.client(&first), &["audit", "verify", "--json"]));
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        if v["newestCheckpoint"].as_u64().is_some_and(|n| n >= last) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint at {last}: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // A copy of the ledger cut back before those signatures fails against
    // it; nothing but the NATS stream witnesses it here (no log dir, no
    // bundle store beside the copy).
    let cut = tmp.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    std::fs::copy(first.join("keystore.json"), cut.join("keystore.json")).unwrap();
    let conn = rusqlite::Connection::open(first.join("ledger.db")).unwrap();
    conn.execute("VACUUM INTO ?1", [cut.join("ledger.db").to_str().unwrap()])
        .unwrap();
    drop(conn);
    sql(
        &cut,
        &format!(
            "DROP TRIGGER events_append_only_delete; DELETE FROM events WHERE seq >= {};",
            seqs[0]
        ),
    );
    let r = run(args(
        tes(&cut),
        &["--nats", &nats.url, "audit", "verify", "--json"],
    ));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["seq"].as_u64(), Some(seqs[0]), "{v}");

    // The standby kept waiting, and its ledger is the first's, row for row.
    assert!(
        standby.0.try_wait().unwrap().is_none(),
        "the standby writer exited"
    );
    let first_head = Ledger::open_reader(&first.join("ledger.db"))
        .unwrap()
        .head();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Ledger::open_reader(&second.join("ledger.db"))
        .map(|l| l.head())
        .ok()
        != Some(first_head)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby's ledger never reached the writer's head {first_head:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Its container's healthcheck passes: a standby that follows does its
    // job (compose starts the gateway once `version` is healthy).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = run(args(tes(&second), &["health", "--actors", "version"]));
        if r.code == 0 {
            assert!(r.stdout.contains("a standby writer"), "{}", r.stdout);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the standby never reported ready: {}{}",
            r.stdout,
            r.stderr
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // `tes status` names the writer and the standby, and how far behind
    // the standby is.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = run(args(nats.client(&first), &["--json", "status"]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        let holder = v["writer"]["holder"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(holder.ends_with("first/ledger.db"), "{v}");
        let standbys = v["standbys"].as_array().cloned().unwrap_or_default();
        if standbys.len() == 1 && standbys[0]["lag"] == 0 {
            assert!(
                standbys[0]["holder"]
                    .as_str()
                    .unwrap()
                    .ends_with("second/ledger.db"),
                "{v}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never showed the standby caught up: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // The gateway's health endpoint says the same.
    let port = free_port();
    let mut gateway = args(tes(&tmp.path().join("gw")), &["--nats", &nats.url]);
    gateway.env("TES_HTTP_ADDR", format!("127.0.0.1:{port}"));
    let _gateway = Daemon::spawn(gateway, &["--actors", "gateway"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let out = Command::new("curl")
            .args([
                "-s",
                &format!("http://127.0.0.1:{port}/api/dev/version-ws/health"),
            ])
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
            if v["standbys"].as_array().is_some_and(|s| s.len() == 1) {
                assert!(
                    v["writer"]["holder"]
                        .as_str()
                        .unwrap()
                        .ends_with("first/ledger.db"),
                    "{v}"
                );
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the health endpoint never listed the standby: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // The writer stops (its lease given up): the standby takes over, and
    // signing goes on from the same chain.
    let _ = Command::new("kill")
        .args(["-TERM", &nats.daemon.0.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let taken_over = loop {
        let r = run(args(
            tes(&first),
            &["--nats", &nats.url, "sign", "after-the-takeover", "--json"],
        ));
        if r.code == 0 {
            break serde_json::from_str::<serde_json::Value>(r.stdout.trim()).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nobody signs 20 s after the writer stopped: {}",
            r.stderr
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(
        taken_over["seq"].as_u64().unwrap() > first_head.seq,
        "{taken_over}"
    );
    assert_eq!(
        taken_over["signature"],
        outside_hmac(V1, "after-the-takeover").as_str()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &standby.0.id().to_string()])
        .status();
    let _ = standby.0.wait();
    let r = run(args(tes(&second), &["audit", "verify"]));
    assert_eq!(
        r.code, 0,
        "the new writer's ledger verifies: {}{}",
        r.stdout, r.stderr
    );
}

#[test]
fn the_supervisor_makes_its_consumer_again_and_rotate_says_when_nothing_consumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let nats = NatsDaemon::start(&dir);
    let delete_consumer = || {
        block_on(async {
            let client = async_nats::connect(&nats.url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let stream = js.get_stream("TES_COMMANDS").await.unwrap();
            stream.delete_consumer("supervisor").await.unwrap();
        })
    };
    delete_consumer();
    // The Supervisor notices and makes it again; the rotation is applied.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = run(args(nats.client(&dir), &["rotate"]));
        if r.code == 0 {
            assert!(r.stdout.to_lowercase().contains("v2"), "{}", r.stdout);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never applied: {}",
            r.stderr
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let r = run(args(tes(&dir), &["--nats", &nats.url, "status", "--json"]));
    assert!(r.stdout.contains("\"keyVersion\":\"2\""), "{}", r.stdout);

    // With no Supervisor (and so no consumer), a rollback is not "accepted".
    let NatsDaemon {
        daemon,
        server,
        url,
    } = nats;
    drop(daemon);
    block_on(async {
        let client = async_nats::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("TES_COMMANDS").await.unwrap();
        stream.delete_consumer("supervisor").await.unwrap();
    });
    let r = run(args(tes(&dir), &["--nats", &url, "rollback"]));
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.contains("no Supervisor consumes TES_COMMANDS"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("accepted"), "{}", r.stderr);
    drop(server);
}

#[test]
fn a_replica_follows_only_the_ledger_the_writer_lease_names() {
    let tmp = tempfile::tempdir().unwrap();
    let server = tes_bus::test_server::TestServer::start();
    let url = server.url();
    block_on(server.ready(None));
    let on = |dir: &Path| args(with_keys(tes(dir)), &["--nats", &url]);
    let status = |dir: &Path| run(args(on(dir), &["status", "--json"]));

    // Writer A: rotates to v2 and signs, then stops (its lease lapses at once).
    let a = tmp.path().join("a");
    let writer_a = Daemon::spawn(on(&a), &["--actors", "version,supervisor"]);
    wait_until_ok(|| args(on(&a), &["status"]));
    assert_eq!(run(args(on(&a), &["rotate"])).code, 0);
    for i in 0..5 {
        assert_eq!(run(args(on(&a), &["sign", &format!("a{i}")])).code, 0);
    }
    drop(writer_a);

    // Writer B: another ledger, v1 active. Its events follow A's in TES_EVENTS.
    let b = tmp.path().join("b");
    let _writer_b = Daemon::spawn(on(&b), &["--actors", "version,supervisor"]);
    wait_until_ok(|| args(on(&b), &["status"]));
    assert!(status(&b).stdout.contains("\"keyVersion\":\"1\""));
    let _replica = Daemon::spawn(
        on(&tmp.path().join("r")),
        &["--actors", "version", "--role", "signer"],
    );

    // Every signature, by the writer or the replica, is under B's v1.
    let mut by_replica = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while by_replica < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never signed"
        );
        let r = run(args(on(&b), &["sign", "x", "--json"]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        assert_eq!(v["keyVersion"], "v1", "{v}");
        if v["signer"]
            .as_str()
            .is_some_and(|s| s.starts_with("signer-"))
        {
            by_replica += 1;
        }
    }
}
