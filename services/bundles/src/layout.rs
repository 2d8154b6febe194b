//! Where bundles live in the store: `bundle/v<N>/<entity>/<semver>.json`
//! while their key version signs or verifies, `archive/v<N>/…` (same rest
//! of the key) after it retired. The prefixes themselves are defined once,
//! in Version Management's core, which checks archive batches against them.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tes_proto::KeyVersion;
pub use tes_version_management::core::decide::{archive_prefix, bundle_prefix};

/// Entity names are any printable characters; in a key, everything but
/// `A-Z a-z 0-9 - . _` is percent-encoded so a name can never add a level
/// (`/`) or climb one (`..` stays inside its own level).
const ENTITY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');

/// The key of the bundle of `entity` at `version` (semver), signed under `key_version`.
pub fn bundle_key(key_version: KeyVersion, entity: &str, version: &str) -> String {
    let entity = utf8_percent_encode(entity, ENTITY).to_string();
    let entity = if entity.chars().all(|c| c == '.') {
        // "." and ".." are names, not directions.
        entity.replace('.', "%2E")
    } else {
        entity
    };
    format!(
        "{}{}/{}.json",
        bundle_prefix(key_version),
        entity,
        utf8_percent_encode(version, ENTITY)
    )
}

/// Where the revocation of a key version is marked: one object per revoked
/// version, `revoked/v<N>.json` (its time, reason, who, ledger seq). The
/// version's bundles stay where they are (and are archived like a retired
/// version's); a reader of a bundle checks this listing for its
/// `keyVersion` before trusting it.
pub const REVOKED_PREFIX: &str = "revoked/";

pub fn revoked_key(version: KeyVersion) -> String {
    format!("{REVOKED_PREFIX}v{}.json", version.get())
}

/// The archive key of a bundle key: the same object under `archive/`.
/// `None` for a key that is not a bundle key.
pub fn archive_key(bundle_key: &str) -> Option<String> {
    bundle_key
        .strip_prefix("bundle/")
        .filter(|rest| version_in(rest).is_some())
        .map(|rest| format!("archive/{rest}"))
}

/// The key version a `bundle/…` or `archive/…` key belongs to.
pub fn version_of(key: &str) -> Option<KeyVersion> {
    let rest = key
        .strip_prefix("bundle/")
        .or_else(|| key.strip_prefix("archive/"))?;
    version_in(rest)
}

fn version_in(rest: &str) -> Option<KeyVersion> {
    let (v, name) = rest.split_once('/')?;
    if name.is_empty() {
        return None;
    }
    v.strip_prefix('v')?
        .parse::<u32>()
        .ok()
        .and_then(KeyVersion::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_follow_the_layout() {
        let v1 = KeyVersion::V1;
        assert_eq!(bundle_key(v1, "tes", "1.0.1"), "bundle/v1/tes/1.0.1.json");
        assert_eq!(
            archive_key("bundle/v1/tes/1.0.1.json").as_deref(),
            Some("archive/v1/tes/1.0.1.json")
        );
        assert_eq!(
            bundle_key(v1, "a/b c", "2.0.0"),
            "bundle/v1/a%2Fb%20c/2.0.0.json"
        );
        assert_eq!(bundle_key(v1, "..", "2.0.0"), "bundle/v1/%2E%2E/2.0.0.json");
        assert_eq!(archive_key("other/v1/x.json"), None);
        assert_eq!(archive_key("bundle/v1/"), None);
        assert_eq!(archive_key("bundle/vx/a.json"), None);
    }

    proptest! {
        /// Whatever the entity is called, its bundle is one level under its
        /// version's prefix and maps back to that version, in both places.
        #[test]
        fn any_entity_stays_in_its_version(entity in "\\PC{1,40}", n in 1u32..1000) {
            let v = KeyVersion::new(n).unwrap();
            let key = bundle_key(v, &entity, "1.2.3");
            let rest = key.strip_prefix(&bundle_prefix(v)).unwrap();
            prop_assert_eq!(rest.matches('/').count(), 1);
            prop_assert!(!rest.starts_with("../") && !rest.starts_with("./"));
            prop_assert_eq!(version_of(&key), Some(v));
            let archived = archive_key(&key).unwrap();
            prop_assert!(archived.starts_with(&archive_prefix(v)));
            prop_assert_eq!(version_of(&archived), Some(v));
        }
    }
}
