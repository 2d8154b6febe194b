//! The client verbs (`rotate`, `rollback`, `sign`, `verify`, `bump`,
//! `status`). With `--nats` they talk to a running daemon there; without,
//! each starts the actors on the data directory on the embedded bus, sends
//! its command exactly as a remote client would, prints the reply and stops.

use std::io::Read;

use anyhow::anyhow;
use serde_json::json;
use tes_bus::control::{self, ControlBus};
use tes_bus::jetstream::CommandStream;
use tes_bus::typed;
use tes_proto::command::{
    Bump, Grace, Revoke, Rollback, Rotate, Scope, Sign, SignBatch, Status, Verify, VerifyBatch,
    MAX_BATCH_ITEMS,
};
use tes_proto::{CommandBody, KeyVersion, ThreadId};

use crate::cli::{Global, GraceArgs, RunOptions};
use crate::commands::replay::{describe, json_view};
use crate::failure::{from_call, Failure, Result};
use crate::output::Printer;
use crate::runtime::{self, Actors};

async fn with_runtime<T>(
    global: &Global,
    run: &RunOptions,
    f: impl AsyncFnOnce(&Actors) -> Result<T>,
) -> Result<T> {
    let rt = Actors::embedded(global, run).await?;
    let out = f(&rt).await;
    rt.stop().await;
    out
}

/// Sends one command to `thread`: to the daemon on NATS, or to actors
/// started here for the purpose.
async fn send<C: CommandBody>(
    global: &Global,
    run: &RunOptions,
    thread: ThreadId,
    body: C,
) -> Result<C::Reply> {
    send_call(global, run, thread, body)
        .await?
        .map_err(from_call)
}

/// [`send`], with the actor's refusal left for the caller to classify.
async fn send_call<C: CommandBody>(
    global: &Global,
    run: &RunOptions,
    thread: ThreadId,
    body: C,
) -> Result<Result<C::Reply, typed::CallError>> {
    let envelope = typed::command(thread, body);
    let ct = runtime::wire(run.wire);
    if let Some(bus) = runtime::nats(global, "tes-cli").await? {
        return Ok(typed::call::<C>(&bus, thread, ct, &envelope, typed::DEFAULT_TIMEOUT).await);
    }
    if let Some(daemon) = daemon_here(global).await {
        return Ok(typed::call::<C>(&daemon, thread, ct, &envelope, typed::DEFAULT_TIMEOUT).await);
    }
    let body = envelope.body;
    with_runtime(global, run, async |rt| Ok(rt.call(thread, body).await)).await
}

/// The `tes daemon` running on this data directory, through its control
/// socket, if one answers there: the verbs then go to it (it holds the
/// ledger) instead of starting actors of their own.
pub async fn daemon_here(global: &Global) -> Option<ControlBus> {
    ControlBus::connect(&control::socket_path(&global.data_dir)).await
}

/// Sends a rotation or rollback to the Supervisor: on NATS through the
/// durable command stream (stored before anything else happens, applied
/// even if the actors are down right now), else as [`send`].
async fn send_durable<C: CommandBody>(
    global: &Global,
    run: &RunOptions,
    body: C,
) -> Result<C::Reply> {
    let thread = ThreadId::Supervisor;
    let Some(bus) = runtime::nats(global, "tes-cli").await? else {
        return send(global, run, thread, body).await;
    };
    let stream = CommandStream::sender(bus.client().clone());
    let envelope = typed::command(thread, body);
    stream
        .call::<C>(
            &bus,
            thread,
            runtime::wire(run.wire),
            &envelope,
            typed::DEFAULT_TIMEOUT,
        )
        .await
        .map_err(from_call)
}

pub async fn rotate(
    global: &Global,
    run: &RunOptions,
    to: Option<KeyVersion>,
    force: bool,
    requested_by: String,
) -> Result<()> {
    let body = Rotate {
        requested_by,
        force,
        to,
    };
    let reply = send_durable(global, run, body).await?;
    let grace = reply
        .grace_until
        .map(|g| {
            format!(
                "; {} verifies until {g}",
                reply.from.map(|f| f.to_string()).unwrap_or_default()
            )
        })
        .unwrap_or_default();
    Printer { json: global.json }.emit(
        format!("{} (ledger seq {}){grace}", reply.message, reply.seq),
        &reply,
    );
    Ok(())
}

pub async fn rollback(global: &Global, run: &RunOptions, requested_by: String) -> Result<()> {
    let reply = send_durable(global, run, Rollback { requested_by }).await?;
    Printer { json: global.json }.emit(
        format!("{} (ledger seq {})", reply.message, reply.seq),
        &reply,
    );
    Ok(())
}

pub async fn revoke(
    global: &Global,
    run: &RunOptions,
    version: KeyVersion,
    reason: String,
    force: bool,
    requested_by: String,
) -> Result<()> {
    let body = Revoke {
        version,
        reason,
        requested_by,
        force,
    };
    let reply = send(global, run, ThreadId::Supervisor, body).await?;
    Printer { json: global.json }.emit(
        format!(
            "{} (ledger seq {}, revoked at {}: {})",
            reply.message, reply.seq, reply.revoked_at, reply.reason
        ),
        &reply,
    );
    Ok(())
}

pub async fn grace(
    global: &Global,
    run: &RunOptions,
    version: KeyVersion,
    change: GraceArgs,
    requested_by: String,
) -> Result<()> {
    let body = Grace {
        version,
        until: change.until,
        extend_secs: change.extend.map(|d| d.as_secs()),
        end_now: change.end_now,
        requested_by,
    };
    let reply = send(global, run, ThreadId::Supervisor, body).await?;
    let was = reply
        .previous
        .map_or("no end".to_string(), |p| p.to_string());
    Printer { json: global.json }.emit(
        format!("{} (was {was}; ledger seq {})", reply.message, reply.seq),
        &reply,
    );
    Ok(())
}

fn payload_arg(payload: String) -> Result<String> {
    if payload != "-" {
        return Ok(payload);
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| Failure::input(anyhow!("cannot read the payload from stdin: {e}")))?;
    Ok(s)
}

pub async fn sign(
    global: &Global,
    run: &RunOptions,
    payload: String,
    key_version: Option<KeyVersion>,
) -> Result<()> {
    let body = Sign {
        payload: payload_arg(payload)?,
        key_version,
    };
    let reply = send(global, run, ThreadId::VersionManagement, body).await?;
    let mut words = format!("{}  {}", reply.key_version, reply.signature);
    for extra in reply.signatures.iter().skip(1) {
        words += &format!(
            "\n{}  {}  (dual signature during the grace window)",
            extra.key_version, extra.signature
        );
    }
    if let Some(from) = reply.fallback_from {
        words += &format!("\n(fell back from {from}: its material is missing on this signer)");
    }
    Printer { json: global.json }.emit(words, &reply);
    Ok(())
}

/// Everything on stdin, for `--batch`.
fn stdin_all() -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| Failure::input(anyhow!("cannot read stdin: {e}")))?;
    Ok(s)
}

/// `--batch` input: a JSON array of items, or one item per line (`line`
/// turns a line into an item; blank lines are skipped).
fn batch_items<T: serde::de::DeserializeOwned>(
    input: &str,
    line: impl Fn(&str) -> Result<T>,
) -> Result<Vec<T>> {
    let items = if input.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<T>>(input)
            .map_err(|e| Failure::input(anyhow!("stdin is not a JSON array of items: {e}")))?
    } else {
        input
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| line(l).map_err(|e| Failure::input(anyhow!("line {}: {e}", n + 1))))
            .collect::<Result<Vec<T>>>()?
    };
    if items.is_empty() {
        return Err(Failure::input(anyhow!("stdin holds nothing to send")));
    }
    Ok(items)
}

/// One line per result: the reply itself, or `{"index", "error"}`.
fn print_results<T: serde::Serialize>(
    json: bool,
    first: usize,
    results: Vec<tes_proto::Reply<T>>,
    words: impl Fn(&T) -> String,
) -> usize {
    let printer = Printer { json };
    let mut failed = 0;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            tes_proto::Reply::Ok(reply) => printer.emit(words(&reply), &reply),
            tes_proto::Reply::Err(error) => {
                failed += 1;
                printer.emit(
                    format!("item {}: {}", first + i, error.message),
                    &json!({ "index": first + i, "error": error }),
                );
            }
        }
    }
    failed
}

/// A sign item as a JSON array element: a bare string or a [`Sign`].
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum SignItem {
    Payload(String),
    Item(Sign),
}

pub async fn sign_batch(
    global: &Global,
    run: &RunOptions,
    key_version: Option<KeyVersion>,
) -> Result<()> {
    let items = batch_items(&stdin_all()?, |l| Ok(SignItem::Payload(l.to_string())))?;
    let items: Vec<Sign> = items
        .into_iter()
        .map(|i| match i {
            SignItem::Payload(payload) => Sign {
                payload,
                key_version,
            },
            SignItem::Item(mut s) => {
                s.key_version = s.key_version.or(key_version);
                s
            }
        })
        .collect();
    let mut failed = 0;
    for (n, chunk) in items.chunks(MAX_BATCH_ITEMS).enumerate() {
        let body = SignBatch {
            items: chunk.to_vec(),
        };
        let reply = send(global, run, ThreadId::VersionManagement, body).await?;
        failed += print_results(global.json, n * MAX_BATCH_ITEMS, reply.results, |r| {
            format!("{}  {}", r.key_version, r.signature)
        });
    }
    if failed > 0 {
        return Err(Failure::check(anyhow!(
            "{failed} of {} payloads were not signed",
            items.len()
        )));
    }
    Ok(())
}

pub async fn verify_batch(global: &Global, run: &RunOptions) -> Result<()> {
    let items: Vec<Verify> = batch_items(&stdin_all()?, |l| {
        // What `tes sign --batch --json` prints carries more fields than
        // an item needs: take the three.
        let v: serde_json::Value = serde_json::from_str(l)
            .map_err(|e| Failure::input(anyhow!("not a JSON object: {e}")))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| Failure::input(anyhow!("no \"{k}\" string")))
        };
        Ok(Verify {
            payload: field("payload")?,
            signature: field("signature")?,
            key_version: field("keyVersion")?
                .parse()
                .map_err(|e| Failure::input(anyhow!("keyVersion: {e}")))?,
        })
    })?;
    let (mut failed, mut invalid) = (0, 0);
    for (n, chunk) in items.chunks(MAX_BATCH_ITEMS).enumerate() {
        let body = VerifyBatch {
            items: chunk.to_vec(),
        };
        let reply = send(global, run, ThreadId::VersionManagement, body).await?;
        invalid += reply
            .results
            .iter()
            .filter(|r| matches!(r, tes_proto::Reply::Ok(v) if !v.valid))
            .count();
        failed += print_results(global.json, n * MAX_BATCH_ITEMS, reply.results, |r| {
            if r.valid {
                format!("valid ({})", r.key_version)
            } else {
                format!("INVALID under {}", r.key_version)
            }
        });
    }
    if failed + invalid > 0 {
        return Err(Failure::check(anyhow!(
            "{} of {} signatures do not verify",
            failed + invalid,
            items.len()
        )));
    }
    Ok(())
}

pub async fn verify(
    global: &Global,
    run: &RunOptions,
    payload: String,
    signature: String,
    key_version: KeyVersion,
) -> Result<()> {
    let body = Verify {
        payload: payload_arg(payload)?,
        signature,
        key_version,
    };
    // A signature under a revoked or retired version is not trusted: that
    // is the check failing (exit 1), not bad input.
    let reply = match send_call(global, run, ThreadId::VersionManagement, body).await? {
        Err(tes_bus::typed::CallError::Refused(r))
            if matches!(
                r.code,
                tes_proto::ErrorCode::RevokedVersion | tes_proto::ErrorCode::RetiredVersion
            ) =>
        {
            return Err(Failure::check(anyhow!("{}", r.message)))
        }
        other => other.map_err(from_call)?,
    };
    let words = if reply.valid {
        format!("valid ({key_version})")
    } else {
        format!("INVALID: the signature does not match the payload under {key_version}")
    };
    Printer { json: global.json }.emit(words, &reply);
    if reply.valid {
        Ok(())
    } else {
        Err(Failure::check(anyhow!(
            "signature does not verify under {key_version}"
        )))
    }
}

pub async fn bump(
    global: &Global,
    run: &RunOptions,
    scope: Scope,
    entity: String,
    key_version: Option<KeyVersion>,
) -> Result<()> {
    let body = Bump {
        entity,
        scope,
        key_version,
    };
    let reply = send(global, run, ThreadId::VersionManagement, body).await?;
    let words = format!(
        "{} {} → {} signed with {}: {}\npayload: {}",
        reply.manifest.entity,
        reply.manifest.previous,
        reply.manifest.version,
        reply.key_version,
        reply.signature,
        reply.payload
    );
    Printer { json: global.json }.emit(words, &reply);
    Ok(())
}

/// On NATS, the daemon's view; else read from the ledger (never opened for
/// writing: no lock, no key, no rotation comes from looking) with the keys
/// this shell holds, as they are (none is generated).
pub async fn status(global: &Global, run: &RunOptions) -> Result<()> {
    let mut snapshot_seq = 0;
    // On NATS one connection asks the writer and reads the bucket.
    let nats = runtime::nats(global, "tes-cli").await?;
    let view = if let Some(bus) = &nats {
        let thread = ThreadId::VersionManagement;
        let envelope = typed::command(thread, Status::default());
        let ct = runtime::wire(run.wire);
        typed::call::<Status>(bus, thread, ct, &envelope, typed::DEFAULT_TIMEOUT)
            .await
            .map_err(from_call)?
    } else {
        // A quick look: from the newest snapshot, the rows after it verified
        // (the whole chain is `tes audit verify`'s and every writer start's).
        let ledger = crate::commands::replay::open(global)?;
        let (replayed, from) = tes_version_management::replay::latest(&ledger)
            .map_err(crate::commands::replay::verify_failure)?;
        snapshot_seq = from;
        let held = tes_keyring::Keyring::load(runtime::environment(), &global.key_store(), false)
            .map_err(Failure::input)?
            .held();
        tes_version_management::engine::status_view(&replayed.state, &held, replayed.head)
    };
    let mut value = json_view(&view, view.head_seq);
    value.as_object_mut().map(|o| {
        o.insert(
            "heldHere".into(),
            json!(view
                .keys
                .iter()
                .filter(|k| k.held)
                .map(|k| k.version)
                .collect::<Vec<_>>()),
        )
    });
    let heading = if snapshot_seq > 0 {
        format!(
            "Ledger holds {} events (state from the snapshot at seq {snapshot_seq}, the {} after it verified; `tes audit verify` checks them all).",
            view.head_seq,
            view.head_seq - snapshot_seq
        )
    } else {
        format!("Ledger holds {} events.", view.head_seq)
    };
    if let Some(o) = value.as_object_mut() {
        o.insert("fromSnapshot".into(), json!(snapshot_seq));
    }
    let mut words = describe(&view, &heading);
    // On NATS: who writes and who stands by (from the KV bucket; a user
    // not allowed to read it sees the status without them).
    if let Some(bus) = &nats {
        if let Ok(d) = tes_bus::lease::deployment(bus.client().clone()).await {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            if let Some(w) = &d.writer {
                words += &format!(
                    "\nWriter: {} (lease good for {:.1} s more)",
                    w.holder,
                    w.expires_at.saturating_sub(now) as f64 / 1000.0
                );
            }
            for s in &d.standbys {
                words += &format!(
                    "\nStandby: {} at seq {} ({} behind)",
                    s.holder,
                    s.head_seq,
                    view.head_seq.saturating_sub(s.head_seq)
                );
            }
            if let Some(o) = value.as_object_mut() {
                o.insert(
                    "writer".into(),
                    json!(d.writer.as_ref().map(|w| json!({
                        "holder": w.holder,
                        "leaseExpiresAt": w.expires_at,
                    }))),
                );
                o.insert(
                    "standbys".into(),
                    json!(d
                        .standbys
                        .iter()
                        .map(|s| json!({
                            "holder": s.holder,
                            "headSeq": s.head_seq,
                            "lag": view.head_seq.saturating_sub(s.head_seq),
                        }))
                        .collect::<Vec<_>>()),
                );
            }
        }
    }
    Printer { json: global.json }.emit(words, &value);
    Ok(())
}
