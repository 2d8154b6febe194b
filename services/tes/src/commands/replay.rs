//! `tes replay`: rebuild the state from a ledger and print it.

use std::collections::BTreeMap;

use serde_json::json;
use tes_ledger::{Ledger, LedgerError, VerifyError};
use tes_proto::reply::{KeyStatus, StatusReply};
use tes_version_management::engine::status_view;
use tes_version_management::replay::{replay, Until};

use crate::cli::Global;
use crate::failure::{Failure, Result};
use crate::output::{short, Printer};

/// Opens a ledger for reading; a missing or foreign file is an input error.
pub fn open(global: &Global) -> Result<Ledger> {
    Ledger::open_reader(&global.ledger_path()).map_err(ledger_failure)
}

pub fn ledger_failure(e: LedgerError) -> Failure {
    match e {
        LedgerError::Missing(_)
        | LedgerError::NotADatabase(_)
        | LedgerError::NotALedger { .. }
        | LedgerError::NewerFormat { .. } => Failure::input(e),
        other => Failure::check(other),
    }
}

pub fn verify_failure(e: VerifyError) -> Failure {
    match e {
        VerifyError::Broken(b) => Failure::check(b),
        VerifyError::Ledger(l) => ledger_failure(l),
    }
}

pub fn run(
    global: &Global,
    to_seq: Option<u64>,
    until: Option<tes_proto::Timestamp>,
) -> Result<()> {
    let ledger = open(global)?;
    let bound = match (to_seq, until) {
        (Some(s), _) => Until::Seq(s),
        (_, Some(t)) => Until::Time(t),
        _ => Until::Head,
    };
    let replayed = replay(&ledger, bound).map_err(verify_failure)?;
    let view = status_view(&replayed.state, &BTreeMap::new(), replayed.head);
    Printer { json: global.json }.emit(
        describe(
            &view,
            &format!(
                "Replayed {} events (every one checked against the hash chain).",
                replayed.state.seq
            ),
        ),
        &json_view(&view, replayed.state.seq),
    );
    Ok(())
}

/// The replayed state as JSON. `keyVersion` is the bare number as a string
/// (`"2"`), as the seed's health endpoint reports it; `activeVersion` is the
/// `v2` form.
pub fn json_view(view: &StatusReply, events: u64) -> serde_json::Value {
    let mut value = serde_json::to_value(view).expect("status serializes");
    let obj = value.as_object_mut().expect("status is an object");
    obj.insert(
        "keyVersion".into(),
        json!(view.key_version.map(|v| v.bare())),
    );
    obj.insert(
        "activeVersion".into(),
        json!(view.key_version.map(|v| v.to_string())),
    );
    obj.insert("events".into(), json!(events));
    // Only the Supervisor's question about one command sets it.
    obj.remove("appliedSeq");
    for key in obj
        .get_mut("keys")
        .and_then(|k| k.as_array_mut())
        .into_iter()
        .flatten()
    {
        // `held` describes a running signer; a replay has none.
        key.as_object_mut().map(|k| k.remove("held"));
    }
    value
}

/// The state in words, under a heading line.
pub fn describe(view: &StatusReply, heading: &str) -> String {
    let mut out = format!("{heading}\n");
    match view.key_version {
        Some(v) => out += &format!("  keyVersion: {} ({v} is active)\n", v.bare()),
        None if view.keys.iter().any(|k| k.revoked_at.is_some()) => {
            out += "  keyVersion: none (the active version was revoked with nothing to take over: nothing signs until a new version is provisioned and rotated to)\n"
        }
        None => out += "  keyVersion: none (no version was ever activated)\n",
    }
    if let (Some(at), Some(by)) = (view.rotation_timestamp, &view.rotated_by) {
        out += &match view.rotation_reason {
            Some(reason) => format!(
                "  last rotation {at}: {} (by {by})\n",
                serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ),
            None => format!("  last rollback {at} (by {by})\n"),
        };
    }
    for k in &view.keys {
        let mut line = format!(
            "  {:<4} {:<11} fingerprint {}  signatures {}",
            k.version.to_string(),
            k.status.as_str(),
            k.fingerprint,
            k.signatures
        );
        if let Some(g) = k.grace_until {
            line += &format!("  verifies until {g}");
        }
        if let Some(at) = k.expires_at.filter(|_| k.status == KeyStatus::Active) {
            line += &format!("  expires {at}");
        }
        if let Some(at) = k.revoked_at {
            line += &format!(
                "  REVOKED {at}: {}",
                k.revoked_reason.as_deref().unwrap_or("")
            );
        }
        if k.material_changes > 0 {
            line += &format!(
                "  material replaced {} time(s) (tes secret put --replace)",
                k.material_changes
            );
        }
        if k.archived_objects > 0 || k.archiving {
            line += &format!(
                "  archived {} bundle(s), {} byte(s){}",
                k.archived_objects,
                k.archived_bytes,
                if k.archiving {
                    " (a batch is open)"
                } else {
                    ""
                }
            );
        }
        out += &line;
        out.push('\n');
    }
    if let Some(v) = view.last_sig_version {
        out += &format!("  last signing request served by {v}\n");
    }
    for e in &view.entities {
        out += &format!("  entity {} at {}\n", e.entity, e.version);
    }
    if view.fallbacks > 0 {
        out += &format!("  fallbacks: {}\n", view.fallbacks);
    }
    out += &format!(
        "  head: seq {} hash {}…",
        view.head_seq,
        short(&view.head_hash)
    );
    out
}
