//! `tes audit`: what an auditor runs.
//!
//! - `verify`: walk the chain (every row), build the Merkle tree, compare
//!   with signed checkpoints — given on the command line or found at the
//!   witnesses (the log dir's `checkpoints/`, the bundle store's
//!   `checkpoint/`) — and check every snapshot against a fresh fold.
//! - `key`: the vkey a third party verifies checkpoints with.
//! - `checkpoint`: a freshly signed checkpoint of the verified head.
//! - `prove`: an RFC 6962 inclusion proof of one event.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::anyhow;
use serde_json::json;
use tes_audit::{check_ledger, AuditKey, Checkpoint, SignedCheckpoint, Vkey, Witness};
use tes_ledger::merkle::Tree;
use tes_ledger::{walk, walk_hashed, Head, Ledger, VerifyError};
use tes_version_management::core::state::{decode_snapshot, State, STATE_SCHEMA};

use crate::cli::{CheckpointArg, Global, WitnessOptions};
use crate::commands::replay::{ledger_failure, open, verify_failure};
use crate::failure::{Failure, Result};
use crate::output::Printer;
use crate::runtime::{self, environment};

/// The audit key from `TES_AUDIT_KEY[_FILE]` or the key store, if any.
/// Reads only.
pub fn audit_key(global: &Global) -> Result<Option<AuditKey>> {
    runtime::configured_audit_key(&environment(), &global.key_store())
}

fn need_key(global: &Global) -> Result<AuditKey> {
    audit_key(global)?.ok_or_else(|| {
        Failure::input(anyhow!(
            "no audit key for {}: set TES_AUDIT_KEY_FILE, or run `tes init` on the data directory",
            global.data_dir.display()
        ))
    })
}

pub fn key(global: &Global) -> Result<()> {
    let key = need_key(global)?;
    Printer { json: global.json }.emit(
        key.vkey(),
        &json!({"vkey": key.vkey(), "origin": key.name()}),
    );
    Ok(())
}

/// Verifies the whole chain and returns the Merkle root at the head.
fn verified_root(ledger: &Ledger) -> Result<(Head, tes_ledger::Hash)> {
    let report = check_ledger(ledger, &[], |_, _| {}).map_err(verify_failure)?;
    Ok((report.verified.head, report.root))
}

pub fn checkpoint(global: &Global) -> Result<()> {
    let key = need_key(global)?;
    let ledger = open(global)?;
    let (head, root) = verified_root(&ledger)?;
    let signed = SignedCheckpoint::sign(&key, head.seq, root);
    let p = Printer { json: global.json };
    if p.json {
        p.emit(
            String::new(),
            &json!({
                "treeSize": head.seq,
                "rootHash": hex::encode(root),
                "headHash": head.hash_hex(),
                "note": signed.note,
                "vkey": key.vkey(),
            }),
        );
    } else {
        crate::output::line(signed.note.trim_end_matches('\n'));
    }
    Ok(())
}

fn read_note(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::input(anyhow!("cannot read checkpoint {}: {e}", path.display())))
}

pub fn prove(global: &Global, seq: u64, checkpoint: Option<PathBuf>) -> Result<()> {
    let ledger = open(global)?;
    let signed = match &checkpoint {
        Some(path) => {
            let vkey = vkey_for(global, None)?.ok_or_else(|| {
                Failure::input(anyhow!(
                    "no vkey to check {} with: set TES_AUDIT_VKEY or run where the key store is",
                    path.display()
                ))
            })?;
            Some(
                SignedCheckpoint::open(&read_note(path)?, &vkey)
                    .map_err(|e| Failure::check(anyhow!("{}: {e}", path.display())))?,
            )
        }
        None => None,
    };
    let mut tree = Tree::default();
    let mut row_hash = None;
    let verified = walk_hashed(&ledger, Head::EMPTY, u64::MAX, None, |s, hash, _| {
        tree.push(hash);
        if s == seq {
            row_hash = Some(*hash);
        }
        true
    })
    .map_err(verify_failure)?;
    let signed = match signed {
        Some(s) => s,
        None => {
            let key = need_key(global)?;
            SignedCheckpoint::sign(
                &key,
                verified.head.seq,
                tree.root(verified.head.seq)
                    .expect("the head is in the tree"),
            )
        }
    };
    let size = signed.checkpoint.size;
    if seq == 0 || seq > size {
        return Err(Failure::input(anyhow!(
            "seq {seq} is not in the tree of size {size} (seqs 1..={size})"
        )));
    }
    let root = tree.root(size).map_err(|_| {
        Failure::check(anyhow!(
            "the checkpoint covers seq {size} but the ledger ends at seq {}: truncated or replaced",
            verified.head.seq
        ))
    })?;
    if root != signed.checkpoint.root {
        return Err(Failure::check(anyhow!(
            "the ledger's Merkle root at seq {size} is {}, the checkpoint says {}: the ledger was rewritten",
            hex::encode(root),
            signed.checkpoint.root_hex()
        )));
    }
    let row_hash = row_hash.expect("seq is within the walked tree");
    let proof = tree
        .prove_inclusion(seq - 1, size)
        .map_err(Failure::check)?;
    let proof_hex: Vec<String> = proof.iter().map(hex::encode).collect();
    Printer { json: global.json }.emit(
        format!(
            "seq {seq} (leaf {}) is in the tree of size {size}, root {}\nrow hash {}\nproof ({} hashes):\n{}\ncheckpoint:\n{}",
            seq - 1,
            signed.checkpoint.root_hex(),
            hex::encode(row_hash),
            proof_hex.len(),
            proof_hex.iter().map(|h| format!("  {h}")).collect::<Vec<_>>().join("\n"),
            signed.note.trim_end()
        ),
        &json!({
            "seq": seq,
            "leafIndex": seq - 1,
            "treeSize": size,
            "rowHash": hex::encode(row_hash),
            "rootHash": signed.checkpoint.root_hex(),
            "proof": proof_hex,
            "checkpoint": signed.note,
        }),
    );
    Ok(())
}

/// The vkey checkpoints are checked with: given, else the audit key's.
fn vkey_for(global: &Global, given: Option<&str>) -> Result<Option<Vkey>> {
    if let Some(text) = given {
        return Vkey::parse(text).map(Some).map_err(Failure::input);
    }
    Ok(audit_key(global)?.map(|k| k.verifier()))
}

/// Every note the witnesses reachable from here hold, with where it came
/// from. Reads only: a witness that is not there holds nothing.
async fn witness_notes(global: &Global, w: &WitnessOptions) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    if let Some(bus) = runtime::nats(global, "tes-audit").await? {
        let latest = tes_bus::jetstream::CheckpointStream::latest(bus.client().clone())
            .await
            .map_err(Failure::check)?;
        if let Some(tes_proto::Envelope {
            body: tes_proto::Event::Checkpoint(c),
            ..
        }) = latest
        {
            if !c.note.is_empty() {
                out.push((
                    format!("NATS stream {}", tes_proto::subject::CHECKPOINTS_STREAM),
                    c.note,
                ));
            }
        }
    }
    let dir = tes_audit::DirWitness::new(&w.log_dir);
    if dir.dir().exists() {
        for note in dir.notes().map_err(Failure::check)? {
            out.push((Witness::describe(&dir), note));
        }
    }
    if let Some(config) = runtime::bundle_store(global, &w.bundles)? {
        // An fs store that was never written is simply empty (and is not
        // created by looking).
        let absent = matches!(&config, tes_bundles::StoreConfig::Fs { root } if !root.exists());
        if !absent {
            let store = tes_bundles::Store::new(&config).map_err(Failure::input)?;
            match Witness::notes(&store).await {
                Ok(notes) => {
                    let name = Witness::describe(&store);
                    out.extend(notes.into_iter().map(|n| (name.clone(), n)));
                }
                Err(error) => {
                    tracing::warn!(%error, "the bundle store's checkpoints could not be read")
                }
            }
        }
    }
    Ok(out)
}

pub async fn verify(global: &Global, args: Vec<CheckpointArg>, w: &WitnessOptions) -> Result<()> {
    let p = Printer { json: global.json };
    let ledger = open(global)?;
    let mut heads = Vec::new();
    let mut notes = Vec::new();
    for arg in &args {
        match arg {
            CheckpointArg::Head(seq, hash) => heads.push((*seq, hash.clone())),
            CheckpointArg::Note(path) => notes.push((path.display().to_string(), read_note(path)?)),
        }
    }
    if args.is_empty() {
        notes = witness_notes(global, w).await?;
    }
    let vkey = vkey_for(global, w.vkey.as_deref())?;
    let mut checkpoints: Vec<(String, Checkpoint)> = Vec::new();
    if !notes.is_empty() {
        let vkey = vkey.as_ref().ok_or_else(|| {
            Failure::input(anyhow!(
                "signed checkpoints found but no vkey to check them with: pass --vkey (or TES_AUDIT_VKEY), or run where the key store is"
            ))
        })?;
        for (source, note) in &notes {
            match SignedCheckpoint::open(note, vkey) {
                Ok(s) => checkpoints.push((source.clone(), s.checkpoint)),
                Err(e) => {
                    p.emit(
                        format!("checkpoint from {source} refused: {e}"),
                        &json!({"ok": false, "reason": format!("checkpoint from {source}: {e}")}),
                    );
                    return Err(Failure::check(anyhow!(
                        "a checkpoint from {source} does not verify under {}: {e}",
                        vkey.as_str()
                    )));
                }
            }
        }
    }

    // Snapshots are caches, but one that disagrees with the events would
    // make a restart start from a lie: fold once and compare at each.
    let damaged = ledger.damaged_snapshots().map_err(ledger_failure)?;
    let snapshots: BTreeMap<u64, Vec<u8>> = ledger
        .snapshots()
        .map_err(ledger_failure)?
        .into_iter()
        .filter(|s| s.schema == STATE_SCHEMA)
        .map(|s| (s.seq, s.state))
        .collect();
    let mut state = State::default();
    let mut bad_snapshot = damaged.first().copied();
    let plain: Vec<Checkpoint> = checkpoints.iter().map(|(_, c)| c.clone()).collect();
    let result = check_ledger(&ledger, &plain, |seq, event| {
        state.apply_envelope(&event);
        if let Some(bytes) = snapshots.get(&seq) {
            let matches = decode_snapshot(bytes).is_some_and(|s| s == state);
            if !matches && bad_snapshot.is_none() {
                bad_snapshot = Some(seq);
            }
        }
    });
    let report = match result {
        Ok(r) => r,
        Err(VerifyError::Broken(b)) => {
            p.emit(
                format!("chain broken at seq {}: {}", b.seq, b.reason),
                &json!({"ok": false, "seq": b.seq, "reason": b.reason.to_string()}),
            );
            return Err(Failure::check(b));
        }
        Err(other) => return Err(verify_failure(other)),
    };
    if let Some(d) = &report.disagreement {
        let seq = d.first_bad_seq();
        p.emit(
            format!("ledger disagrees with a signed checkpoint at seq {seq}: {d}"),
            &json!({"ok": false, "seq": seq, "reason": d.to_string()}),
        );
        return Err(Failure::check(anyhow!(
            "the ledger disagrees with a signed checkpoint at seq {seq}"
        )));
    }
    for (seq, hash) in heads {
        // The old SEQ:HASH form: the row at SEQ must have that hash.
        if let Err(e) = walk(&ledger, Head::EMPTY, seq, Some((seq, hash)), |_, _| true) {
            if let VerifyError::Broken(b) = &e {
                p.emit(
                    format!("chain broken at seq {}: {}", b.seq, b.reason),
                    &json!({"ok": false, "seq": b.seq, "reason": b.reason.to_string()}),
                );
            }
            return Err(verify_failure(e));
        }
    }
    if let Some(seq) = bad_snapshot {
        p.emit(
            format!("snapshot at seq {seq} does not match the events before it (the events themselves are sound)"),
            &json!({"ok": false, "seq": seq, "reason": "snapshot does not match the events"}),
        );
        return Err(Failure::check(anyhow!(
            "snapshot at seq {seq} does not match the events"
        )));
    }
    let ok = report.verified;
    let newest = checkpoints.iter().max_by_key(|(_, c)| c.size);
    let against = match newest {
        Some((source, c)) => format!(
            "; agrees with {} signed checkpoint(s), the newest at seq {} ({source})",
            report.agreed.len(),
            c.size
        ),
        None if args.is_empty() => format!(
            "; no signed checkpoint found (looked in {}, the bundle store{}): only the chain's own consistency was checked",
            w.log_dir.join(tes_audit::witness::SUBDIR).display(),
            if global.nats.is_some() { " and NATS" } else { "" }
        ),
        None => String::new(),
    };
    p.emit(
        format!(
            "chain sound: {} events, head seq {} hash {}, Merkle root {}{}{}",
            ok.events,
            ok.head.seq,
            ok.head.hash_hex(),
            hex::encode(report.root),
            if snapshots.is_empty() {
                String::new()
            } else {
                format!("; {} snapshot(s) agree", snapshots.len())
            },
            against
        ),
        &json!({
            "ok": true,
            "events": ok.events,
            "headSeq": ok.head.seq,
            "headHash": ok.head.hash_hex(),
            "rootHash": hex::encode(report.root),
            "checkpoints": report.agreed.len(),
            "newestCheckpoint": newest.map(|(_, c)| c.size),
        }),
    );
    Ok(())
}
