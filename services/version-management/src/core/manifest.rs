//! Semver bumps and the canonical manifest they sign.

use tes_proto::command::Scope;
use tes_proto::reply::Manifest;

/// The version an entity has before its first bump.
pub const INITIAL_VERSION: &str = "1.0.0";

pub fn bump(from: &str, scope: Scope) -> Result<String, String> {
    let mut v = semver::Version::parse(from)
        .map_err(|e| format!("stored version {from:?} is not semver: {e}"))?;
    v.pre = semver::Prerelease::EMPTY;
    v.build = semver::BuildMetadata::EMPTY;
    match scope {
        Scope::Patch => v.patch += 1,
        Scope::Minor => {
            v.minor += 1;
            v.patch = 0;
        }
        Scope::Major => {
            v.major += 1;
            v.minor = 0;
            v.patch = 0;
        }
    }
    Ok(v.to_string())
}

/// The exact bytes a manifest's signature covers: RFC 8785 canonical JSON.
pub fn canonical(manifest: &Manifest) -> String {
    serde_json_canonicalizer::to_string(manifest).expect("a manifest is plain data")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tes_proto::{KeyVersion, Timestamp};

    #[test]
    fn bumps_follow_semver() {
        assert_eq!(bump("1.2.3", Scope::Patch).unwrap(), "1.2.4");
        assert_eq!(bump("1.2.3", Scope::Minor).unwrap(), "1.3.0");
        assert_eq!(bump("1.2.3", Scope::Major).unwrap(), "2.0.0");
        assert_eq!(bump("1.2.3-rc.1", Scope::Patch).unwrap(), "1.2.4");
        assert!(bump("one", Scope::Patch).is_err());
    }

    #[test]
    fn canonical_form_sorts_keys_and_has_no_whitespace() {
        let m = Manifest {
            entity: "tes".into(),
            version: "1.0.1".into(),
            previous: "1.0.0".into(),
            scope: Scope::Patch,
            key_version: KeyVersion::V1,
            timestamp: Timestamp::from_millis(0),
        };
        assert_eq!(
            canonical(&m),
            r#"{"entity":"tes","keyVersion":"v1","previous":"1.0.0","scope":"patch","timestamp":"1970-01-01T00:00:00.000Z","version":"1.0.1"}"#
        );
    }
}
