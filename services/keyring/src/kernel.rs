//! The OS credential store on a Linux server: the kernel keyring of this
//! user (`@u`), the seed's `Bun.secrets` in spirit. Entries are user-type
//! keys named `<namespace>:v<N>`; they live in kernel memory, never on disk,
//! and vanish at reboot (provision them from your secret manager at boot).

use std::collections::BTreeMap;

use linux_keyutils::{KeyError, KeyRing, KeyRingIdentifier};
use tes_proto::KeyVersion;
use zeroize::Zeroizing;

use crate::{KeyringError, Secret};

/// Versions are probed upwards; this many missing in a row ends the scan.
const PROBE_GAP: u32 = 8;

fn unavailable(what: &str, e: KeyError) -> KeyringError {
    KeyringError::OsStore(format!("{what}: {e:?}"))
}

fn user_keyring() -> Result<KeyRing, KeyringError> {
    KeyRing::from_special_id(KeyRingIdentifier::User, true)
        .map_err(|e| unavailable("the kernel keyring is not available", e))
}

fn name(namespace: &str, v: KeyVersion) -> String {
    format!("{namespace}:v{}", v.get())
}

fn read(ring: &KeyRing, namespace: &str, v: KeyVersion) -> Result<Option<Secret>, KeyringError> {
    read_named(ring, &name(namespace, v))
}

/// The audit key's entry.
fn audit_name(namespace: &str) -> String {
    format!("{namespace}:audit")
}

pub(crate) fn load_audit(namespace: &str) -> Result<Option<Secret>, KeyringError> {
    read_named(&user_keyring()?, &audit_name(namespace))
}

pub(crate) fn put_audit(namespace: &str, secret: &Secret) -> Result<(), KeyringError> {
    let ring = user_keyring()?;
    if read_named(&ring, &audit_name(namespace))?.is_some() {
        return Err(KeyringError::AuditKeyExists(format!(
            "kernel keyring {}",
            audit_name(namespace)
        )));
    }
    ring.add_key(&audit_name(namespace), secret.expose())
        .map(|_| ())
        .map_err(|e| unavailable("storing the audit key in the kernel keyring", e))
}

fn read_named(ring: &KeyRing, entry: &str) -> Result<Option<Secret>, KeyringError> {
    let key = match ring.search(entry) {
        Ok(k) => k,
        // The kernel also answers a search with "revoked" or "expired" when
        // such entries (ours or others', being torn down) lie on the way; no
        // usable material is there either way.
        Err(KeyError::KeyDoesNotExist | KeyError::KeyRevoked | KeyError::KeyExpired) => {
            return Ok(None)
        }
        Err(e) => return Err(unavailable("searching the kernel keyring", e)),
    };
    let bytes = Zeroizing::new(
        key.read_to_vec()
            .map_err(|e| unavailable("reading a key from the kernel keyring", e))?,
    );
    Secret::from_text(&format!("kernel keyring entry {entry}"), bytes.to_vec()).map(Some)
}

pub(crate) fn load(namespace: &str) -> Result<BTreeMap<KeyVersion, Secret>, KeyringError> {
    let ring = user_keyring()?;
    let mut out = BTreeMap::new();
    let (mut n, mut missing) = (1u32, 0u32);
    while missing < PROBE_GAP {
        let v = KeyVersion::new(n).expect("n starts at 1");
        match read(&ring, namespace, v)? {
            Some(secret) => {
                out.insert(v, secret);
                missing = 0;
            }
            None => missing += 1,
        }
        n += 1;
    }
    Ok(out)
}

pub(crate) fn put(
    namespace: &str,
    version: KeyVersion,
    secret: &Secret,
    replace: bool,
) -> Result<(), KeyringError> {
    let ring = user_keyring()?;
    if !replace && read(&ring, namespace, version)?.is_some() {
        return Err(KeyringError::AlreadyProvisioned(version));
    }
    ring.add_key(&name(namespace, version), secret.expose())
        .map(|_| ())
        .map_err(|e| unavailable("storing a key in the kernel keyring", e))
}

/// Removes a namespace's entries (tests clean up after themselves).
#[doc(hidden)]
pub fn remove_all(namespace: &str) -> Result<(), KeyringError> {
    let ring = user_keyring()?;
    for n in 1..=64 {
        if let Ok(key) = ring.search(&name(namespace, KeyVersion::new(n).expect("n >= 1"))) {
            let _ = ring.unlink_key(key);
            let _ = key.invalidate();
        }
    }
    if let Ok(key) = ring.search(&audit_name(namespace)) {
        let _ = ring.unlink_key(key);
        let _ = key.invalidate();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyStore;

    #[test]
    fn put_and_load_through_the_kernel_keyring() {
        let ns = format!("tes-test-{}", std::process::id());
        let store = KeyStore::parse(&format!("os:{ns}"));
        let secret = Secret::from_text("t", b"kernel-kept-secret".to_vec()).unwrap();
        let v2 = KeyVersion::new(2).unwrap();
        store.put(v2, &secret, false).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.keys().copied().collect::<Vec<_>>(), [v2]);
        assert_eq!(loaded[&v2].expose(), b"kernel-kept-secret");
        assert!(matches!(
            store.put(v2, &secret, false),
            Err(KeyringError::AlreadyProvisioned(_))
        ));
        remove_all(&ns).unwrap();
        assert!(store.load().unwrap().is_empty());
    }
}
