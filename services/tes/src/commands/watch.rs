//! `tes watch`: events as they happen, one line each, the actor's token in
//! its colour and the event in its own (DESIGN.md §1), as 24-bit colour.
//! Plain text when stdout is not a terminal or `NO_COLOR` is set (anstream
//! decides); one JSON envelope per line with `--json`.
//!
//! On NATS it subscribes to every event on the bus; without NATS it follows
//! the ledger file, showing rows as they are appended.

use std::collections::{HashSet, VecDeque};
use std::io::Write;

use anstyle::{RgbColor, Style};
use tes_bus::typed::decode_event;
use tes_bus::Bus;
use tes_monitoring::feed::{self, Item, Source};
use tes_proto::event::kind;
use tes_proto::metrics::percent;
use tes_proto::subject::ALL_EVENTS;
use tes_proto::{Envelope, Event, MsgId, ThreadId};

use crate::cli::Global;
use crate::failure::{Failure, Result};
use crate::runtime;

/// Shown only when asked for: they come every second or two.
const CHATTER: [&str; 3] = [kind::SIGNER_HEARTBEAT, kind::CHECKPOINT, kind::METRICS];

struct Filter {
    threads: Vec<ThreadId>,
    kinds: Vec<&'static str>,
    all: bool,
}

impl Filter {
    fn passes(&self, e: &Envelope<Event>) -> bool {
        let kind = e.body.kind();
        (self.threads.is_empty() || self.threads.contains(&e.thread))
            && (if self.kinds.is_empty() {
                self.all || !CHATTER.contains(&kind)
            } else {
                self.kinds.contains(&kind)
            })
    }
}

pub async fn run(
    global: &Global,
    threads: Vec<ThreadId>,
    kinds: Vec<&'static str>,
    all: bool,
) -> Result<()> {
    let filter = Filter {
        threads,
        kinds,
        all,
    };
    let json = global.json;
    // An event can come twice on the bus (the outbox resends what NATS did
    // not confirm); it is shown once.
    let mut seen = Seen::default();
    if let Some(bus) = runtime::nats(global, "tes-watch").await? {
        let mut events = bus
            .subscribe(ALL_EVENTS, None)
            .await
            .map_err(Failure::check)?;
        eprintln!("watching {ALL_EVENTS} (Ctrl-C to stop)");
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                message = events.next() => {
                    let Some(message) = message else { return Ok(()) };
                    match decode_event(&message) {
                        Ok(e) if filter.passes(&e) && seen.first(e.id) => show(&e, tes_bus::typed::ledger_seq(&message), json),
                        Ok(_) => {}
                        Err(error) => eprintln!("(an event on {} does not decode: {error})", message.subject),
                    }
                }
            }
        }
    }
    let path = global.ledger_path();
    let head = tes_ledger::Ledger::open_reader(&path)
        .map_err(|e| Failure::input(anyhow::anyhow!(e)))?
        .head()
        .seq;
    let mut events = feed::start(Source::Ledger(path.clone()), &ThreadId::ALL, head)
        .await
        .map_err(Failure::check)?;
    eprintln!(
        "watching the ledger {} from seq {} (Ctrl-C to stop)",
        path.display(),
        head + 1
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            item = events.recv() => match item {
                Some(Item::Event(seq, e)) if filter.passes(&e) => show(&e, Some(seq), json),
                Some(_) => {}
                None => return Ok(()),
            }
        }
    }
}

#[derive(Default)]
struct Seen {
    ids: HashSet<MsgId>,
    order: VecDeque<MsgId>,
}

impl Seen {
    fn first(&mut self, id: MsgId) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > 4096 {
            let old = self.order.pop_front().expect("not empty");
            self.ids.remove(&old);
        }
        true
    }
}

fn colour(hex: &str) -> Style {
    let rgb = u32::from_str_radix(hex.trim_start_matches('#'), 16).unwrap_or(0xFF_FF_FF);
    let [_, r, g, b] = rgb.to_be_bytes();
    Style::new().fg_color(Some(RgbColor(r, g, b).into()))
}

fn show(e: &Envelope<Event>, seq: Option<u64>, json: bool) {
    let mut out = anstream::stdout().lock();
    let written = if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(e).expect("events serialize")
        )
    } else {
        let who = colour(e.thread.hsl());
        let what = colour(e.body.hsl()).bold();
        let seq = seq.map_or_else(|| "      -".to_string(), |s| format!("{s:>7}"));
        writeln!(
            out,
            "{} {seq} {who}{} {:<18}{who:#} {what}{:<24}{what:#} {}",
            e.time,
            e.thread.token(),
            e.thread.name(),
            e.body.seed_label(),
            details(&e.body)
        )
    };
    crate::output::quiet_on_closed_pipe(written.and_then(|()| out.flush()));
}

fn details(event: &Event) -> String {
    match event {
        Event::SignatureGenerated(s) => format!(
            "{} {}…{}",
            s.key_version,
            &s.signature[..s.signature.len().min(16)],
            if s.pinned { " (pinned)" } else { "" }
        ),
        Event::SignatureVerified(s) => {
            format!(
                "{} {}",
                s.key_version,
                if s.valid { "valid" } else { "INVALID" }
            )
        }
        Event::KeyRotate(r) => format!(
            "{} → {} ({:?}{})",
            r.from.map_or("-".into(), |v| v.to_string()),
            r.to,
            r.reason,
            if r.forced { ", forced" } else { "" }
        ),
        Event::KeyRollback(r) => format!("{} → {}", r.from, r.to),
        Event::KeyFallback(f) => format!("{} missing here, {} signed", f.from, f.to),
        Event::KeyProvisioned(p) => format!("{} fingerprint {}", p.version, p.fingerprint),
        Event::KeyRetired(r) => r.version.to_string(),
        Event::RotationFailed(f) => f.reason.clone(),
        Event::VersionBump(b) => format!(
            "{} {} → {} signed with {}",
            b.entity, b.from, b.to, b.key_version
        ),
        Event::Rejected(r) => format!("{}: {}", r.subject, r.reason),
        Event::Checkpoint(c) => format!("head seq {} {}", c.seq, &c.hash[..16]),
        Event::SignerHeartbeat(h) => format!(
            "{} holds {}",
            h.signer,
            h.held
                .iter()
                .map(|k| k.version.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Event::Metrics(m) => format!(
            "seq {}, active {}, {}",
            m.seq,
            m.active.map_or("-".into(), |v| v.to_string()),
            m.window
                .usage
                .iter()
                .map(|u| format!(
                    "{} {}",
                    u.version,
                    m.window.usage_bp(u.version).map_or("-".into(), percent)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Event::Alert(a) => format!("{}: {}", a.rule, a.message),
        Event::Resolved(r) => format!("{}: {}", r.rule, r.message),
        Event::ArchiveBatch(a) => format!(
            "{} batch {}: {} bundle(s) planned, {} left",
            a.version,
            a.batch,
            a.keys.len(),
            a.left
        ),
        Event::BundleArchived(a) => format!(
            "{} batch {}: {} bundle(s), {} byte(s) in archive/{}/{}",
            a.version,
            a.batch,
            a.objects,
            a.bytes,
            a.version,
            if a.missing.is_empty() {
                String::new()
            } else {
                format!(", {} missing", a.missing.len())
            }
        ),
        Event::KeyRevoked(r) => format!(
            "{} REVOKED by {}: {}{}",
            r.version,
            r.requested_by,
            r.reason,
            if r.forced {
                " (forced: nothing signs now)"
            } else {
                ""
            }
        ),
        Event::GraceChanged(g) => format!(
            "{} verifies until {} (was {}), by {}",
            g.version,
            g.grace_until,
            g.previous.map_or("no end".into(), |p| p.to_string()),
            g.requested_by
        ),
        Event::KeyExpirySet(x) => format!(
            "{} expires at {} (key TTL {}s from its activation)",
            x.version, x.expires_at, x.ttl_secs
        ),
    }
}
