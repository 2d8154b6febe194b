//! The ledger against a real SQLite file: append, idempotency, the database's
//! own refusal of UPDATE/DELETE, chain verification and bad files.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tes_ledger::{verify, BreakReason, Ledger, LedgerError, VerifyError};
use tes_proto::event::{SignatureGenerated, SignatureVerified};
use tes_proto::{Channel, Envelope, Event, KeyVersion, MsgId, ThreadId, Timestamp};

fn event(n: u64) -> Envelope<Event> {
    Envelope::new(
        MsgId(uuid::Uuid::from_u128(0x1000 + n as u128)),
        Timestamp::from_millis(1_764_000_000_000 + n),
        ThreadId::VersionManagement,
        Channel::Event,
        Event::SignatureGenerated(SignatureGenerated {
            key_version: KeyVersion::V1,
            signature: format!("{n:064x}"),
            payload_sha256: "00".repeat(32),
            pinned: false,
        }),
    )
}

fn ledger_with(dir: &Path, n: u64) -> PathBuf {
    let path = dir.join("ledger.db");
    let mut l = Ledger::open_writer(&path).unwrap();
    let events: Vec<_> = (1..=n).map(event).collect();
    l.append(&events).unwrap();
    path
}

/// A copy of the ledger with the append-only triggers dropped, as an
/// attacker with file access would make it, so rows can be edited.
fn tamperable_copy(path: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join("copy.db");
    let src = rusqlite::Connection::open(path).unwrap();
    src.execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    let c = rusqlite::Connection::open(&copy).unwrap();
    c.execute_batch(
        "DROP TRIGGER events_append_only_update; DROP TRIGGER events_append_only_delete;",
    )
    .unwrap();
    copy
}

fn broken_at(path: &Path) -> (u64, BreakReason) {
    let l = Ledger::open_reader(path).unwrap();
    match verify(&l, None) {
        Err(VerifyError::Broken(b)) => (b.seq, b.reason),
        other => panic!("expected a break, got {other:?}"),
    }
}

#[test]
fn appends_in_order_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_with(dir.path(), 5);
    let l = Ledger::open_reader(&path).unwrap();
    assert_eq!(l.head().seq, 5);
    let events = l.events_from(1).unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(events[2], (3, event(3)));
    let ok = verify(&l, None).unwrap();
    assert_eq!(ok.events, 5);
    assert_eq!(ok.head, l.head());
}

#[test]
fn same_id_same_bytes_is_a_duplicate_other_bytes_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_with(dir.path(), 3);
    let mut l = Ledger::open_writer(&path).unwrap();
    let again = l.append(&[event(2)]).unwrap();
    assert_eq!((again[0].seq, again[0].duplicate), (2, true));
    assert_eq!(l.head().seq, 3);

    let mut changed = event(2);
    changed.body = Event::SignatureVerified(SignatureVerified {
        key_version: KeyVersion::V1,
        valid: true,
    });
    let err = l.append(&[event(4), changed]).unwrap_err();
    assert!(matches!(err, LedgerError::Conflict { seq: 2, .. }), "{err}");
    assert_eq!(l.head().seq, 3, "the whole batch is refused");
    drop(l);
    assert_eq!(Ledger::open_reader(&path).unwrap().count().unwrap(), 3);
}

/// Rows taken from a stream that holds them move that stream's outbox
/// cursor in their own transaction: a refused batch moves neither, the
/// cursor never goes back, and never past the rows the file holds.
#[test]
fn rows_from_a_stream_move_its_cursor_in_the_same_transaction() {
    use tes_ledger::Outbox;
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_with(dir.path(), 0);
    let mut l = Ledger::open_writer(&path).unwrap();
    let cursor = || Outbox::open(&path, "TES_LEDGER").unwrap().cursor().unwrap();
    l.append_published(&[event(1), event(2), event(3)], "TES_LEDGER", 3)
        .unwrap();
    assert_eq!((l.head().seq, cursor()), (3, 3));

    let mut changed = event(2);
    changed.body = Event::SignatureVerified(SignatureVerified {
        key_version: KeyVersion::V1,
        valid: true,
    });
    let err = l
        .append_published(&[event(4), changed], "TES_LEDGER", 5)
        .unwrap_err();
    assert!(matches!(err, LedgerError::Conflict { seq: 2, .. }), "{err}");
    assert_eq!((l.head().seq, cursor()), (3, 3), "neither moved");

    l.append_published(&[], "TES_LEDGER", 1).unwrap();
    assert_eq!(cursor(), 3, "never back");
    l.append_published(&[event(4)], "TES_LEDGER", 9).unwrap();
    assert_eq!((l.head().seq, cursor()), (4, 4), "never past the head");
    // Another outbox's cursor is its own.
    assert_eq!(
        Outbox::open(&path, "TES_EVENTS").unwrap().cursor().unwrap(),
        0
    );
}

#[test]
fn the_database_refuses_update_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_with(dir.path(), 2);
    let c = rusqlite::Connection::open(&path).unwrap();
    let upd = c
        .execute("UPDATE events SET ts = 0 WHERE seq = 1", [])
        .unwrap_err();
    assert!(upd.to_string().contains("append-only"), "{upd}");
    let del = c
        .execute("DELETE FROM events WHERE seq = 2", [])
        .unwrap_err();
    assert!(del.to_string().contains("append-only"), "{del}");
    assert_eq!(
        verify(&Ledger::open_reader(&path).unwrap(), None)
            .unwrap()
            .events,
        2
    );
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let _first = Ledger::open_writer(&path).unwrap();
    let err = Ledger::open_writer(&path).unwrap_err();
    assert!(matches!(err, LedgerError::Locked { .. }), "{err}");
    assert!(err.to_string().contains(&std::process::id().to_string()));
    // Readers are fine beside the writer.
    Ledger::open_reader(&path).unwrap();
}

#[test]
fn files_that_are_not_ledgers_are_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"this is not a database at all, just text ......").unwrap();
    assert!(matches!(
        Ledger::open_reader(&junk),
        Err(LedgerError::NotADatabase(_))
    ));
    assert!(matches!(
        Ledger::open_writer(&junk),
        Err(LedgerError::NotADatabase(_))
    ));

    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    assert!(matches!(
        Ledger::open_reader(&other),
        Err(LedgerError::NotALedger { .. })
    ));
    assert!(matches!(
        Ledger::open_writer(&other),
        Err(LedgerError::NotALedger { .. })
    ));

    assert!(matches!(
        Ledger::open_reader(&dir.path().join("absent.db")),
        Err(LedgerError::Missing(_))
    ));
}

#[test]
fn a_truncated_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_with(dir.path(), 300);
    // Fold the WAL into the main file, then cut it in half.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.db");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let result = Ledger::open_reader(&cut).and_then(|l| {
        verify(&l, None).map_err(|e| match e {
            VerifyError::Ledger(l) => l,
            VerifyError::Broken(b) => panic!("{b}"),
        })
    });
    let err = result.unwrap_err();
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err}");
}

#[test]
fn deleted_and_inserted_rows_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_with(dir.path(), 6);
    let copy = tamperable_copy(&path, dir.path());
    let c = rusqlite::Connection::open(&copy).unwrap();
    c.execute("DELETE FROM events WHERE seq = 4", []).unwrap();
    drop(c);
    assert_eq!(broken_at(&copy).0, 5);
}

#[test]
fn a_checkpoint_catches_truncation_of_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_with(dir.path(), 6);
    let head = Ledger::open_reader(&path).unwrap().head();
    let copy = tamperable_copy(&path, dir.path());
    let c = rusqlite::Connection::open(&copy).unwrap();
    c.execute("DELETE FROM events WHERE seq >= 5", []).unwrap();
    drop(c);
    let l = Ledger::open_reader(&copy).unwrap();
    verify(&l, None).expect("a clean truncation is self-consistent");
    let err = verify(&l, Some((head.seq, head.hash_hex()))).unwrap_err();
    assert!(
        matches!(err, VerifyError::Broken(ref b) if b.seq == 6),
        "{err}"
    );
}

#[test]
fn unknown_schema_and_kind_are_named_with_their_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_with(dir.path(), 3);
    let copy = tamperable_copy(&path, dir.path());
    let c = rusqlite::Connection::open(&copy).unwrap();
    c.execute("UPDATE events SET schema = 99 WHERE seq = 2", [])
        .unwrap();
    drop(c);
    let l = Ledger::open_reader(&copy).unwrap();
    let err = l.events_from(1).unwrap_err().to_string();
    assert!(
        err.contains("seq 2") && err.contains("schema version 99"),
        "{err}"
    );
    let (seq, reason) = broken_at(&copy);
    assert_eq!(seq, 2);
    assert!(matches!(reason, BreakReason::Decode(_)));

    let copy2 = dir.path().join("copy2.db");
    std::fs::remove_file(&copy).unwrap();
    let copy = tamperable_copy(&path, dir.path());
    std::fs::rename(&copy, &copy2).unwrap();
    let c = rusqlite::Connection::open(&copy2).unwrap();
    c.execute("UPDATE events SET kind = 'key_teleport' WHERE seq = 3", [])
        .unwrap();
    drop(c);
    let err = Ledger::open_reader(&copy2)
        .unwrap()
        .events_from(1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("seq 3") && err.contains("key_teleport"),
        "{err}"
    );
}

#[test]
fn snapshots_must_agree_with_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_with(dir.path(), 4);
    let mut l = Ledger::open_writer(&path).unwrap();
    l.put_snapshot(1, b"state at 4").unwrap();
    let snaps = l.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(
        (snaps[0].seq, snaps[0].state.as_slice()),
        (4, &b"state at 4"[..])
    );
    l.raw_connection()
        .execute("UPDATE snapshots SET state = x'00'", [])
        .unwrap();
    assert!(
        l.snapshots().unwrap().is_empty(),
        "a snapshot whose bytes changed is ignored"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// A flipped bit anywhere in any column of any row is found, at that row.
    #[test]
    fn any_changed_byte_is_found_at_its_seq(
        target in 1u64..=8,
        column in prop::sample::select(vec!["payload", "ts", "key_version", "kind", "thread", "id", "causation_id"]),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = ledger_with(dir.path(), 8);
        let copy = tamperable_copy(&path, dir.path());
        let c = rusqlite::Connection::open(&copy).unwrap();
        match column {
            "payload" => {
                let mut p: Vec<u8> = c.query_row("SELECT payload FROM events WHERE seq = ?1", [target], |r| r.get(0)).unwrap();
                let i = pos.index(p.len());
                p[i] ^= 1 << bit;
                c.execute("UPDATE events SET payload = ?1 WHERE seq = ?2", rusqlite::params![p, target]).unwrap();
            }
            "ts" => { c.execute("UPDATE events SET ts = ts + ?1 WHERE seq = ?2", rusqlite::params![1i64 << bit, target]).unwrap(); }
            "key_version" => { c.execute("UPDATE events SET key_version = 2 WHERE seq = ?1", [target]).unwrap(); }
            "kind" => { c.execute("UPDATE events SET kind = 'signature_verified' WHERE seq = ?1", [target]).unwrap(); }
            "thread" => { c.execute("UPDATE events SET thread = '0x1001' WHERE seq = ?1", [target]).unwrap(); }
            "id" => { c.execute("UPDATE events SET id = '00000000-0000-0000-0000-00000000ffff' WHERE seq = ?1", [target]).unwrap(); }
            _ => { c.execute("UPDATE events SET causation_id = id WHERE seq = ?1", [target]).unwrap(); }
        }
        drop(c);
        let (seq, _) = broken_at(&copy);
        prop_assert_eq!(seq, target);
    }
}

#[test]
fn a_column_stored_with_another_type_is_a_break_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_with(dir.path(), 4);
    let copy = tamperable_copy(&path, dir.path());
    let c = rusqlite::Connection::open(&copy).unwrap();
    // Same bytes, stored as TEXT instead of BLOB.
    c.execute(
        "UPDATE events SET payload = CAST(payload AS TEXT) WHERE seq = 3",
        [],
    )
    .unwrap();
    drop(c);
    let (seq, reason) = broken_at(&copy);
    assert_eq!(seq, 3);
    assert!(
        matches!(reason, BreakReason::Decode(ref d) if d.contains("payload")),
        "{reason}"
    );
}

/// A long ledger is read on two threads and checked on a third: the same
/// verdicts as the short walk, at the same seqs, in every part of it (on
/// both sides of a chunk boundary, in either reader's chunks).
#[test]
fn a_long_ledger_is_verified_across_threads_with_the_same_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let path = ledger_with(dir.path(), 30_000);
    let good = verify(&Ledger::open_reader(&path).unwrap(), None).unwrap();
    assert_eq!(good.events, 30_000);
    for (at, what) in [
        (
            3,
            "UPDATE events SET payload = X'00' || payload WHERE seq = 3",
        ),
        (
            2048,
            "UPDATE events SET payload = X'00' || payload WHERE seq = 2048",
        ),
        (2050, "DELETE FROM events WHERE seq = 2049"),
        (
            29_999,
            "UPDATE events SET hash = prev_hash WHERE seq = 29999",
        ),
        (17_000, "UPDATE events SET ts = 'x' WHERE seq = 17000"),
    ] {
        let sub = dir.path().join(format!("t{at}"));
        std::fs::create_dir(&sub).unwrap();
        let copy = tamperable_copy(&path, &sub);
        rusqlite::Connection::open(&copy)
            .unwrap()
            .execute_batch(what)
            .unwrap();
        assert_eq!(broken_at(&copy).0, at, "{what}");
    }
    // A walk that stops early stops the reader too.
    let ledger = Ledger::open_reader(&path).unwrap();
    let mut seen = 0;
    tes_ledger::walk(&ledger, tes_ledger::Head::EMPTY, u64::MAX, None, |_, _| {
        seen += 1;
        seen < 5000
    })
    .unwrap();
    assert_eq!(seen, 5000);
}
