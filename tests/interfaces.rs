//! Interfaces that fit their ecosystems, on the real binary: JSON on the
//! bus for a client that is not ours (nats-py), a CLI that behaves in a
//! pipeline, and input errors that are input errors.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::*;

#[test]
fn a_python_client_reads_every_event_as_json_and_rotates_through_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = NatsDaemon::start(dir.path());
    let summary = python_example("tes_client.py", &[&d.url]);
    assert_eq!(summary["rotated"], "v2", "{summary}");
    assert_eq!(summary["rolledBack"], "v1", "{summary}");
    assert_eq!(summary["refused"], "nothing_to_roll_back", "{summary}");
    assert_eq!(summary["signature"], outside_hmac(V2, "hello from python"));
    assert_eq!(summary["notJson"], serde_json::json!([]), "{summary}");
    let kinds: Vec<&str> = summary["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for k in [
        "key_rotate",
        "key_rollback",
        "signature_generated",
        "rejected",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
}

/// `tes ARGS | true` in bash with pipefail (the reader is gone before tes
/// writes, as `head -1` is after its line): the exit code of the pipeline
/// and what tes wrote on stderr.
fn into_head(dir: &Path, a: &str) -> (i32, String) {
    let out = Command::new("bash")
        .args(["-o", "pipefail", "-c"])
        .arg(format!(
            "\"$TES\" --data-dir \"$DIR\" {a} 2>\"$DIR/err\" | true"
        ))
        .env("TES", env!("CARGO_BIN_EXE_tes"))
        .env("DIR", dir)
        .env("VERSION_SIGNING_KEY", V1)
        .env("VERSION_SIGNING_KEY_V2", V2)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = std::fs::read_to_string(dir.join("err")).unwrap_or_default();
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn a_closed_pipe_is_a_quiet_success() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run(args(with_keys(tes(dir.path())), &["demo"])).code, 0);
    for verb in [
        "replay",
        "status",
        "demo",
        "replay --json",
        "bundles ls --all",
    ] {
        let (code, err) = into_head(dir.path(), verb);
        assert_eq!(code, 0, "tes {verb} | true: {err}");
        assert!(!err.contains("panicked"), "tes {verb}: {err}");
    }
}

#[test]
fn malformed_signatures_are_input_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = || with_keys(tes(dir.path()));
    assert_eq!(run(args(t(), &["sign", "x"])).code, 0);
    for bad in ["nothex", "abcd", &"zz".repeat(32)] {
        let r = run(args(t(), &["verify", "hello", bad, "--key-version", "v1"]));
        assert_eq!(r.code, 2, "{bad}: {}", r.stderr);
        assert!(r.stderr.contains("64 hex"), "{}", r.stderr);
    }
    // Well-formed but wrong: the check fails (1).
    let r = run(args(
        t(),
        &["verify", "hello", &"ab".repeat(32), "--key-version", "v1"],
    ));
    assert_eq!(r.code, 1, "{}", r.stderr);
}

#[test]
fn durations_and_dates_are_parsed_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(args(
        with_keys(tes(dir.path())),
        &["rotate", "--grace", "banana"],
    ));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("a duration like"), "{}", r.stderr);
    // A date alone is midnight UTC.
    let r = run(args(tes(dir.path()), &["replay", "--until", "2020-01-01"]));
    assert!(!r.stderr.contains("not an RFC 3339"), "{}", r.stderr);
}

#[test]
fn json_logs_are_flat_lines_fatal_errors_included() {
    let dir = tempfile::tempdir().unwrap();
    for c in [args(tes(dir.path()), &["--log-json", "status"]), {
        let mut c = args(tes(dir.path()), &["replay"]);
        c.env("TES_LOG_FORMAT", "json");
        c
    }] {
        let r = run(c);
        assert_eq!(r.code, 2);
        let line: Value = serde_json::from_str(r.stderr.trim())
            .unwrap_or_else(|e| panic!("not one JSON line ({e}): {}", r.stderr));
        assert_eq!(line["level"], "ERROR");
        assert_eq!(line["exit"], 2);
        assert!(
            line["message"].as_str().unwrap().contains("no ledger"),
            "{line}"
        );
        assert!(line.get("fields").is_none(), "flat, not nested: {line}");
    }
}

#[test]
fn each_verb_shows_its_own_options() {
    let dir = tempfile::tempdir().unwrap();
    let help = run(args(tes(dir.path()), &["status", "--help"]));
    assert_eq!(help.code, 0);
    assert!(help.stdout.lines().count() <= 20, "{}", help.stdout);
    for daemon_only in [
        "--grace",
        "--s3-endpoint",
        "--archive-batch",
        "--http-addr",
        "--wire",
    ] {
        assert!(
            !help.stdout.contains(daemon_only),
            "{daemon_only} in status --help"
        );
    }
    // Every daemon option can come from the environment (compose needs it).
    let help = run(args(tes(dir.path()), &["daemon", "--help"]));
    // Each option's block: its line and the description lines under it.
    let mut blocks: Vec<String> = Vec::new();
    for line in help.stdout.lines() {
        let t = line.trim_start();
        if t.starts_with("--") || t.starts_with("-h,") {
            blocks.push(format!("{t} "));
        } else if let Some(b) = blocks.last_mut() {
            b.push_str(t);
        }
    }
    assert!(blocks.len() > 25, "{}", help.stdout);
    for b in &blocks {
        let name = b.split_whitespace().next().unwrap();
        if !["-h,", "--json"].contains(&name) {
            assert!(b.contains("[env: TES_"), "{name} has no TES_ variable: {b}");
        }
    }
}

#[test]
fn the_cli_works_beside_its_own_daemon() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let t = || with_keys(tes(dir.path()));
    let daemon = Daemon::spawn(t(), &[]);
    let socket = dir.path().join("control.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "no control socket");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "owner-only");
    // `tes health` (what a container healthcheck runs) says it is ready.
    while run(args(tes(dir.path()), &["health"])).code != 0 {
        assert!(std::time::Instant::now() < deadline, "never healthy");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let h = run(args(tes(dir.path()), &["health", "--json"]));
    let h: Value = serde_json::from_str(h.stdout.trim()).unwrap();
    assert_eq!(h["ready"], true);
    assert!(h["checks"].to_string().contains("head seq"), "{h}");
    // Another actor set is another daemon: not running here.
    assert_eq!(
        run(args(tes(dir.path()), &["health", "--actors", "supervisor"])).code,
        1
    );
    let r = run(args(t(), &["rotate"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s: Value =
        serde_json::from_str(run(args(t(), &["sign", "x", "--json"])).stdout.trim()).unwrap();
    assert_eq!(s["signature"], outside_hmac(V2, "x"));
    assert_eq!(run(args(t(), &["bump", "patch"])).code, 0);
    let status = run(args(t(), &["status", "--json"]));
    assert_eq!(status.code, 0, "{}", status.stderr);
    let status: Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(status["keyVersion"], "2");
    drop(daemon);
    assert!(!socket.exists(), "the socket goes with the daemon");
    assert_eq!(
        run(args(tes(dir.path()), &["health"])).code,
        1,
        "gone: not healthy"
    );
    // Without a daemon the verbs run the actors themselves, as before.
    assert_eq!(run(args(t(), &["sign", "y"])).code, 0);
}

#[test]
fn status_reads_from_the_newest_snapshot_and_agrees_with_a_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let t = || with_keys(tes(dir.path()));
    for i in 0..4 {
        let r = run(args(
            t(),
            &["sign", "--snapshot-every", "3", &format!("p{i}")],
        ));
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let status = run(args(tes(dir.path()), &["status", "--json"]));
    assert_eq!(status.code, 0, "{}", status.stderr);
    let status: Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert!(status["fromSnapshot"].as_u64().unwrap() > 0, "{status}");
    let replayed = run(args(tes(dir.path()), &["replay", "--json"]));
    let replayed: Value = serde_json::from_str(replayed.stdout.trim()).unwrap();
    for field in [
        "keyVersion",
        "headSeq",
        "headHash",
        "lastSigVersion",
        "entities",
    ] {
        assert_eq!(status[field], replayed[field], "{field}");
    }
    let words = run(args(tes(dir.path()), &["status"]));
    assert!(
        words.stdout.contains("from the snapshot at seq"),
        "{}",
        words.stdout
    );
}

#[test]
fn health_follows_the_bus_of_a_daemon_on_nats() {
    let mut server = tes_bus::test_server::TestServer::start();
    block_on(server.ready(None));
    let dir = tempfile::tempdir().unwrap();
    let _daemon = Daemon::spawn(
        args(tes(dir.path()), &["--nats", &server.url()]),
        &["--actors", "supervisor"],
    );
    let health = || run(args(tes(dir.path()), &["health", "--actors", "supervisor"]));
    let until = |code: i32, what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let h = health();
            if h.code == code {
                return h;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never {what}: {}{}",
                h.stdout,
                h.stderr
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    };
    until(0, "ready");
    server.kill();
    let h = until(1, "unready with NATS gone");
    assert!(h.stdout.contains("nats:"), "names the bus: {}", h.stdout);
    server.restart();
    until(0, "ready again after NATS came back");
}
