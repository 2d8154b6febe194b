//! Batch signing and verification (`sign_batch`, `verify_batch`): many
//! payloads in one request, each with its own audit record, from a client
//! that is not ours (nats-py) and from the CLI in a pipeline.

mod support;

use std::process::Command;

use support::*;

#[test]
fn a_thousand_payloads_from_python_each_signed_and_recorded_and_one_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = NatsDaemon::start(dir.path());
    let s = python_example("batch_sign.py", &[&d.url, V1]);
    assert_eq!(s["results"], 1000, "{s}");
    assert_eq!(s["inOrder"], 999, "{s}");
    assert_eq!(s["hmacMatches"], 999, "{s}");
    assert_eq!(
        s["failed"],
        serde_json::json!([{"index": 500, "code": "unknown_version"}]),
        "{s}"
    );
    // Each signature its own seq, the retry got the same ones back, and
    // the one bad signature among 999 is the one that does not verify.
    assert_eq!(s["seqs"], 999, "{s}");
    assert_eq!(s["retrySame"], true, "{s}");
    assert_eq!(
        (s["verified"].as_u64(), s["invalid"].as_u64()),
        (Some(998), Some(1))
    );

    // In the ledger: one signature_generated per signed item, each caused
    // by its own item id, all correlated with the batch; none twice.
    let ledger = rusqlite::Connection::open_with_flags(
        dir.path().join("ledger.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let (events, causes): (u64, u64) = ledger
        .query_row(
            "SELECT count(*), count(DISTINCT causation_id) FROM events
             WHERE kind = 'signature_generated' AND correlation_id = ?1",
            [s["batchId"].as_str().unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((events, causes), (999, 999));
}

/// `tes ARGS` with `input` on stdin.
fn piped(c: Command, a: &[&str], input: &str) -> Run {
    run_with_stdin(args(c, a), input)
}

#[test]
fn the_cli_signs_and_verifies_a_batch_from_stdin_with_or_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    // Without a daemon: the verbs start the actors on the data directory.
    let r = piped(
        with_keys(tes(dir.path())),
        &["--json", "sign", "--batch"],
        "a\nb\nc\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines = json_lines(&r.stdout);
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    for (line, payload) in lines.iter().zip(["a", "b", "c"]) {
        assert_eq!(line["payload"], payload);
        assert_eq!(line["signature"], outside_hmac(V1, payload).as_str());
    }
    // What sign --batch --json printed verifies as a batch; one altered
    // line makes it exit 1 and says which.
    let r = piped(
        with_keys(tes(dir.path())),
        &["--json", "verify", "--batch"],
        &r.stdout,
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        json_lines(&r.stdout)
            .iter()
            .filter(|v| v["valid"] == true)
            .count(),
        3
    );

    // On NATS, a JSON array with a pinned version that does not exist:
    // that item fails alone (exit 1), the others are signed.
    let d = NatsDaemon::start(dir.path());
    let r = piped(
        d.client(dir.path()),
        &["--json", "sign", "--batch"],
        r#"["x", {"payload": "y", "keyVersion": "v7"}, "z"]"#,
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let lines = json_lines(&r.stdout);
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    assert_eq!(lines[0]["signature"], outside_hmac(V1, "x").as_str());
    assert_eq!(lines[1]["index"], 1);
    assert_eq!(lines[1]["error"]["code"], "unknown_version");
    assert_eq!(lines[2]["signature"], outside_hmac(V1, "z").as_str());
    assert!(
        r.stderr.contains("1 of 3 payloads were not signed"),
        "{}",
        r.stderr
    );

    // Bad input is an input error, and nothing is sent.
    let r = piped(d.client(dir.path()), &["sign", "--batch"], "\n\n");
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = piped(d.client(dir.path()), &["verify", "--batch"], "not json\n");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("line 1"), "{}", r.stderr);
}
