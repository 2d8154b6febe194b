//! Bundles and their archive, end to end with the real binary: on the local
//! filesystem and on a real S3-protocol server (moto), read back with
//! boto3; an archiver killed with SIGKILL half-way; bundle expiry forcing
//! the next version; a store that is down, missing or misconfigured.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn bump(c: Command) -> Value {
    let r = run(args(c, &["--json", "bump", "patch"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    json_lines(&r.stdout).remove(0)
}

/// Rows of `kind` in the ledger (read-only, beside a running daemon).
fn count_kind(dir: &Path, kind: &str) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("ledger.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row("SELECT count(*) FROM events WHERE kind = ?1", [kind], |r| {
        r.get(0)
    })
    .unwrap()
}

fn replay(dir: &Path) -> Value {
    let r = run(args(tes(dir), &["--json", "replay"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    json_lines(&r.stdout).remove(0)
}

fn key<'a>(state: &'a Value, v: &str) -> &'a Value {
    state["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["version"] == v)
        .unwrap_or_else(|| panic!("no {v} in {state}"))
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A daemon on the embedded bus (it holds the ledger; read it with replay).
fn spawn_daemon(c: Command, extra: &[&str], log: &Path) -> std::process::Child {
    let mut c = args(c, &["daemon"]);
    c.args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c.spawn().unwrap()
}

fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

#[test]
fn on_the_filesystem_bumps_leave_bundles_and_retirement_moves_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut signed = Vec::new();
    for _ in 0..3 {
        signed.push(bump(with_keys(tes(d))));
    }
    let r = run(args(with_keys(tes(d)), &["rotate", "--grace", "1s"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let after = bump(with_keys(tes(d)));
    assert_eq!(after["keyVersion"], "v2");

    // Each bundle is the signed manifest, its metadata in xattrs.
    let first = d.join("bundles/bundle/v1/tes/1.0.1.json");
    let body: Value = serde_json::from_slice(&std::fs::read(&first).unwrap()).unwrap();
    assert_eq!(body["payload"], signed[0]["payload"]);
    assert_eq!(body["signature"], signed[0]["signature"]);
    assert_eq!(
        body["signature"].as_str().unwrap(),
        outside_hmac(V1, body["payload"].as_str().unwrap())
    );

    let r = run(args(tes(d), &["--json", "bundles", "ls"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = json_lines(&r.stdout);
    let row = |v: &str, place: &str| {
        rows.iter()
            .find(|x| x["keyVersion"] == v && x["place"] == place)
            .map(|x| x["objects"].as_u64().unwrap())
    };
    assert_eq!(row("v1", "bundle"), Some(3));
    assert_eq!(row("v2", "bundle"), Some(1));

    std::thread::sleep(Duration::from_millis(1200));
    let r = run(args(with_keys(tes(d)), &["--json", "archive", "--dry-run"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let preview = json_lines(&r.stdout);
    assert_eq!(preview[0]["version"], "v1");
    assert_eq!(preview[0]["objects"], 3);
    assert!(first.exists(), "a dry run moves nothing");

    let r = run(args(with_keys(tes(d)), &["archive"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("v1: moved 3 bundle(s)"), "{}", r.stdout);
    assert!(!first.exists());
    assert!(d.join("bundles/archive/v1/tes/1.0.1.json").exists());
    assert!(d.join("bundles/bundle/v2/tes/1.0.4.json").exists());

    let state = replay(d);
    assert_eq!(key(&state, "v1")["archivedObjects"], 3);
    assert_eq!(key(&state, "v1")["archiving"], false);
    let r = run(args(tes(d), &["status"]));
    assert!(r.stdout.contains("archived 3 bundle(s)"), "{}", r.stdout);
    // Archiving the active version is refused, as a usage error.
    let r = run(args(with_keys(tes(d)), &["archive", "--version", "2"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("still signs or verifies"), "{}", r.stderr);
    assert_no_secret_in(d);
}

#[test]
fn on_s3_retired_bundles_end_in_archive_as_standard_ia_even_after_a_kill() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let client = || s3.configure(with_keys(tes(d)));
    const N: usize = 30;
    for _ in 0..N {
        bump(client());
    }
    let r = run(args(client(), &["rotate", "--grace", "1s"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for _ in 0..2 {
        bump(client());
    }
    let v1 = s3.ls("bundle/v1/");
    assert_eq!(v1.len(), N);
    for o in &v1 {
        assert_eq!(o["metadata"]["keyversion"], "v1", "{o}");
        let body: Value = serde_json::from_str(o["body"].as_str().unwrap()).unwrap();
        assert_eq!(o["metadata"]["signature"], body["signature"]);
        assert!(o["metadata"]["expiry"].as_str().unwrap().ends_with('Z'));
    }
    let v2_before = s3.ls("bundle/v2/");
    assert_eq!(v2_before.len(), 2);
    std::thread::sleep(Duration::from_millis(1200));

    // The daemon archives v1 on its own once it retires; small, slow
    // batches so the kill lands in the middle of the pass.
    let slow = ["--archive-batch", "2", "--archive-concurrency", "1"];
    let log = d.join("daemon.log");
    let daemon = spawn_daemon(client(), &slow, &log);
    wait_for("a first archived batch", 30, || {
        count_kind(d, "bundle_archived") >= 1
    });
    let mut daemon = daemon;
    daemon.kill().unwrap(); // SIGKILL
    daemon.wait().unwrap();
    let left = s3.ls("bundle/v1/").len();
    assert!(left > 0 && left < N, "the kill came mid-pass ({left} left)");

    let daemon = spawn_daemon(client(), &slow, &log);
    wait_for("bundle/v1/ to empty", 60, || {
        s3.ls("bundle/v1/").is_empty() && {
            let state = replay(d);
            key(&state, "v1")["archiving"] == false
        }
    });
    stop(daemon);

    let archived = s3.ls("archive/v1/");
    assert_eq!(archived.len(), N, "every v1 bundle is in the archive, once");
    for (o, orig) in archived.iter().zip(&v1) {
        assert_eq!(o["storageClass"], "STANDARD_IA", "{}", o["key"]);
        assert_eq!(
            o["key"].as_str().unwrap()[8..],
            orig["key"].as_str().unwrap()[7..]
        );
        assert_eq!(o["body"], orig["body"], "archived bytes are the bundle's");
        assert_eq!(o["metadata"], orig["metadata"]);
    }
    let v2_after = s3.ls("bundle/v2/");
    assert_eq!(v2_after, v2_before, "v2's bundles are untouched");
    assert!(s3.ls("archive/v2/").is_empty());
    // The ledger counted every bundle exactly once, none missing.
    let state = replay(d);
    assert_eq!(key(&state, "v1")["archivedObjects"], N as u64);
    let bytes: u64 = v1.iter().map(|o| o["size"].as_u64().unwrap()).sum();
    assert_eq!(key(&state, "v1")["archivedBytes"], bytes);
    let r = run(args(tes(d), &["audit", "verify"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains(S3_SECRET) && !log.contains(V1) && !log.contains(V2));
}

#[test]
fn an_expired_bundle_forces_the_next_version_or_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ttl = ["--bundle-ttl", "v1=1s"];
    let r = run(args(
        with_keys(tes(d)),
        &["--json", "bump", "patch", "--bundle-ttl", "v1=1s"],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let daemon = spawn_daemon(with_keys(tes(d)), &ttl, &d.join("daemon.log"));
    wait_for("v2 to become active", 20, || replay(d)["keyVersion"] == "2");
    stop(daemon);
    let state = replay(d);
    assert_eq!(state["rotationReason"], "bundle_expired");
    assert!(
        state["rotatedBy"]
            .as_str()
            .unwrap()
            .contains("bundle/v1/tes/1.0.1.json"),
        "{state}"
    );
    let r = run(args(with_keys(tes(d)), &["status"]));
    assert!(r.stdout.contains("keyVersion: 2"), "{}", r.stdout);
    assert!(r.stdout.contains("bundle_expired"), "{}", r.stdout);
    let bumped = bump(with_keys(tes(d)));
    assert_eq!(bumped["keyVersion"], "v2", "signing moved on");

    // With no next version: a rotation failure, once, and an alert.
    let lonely = tempfile::tempdir().unwrap();
    let l = lonely.path();
    let only_v1 = || {
        let mut c = tes(l);
        c.env("VERSION_SIGNING_KEY", V1);
        c
    };
    let r = run(args(only_v1(), &["bump", "patch", "--bundle-ttl", "v1=1s"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let daemon = spawn_daemon(only_v1(), &ttl, &l.join("daemon.log"));
    wait_for("an alert", 20, || count_kind(l, "alert") >= 1);
    std::thread::sleep(Duration::from_millis(1500));
    stop(daemon);
    assert_eq!(count_kind(l, "rotation_failed"), 1, "reported once");
    assert_eq!(replay(l)["keyVersion"], "1");
    let r = run(args(tes(l), &["alerts", "--replay"]));
    assert!(r.stdout.contains("rotation"), "{}", r.stdout);
}

#[test]
fn a_bad_or_absent_store_gets_a_clear_error_and_signing_goes_on() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Nothing listens there: bundles wait, signing does not.
    let down = || {
        let mut c = s3.configure(with_keys(tes(d)));
        c.env(
            "TES_S3_ENDPOINT",
            format!("http://127.0.0.1:{}", free_port()),
        );
        c
    };
    let r = run(args(down(), &["bundles", "ls"]));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("unreachable"), "{}", r.stderr);
    let signed = bump(down());
    assert_eq!(signed["keyVersion"], "v1");
    // When the store answers again, the next start writes what was missed.
    bump(s3.configure(with_keys(tes(d))));
    let keys: Vec<String> = s3
        .ls("bundle/v1/")
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        ["bundle/v1/tes/1.0.1.json", "bundle/v1/tes/1.0.2.json"]
    );

    let missing_bucket = || {
        let mut c = s3.configure(tes(d));
        c.env("TES_BUNDLE_STORE", "s3://no-such-bucket");
        c
    };
    let r = run(args(missing_bucket(), &["bundles", "ls"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("bucket \"no-such-bucket\" does not exist"),
        "{}",
        r.stderr
    );
    let r = run(args(
        tes(d),
        &["bundles", "ls", "--bundle-store", "s3://tes-bundles"],
    ));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("TES_S3_ACCESS_KEY_ID"), "{}", r.stderr);
    let r = run(args(
        tes(d),
        &["bundles", "ls", "--bundle-store", "ftp://x"],
    ));
    assert_eq!(r.code, 2);
    assert!(r
        .stderr
        .contains("expected fs, fs:PATH, s3://BUCKET or none"));
    let r = run(args(
        with_keys(tes(d)),
        &["bump", "patch", "--bundle-ttl", "v1=soon"],
    ));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--bundle-ttl"), "{}", r.stderr);
    assert_no_secret_in(d);
}

#[test]
fn wrong_credentials_are_refused_by_name_and_signing_goes_on() {
    // moto in IAM mode checks every signature. (It also refuses the
    // signature of OpenDAL's ListObjectsV2 there, so listings are read
    // with boto3 in this test; writes are checked for real.)
    let s3 = S3Server::start_authenticated();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let unknown_key = || {
        let mut c = s3.configure(with_keys(tes(d)));
        c.env("TES_S3_ACCESS_KEY_ID", "AKIDNOBODYHAS");
        c
    };
    let r = run(args(unknown_key(), &["bundles", "ls"]));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("refused our credentials"), "{}", r.stderr);
    assert!(r.stderr.contains("InvalidAccessKeyId"), "{}", r.stderr);
    assert!(!r.stderr.contains(&s3.secret));
    // A wrong secret: signing goes on, the bundle waits.
    let mut wrong = s3.configure(with_keys(tes(d)));
    wrong.env("TES_S3_SECRET_ACCESS_KEY", S3_SECRET);
    assert_eq!(bump(wrong)["keyVersion"], "v1");
    assert!(s3.ls("bundle/").is_empty());
    // The right secret, from a file as compose passes it: the next start
    // writes the bundle that waited, then its own.
    let file = d.join("s3-secret");
    std::fs::write(&file, format!("{}\n", s3.secret)).unwrap();
    let mut right = s3.configure(with_keys(tes(d)));
    right
        .env_remove("TES_S3_SECRET_ACCESS_KEY")
        .env("TES_S3_SECRET_ACCESS_KEY_FILE", &file);
    bump(right);
    let keys: Vec<Value> = s3
        .ls("bundle/v1/")
        .into_iter()
        .map(|o| o["key"].clone())
        .collect();
    assert_eq!(
        keys,
        ["bundle/v1/tes/1.0.1.json", "bundle/v1/tes/1.0.2.json"]
    );
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn tes_archive_reaches_the_daemon_over_nats() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nats = NatsDaemon::start(d);
    let r = run(args(nats.client(d), &["--json", "bump", "patch"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(args(nats.client(d), &["archive", "--dry-run"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Nothing to archive"), "{}", r.stdout);
    let r = run(args(nats.client(d), &["archive", "--version", "1"]));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("v1 still signs or verifies"),
        "{}",
        r.stderr
    );
    let r = run(args(nats.client(d), &["archive", "--version", "7"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("unknown to this ledger"), "{}", r.stderr);
    // The daemon's worker wrote the bump's bundle.
    wait_for("the bundle", 10, || {
        d.join("bundles/bundle/v1/tes/1.0.1.json").exists()
    });
}

#[test]
fn a_retirement_seen_while_the_store_was_down_is_archived_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = || {
        let mut c = with_keys(tes(d));
        c.env("TES_BUNDLE_STORE", "s3://tes-bundles")
            .env("TES_S3_ENDPOINT", &endpoint)
            .env("TES_S3_ACCESS_KEY_ID", S3_KEY_ID)
            .env("TES_S3_SECRET_ACCESS_KEY", S3_SECRET);
        c
    };
    // Nothing listens yet: signing goes on, the bundles wait.
    for _ in 0..3 {
        bump(client());
    }
    let r = run(args(client(), &["rotate", "--grace", "1s"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::thread::sleep(Duration::from_millis(1200));
    let daemon = spawn_daemon(client(), &[], &d.join("daemon.log"));
    // v1 retires while every write still fails.
    wait_for("v1 to retire", 20, || count_kind(d, "key_retired") >= 1);
    std::thread::sleep(Duration::from_millis(1500));
    let s3 = S3Server::start_on(port);
    // The writer's next try writes the bundles, then the pass moves them.
    wait_for("v1's bundles in the archive", 60, || {
        s3.ls("archive/v1/").len() == 3 && s3.ls("bundle/v1/").is_empty()
    });
    stop(daemon);
    assert_eq!(key(&replay(d), "v1")["archivedObjects"], 3);
}
