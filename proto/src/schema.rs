//! JSON Schemas of every message, generated from the types. `schemas/` at the
//! top of the repository holds the same documents; the test below fails when
//! they drift apart, and `TES_BLESS=1 cargo test -p tes-proto schemas`
//! rewrites them after a deliberate change.

use schemars::{schema_for, JsonSchema};

use crate::command::{
    AlertNotice, AlertsQuery, Archive, Audit, Bump, CommandBody, Grace, History, MetricsQuery,
    Record, Revoke, Rollback, Rotate, Sign, SignBatch, SignersQuery, Status, Verify, VerifyBatch,
};
use crate::envelope::Envelope;
use crate::event::{self, Event};
use crate::reply::Reply;

/// `(file name, schema)` for every message.
pub fn all() -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    command::<Rotate>(&mut out);
    command::<Rollback>(&mut out);
    command::<Sign>(&mut out);
    command::<Verify>(&mut out);
    command::<SignBatch>(&mut out);
    command::<VerifyBatch>(&mut out);
    command::<Bump>(&mut out);
    command::<Status>(&mut out);
    command::<Record>(&mut out);
    command::<MetricsQuery>(&mut out);
    command::<AlertsQuery>(&mut out);
    command::<AlertNotice>(&mut out);
    command::<Archive>(&mut out);
    command::<Revoke>(&mut out);
    command::<Grace>(&mut out);
    command::<History>(&mut out);
    command::<SignersQuery>(&mut out);
    command::<Audit>(&mut out);
    push::<Envelope<Event>>(&mut out, "event.envelope.json".to_string());
    push::<event::KeyProvisioned>(&mut out, event_file(event::kind::KEY_PROVISIONED));
    push::<event::KeyRotate>(&mut out, event_file(event::kind::KEY_ROTATE));
    push::<event::KeyRollback>(&mut out, event_file(event::kind::KEY_ROLLBACK));
    push::<event::KeyRetired>(&mut out, event_file(event::kind::KEY_RETIRED));
    push::<event::KeyFallback>(&mut out, event_file(event::kind::KEY_FALLBACK));
    push::<event::RotationFailed>(&mut out, event_file(event::kind::ROTATION_FAILED));
    push::<event::SignatureGenerated>(&mut out, event_file(event::kind::SIGNATURE_GENERATED));
    push::<event::SignatureVerified>(&mut out, event_file(event::kind::SIGNATURE_VERIFIED));
    push::<event::VersionBump>(&mut out, event_file(event::kind::VERSION_BUMP));
    push::<event::Rejected>(&mut out, event_file(event::kind::REJECTED));
    push::<event::Checkpoint>(&mut out, event_file(event::kind::CHECKPOINT));
    push::<event::SignerHeartbeat>(&mut out, event_file(event::kind::SIGNER_HEARTBEAT));
    push::<event::MetricsSnapshot>(&mut out, event_file(event::kind::METRICS));
    push::<event::AlertRaised>(&mut out, event_file(event::kind::ALERT));
    push::<event::AlertResolved>(&mut out, event_file(event::kind::RESOLVED));
    push::<event::ArchiveBatch>(&mut out, event_file(event::kind::ARCHIVE_BATCH));
    push::<event::BundleArchived>(&mut out, event_file(event::kind::BUNDLE_ARCHIVED));
    push::<event::KeyRevoked>(&mut out, event_file(event::kind::KEY_REVOKED));
    push::<event::GraceChanged>(&mut out, event_file(event::kind::GRACE_CHANGED));
    push::<event::KeyExpirySet>(&mut out, event_file(event::kind::KEY_EXPIRY_SET));
    out
}

fn event_file(kind: &str) -> String {
    format!("event.{kind}.json")
}

fn command<C: CommandBody>(out: &mut Vec<(String, serde_json::Value)>) {
    push::<C>(out, format!("command.{}.json", C::VERB));
    push::<Envelope<C>>(out, format!("command.{}.envelope.json", C::VERB));
    push::<Reply<C::Reply>>(out, format!("reply.{}.json", C::VERB));
}

fn push<T: JsonSchema>(out: &mut Vec<(String, serde_json::Value)>, name: String) {
    out.push((name, schema_for!(T).to_value()));
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn schemas_directory_matches_the_types() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        let bless = std::env::var_os("TES_BLESS").is_some();
        let mut stale = Vec::new();
        let mut expected_files = Vec::new();
        for (name, schema) in super::all() {
            let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
            let path = dir.join(&name);
            expected_files.push(name.clone());
            if bless {
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(name);
            }
        }
        let mut extra: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json") && !expected_files.contains(n))
            .collect();
        extra.sort();
        assert!(
            stale.is_empty() && extra.is_empty(),
            "schemas/ is out of date (stale: {stale:?}, no longer generated: {extra:?}); \
             run `TES_BLESS=1 cargo test -p tes-proto schemas` and review the diff"
        );
    }
}
