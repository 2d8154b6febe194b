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
            "pipe the secret on stdin, e.g. `openssl rand -hex 32 | tes secret put --version {}`",
            version.get()
        )));
    }
    let mut bytes = Vec::new();
    stdin
        .lock()
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::input(anyhow!("cannot read stdin: {e}")))?;
    let secret = Secret::from_text("the secret on stdin", bytes).map_err(Failure::input)?;
    let store = global.key_store();
    store
        .put(version, &secret, replace)
        .map_err(Failure::input)?;
    let fingerprint = SigningKey::new(version, &secret).fingerprint().clone();
    Printer { json: global.json }.emit(
        format!(
            "stored {version} (fingerprint {fingerprint}) in the {}; a running daemon picks it up within seconds",
            store.describe()
        ),
        &json!({"version": version, "fingerprint": fingerprint, "keyStore": store.describe()}),
    );
    Ok(())
}

pub fn list(global: &Global) -> Result<()> {
    let store = global.key_store();
    let ring = Keyring::load(environment(), &store, false).map_err(Failure::input)?;
    let p = Printer { json: global.json };
    if ring.is_empty() {
        p.say(format!(
            "no key material: set VERSION_SIGNING_KEY, or run the daemon once to generate v1 in the {}",
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
