//! The set of key versions this process holds.

use std::collections::BTreeMap;
use std::fmt;

use tes_proto::{Fingerprint, KeyVersion};

use crate::{source, KeyStore, KeyringError, Secret, SigningKey, Source};

#[derive(Clone)]
pub struct LoadedKey {
    pub key: SigningKey,
    pub source: Source,
}

#[derive(Clone, Default)]
pub struct Keyring {
    keys: BTreeMap<KeyVersion, LoadedKey>,
}

impl Keyring {
    /// Loads every version from the environment snapshot `env` and the key
    /// store. The environment wins where both have a version (it is how
    /// operators override). With `generate_v1` and no v1 anywhere, a random
    /// v1 is created once in the key store.
    pub fn load<I>(env: I, store: &KeyStore, generate_v1: bool) -> Result<Keyring, KeyringError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let from_env = source::from_env(env)?;
        let mut from_store = store.load()?;
        if generate_v1
            && !from_env.contains_key(&KeyVersion::V1)
            && !from_store.contains_key(&KeyVersion::V1)
        {
            let secret = Secret::generate()?;
            store.put(KeyVersion::V1, &secret, false)?;
            from_store.insert(KeyVersion::V1, secret);
        }
        let mut keys = BTreeMap::new();
        for (version, secret) in from_store {
            let key = SigningKey::new(version, &secret);
            keys.insert(
                version,
                LoadedKey {
                    key,
                    source: Source::KeyStore(store.describe()),
                },
            );
        }
        for (version, (secret, source)) in from_env {
            keys.insert(
                version,
                LoadedKey {
                    key: SigningKey::new(version, &secret),
                    source,
                },
            );
        }
        Ok(Keyring { keys })
    }

    pub fn get(&self, version: KeyVersion) -> Option<&SigningKey> {
        self.keys.get(&version).map(|l| &l.key)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&KeyVersion, &LoadedKey)> {
        self.keys.iter()
    }

    /// The versions held and their fingerprints: what a signer reports.
    pub fn held(&self) -> BTreeMap<KeyVersion, Fingerprint> {
        self.keys
            .iter()
            .map(|(v, l)| (*v, l.key.fingerprint().clone()))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.keys.iter().map(|(v, l)| (v, l.key.fingerprint())))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_v1_once_and_env_overrides_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("ks.json"));
        let first = Keyring::load(Vec::new(), &store, true).unwrap();
        let again = Keyring::load(Vec::new(), &store, true).unwrap();
        assert_eq!(
            first.held(),
            again.held(),
            "v1 is generated once, then reused"
        );

        let env = vec![(
            "VERSION_SIGNING_KEY".to_string(),
            "from-env-secret-16+".to_string(),
        )];
        let over = Keyring::load(env, &store, true).unwrap();
        assert_ne!(over.held()[&KeyVersion::V1], first.held()[&KeyVersion::V1]);
        assert!(matches!(
            over.entries().next().unwrap().1.source,
            Source::Env(_)
        ));
    }

    #[test]
    fn no_generation_means_no_store_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("ks.json"));
        let env = vec![(
            "VERSION_SIGNING_KEY".to_string(),
            "given-secret-of-16+".to_string(),
        )];
        Keyring::load(env, &store, true).unwrap();
        assert!(
            !store.path().unwrap().exists(),
            "env secrets are never copied to disk"
        );
    }

    #[test]
    fn debug_lists_fingerprints_only() {
        let env = vec![(
            "VERSION_SIGNING_KEY".to_string(),
            "my-known-secret-123".to_string(),
        )];
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::load(env, &KeyStore::new(dir.path().join("k")), false).unwrap();
        let shown = format!("{ring:?}");
        assert!(!shown.contains("my-known-secret"));
        assert!(shown.contains(ring.held()[&KeyVersion::V1].as_str()));
    }
}
