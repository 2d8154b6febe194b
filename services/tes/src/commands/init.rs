//! `tes init`: make a data directory ready. Generates v1 into the key store
//! (unless VERSION_SIGNING_KEY gives it) and the audit key (unless
//! TES_AUDIT_KEY[_FILE] gives it), creates the ledger with its genesis, and
//! signs a first checkpoint into the bundle store. Run again, it changes
//! nothing that exists and prints the same vkey.

use serde_json::json;
use tes_audit::{SignedCheckpoint, Witness};

use crate::cli::{Global, RunOptions};
use crate::failure::{Failure, Result};
use crate::output::Printer;
use crate::runtime::{self, environment, Keys};

pub async fn run(global: &Global, run: &RunOptions) -> Result<()> {
    let env = environment();
    let store = global.key_store();
    let existed = global.ledger_path().exists();
    // A bad audit key source stops here, before a key or a ledger is made.
    let configured = runtime::configured_audit_key(&env, &store)?;
    let (engine, held) = runtime::open_engine(global, run, &store, &env, Keys::Generate, None)?;
    let key = runtime::audit_key(configured, &store, engine.ledger(), true)?
        .expect("generated when missing");
    let head = engine.head();
    let (size, root) = engine.ledger().tree_head();
    let signed = SignedCheckpoint::sign(&key, size, root);
    if let Some(config) = runtime::bundle_store(global, &run.bundles)? {
        let bundles = tes_bundles::Store::new(&config).map_err(Failure::input)?;
        if let Err(error) = Witness::put(&bundles, &signed).await {
            tracing::warn!(%error, "the first checkpoint could not be written to the bundle store");
        }
    }
    drop(engine);
    let versions: Vec<String> = held
        .iter()
        .map(|(v, f)| format!("{v} (fingerprint {f})"))
        .collect();
    Printer { json: global.json }.emit(
        format!(
            "{} {}: ledger head seq {}, keys {}\naudit vkey (give it to auditors): {}",
            if existed {
                "Already initialised"
            } else {
                "Initialised"
            },
            global.data_dir.display(),
            head.seq,
            versions.join(", "),
            key.vkey()
        ),
        &json!({
            "dataDir": global.data_dir,
            "created": !existed,
            "headSeq": head.seq,
            "keys": held,
            "vkey": key.vkey(),
            "checkpoint": signed.note,
        }),
    );
    Ok(())
}
