//! Secret sources in the environment: `VERSION_SIGNING_KEY` (v1),
//! `VERSION_SIGNING_KEY_V<N>`, and each one's `…_FILE` form (a path, as
//! Docker and Kubernetes mount secrets).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use tes_proto::KeyVersion;

use crate::{KeyringError, Secret};

/// The v1 variable (the seed's name).
pub const V1_VAR: &str = "VERSION_SIGNING_KEY";
/// Suffix of the file form of any variable.
pub const FILE_SUFFIX: &str = "_FILE";

/// Where a version's material came from; shown by `tes secret list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Env(String),
    File { var: String, path: PathBuf },
    KeyStore(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(var) => write!(f, "env {var}"),
            Source::File { var, path } => write!(f, "file {} (from {var})", path.display()),
            Source::KeyStore(store) => f.write_str(store),
        }
    }
}

/// The variable that carries version `v`: `VERSION_SIGNING_KEY` for v1,
/// `VERSION_SIGNING_KEY_V<N>` otherwise.
pub fn var_for(v: KeyVersion) -> String {
    if v == KeyVersion::V1 {
        V1_VAR.to_string()
    } else {
        format!("{V1_VAR}_V{}", v.get())
    }
}

/// Which version a variable name is for, and whether it is the file form.
/// `None` for unrelated variables; an error for ours with a bad version.
fn classify(name: &str) -> Option<Result<(KeyVersion, bool), KeyringError>> {
    let rest = name.strip_prefix(V1_VAR)?;
    let (rest, is_file) = match rest.strip_suffix(FILE_SUFFIX) {
        Some(r) => (r, true),
        None => (rest, false),
    };
    if rest.is_empty() {
        return Some(Ok((KeyVersion::V1, is_file)));
    }
    let digits = rest.strip_prefix("_V")?;
    let version = digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok().and_then(KeyVersion::new))
        .flatten();
    Some(
        version
            .map(|v| (v, is_file))
            .ok_or_else(|| KeyringError::BadVariable {
                var: name.to_string(),
                reason: "key versions are whole numbers from 1 (VERSION_SIGNING_KEY_V2, …)"
                    .to_string(),
            }),
    )
}

/// Reads every version's secret from `vars` (a snapshot of the environment,
/// so tests need not touch the process's own).
pub fn from_env<I>(vars: I) -> Result<BTreeMap<KeyVersion, (Secret, Source)>, KeyringError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut out: BTreeMap<KeyVersion, (Secret, Source)> = BTreeMap::new();
    let mut names: BTreeMap<KeyVersion, String> = BTreeMap::new();
    for (name, value) in vars {
        let Some(classified) = classify(&name) else {
            if name.to_ascii_uppercase().starts_with(V1_VAR) {
                // VERSION_SIGNING_KEY_v2, version_signing_key, …: almost
                // certainly meant as a key, and silently ignored otherwise.
                tracing::warn!(
                    var = %name,
                    "looks like a signing-key variable but is not one (VERSION_SIGNING_KEY, VERSION_SIGNING_KEY_V<N>, or their _FILE forms): ignored"
                );
            }
            continue;
        };
        let (version, is_file) = classified?;
        if let Some(previous) = names.get(&version) {
            return Err(KeyringError::AmbiguousSource(previous.clone(), name));
        }
        let (secret, source) = if is_file {
            let path = PathBuf::from(&value);
            let bytes =
                std::fs::read(&path).map_err(|error| KeyringError::SecretFileUnreadable {
                    var: name.clone(),
                    path: path.clone(),
                    error,
                })?;
            let secret = Secret::signing_key(&format!("{name} ({})", path.display()), bytes)?;
            (
                secret,
                Source::File {
                    var: name.clone(),
                    path,
                },
            )
        } else {
            (
                Secret::signing_key(&name, value.into_bytes())?,
                Source::Env(name.clone()),
            )
        };
        names.insert(version, name);
        out.insert(version, (secret, source));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_v1_vn_and_file_forms() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v3");
        std::fs::write(&file, "third-secret-of-16+\n").unwrap();
        let got = from_env(vars(&[
            ("VERSION_SIGNING_KEY", "first-secret-of-16+"),
            ("VERSION_SIGNING_KEY_V2", "second-secret-of-16+"),
            ("VERSION_SIGNING_KEY_V3_FILE", file.to_str().unwrap()),
            ("PATH", "/usr/bin"),
            ("VERSION_SIGNING_KEYRING", "unrelated"),
        ]))
        .unwrap();
        let versions: Vec<u32> = got.keys().map(|v| v.get()).collect();
        assert_eq!(versions, [1, 2, 3]);
        assert_eq!(
            got[&KeyVersion::new(3).unwrap()].0.expose(),
            b"third-secret-of-16+"
        );
    }

    #[test]
    fn short_secrets_are_refused_naming_the_variable_not_the_value() {
        let err = from_env(vars(&[("VERSION_SIGNING_KEY_V2", "hello")])).unwrap_err();
        let words = err.to_string();
        assert!(
            words.contains("VERSION_SIGNING_KEY_V2 is 5 byte(s)"),
            "{words}"
        );
        assert!(!words.contains("hello"));
        // 16 bytes pass (with a warning); a look-alike name is ignored.
        let got = from_env(vars(&[
            ("VERSION_SIGNING_KEY", "sixteen-bytes-ok"),
            ("VERSION_SIGNING_KEY_v2", "lowercase-v-is-not-ours"),
        ]))
        .unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn bad_input_is_named_without_the_value() {
        let err = from_env(vars(&[("VERSION_SIGNING_KEY_V2", "")])).unwrap_err();
        assert!(
            err.to_string().contains("VERSION_SIGNING_KEY_V2 is empty"),
            "{err}"
        );

        let err =
            from_env(vars(&[("VERSION_SIGNING_KEY_FILE", "/nonexistent/secret")])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/secret"), "{err}");

        let err = from_env(vars(&[
            ("VERSION_SIGNING_KEY_V2", "topsecret-a-of-16+"),
            ("VERSION_SIGNING_KEY_V2_FILE", "/x"),
        ]))
        .unwrap_err();
        assert!(matches!(err, KeyringError::AmbiguousSource(..)));
        assert!(!err.to_string().contains("topsecret"));

        for bad in ["VERSION_SIGNING_KEY_V0", "VERSION_SIGNING_KEY_Vx"] {
            assert!(from_env(vars(&[(bad, "topsecret")])).is_err(), "{bad}");
        }
    }
}
