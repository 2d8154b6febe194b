//! `tes audit verify`: walk the chain, name the first bad seq; check every
//! snapshot against a fold of the events before it.

use std::collections::BTreeMap;

use anyhow::anyhow;
use serde_json::json;
use tes_ledger::{walk, Head, VerifyError};
use tes_version_management::core::state::{decode_snapshot, State, STATE_SCHEMA};

use crate::cli::Global;
use crate::commands::replay::{open, verify_failure};
use crate::failure::{Failure, Result};
use crate::output::Printer;

pub fn verify(global: &Global, checkpoint: Option<(u64, String)>) -> Result<()> {
    let p = Printer { json: global.json };
    let ledger = open(global)?;
    // Snapshots are caches, but one that disagrees with the events would
    // make a restart start from a lie: fold once and compare at each.
    let snapshots: BTreeMap<u64, Vec<u8>> = ledger
        .snapshots()
        .map_err(crate::commands::replay::ledger_failure)?
        .into_iter()
        .filter(|s| s.schema == STATE_SCHEMA)
        .map(|s| (s.seq, s.state))
        .collect();
    let mut state = State::default();
    let mut bad_snapshot = None;
    let result = walk(&ledger, Head::EMPTY, u64::MAX, checkpoint, |seq, event| {
        state.apply(event.time, &event.body);
        if let Some(bytes) = snapshots.get(&seq) {
            let matches = decode_snapshot(bytes).is_some_and(|s| s == state);
            if !matches && bad_snapshot.is_none() {
                bad_snapshot = Some(seq);
            }
        }
        true
    });
    match result {
        Ok(ok) => {
            if let Some(seq) = bad_snapshot {
                p.emit(
                    format!("snapshot at seq {seq} does not match the events before it (the events themselves are sound)"),
                    &json!({"ok": false, "seq": seq, "reason": "snapshot does not match the events"}),
                );
                return Err(Failure::check(anyhow!(
                    "snapshot at seq {seq} does not match the events"
                )));
            }
            p.emit(
                format!(
                    "chain sound: {} events, head seq {} hash {}{}",
                    ok.events,
                    ok.head.seq,
                    ok.head.hash_hex(),
                    if snapshots.is_empty() { String::new() } else { format!("; {} snapshot(s) agree", snapshots.len()) }
                ),
                &json!({"ok": true, "events": ok.events, "headSeq": ok.head.seq, "headHash": ok.head.hash_hex()}),
            );
            Ok(())
        }
        Err(VerifyError::Broken(b)) => {
            p.emit(
                format!("chain broken at seq {}: {}", b.seq, b.reason),
                &json!({"ok": false, "seq": b.seq, "reason": b.reason.to_string()}),
            );
            Err(Failure::check(b))
        }
        Err(other) => Err(verify_failure(other)),
    }
}
