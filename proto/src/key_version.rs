//! Key versions (`v1`, `v2`, …) and key fingerprints.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A key version, 1 and up. Written `v2` in JSON and on the command line;
/// `2` and `V2` are accepted on input (the seed's health endpoint says `"2"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyVersion(u32);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key version {0:?}: expected v1, v2, … (or 1, 2, …)")]
pub struct InvalidKeyVersion(pub String);

impl KeyVersion {
    pub const V1: KeyVersion = KeyVersion(1);

    pub fn new(n: u32) -> Option<KeyVersion> {
        (n >= 1).then_some(KeyVersion(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The version after this one.
    pub fn next(self) -> KeyVersion {
        KeyVersion(self.0.saturating_add(1))
    }

    /// The seed's bare form, `"2"`.
    pub fn bare(self) -> String {
        self.0.to_string()
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl FromStr for KeyVersion {
    type Err = InvalidKeyVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .strip_prefix('v')
            .or_else(|| s.strip_prefix('V'))
            .unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidKeyVersion(s.to_string()));
        }
        digits
            .parse::<u32>()
            .ok()
            .and_then(KeyVersion::new)
            .ok_or_else(|| InvalidKeyVersion(s.to_string()))
    }
}

impl Serialize for KeyVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_u32(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for KeyVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = KeyVersion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key version such as \"v2\" or 2")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyVersion, E> {
                u32::try_from(v)
                    .ok()
                    .and_then(KeyVersion::new)
                    .ok_or_else(|| E::custom(InvalidKeyVersion(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyVersion, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(InvalidKeyVersion(v.to_string())))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_u32<E: de::Error>(self, v: u32) -> Result<KeyVersion, E> {
                self.visit_u64(v.into())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyVersion, E> {
                v.parse().map_err(E::custom)
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(Visitor)
        } else {
            d.deserialize_u32(Visitor)
        }
    }
}

impl schemars::JsonSchema for KeyVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KeyVersion".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Key version: \"v2\" (also accepted: \"2\", 2)",
            "oneOf": [
                {"type": "string", "pattern": "^[vV]?[0-9]+$"},
                {"type": "integer", "minimum": 1}
            ]
        })
    }
}

/// A key fingerprint: a keyed digest of the key material (HMAC of a fixed
/// label under the key itself), 16 lowercase hex characters. It tells two
/// keys apart and reveals nothing about either.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Fingerprint(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fingerprint: expected 16 lowercase hex characters")]
pub struct InvalidFingerprint;

impl Fingerprint {
    pub const LEN: usize = 16;

    pub fn parse(s: &str) -> Result<Fingerprint, InvalidFingerprint> {
        let ok = s.len() == Self::LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Fingerprint(s.to_string()))
            .ok_or(InvalidFingerprint)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_refuses_nonsense() {
        for s in ["v2", "V2", "2"] {
            assert_eq!(s.parse::<KeyVersion>().unwrap().get(), 2);
        }
        for s in ["", "v", "v0", "0", "vx", "-1", "v99999999999", "2.0"] {
            assert!(s.parse::<KeyVersion>().is_err(), "{s}");
        }
        let v: KeyVersion = serde_json::from_str("3").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"v3\"");
        assert!(serde_json::from_str::<KeyVersion>("0").is_err());
    }

    #[test]
    fn fingerprint_is_strict() {
        assert!(Fingerprint::parse("0123456789abcdef").is_ok());
        assert!(Fingerprint::parse("0123456789ABCDEF").is_err());
        assert!(Fingerprint::parse("0123").is_err());
    }
}
