//! `tes demo`: the whole story on the embedded default, told in plain words
//! (or one JSON object per step with `--json`): sign under the active
//! version, rotate through the Supervisor, sign under the new version,
//! verify the old and the new signature, roll back, sign again, replay the
//! ledger and audit its chain.

use std::collections::BTreeMap;

use anyhow::anyhow;
use serde_json::json;
use tes_keyring::{Keyring, Secret};
use tes_ledger::Ledger;
use tes_proto::command::{Bump, Rollback, Rotate, Scope, Verify};
use tes_proto::reply::BumpReply;
use tes_proto::{KeyVersion, ThreadId};
use tes_version_management::engine::status_view;
use tes_version_management::replay::{replay, Until};

use crate::cli::{Global, RunOptions};
use crate::commands::bundles;
use crate::commands::replay::{json_view, verify_failure};
use crate::failure::{from_call, Failure, Result};
use crate::output::{short, Printer};
use crate::runtime::{self, environment, Actors};

pub async fn run(global: &Global, run: &RunOptions) -> Result<()> {
    let p = Printer { json: global.json };
    p.say(format!(
        "TES key ledger demo: all actors in this process on the embedded bus, ledger {}",
        global.ledger_path().display()
    ));
    let mut rt = Actors::embedded_generating(global, run).await?;
    let outcome = story(&mut rt, p).await;
    let live = match &outcome {
        Ok(()) => Some(rt.status().await?),
        Err(_) => None,
    };
    rt.stop().await;
    outcome?;
    let live = live.expect("status read after a successful story");

    // 7. Replay: a fresh fold of the ledger must give the live state.
    let ledger = Ledger::open_reader(&global.ledger_path()).map_err(Failure::check)?;
    let replayed = replay(&ledger, Until::Head).map_err(verify_failure)?;
    let view = status_view(&replayed.state, &BTreeMap::new(), replayed.head);
    if view.key_version != live.key_version || view.head_seq != live.head_seq {
        return Err(Failure::check(anyhow!(
            "replay disagrees with the live state"
        )));
    }
    let mut line = json_view(&view, replayed.state.seq);
    line.as_object_mut()
        .expect("object")
        .insert("step".into(), json!("replay"));
    p.emit(
        format!(
            "7. Replayed all {} events from the ledger: keyVersion {} — the same state the live actors ended with.",
            replayed.state.seq,
            view.key_version.map(|v| v.bare()).unwrap_or_default()
        ),
        &line,
    );

    // 8. Audit the chain and the Merkle tree its checkpoints sign.
    let report = tes_audit::check_ledger(&ledger, &[], |_, _| {}).map_err(verify_failure)?;
    let ok = report.verified;
    let vkey = crate::commands::audit::audit_key(global)?
        .map(|k| k.vkey())
        .unwrap_or_default();
    p.emit(
        format!(
            "8. Audit: the hash chain is sound ({} events, head seq {} hash {}…), Merkle root {}…, signed as checkpoints by the audit key {}. `tes audit verify` names the first bad seq if a byte changes, or where the ledger parts from a signed checkpoint.",
            ok.events,
            ok.head.seq,
            short(&ok.head.hash_hex()),
            short(&hex::encode(report.root)),
            vkey.split('+').next().unwrap_or_default()
        ),
        &json!({"step": "audit", "ok": true, "events": ok.events, "headSeq": ok.head.seq, "headHash": ok.head.hash_hex(), "rootHash": hex::encode(report.root), "vkey": vkey}),
    );

    // 9. What Monitoring (0x5000) makes of the same ledger.
    let mut metrics =
        tes_monitoring::fold_ledger(&global.ledger_path(), tes_monitoring::core::DEFAULT_WINDOW)
            .map_err(verify_failure)?;
    let at = metrics.last_event_at();
    let snapshot = metrics.snapshot(at);
    let per_version = snapshot
        .versions
        .iter()
        .map(|v| format!("{} {}", v.version, v.signatures))
        .collect::<Vec<_>>()
        .join(", ");
    let mut line = serde_json::to_value(&snapshot).expect("a snapshot serializes");
    line.as_object_mut()
        .expect("object")
        .insert("step".into(), json!("metrics"));
    p.emit(
        format!(
            "9. Monitoring (0x5000) folds the same ledger: signatures per version {per_version}; {} rotation(s), {} rollback(s), {} fallback(s). `tes daemon` serves these on /metrics and writes logs/worker-events.log.",
            snapshot.rotations,
            snapshot.rollbacks,
            snapshot.fallback_total()
        ),
        &line,
    );
    // 10. Every signed manifest is also a bundle in the store.
    if let Some(config) = runtime::bundle_store(global, &run.bundles)? {
        let store = tes_bundles::Store::new(&config).map_err(Failure::input)?;
        let table = bundles::census(&store, async |_, _| Ok(())).await?;
        let places: Vec<String> = table
            .iter()
            .map(|((v, area), place)| bundles::describe_place(*v, area, place))
            .collect();
        let rows: Vec<_> = table
            .iter()
            .map(|((v, area), place)| json!({"keyVersion": v, "place": area, "objects": place.objects, "bytes": place.bytes}))
            .collect();
        p.emit(
            format!(
                "10. Each signed manifest is also a bundle in {}: {}. A version's bundles move to archive/ once it retires (`tes archive`, `tes bundles ls`).",
                store.describe(),
                places.join("; ")
            ),
            &json!({"step": "bundles", "store": store.describe(), "places": rows}),
        );
    }
    p.say(format!(
        "Done. Inspect it yourself: tes replay --data-dir {0} · tes audit verify --data-dir {0} · tes metrics --data-dir {0}",
        global.data_dir.display()
    ));
    Ok(())
}

async fn story(rt: &mut Actors, p: Printer) -> Result<()> {
    keys(rt, p).await?;

    // 1. Sign under the active version.
    let first = bump(rt, Scope::Patch).await?;
    p.emit(
        format!(
            "1. Signed manifest {} {} under {}: {}\n   payload {}",
            first.manifest.entity,
            first.manifest.version,
            first.key_version,
            first.signature,
            first.payload
        ),
        &sign_line(&first),
    );

    // 2. Rotate through the Supervisor, as any operator would.
    let rotated = rt
        .call(
            ThreadId::Supervisor,
            Rotate {
                requested_by: "demo".into(),
                ..Rotate::default()
            },
        )
        .await
        .map_err(from_call)?;
    let from = rotated.from.map(|v| v.to_string()).unwrap_or_default();
    p.emit(
        format!(
            "2. Rotated {from} → {} through the Supervisor (0x1001): {} (ledger seq {}). {from} keeps verifying until {}.",
            rotated.key_version,
            rotated.message,
            rotated.seq,
            rotated.grace_until.map(|g| g.to_string()).unwrap_or_else(|| "—".into())
        ),
        &json!({"step": "rotate", "from": rotated.from, "keyVersion": rotated.key_version, "seq": rotated.seq, "graceUntil": rotated.grace_until}),
    );

    // 3. Sign under the new version (with the old one too, during grace).
    let second = bump(rt, Scope::Minor).await?;
    let dual = if second.signatures.len() > 1 {
        format!(
            "\n   During the grace window the manifest also carries a {} signature, so verifiers that know only the old key still succeed.",
            second.signatures[1].key_version
        )
    } else {
        String::new()
    };
    p.emit(
        format!(
            "3. Signed manifest {} {} under {}: {}{dual}",
            second.manifest.entity, second.manifest.version, second.key_version, second.signature
        ),
        &sign_line(&second),
    );

    // 4. Verify the old and the new signature.
    for (n, signed) in [("old", &first), ("new", &second)] {
        let reply = rt
            .call(
                ThreadId::VersionManagement,
                Verify {
                    payload: signed.payload.clone(),
                    signature: signed.signature.clone(),
                    key_version: signed.key_version,
                },
            )
            .await
            .map_err(from_call)?;
        if !reply.valid {
            return Err(Failure::check(anyhow!(
                "the {n} {} signature did not verify",
                signed.key_version
            )));
        }
        p.emit(
            format!("4. Verified the {n} signature under {}: valid.", reply.key_version),
            &json!({"step": "verify", "which": n, "keyVersion": reply.key_version, "valid": reply.valid}),
        );
    }

    // 5. Roll back while the old version still verifies.
    let back = rt
        .call(
            ThreadId::Supervisor,
            Rollback {
                requested_by: "demo".into(),
            },
        )
        .await
        .map_err(from_call)?;
    p.emit(
        format!(
            "5. Rolled back {} → {}: {} (ledger seq {}).",
            back.from.map(|v| v.to_string()).unwrap_or_default(),
            back.key_version,
            back.message,
            back.seq
        ),
        &json!({"step": "rollback", "from": back.from, "keyVersion": back.key_version, "seq": back.seq}),
    );

    // 6. Sign again, under the version rolled back to.
    let third = bump(rt, Scope::Patch).await?;
    p.emit(
        format!(
            "6. Signed manifest {} {} under {} again: {}",
            third.manifest.entity, third.manifest.version, third.key_version, third.signature
        ),
        &sign_line(&third),
    );
    Ok(())
}

/// Shows the keys, and makes sure there is a version to rotate to: one from
/// the environment (`VERSION_SIGNING_KEY_V2`) or, failing that, a fresh
/// random one in the key store, exactly as
/// `openssl rand -hex 32 | tes secret put --key-version vN` would store it.
async fn keys(rt: &mut Actors, p: Printer) -> Result<()> {
    let status = rt.status().await?;
    if status.next.is_none() {
        let highest = status
            .keys
            .iter()
            .map(|k| k.version)
            .max()
            .unwrap_or(KeyVersion::V1);
        let next = highest.next();
        let secret = Secret::generate().map_err(Failure::check)?;
        rt.key_store()
            .put(next, &secret, false)
            .map_err(Failure::input)?;
        rt.rekey().await?;
        p.say(format!(
            "   (no {next} secret in the environment: generated one into the {}, as `openssl rand -hex 32 | tes secret put --key-version v{}` would)",
            rt.key_store().describe(),
            next.get()
        ));
    }
    let ring = Keyring::load(environment(), rt.key_store(), false).map_err(Failure::input)?;
    let status = rt.status().await?;
    for k in &status.keys {
        let source = ring
            .entries()
            .find(|(v, _)| **v == k.version)
            .map(|(_, l)| l.source.to_string())
            .unwrap_or_default();
        p.emit(
            format!("   key {}: {} · fingerprint {} · from {source}", k.version, k.status.as_str(), k.fingerprint),
            &json!({"step": "key", "keyVersion": k.version, "status": k.status, "fingerprint": k.fingerprint, "source": source}),
        );
    }
    Ok(())
}

async fn bump(rt: &Actors, scope: Scope) -> Result<BumpReply> {
    rt.call(
        ThreadId::VersionManagement,
        Bump {
            entity: tes_proto::command::DEFAULT_ENTITY.into(),
            scope,
            key_version: None,
        },
    )
    .await
    .map_err(from_call)
}

/// A signing step as one JSON line: `payload` (the exact signed string),
/// `signature` (lowercase hex) and `keyVersion` (`"v1"`) — the contract
/// outside checks rely on.
fn sign_line(reply: &BumpReply) -> serde_json::Value {
    json!({
        "step": "sign",
        "payload": reply.payload,
        "signature": reply.signature,
        "keyVersion": reply.key_version,
        "signatures": reply.signatures,
        "manifest": reply.manifest,
        "seq": reply.seq,
    })
}
