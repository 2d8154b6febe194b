//! The gate: may this rotation or rollback go through, given what Version
//! Management reports? Pure: the status is passed in.

use std::time::Duration;

use tes_proto::command::Rotate;
use tes_proto::reply::{KeyStatus, SignerView, SignersReply, StatusReply};
use tes_proto::{ErrorCode, ErrorReply, KeyVersion};

use tes_proto::event::WRITER_SIGNER;

use crate::signers::LiveSigner;

/// A rotation needs a target (the one asked for, or the next provisioned),
/// and — unless forced — the target's material must be held by the ledger
/// writer and by every live signer, with the fingerprint the ledger knows
/// (Tink's propagation rule: never promote a key a signer cannot use).
pub fn check_rotate(
    status: &StatusReply,
    live: &[LiveSigner],
    command: &Rotate,
) -> Result<KeyVersion, ErrorReply> {
    // After a forced revocation nothing is active: a rotation to a new
    // version is how signing resumes, from the revoked one.
    let revoked = status
        .keys
        .iter()
        .filter(|k| k.status == KeyStatus::Revoked)
        .max_by_key(|k| k.revoked_at)
        .map(|k| k.version);
    let Some(active) = status.key_version.or(revoked) else {
        return Err(ErrorReply::new(
            ErrorCode::NoNextVersion,
            "no version is active yet",
        ));
    };
    let target = match command.to {
        Some(v) => v,
        None => status.next.ok_or_else(|| {
            let next = active.next();
            ErrorReply::new(
                ErrorCode::NoNextVersion,
                format!(
                    "{next} key not configured: no key version after {active} is provisioned. \
                     Provision one with `openssl rand -hex 32 | tes secret put --key-version v{n}` or VERSION_SIGNING_KEY_V{n}",
                    n = next.get()
                ),
            )
        })?,
    };
    let Some(key) = status.keys.iter().find(|k| k.version == target) else {
        return Err(ErrorReply::new(
            ErrorCode::UnknownVersion,
            format!("key version {target} is unknown to the ledger"),
        ));
    };
    if key.status == KeyStatus::Retired {
        return Err(ErrorReply::new(
            ErrorCode::RetiredVersion,
            format!("key version {target} is retired"),
        ));
    }
    if key.status == KeyStatus::Revoked {
        return Err(ErrorReply::new(
            ErrorCode::RevokedVersion,
            format!(
                "key version {target} was revoked{}: it can never be active again",
                key.revoked_reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        ));
    }
    if !key.held && !command.force {
        return Err(ErrorReply::new(
            ErrorCode::Gated,
            format!(
                "refusing to promote {target}: a live signer does not hold its material yet \
                 (fingerprint {}); provision it there, or pass --force to rotate anyway (recorded as forced)",
                key.fingerprint
            ),
        ));
    }
    if !command.force {
        // The writer's keys are `key.held` above, read from its status at
        // decision time; its last heartbeat may be older than that.
        let lacking: Vec<&str> = live
            .iter()
            .filter(|s| s.name != WRITER_SIGNER)
            .filter(|s| {
                !s.held
                    .iter()
                    .any(|h| h.version == target && h.fingerprint == key.fingerprint)
            })
            .map(|s| s.name.as_str())
            .collect();
        if !lacking.is_empty() {
            return Err(ErrorReply::new(
                ErrorCode::Gated,
                format!(
                    "refusing to promote {target}: live signer(s) {} do not hold it (fingerprint {}); \
                     provision it there, or pass --force to rotate anyway (they will fall back, recorded)",
                    lacking.join(", "),
                    key.fingerprint
                ),
            ));
        }
    }
    Ok(target)
}

/// Who signs, and whether a plain rotation (to the next version, not
/// forced) would pass [`check_rotate`] now: the admin page's "signers and
/// the gate". The writer's holdings come from its status (as the gate reads
/// them), every other signer's from its last heartbeat.
pub fn signers_report(status: &StatusReply, heard: &[(LiveSigner, Duration)]) -> SignersReply {
    let live: Vec<LiveSigner> = heard.iter().map(|(s, _)| s.clone()).collect();
    let refusal = check_rotate(status, &live, &Rotate::default())
        .err()
        .map(|e| e.message);
    let next_key = status
        .next
        .and_then(|n| status.keys.iter().find(|k| k.version == n));
    let lacking = match next_key {
        Some(key) => {
            let writer_lacks = (!key.held).then(|| WRITER_SIGNER.to_string());
            let others = heard
                .iter()
                .map(|(s, _)| s)
                .filter(|s| s.name != WRITER_SIGNER)
                .filter(|s| {
                    !s.held
                        .iter()
                        .any(|h| h.version == key.version && h.fingerprint == key.fingerprint)
                })
                .map(|s| s.name.clone());
            writer_lacks.into_iter().chain(others).collect()
        }
        None => Vec::new(),
    };
    SignersReply {
        signers: heard
            .iter()
            .map(|(s, age)| SignerView {
                name: s.name.clone(),
                held: s.held.clone(),
                heard_ms_ago: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            })
            .collect(),
        next: status.next,
        refusal,
        lacking,
    }
}

/// A rollback needs a previous version that still verifies.
pub fn check_rollback(status: &StatusReply) -> Result<KeyVersion, ErrorReply> {
    let previous = status.previous.ok_or_else(|| {
        ErrorReply::new(
            ErrorCode::NothingToRollBack,
            match status.key_version {
                Some(a) => format!("nothing to roll back to: {a} is active and no previous version is still verifying"),
                None => "nothing to roll back: no version is active yet".to_string(),
            },
        )
    })?;
    Ok(previous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tes_proto::reply::KeyView;
    use tes_proto::Fingerprint;

    fn key(n: u32, status: KeyStatus, held: bool) -> KeyView {
        KeyView {
            version: KeyVersion::new(n).unwrap(),
            status,
            fingerprint: Fingerprint::parse("0123456789abcdef").unwrap(),
            activated_at: None,
            grace_until: None,
            expires_at: None,
            signatures: 0,
            held,
            archived_objects: 0,
            archived_bytes: 0,
            archiving: false,
            material_changes: 0,
            revoked_at: None,
            revoked_reason: None,
            provisioned_at: None,
            status_since: None,
            deactivated_at: None,
            retired_at: None,
        }
    }

    /// v1 active, v2 provisioned (held by the writer or not), v2 next.
    fn v1_active_v2_provisioned(v2_held: bool) -> StatusReply {
        status(
            vec![
                key(1, KeyStatus::Active, true),
                key(2, KeyStatus::Provisioned, v2_held),
            ],
            Some(2),
            None,
        )
    }

    fn status(keys: Vec<KeyView>, next: Option<u32>, previous: Option<u32>) -> StatusReply {
        StatusReply {
            key_version: Some(KeyVersion::V1),
            previous: previous.and_then(KeyVersion::new),
            next: next.and_then(KeyVersion::new),
            last_sig_version: None,
            rotation_timestamp: None,
            rotation_reason: None,
            rotated_by: None,
            keys,
            entities: vec![],
            fallbacks: 0,
            head_seq: 0,
            head_hash: String::new(),
            applied_seq: None,
        }
    }

    #[test]
    fn rotation_needs_a_held_next_version_unless_forced() {
        let none = status(vec![key(1, KeyStatus::Active, true)], None, None);
        assert_eq!(
            check_rotate(&none, &[], &Rotate::default())
                .unwrap_err()
                .code,
            ErrorCode::NoNextVersion
        );

        let unheld = v1_active_v2_provisioned(false);
        assert_eq!(
            check_rotate(&unheld, &[], &Rotate::default())
                .unwrap_err()
                .code,
            ErrorCode::Gated
        );
        let forced = Rotate {
            force: true,
            ..Rotate::default()
        };
        assert_eq!(check_rotate(&unheld, &[], &forced).unwrap().get(), 2);

        let ok = v1_active_v2_provisioned(true);
        assert_eq!(check_rotate(&ok, &[], &Rotate::default()).unwrap().get(), 2);
        let to_retired = Rotate {
            to: KeyVersion::new(1),
            ..Rotate::default()
        };
        let retired = status(vec![key(1, KeyStatus::Retired, true)], None, None);
        assert_eq!(
            check_rotate(&retired, &[], &to_retired).unwrap_err().code,
            ErrorCode::RetiredVersion
        );
    }

    #[test]
    fn every_live_signer_must_hold_the_target_with_the_ledgers_fingerprint() {
        use tes_proto::event::HeldKey;
        let ok = v1_active_v2_provisioned(true);
        let holds = |name: &str, fp: &str| LiveSigner {
            name: name.into(),
            held: vec![HeldKey {
                version: KeyVersion::new(2).unwrap(),
                fingerprint: Fingerprint::parse(fp).unwrap(),
            }],
        };
        let same = "0123456789abcdef";
        let other = "fedcba9876543210";
        assert!(check_rotate(
            &ok,
            &[holds("a", same), holds("b", same)],
            &Rotate::default()
        )
        .is_ok());
        let lacking = LiveSigner {
            name: "c".into(),
            held: vec![],
        };
        let err = check_rotate(
            &ok,
            &[holds("a", same), lacking.clone(), holds("d", other)],
            &Rotate::default(),
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::Gated);
        assert!(err.message.contains("c, d"), "{}", err.message);
        let forced = Rotate {
            force: true,
            ..Rotate::default()
        };
        assert!(check_rotate(&ok, &[lacking], &forced).is_ok());
        // The writer's own (possibly stale) heartbeat does not outvote its status.
        let stale_writer = LiveSigner {
            name: WRITER_SIGNER.into(),
            held: vec![],
        };
        assert!(check_rotate(&ok, &[stale_writer], &Rotate::default()).is_ok());
    }

    #[test]
    fn the_signers_report_names_who_lacks_the_next_version() {
        use tes_proto::event::HeldKey;
        let holds = |name: &str, fp: &str| LiveSigner {
            name: name.into(),
            held: vec![HeldKey {
                version: KeyVersion::new(2).unwrap(),
                fingerprint: Fingerprint::parse(fp).unwrap(),
            }],
        };
        let ok = v1_active_v2_provisioned(true);
        let heard = [
            (holds("a", "0123456789abcdef"), Duration::from_millis(1200)),
            (holds("b", "fedcba9876543210"), Duration::from_millis(300)),
        ];
        let report = signers_report(&ok, &heard);
        assert_eq!(report.next, KeyVersion::new(2));
        assert_eq!(report.lacking, vec!["b".to_string()]);
        let refusal = report.refusal.expect("b lacks v2: the gate refuses");
        assert!(refusal.contains("b do not hold it"), "{refusal}");
        assert_eq!(report.signers.len(), 2);
        assert_eq!(report.signers[0].heard_ms_ago, 1200);

        let promotable = signers_report(&ok, &heard[..1]);
        assert_eq!(promotable.refusal, None);
        assert!(promotable.lacking.is_empty());

        // The writer lacking it (its status says so) is named too.
        let unheld = v1_active_v2_provisioned(false);
        let report = signers_report(&unheld, &[]);
        assert_eq!(report.lacking, vec![WRITER_SIGNER.to_string()]);
        assert!(report.refusal.is_some());

        // Nothing provisioned after the active version: nothing to promote.
        let last = status(vec![key(1, KeyStatus::Active, true)], None, None);
        let report = signers_report(&last, &heard);
        assert_eq!(report.next, None);
        assert!(report.lacking.is_empty());
        assert!(report.refusal.unwrap().contains("not configured"));
    }

    #[test]
    fn rollback_needs_a_previous_version() {
        let s = status(vec![], None, None);
        assert_eq!(
            check_rollback(&s).unwrap_err().code,
            ErrorCode::NothingToRollBack
        );
        let s = status(vec![], None, Some(1));
        assert_eq!(check_rollback(&s).unwrap(), KeyVersion::V1);
    }
}
