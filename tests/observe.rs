//! End to end: Monitoring, Telemetry and Alert as a user meets them — a
//! scenario driven through the bus whose Prometheus counters, `tes metrics`
//! and the seed's own `rg` lines over `logs/worker-events.log` all count
//! what the ledger holds; an alert recorded in the ledger; `tes watch` in a
//! real terminal (tmux) in colour and plain when piped; a full disk under
//! the log; a rules file with a mistake.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// `GET /metrics` on Telemetry's port ("" while nothing listens).
fn scrape(port: u16) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of the sample `name` (with its labels, as printed) in `text`.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Counts of the ledger, by SQL, as an outside tool reads it.
fn ledger_count(dir: &Path, kind: &str, key_version: Option<u32>) -> u64 {
    let c = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
    match key_version {
        Some(v) => c.query_row(
            "SELECT count(*) FROM events WHERE kind = ?1 AND key_version = ?2",
            rusqlite::params![kind, v],
            |r| r.get(0),
        ),
        None => c.query_row("SELECT count(*) FROM events WHERE kind = ?1", [kind], |r| {
            r.get(0)
        }),
    }
    .unwrap()
}

fn head(dir: &Path) -> u64 {
    let c = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
    c.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))
        .unwrap()
}

/// The seed's command, run by a shell in the data directory, as written.
fn rg_count(dir: &Path, pattern: &str) -> u64 {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("rg '{pattern}' logs/worker-events.log | wc -l"))
        .current_dir(dir)
        .output()
        .expect("sh runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        Command::new("rg").arg("--version").output().is_ok(),
        "ripgrep (rg) is needed: tests/run installs it"
    );
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("rg printed {text:?}"))
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sign(c: Command) {
    let r = run(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn a_scenario_over_the_bus_counts_the_same_everywhere_and_raises_the_fallback_alert() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let server = tes_bus::test_server::TestServer::start();
    let url = server.url();
    block_on(server.ready(None));
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let daemon_args = [
        "--nats",
        url.as_str(),
        "--metrics-addr",
        metrics_addr.as_str(),
    ];
    let client = || args(tes(data), &["--nats", &url]);

    let daemon = Daemon::spawn(with_keys(tes(data)), &daemon_args);
    wait_until_ok(|| args(client(), &["status"]));
    // Under v1, then a rotation, then a mix: default (v2, and v1 too while
    // dual signing), pinned v1, and verifications.
    for i in 0..4 {
        sign(args(client(), &["sign", &format!("before-{i}")]));
    }
    assert_eq!(run(args(client(), &["rotate"])).code, 0);
    for i in 0..3 {
        sign(args(client(), &["sign", &format!("after-{i}")]));
    }
    for i in 0..2 {
        sign(args(
            client(),
            &["sign", &format!("pinned-{i}"), "--key-version", "v1"],
        ));
    }
    let good = outside_hmac(V2, "checked");
    assert_eq!(
        run(args(
            client(),
            &["verify", "checked", &good, "--key-version", "v2"]
        ))
        .code,
        0
    );
    assert_eq!(
        run(args(
            client(),
            &["verify", "checked", &"0".repeat(64), "--key-version", "v1"]
        ))
        .code,
        1
    );
    drop(daemon);

    // The signer comes back without v2's material: every request falls back.
    let mut only_v1 = tes(data);
    only_v1.env("VERSION_SIGNING_KEY", V1);
    let _daemon = Daemon::spawn(only_v1, &daemon_args);
    wait_until_ok(|| args(client(), &["status"]));
    for i in 0..12 {
        sign(args(client(), &["sign", &format!("fallback-{i}")]));
    }

    // The fallback rate (12 of 21 requests) is over 5%: alert, recorded.
    wait_for("the fallback alert in the ledger", || {
        ledger_count(data, "alert", None) == 1
    });
    let alerts = run(args(client(), &["alerts", "--json"]));
    let alerts: Value = serde_json::from_str(alerts.stdout.trim()).unwrap();
    assert_eq!(
        alerts["open"][0]["alert"]["rule"], "fallback_rate_above",
        "{alerts}"
    );
    let watched = run(args(tes(data), &["alerts", "--replay"]));
    assert!(
        watched.stdout.contains("ALERT fallback_rate_above"),
        "{}",
        watched.stdout
    );

    let seq = head(data);
    let last_logged = || {
        std::fs::read_to_string(data.join("logs/worker-events.log"))
            .unwrap_or_default()
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<Value>(l).ok()?["seq"].as_u64())
    };
    wait_for(
        "Monitoring and the event log to reach the ledger head",
        || sample(&scrape(port), "tes_ledger_seq") == Some(seq) && last_logged() == Some(seq),
    );
    let text = scrape(port);
    assert!(text.contains("# TYPE tes_signatures counter"), "{text}");
    let (v1, v2) = (
        ledger_count(data, "signature_generated", Some(1)),
        ledger_count(data, "signature_generated", Some(2)),
    );
    let fallbacks = ledger_count(data, "key_fallback", None);
    assert_eq!((v2, fallbacks), (3, 12), "the scenario as driven");
    assert_eq!(
        sample(&text, r#"tes_signatures_total{key_version="v1"}"#),
        Some(v1)
    );
    assert_eq!(
        sample(&text, r#"tes_signatures_total{key_version="v2"}"#),
        Some(v2)
    );
    assert_eq!(
        sample(&text, r#"tes_fallbacks_total{from="v2",to="v1"}"#),
        Some(fallbacks)
    );
    assert_eq!(
        sample(
            &text,
            r#"tes_verifications_total{key_version="v2",result="valid"}"#
        ),
        Some(1)
    );
    assert_eq!(
        sample(
            &text,
            r#"tes_verifications_total{key_version="v1",result="invalid"}"#
        ),
        Some(1)
    );
    assert_eq!(sample(&text, "tes_rotations_total"), Some(1));
    assert_eq!(
        sample(&text, "tes_sign_requests_total"),
        Some(4 + 3 + 2 + 12)
    );

    // The seed's own commands over the event log count the same.
    assert_eq!(rg_count(data, r#""keyVersion":\s*"v1""#), v1);
    assert_eq!(rg_count(data, r#""keyVersion":\s*"v2""#), v2);
    assert_eq!(rg_count(data, r#""\[META:KEY-VERSION\]":\s*"2""#), v2);
    assert_eq!(rg_count(data, "key:fallback_v2_to_v1"), fallbacks);
    // One line per ledger event, each once, across the restart.
    let seqs: Vec<u64> = std::fs::read_to_string(data.join("logs/worker-events.log"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=seq).collect::<Vec<_>>());

    // `tes metrics` from the running Monitoring and from the ledger alone agree.
    let live: Value =
        serde_json::from_str(run(args(client(), &["metrics", "--json"])).stdout.trim()).unwrap();
    let folded: Value =
        serde_json::from_str(run(args(tes(data), &["metrics", "--json"])).stdout.trim()).unwrap();
    for field in [
        "versions",
        "fallbacks",
        "signRequests",
        "rotations",
        "alerts",
        "seq",
    ] {
        assert_eq!(live[field], folded[field], "{field}");
    }
    assert_eq!(live["seq"], seq);
    assert!(
        live["migration"]["firstSignatureAt"].is_string(),
        "rotation duration known: {live}"
    );

    assert_no_secret_in(data);
}

#[test]
fn watch_in_a_terminal_is_coloured_and_piped_is_plain() {
    let dir = tempfile::tempdir().unwrap();
    let d = NatsDaemon::start(dir.path());
    let session = format!("tes-watch-{}", std::process::id());
    let watch = format!(
        "env -i PATH=/usr/bin:/bin TERM=$TERM {} --nats {} watch",
        env!("CARGO_BIN_EXE_tes"),
        d.url
    );
    let tmux = |a: &[&str]| {
        Command::new("tmux")
            .args(a)
            .output()
            .expect("tmux runs (tests/run installs it)")
    };
    assert!(tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "220",
        "-y",
        "40",
        &watch
    ])
    .status
    .success());
    let pane = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-e", "-t", &session]).stdout)
            .into_owned()
    };
    wait_for("tes watch to subscribe", || pane().contains("watching"));
    sign(args(d.client(dir.path()), &["sign", "in-a-terminal"]));
    let mut screen = String::new();
    wait_for("the signature on the watching terminal", || {
        screen = pane();
        screen.contains("signature:generated")
    });
    tmux(&["kill-session", "-t", &session]);
    // Version Management's purple #9D4EDD as 24-bit colour, on the thread and the kind.
    assert!(
        screen.contains("38;2;157;78;221"),
        "no 24-bit purple in {screen:?}"
    );
    assert!(screen.contains("0x6001"), "{screen}");

    // Piped, filtered: plain lines, only the kind asked for.
    let mut piped = args(
        d.client(dir.path()),
        &["watch", "--kind", "signature_generated"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    watching(&mut piped);
    sign(args(d.client(dir.path()), &["sign", "piped"]));
    assert_eq!(run(args(d.client(dir.path()), &["rotate"])).code, 0);
    // v2, and v1 too while the previous version is in its grace window.
    sign(args(d.client(dir.path()), &["sign", "piped-dual"]));
    sign(args(
        d.client(dir.path()),
        &["sign", "piped-pinned", "--key-version", "v1"],
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = piped.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = piped.kill();
    let _ = piped.wait();
    assert_eq!(seen.len(), 4, "four signatures watched: {seen:#?}");
    for line in &seen {
        assert!(!line.contains('\x1b'), "escape codes when piped: {line:?}");
        assert!(line.contains("signature:generated"), "{line}");
    }
    assert!(
        seen.iter().any(|l| l.contains(" v2 ")) && seen.iter().any(|l| l.contains("(pinned)")),
        "{seen:#?}"
    );
}

#[test]
fn a_full_disk_under_the_event_log_does_not_stop_signing() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    // Every write fails with ENOSPC, as on a full disk.
    std::os::unix::fs::symlink("/dev/full", logs.join("worker-events.log")).unwrap();
    let server = tes_bus::test_server::TestServer::start();
    let url = server.url();
    block_on(server.ready(None));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _daemon = Daemon::spawn(
        with_keys(tes(dir.path())),
        &["--nats", &url, "--metrics-addr", &addr],
    );
    let client = || args(tes(dir.path()), &["--nats", &url]);
    wait_until_ok(|| args(client(), &["status"]));
    for i in 0..5 {
        sign(args(client(), &["sign", &format!("disk-full-{i}")]));
    }
    assert_eq!(ledger_count(dir.path(), "signature_generated", None), 5);
    let seq = head(dir.path());
    wait_for("the dropped lines to be counted, and the snapshot", || {
        let text = scrape(port);
        sample(&text, "tes_event_log_dropped_lines_total") == Some(seq)
            && sample(&text, "tes_ledger_seq") == Some(seq)
    });
    assert_eq!(
        sample(&scrape(port), r#"tes_signatures_total{key_version="v1"}"#),
        Some(5)
    );
    assert_eq!(run(args(tes(dir.path()), &["audit", "verify"])).code, 0);
}

#[test]
fn a_rules_file_with_a_mistake_stops_the_daemon_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    for (text, line, says) in [
        (
            "[fallback_rate_above]\nabove = \"5%\"\n\n[v2_usage_low]\n",
            4,
            "v2_usage_low",
        ),
        ("[fallback_rate_above]\nabove = \"-5%\"\n", 2, "0%..100%"),
        ("[migration_stalled]\nwindow = \"a while\"\n", 2, "a while"),
    ] {
        let rules = dir.path().join("rules.toml");
        std::fs::write(&rules, text).unwrap();
        let r = run(args(
            with_keys(tes(dir.path())),
            &["daemon", "--alert-rules", rules.to_str().unwrap()],
        ));
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stderr.contains(&format!("line {line}")) && r.stderr.contains(says),
            "{}",
            r.stderr
        );
        assert!(!dir.path().join("ledger.db").exists(), "nothing started");
    }
}

#[test]
fn watch_without_nats_follows_the_ledger_file() {
    let dir = tempfile::tempdir().unwrap();
    // A ledger to follow.
    assert_eq!(run(args(with_keys(tes(dir.path())), &["init"])).code, 0);
    let mut watch = args(tes(dir.path()), &["watch", "--json", "--thread", "0x6001"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    watching(&mut watch);
    // A one-shot verb writes the ledger while `tes watch` reads it.
    sign(args(with_keys(tes(dir.path())), &["sign", "followed"]));
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a watched event");
    let _ = watch.kill();
    let _ = watch.wait();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["thread"], "0x6001");
    assert!(event["body"]["signature_generated"].is_object(), "{event}");
}

#[test]
fn metrics_and_alerts_without_a_ledger_are_input_errors() {
    let dir = tempfile::tempdir().unwrap();
    for verb in ["metrics", "alerts", "watch"] {
        let r = run(args(tes(dir.path()), &[verb]));
        assert_eq!(r.code, 2, "{verb}: {}", r.stderr);
        assert!(r.stderr.contains("no ledger at"), "{verb}: {}", r.stderr);
    }
}

/// Waits until `tes watch` says it is watching (it says so on stderr once
/// its subscription or its follow of the ledger has begun).
fn watching(child: &mut std::process::Child) {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("watching") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("tes watch never started watching");
}

#[test]
fn a_restored_ledger_gets_an_event_log_that_matches_it() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let log = data.join("logs/worker-events.log");
    let sha = |p: &str| hex::encode(sha2::Sha256::digest(p.as_bytes()));
    let logged = |p: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&sha(p))
    };
    assert_eq!(run(args(with_keys(tes(data)), &["init"])).code, 0);
    sign(args(with_keys(tes(data)), &["sign", "before-the-backup"]));
    let backup = data.join("backup.db");
    rusqlite::Connection::open(data.join("ledger.db"))
        .unwrap()
        .execute("VACUUM INTO ?1", [backup.to_str().unwrap()])
        .unwrap();

    // The daemon logs two signatures the restore will take away.
    let daemon = Daemon::spawn(with_keys(tes(data)), &[]);
    wait_until_ok(|| args(tes(data), &["health"]));
    sign(args(tes(data), &["sign", "lost-1"]));
    sign(args(tes(data), &["sign", "lost-2"]));
    wait_for("the event log", || logged("lost-2"));
    drop(daemon);

    // Restore (RUNBOOK §9, without NATS), start again, sign.
    std::fs::copy(&backup, data.join("ledger.db")).unwrap();
    for f in ["ledger.db-wal", "ledger.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    let _daemon = Daemon::spawn(with_keys(tes(data)), &[]);
    wait_until_ok(|| args(tes(data), &["health"]));
    sign(args(tes(data), &["sign", "after-the-restore"]));
    wait_for("the event log after the restore", || {
        logged("after-the-restore")
    });

    // The old lines are kept aside; the log now is the ledger, line for line.
    let aside: Vec<_> = std::fs::read_dir(data.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("discarded-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let old = std::fs::read_to_string(aside[0].join("worker-events.log")).unwrap();
    assert!(old.contains(&sha("lost-2")));
    assert!(!logged("lost-1") && !logged("lost-2"));
    let lines = json_lines(&std::fs::read_to_string(&log).unwrap());
    let ledger = rusqlite::Connection::open(data.join("ledger.db")).unwrap();
    let rows: Vec<(u64, String)> = ledger
        .prepare("SELECT seq, id FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let logged_rows: Vec<(u64, String)> = lines
        .iter()
        .map(|l| {
            (
                l["seq"].as_u64().unwrap(),
                l["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(logged_rows, rows, "one line per ledger event, the same ids");
}
