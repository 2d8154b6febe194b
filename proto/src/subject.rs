//! The subject scheme: `tes.cmd.<thread>.<verb>` and `tes.evt.<thread>.<kind>`.
//!
//! Every subject, verb, queue group and bucket name used anywhere in the
//! project is built here, so a grep for a subject finds its one definition.

use crate::thread::ThreadId;

/// Prefix of the COMMAND channel.
pub const COMMAND_PREFIX: &str = "tes.cmd";
/// Prefix of the EVENT channel.
pub const EVENT_PREFIX: &str = "tes.evt";
/// Every command, for a stream or a wiretap.
pub const ALL_COMMANDS: &str = "tes.cmd.>";
/// Every event, for a stream or `tes watch`.
pub const ALL_EVENTS: &str = "tes.evt.>";

/// The JetStream stream of the events worth keeping (see [`durable_events`]).
pub const EVENTS_STREAM: &str = "TES_EVENTS";

/// The subjects of [`EVENTS_STREAM`]: the ledger's events, as the writer
/// publishes them once committed — its own under 0x6001, the alerts it
/// records under 0x5003 — and nothing else. Only the writer's NATS user may
/// publish them, so only the writer appends to the stream. Heartbeats,
/// checkpoints, refusals and snapshots stay on core NATS (checkpoints also
/// go to [`CHECKPOINTS_STREAM`]): they are not the ledger, and would fill it.
pub fn durable_events() -> Vec<String> {
    use crate::event::kind;
    kind::ledgered()
        .map(|k| match k {
            kind::ALERT | kind::RESOLVED => event(ThreadId::Alert, k),
            _ => event(ThreadId::VersionManagement, k),
        })
        .collect()
}

/// On a cluster, the replicated ledger: each ledger event stored once, in
/// order, at the stream sequence equal to its ledger seq, every append
/// fenced by the sequence it expects before it (so two writers can never
/// interleave). Written only by the writer; followed by standby writers.
pub const LEDGER_STREAM: &str = "TES_LEDGER";

/// The one subject of [`LEDGER_STREAM`].
pub fn ledger_append() -> String {
    format!("tes.ledger.{}", ThreadId::VersionManagement.token())
}

/// The JetStream stream of signed checkpoints: a witness of the ledger
/// outside its file, written only by the writer, never purged or deleted.
pub const CHECKPOINTS_STREAM: &str = "TES_CHECKPOINTS";

/// The subject of [`CHECKPOINTS_STREAM`] (the `checkpoint` event).
pub fn checkpoints() -> String {
    event(ThreadId::VersionManagement, crate::event::kind::CHECKPOINT)
}

/// The JetStream stream of the commands that must not be lost: the
/// Supervisor's `rotate` and `rollback`. Request/reply verbs stay out of it:
/// a stream that captures a subject answers every request on it with its
/// own PubAck.
pub const COMMANDS_STREAM: &str = "TES_COMMANDS";

/// The subjects of [`COMMANDS_STREAM`].
pub fn durable_commands() -> Vec<String> {
    vec![
        command(ThreadId::Supervisor, verb::ROTATE),
        command(ThreadId::Supervisor, verb::ROLLBACK),
    ]
}

/// The Supervisor's durable consumer of [`COMMANDS_STREAM`]: a durable
/// command is accepted only while it exists (something will consume it).
pub const SUPERVISOR_CONSUMER: &str = "supervisor";

/// On a durable command: where its outcome (a [`crate::Reply`]) goes.
pub const REPLY_TO_HEADER: &str = "Tes-Reply-To";

/// Queue group of the signer replicas on `tes.cmd.0x6001.sign`.
pub const SIGNERS_QUEUE: &str = "signers";

/// Header carrying the codec of the payload (`application/json` or the binary form).
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";
/// On a published ledger event: its ledger seq. Followers use it to count
/// each ledgered event exactly once (a resend after JetStream's duplicate
/// window, or an event both replayed from the ledger and seen live).
pub const LEDGER_SEQ_HEADER: &str = "Tes-Seq";
/// Header carrying the message id; NATS JetStream de-duplicates on it.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// On a published ledger event: the identity of the ledger it is a row of
/// (the hex hash of its seq 1). Replicas follow only the ledger the writer
/// lease names.
pub const LEDGER_ID_HEADER: &str = "Tes-Ledger";

/// The JetStream key-value bucket the Supervisor watches (the seed's
/// `KV.put('rotation-signal', 'rotate')`).
pub mod kv {
    pub const BUCKET: &str = "tes";
    /// Values `rotate` or `rollback`; each revision is acted on at most once.
    pub const ROTATION_SIGNAL: &str = "rotation-signal";
    /// The last `rotation-signal` revision the Supervisor handled.
    pub const SIGNAL_CURSOR: &str = "supervisor-signal-cursor";
    /// How a refusal of a KV signal names where it came from.
    pub const SIGNAL_SUBJECT: &str = "$KV.tes.rotation-signal";
    /// The ledger writer's lease: which ledger (its genesis hash) is
    /// written, by whom, until when. One writer per deployment.
    pub const WRITER_LEASE: &str = "writer-lease";
    /// Standby writers announce themselves under `standby.<id>` (their
    /// holder name and how far they followed), every few seconds.
    pub const STANDBY_PREFIX: &str = "standby.";
    pub const ROTATE: &str = "rotate";
    pub const ROLLBACK: &str = "rollback";
}

/// Command verbs.
pub mod verb {
    pub const ROTATE: &str = "rotate";
    pub const ROLLBACK: &str = "rollback";
    pub const SIGN: &str = "sign";
    pub const VERIFY: &str = "verify";
    pub const BUMP: &str = "bump";
    pub const STATUS: &str = "status";
    /// Signer replicas (and the Supervisor, for alerts) hand events to the
    /// ledger writer.
    pub const RECORD: &str = "record";
    /// Monitoring's current snapshot (`tes.cmd.0x5000.metrics`).
    pub const METRICS: &str = "metrics";
    /// Alert's open alerts (`tes.cmd.0x5003.alerts`).
    pub const ALERTS: &str = "alerts";
    /// Alert hands a raised or resolved alert to the Supervisor
    /// (`tes.cmd.0x1001.alert`), which has it recorded.
    pub const ALERT: &str = "alert";
    /// An archive pass over retired versions' bundles (`tes.cmd.0x6001.archive`).
    pub const ARCHIVE: &str = "archive";
    /// Stop trusting a key version now (`tes.cmd.0x1001.revoke`, forwarded
    /// to `tes.cmd.0x6001.revoke`).
    pub const REVOKE: &str = "revoke";
    /// Change a verifying version's grace window (`tes.cmd.0x1001.grace`).
    pub const GRACE: &str = "grace";
    /// Many payloads signed in one request (`tes.cmd.0x6001.sign_batch`).
    pub const SIGN_BATCH: &str = "sign_batch";
    /// Many signatures checked in one request (`tes.cmd.0x6001.verify_batch`).
    pub const VERIFY_BATCH: &str = "verify_batch";
    /// The newest ledger events, for the admin page's feed
    /// (`tes.cmd.0x6001.history`; read-only).
    pub const HISTORY: &str = "history";
    /// The live signers and whether the next version may be promoted
    /// (`tes.cmd.0x1001.signers`; read-only).
    pub const SIGNERS: &str = "signers";
    /// The newest signed checkpoint, what each witness holds, and on
    /// request a full verification (`tes.cmd.0x6001.audit`; read-only).
    pub const AUDIT: &str = "audit";
}

/// `tes.cmd.<thread>.<verb>`
pub fn command(thread: ThreadId, verb: &str) -> String {
    format!("{COMMAND_PREFIX}.{}.{verb}", thread.token())
}

/// `tes.cmd.<thread>.*`: every command addressed to one actor.
pub fn commands_of(thread: ThreadId) -> String {
    format!("{COMMAND_PREFIX}.{}.*", thread.token())
}

/// `tes.evt.<thread>.*`: every event one actor publishes.
pub fn events_of(thread: ThreadId) -> String {
    format!("{EVENT_PREFIX}.{}.*", thread.token())
}

/// `tes.evt.<thread>.<kind>`
pub fn event(thread: ThreadId, kind: &str) -> String {
    format!("{EVENT_PREFIX}.{}.{kind}", thread.token())
}

/// A parsed `tes.<channel>.<thread>.<last>` subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub channel: crate::Channel,
    pub thread: ThreadId,
    /// The verb (commands) or kind (events).
    pub last: &'a str,
}

/// Splits a subject of the TES scheme; `None` for anything else.
pub fn parse(subject: &str) -> Option<Parsed<'_>> {
    let mut parts = subject.splitn(4, '.');
    if parts.next()? != "tes" {
        return None;
    }
    let channel = match parts.next()? {
        "cmd" => crate::Channel::Command,
        "evt" => crate::Channel::Event,
        _ => return None,
    };
    let thread = parts.next()?.parse().ok()?;
    let last = parts.next()?;
    if last.is_empty() || last.contains('.') {
        return None;
    }
    Some(Parsed {
        channel,
        thread,
        last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_the_design_examples() {
        assert_eq!(
            command(ThreadId::Supervisor, verb::ROTATE),
            "tes.cmd.0x1001.rotate"
        );
        assert_eq!(
            event(ThreadId::VersionManagement, "key_rotate"),
            "tes.evt.0x6001.key_rotate"
        );
        let p = parse("tes.cmd.0x6001.sign").unwrap();
        assert_eq!(p.thread, ThreadId::VersionManagement);
        assert_eq!(p.last, "sign");
        assert!(parse("tes.cmd.0x9999.sign").is_none());
        assert!(parse("tes.cmd.0x6001").is_none());
        assert!(parse("tes.cmd.0x6001.a.b").is_none());
        assert!(parse("other.cmd.0x6001.sign").is_none());
    }
}
