//! Subject syntax and wildcard matching (NATS rules): tokens separated by
//! `.`, `*` matches one token, `>` matches one or more trailing tokens.

use crate::BusError;

/// A subject to publish to: non-empty tokens, no wildcards, no whitespace.
pub fn validate_subject(subject: &str) -> Result<(), BusError> {
    let ok = !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.chars().any(char::is_whitespace));
    ok.then_some(())
        .ok_or_else(|| BusError::InvalidSubject(subject.to_string()))
}

/// A pattern to subscribe to: like a subject, but `*` anywhere and `>` last.
pub fn validate_pattern(pattern: &str) -> Result<(), BusError> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    let ok = !pattern.is_empty()
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && !t.chars().any(char::is_whitespace)
                && (*t != ">" || i == tokens.len() - 1)
        });
    ok.then_some(())
        .ok_or_else(|| BusError::InvalidSubject(pattern.to_string()))
}

pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wildcards() {
        assert!(matches("tes.cmd.0x6001.*", "tes.cmd.0x6001.sign"));
        assert!(!matches("tes.cmd.0x6001.*", "tes.cmd.0x6001"));
        assert!(!matches("tes.cmd.0x6001.*", "tes.cmd.0x6001.sign.x"));
        assert!(matches("tes.>", "tes.evt.0x6001.key_rotate"));
        assert!(!matches("tes.>", "tes"));
        assert!(matches("tes.*.0x6001.>", "tes.evt.0x6001.key_rotate"));
        assert!(!matches("tes.cmd", "tes.cmd.x"));
        assert!(validate_pattern("a.>.b").is_err());
        assert!(validate_subject("a.*").is_err());
        assert!(validate_subject("a..b").is_err());
        assert!(validate_subject("a b").is_err());
    }

    proptest! {
        #[test]
        fn exact_full_and_single_wildcards_agree(tokens in proptest::collection::vec("[a-z0-9]{1,4}", 1..6), i in any::<prop::sample::Index>()) {
            let subject = tokens.join(".");
            prop_assert!(matches(&subject, &subject));
            prop_assert!(matches(">", &subject));
            let mut with_star = tokens.clone();
            let at = i.index(tokens.len());
            with_star[at] = "*".into();
            prop_assert!(matches(&with_star.join("."), &subject));
            let prefix = tokens[..at].iter().cloned().chain(std::iter::once(">".to_string())).collect::<Vec<_>>().join(".");
            prop_assert!(matches(&prefix, &subject));
            let longer = format!("{subject}.x");
            prop_assert!(!matches(&subject, &longer));
        }
    }
}
