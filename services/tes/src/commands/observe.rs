//! `tes metrics` and `tes alerts`: what Monitoring and Alert know. With
//! `--nats` they ask the running actors; without, they fold the ledger
//! themselves with the same pure cores, so both answers agree.

use serde_json::json;
use tes_alert::replay::replay_ledger;
use tes_bus::typed;
use tes_proto::command::{AlertsQuery, MetricsQuery};
use tes_proto::event::MetricsSnapshot;
use tes_proto::metrics::percent;
use tes_proto::reply::AlertsReply;
use tes_proto::{CommandBody, Event, ThreadId, Timestamp};

use crate::cli::{Global, ObserveOptions};
use crate::commands::replay::verify_failure;
use crate::failure::{from_call, Result};
use crate::output::Printer;
use crate::runtime::{self, alert_rules};

/// Asks a running actor on NATS, if `--nats` was given.
async fn ask<C: CommandBody + Default>(
    global: &Global,
    thread: ThreadId,
) -> Result<Option<C::Reply>> {
    let Some(bus) = runtime::nats(global, "tes-cli").await? else {
        return Ok(None);
    };
    let envelope = typed::command(thread, C::default());
    typed::call::<C>(
        &bus,
        thread,
        tes_proto::ContentType::Json,
        &envelope,
        typed::DEFAULT_TIMEOUT,
    )
    .await
    .map(Some)
    .map_err(from_call)
}

pub async fn metrics(global: &Global, observe: &ObserveOptions) -> Result<()> {
    let snapshot = match ask::<MetricsQuery>(global, ThreadId::Monitoring).await? {
        Some(s) => s,
        None => {
            let path = global.ledger_path();
            // A missing file is an input error (2), a broken chain a failed check (1).
            let mut metrics = tes_monitoring::fold_ledger(&path, observe.metrics_window)
                .map_err(verify_failure)?;
            metrics.snapshot(Timestamp::now())
        }
    };
    Printer { json: global.json }.emit(describe(&snapshot), &snapshot);
    Ok(())
}

fn describe(s: &MetricsSnapshot) -> String {
    let window = humantime::format_duration(std::time::Duration::from_millis(s.window.span_ms));
    let mut out = format!(
        "Ledger seq {} as of {}; active key version: {}",
        s.seq,
        s.at,
        s.active.map_or("none".into(), |v| v.to_string())
    );
    for v in &s.versions {
        out += &format!(
            "\n  {}: {} signing requests served, {} dual signatures, {} verified valid, {} invalid; share of the requests in the last {window}: {}",
            v.version,
            v.primary,
            v.dual,
            v.verified_valid,
            v.verified_invalid,
            s.window.usage_bp(v.version).map_or("-".into(), percent)
        );
    }
    for f in &s.fallbacks {
        out += &format!("\n  key:fallback_{}_to_{}: {}", f.from, f.to, f.count);
    }
    for r in &s.revocations {
        out += &format!(
            "\n  {} REVOKED at {} (seq {}): {}",
            r.version, r.at, r.seq, r.reason
        );
    }
    out += &format!(
        "\n  signing requests: {} ({} in the last {window}, fallback rate {})",
        s.sign_requests,
        s.window.sign_requests,
        s.window.fallback_rate_bp().map_or("-".into(), percent)
    );
    out += &format!(
        "\n  rotations {}, rollbacks {}, rotation failures {}, retirements {}, bumps {}, alerts {}",
        s.rotations, s.rollbacks, s.rotation_failures, s.retirements, s.bumps, s.alerts
    );
    if let Some(m) = &s.migration {
        out += &format!(
            "\n  migration {} → {} since {}; first {} signature {}",
            m.from,
            m.to,
            m.started_at,
            m.to,
            match m.duration_ms() {
                Some(ms) => format!(
                    "{} after the rotation",
                    humantime::format_duration(std::time::Duration::from_millis(ms))
                ),
                None => "not yet".into(),
            }
        );
    }
    out
}

pub async fn alerts(global: &Global, observe: &ObserveOptions, replay: bool) -> Result<()> {
    let printer = Printer { json: global.json };
    let rules = alert_rules(observe)?;
    if !replay {
        if let Some(reply) = ask::<AlertsQuery>(global, ThreadId::Alert).await? {
            return print_open(printer, &reply);
        }
    }
    let path = global.ledger_path();
    let (transitions, evaluator) =
        replay_ledger(&path, observe.metrics_window, rules).map_err(verify_failure)?;
    if replay {
        for t in &transitions {
            let words = match &t.event.body {
                Event::Alert(a) => format!(
                    "seq {} {} ALERT {}: {}",
                    t.seq, t.event.time, a.rule, a.message
                ),
                Event::Resolved(r) => format!("seq {} {} resolved {}", t.seq, t.event.time, r.rule),
                _ => continue,
            };
            printer.emit(words, &json!({"seq": t.seq, "event": t.event}));
        }
        if transitions.is_empty() {
            printer.say("The ledger's history raises no alert.");
        }
        return Ok(());
    }
    let reply = evaluator.report();
    print_open(printer, &reply)
}

fn print_open(printer: Printer, reply: &AlertsReply) -> Result<()> {
    if printer.json {
        printer.emit("", reply);
        return Ok(());
    }
    if reply.open.is_empty() {
        printer.say(format!(
            "No open alerts (judged at ledger seq {}).",
            reply.seq
        ));
    }
    for open in &reply.open {
        printer.say(format!(
            "ALERT {} since {} (seq {}): {}",
            open.alert.rule, open.alert.at, open.alert.seq, open.alert.message
        ));
    }
    Ok(())
}
