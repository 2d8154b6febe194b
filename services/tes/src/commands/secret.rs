//! `tes secret put|list`: provisioning the seed's way (`wrangler secret put`),
//! non-interactively from stdin. Values are never printed.

use std::io::{IsTerminal, Read};

use anyhow::anyhow;
use serde_json::json;
use tes_keyring::{Keyring, Secret, SigningKey};
use tes_proto::KeyVersion;

use crate::cli::Global;
use crate::failure::{Failure, Result};
use crate::output::Printer;
use crate::runtime::environment;

pub fn put(global: &Global, version: KeyVersion, replace: bool) -> Result<()> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Failure::input(anyhow!(
            "pipe the secret on stdin, e.g. `openssl rand -hex 32 | tes secret put --key-version v{}`",
            version.get()
        )));
    }
    let mut bytes = Vec::new();
    stdin
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::input(anyhow!("cannot read stdin: {e}")))?;
    let secret = Secret::signing_key("the secret on stdin", bytes).map_err(Failure::input)?;
    let store = global.key_store();
    let old = store.load().map_err(Failure::input)?.remove(&version);
    store
        .put(version, &secret, replace)
        .map_err(Failure::input)?;
    let fingerprint = SigningKey::new(version, &secret).fingerprint().clone();
    if replace && global.ledger_path().exists() {
        // The ledger refuses material that differs from its record; a
        // replacement on purpose is recorded by its writer, here and now.
        if let Err(e) = record_replacement(global, version) {
            match old {
                Some(old) => store.put(version, &old, true).map_err(Failure::input)?,
                None => tracing::warn!("{version} had no key store entry before; the new one stays, and the ledger still refuses it"),
            }
            return Err(Failure {
                error: e.error.context(format!(
                    "{version} was not replaced (the key store is as it was): the ledger's writer must record it — stop the daemon on {} and run this again",
                    global.data_dir.display()
                )),
                ..e
            });
        }
    }
    Printer { json: global.json }.emit(
        format!(
            "stored {version} (fingerprint {fingerprint}) in the {}; a running daemon picks it up within seconds",
            store.describe()
        ),
        &json!({"version": version, "fingerprint": fingerprint, "keyStore": store.describe()}),
    );
    Ok(())
}

fn record_replacement(global: &Global, version: KeyVersion) -> Result<()> {
    let keyring =
        Keyring::load(environment(), &global.key_store(), false).map_err(Failure::input)?;
    let config = tes_version_management::EngineConfig {
        ledger_path: global.ledger_path(),
        policy: tes_version_management::core::Policy::default(),
        snapshot_every: 0,
        replace: Some(version),
    };
    tes_version_management::Engine::open(
        config,
        keyring,
        tes_version_management::engine::system_clock(),
    )
    .map(drop)
    .map_err(Failure::input)
}

pub fn list(global: &Global) -> Result<()> {
    let store = global.key_store();
    let ring = Keyring::load(environment(), &store, false).map_err(Failure::input)?;
    let p = Printer { json: global.json };
    if ring.is_empty() {
        p.say(format!(
            "no key material: set VERSION_SIGNING_KEY, or run `tes init` to generate v1 in the {}",
            store.describe()
        ));
    }
    for (version, loaded) in ring.entries() {
        p.emit(
            format!("{version}  fingerprint {}  from {}", loaded.key.fingerprint(), loaded.source),
            &json!({"version": version, "fingerprint": loaded.key.fingerprint(), "source": loaded.source.to_string()}),
        );
    }
    Ok(())
}
