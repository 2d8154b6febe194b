//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) through the
//! fuzz targets' bodies on stable, so every input a fuzzer kept is checked
//! in CI; and writes the seed inputs with TES_BLESS=1.

use std::path::PathBuf;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus")
}

#[test]
fn the_corpus_replays_without_a_panic() {
    let mut total = 0;
    for (name, target) in tes_fuzz_harness::TARGETS {
        let dir = corpus().join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 3, "{name}: a corpus of at least the seeds");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} panicked", file.display());
            total += 1;
        }
    }
    assert!(total > 0);
}

/// `TES_BLESS=1 cargo test -p tes-fuzz-harness`: writes the seed inputs
/// (from the checked-in v1 fixture ledger, hand-written commands, and
/// checkpoints signed by the fuzz key). Without it, does nothing.
#[test]
fn seeds() {
    if std::env::var_os("TES_BLESS").is_none() {
        return;
    }
    use tes_proto::ContentType;
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let tmp = tempfile::tempdir().unwrap();
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ledger-v1/ledger.db");
    let copy = tmp.path().join("ledger.db");
    std::fs::copy(fixture, &copy).unwrap();
    let ledger = tes_ledger::Ledger::open_reader(&copy).unwrap();
    for (seq, e) in ledger.events_from(1).unwrap() {
        write(
            "envelope",
            &format!("seq{seq:02}.json"),
            &ContentType::Json.encode(&e).unwrap(),
        );
        write(
            "envelope",
            &format!("seq{seq:02}.postcard"),
            &ContentType::Binary.encode(&e).unwrap(),
        );
        let draft = tes_ledger::codec::encode(&e);
        let kind = tes_proto::event::kind::ALL
            .iter()
            .position(|k| *k == draft.kind)
            .unwrap() as u8;
        let thread = match draft.thread.token() {
            "0x1001" => 0u8,
            "0x6001" => 1,
            "0x5000" => 2,
            "0x5002" => 3,
            _ => 4,
        };
        let mut row = draft.schema.to_be_bytes().to_vec();
        row.push(kind);
        row.push(thread);
        row.extend_from_slice(&draft.payload);
        write("ledger_row", &format!("seq{seq:02}"), &row);
    }
    let commands: [(u8, &str, &str); 8] = [
        (0, "rotate", r#"{"requested_by":"ops"}"#),
        (
            0,
            "rotate-forced",
            r#"{"requested_by":"ops","force":true,"to":"v3"}"#,
        ),
        (1, "rollback", ""),
        (2, "sign", r#"{"payload":"hello","key_version":"2"}"#),
        (
            3,
            "verify",
            r#"{"payload":"hello","signature":"00ff","key_version":"v1"}"#,
        ),
        (4, "bump", r#"{"entity":"tes","scope":"minor"}"#),
        (
            5,
            "status-envelope",
            r#"{"id":"0190f0c8-7a4e-7c3b-9d2e-1f2a3b4c5d6e","time":1764000000000,"thread":"0x6001","channel":"command","schema":1,"body":{}}"#,
        ),
        (10, "archive", r#"{"version":"v1","dry_run":true}"#),
    ];
    for (verb, name, body) in commands {
        let mut bytes = vec![verb];
        bytes.extend_from_slice(body.as_bytes());
        write("command", name, &bytes);
    }
    let key = tes_fuzz_harness::fuzz_key();
    for (i, size) in [0u64, 1, 15, 1 << 40].into_iter().enumerate() {
        let signed = tes_audit::SignedCheckpoint::sign(&key, size, [i as u8; 32]);
        write("checkpoint", &format!("note{i}"), signed.note.as_bytes());
    }
    write("checkpoint", "vkey", key.vkey().as_bytes());
    write(
        "checkpoint",
        "private-key",
        tes_fuzz_harness::FUZZ_KEY.as_bytes(),
    );
}
