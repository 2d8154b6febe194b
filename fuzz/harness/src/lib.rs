//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs` call these), so
//! that the checked-in corpus is replayed on stable by `tests/corpus.rs`
//! and CI exercises every input a fuzzer ever found interesting.
//!
//! Each body must never panic on any input; where an input decodes, it
//! must survive an encode/decode round trip unchanged.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tes_audit::{AuditKey, SignedCheckpoint, Vkey};
use tes_proto::codec::{decode_incoming, Incoming};
use tes_proto::command::{
    AlertNotice, AlertsQuery, Archive, Bump, MetricsQuery, Record, Rollback, Rotate, Sign, Status,
    Verify,
};
use tes_proto::{ContentType, Envelope, Event};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (the corpus directories are named the same).
pub const TARGETS: [(&str, Target); 4] = [
    ("envelope", envelope),
    ("command", command),
    ("ledger_row", ledger_row),
    ("checkpoint", checkpoint),
];

const BOTH: [ContentType; 2] = [ContentType::Json, ContentType::Binary];

fn round_trip<T>(ct: ContentType, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = ct.encode(value).expect("a decoded value encodes");
    let again: T = ct.decode(&bytes).expect("what we encode decodes");
    assert_eq!(&again, value, "round trip through {ct:?}");
}

/// An event envelope as it arrives on the bus, in either wire form.
pub fn envelope(data: &[u8]) {
    for ct in BOTH {
        if let Ok(e) = ct.decode::<Envelope<Event>>(data) {
            round_trip(ct, &e);
        }
    }
}

fn incoming<C>(data: &[u8])
where
    C: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    for ct in BOTH {
        match decode_incoming::<C>(ct, data) {
            Ok(Incoming::Envelope(e)) => round_trip(ct, &e),
            Ok(Incoming::Bare(b)) => round_trip(ContentType::Json, &b),
            Err(_) => {}
        }
    }
}

/// A command as a client sends it: the first byte picks the verb, the rest
/// is the message (an envelope, or a bare JSON body).
pub fn command(data: &[u8]) {
    let Some((&verb, rest)) = data.split_first() else {
        return;
    };
    match verb % 11 {
        0 => incoming::<Rotate>(rest),
        1 => incoming::<Rollback>(rest),
        2 => incoming::<Sign>(rest),
        3 => incoming::<Verify>(rest),
        4 => incoming::<Bump>(rest),
        5 => incoming::<Status>(rest),
        6 => incoming::<Record>(rest),
        7 => incoming::<MetricsQuery>(rest),
        8 => incoming::<AlertsQuery>(rest),
        9 => incoming::<AlertNotice>(rest),
        _ => incoming::<Archive>(rest),
    }
}

const THREADS: [&str; 6] = ["0x1001", "0x6001", "0x5000", "0x5002", "0x5003", "0x9999"];
const IDS: [&str; 3] = ["0190f0c8-7a4e-7c3b-9d2e-1f2a3b4c5d6e", "not-a-uuid", ""];

/// A stored ledger row as a tampered file could hold it: byte 0-1 the
/// schema, byte 2 the kind (an index into every kind, or beyond), byte 3
/// the thread and the ids, the rest the payload.
pub fn ledger_row(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let schema = u16::from_be_bytes([data[0], data[1]]);
    let kinds = tes_proto::event::kind::ALL;
    let kind = kinds
        .get(data[2] as usize)
        .copied()
        .unwrap_or("no_such_kind");
    let thread = THREADS[data[3] as usize % THREADS.len()];
    let id = IDS[(data[3] as usize / 8) % IDS.len()];
    let causation = (data[3] & 0x80 != 0).then_some(IDS[0]);
    let payload = &data[4..];
    if let Ok(envelope) =
        tes_ledger::codec::decode_row(id, 7, thread, kind, causation, None, schema, payload)
    {
        // What decodes is what the current schema writes again.
        let draft = tes_ledger::codec::encode(&envelope);
        let again = tes_ledger::codec::decode_event(draft.schema, draft.kind, &draft.payload)
            .expect("a re-encoded row decodes");
        assert_eq!(again, envelope.body);
    }
}

/// The key the checkpoint target's valid seeds are signed with (a test key,
/// not a secret).
pub const FUZZ_KEY: &str =
    "PRIVATE+KEY+tes-ledger/fuzz+598c499a+AUJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJC";

/// A signed checkpoint, a vkey or a private key as text from anywhere.
pub fn checkpoint(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Vkey::parse(text);
    let _ = AuditKey::parse("fuzz", text);
    let key = fuzz_key();
    if let Ok(opened) = SignedCheckpoint::open(text, &key.verifier()) {
        // A note that verifies says exactly what the key would sign.
        let again = SignedCheckpoint::sign(&key, opened.checkpoint.size, opened.checkpoint.root);
        assert_eq!(again.checkpoint, opened.checkpoint);
    }
}

pub fn fuzz_key() -> AuditKey {
    AuditKey::parse("FUZZ_KEY", FUZZ_KEY).expect("the fuzz key parses")
}
