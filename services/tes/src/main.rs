//! `tes`: the TES key ledger's one binary. Parses the command line, sets up
//! logging, runs the verb, and turns its outcome into the exit code of the
//! contract (DESIGN.md §6).

mod cli;
mod commands;
mod failure;
mod output;
mod runtime;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Audit, Bundles, Cli, Command, Secret};
use crate::commands::{
    audit, bundles, client, daemon, demo, health, init, observe, replay, secret, watch,
};

/// mimalloc rather than the system's: a request allocates and frees many
/// small buffers on two threads or more, and with glibc's malloc that was
/// 18 % of the HTTP path's samples (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let json_logs = log_json(&cli);
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if json_logs {
                // The same flat shape as every other log line.
                tracing::error!(exit = failure.exit as u8, "{failure}");
            } else {
                eprintln!("error: {failure}");
            }
            ExitCode::from(failure.exit as u8)
        }
    }
}

async fn run(cli: Cli) -> failure::Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Demo(run) => demo::run(g, &run).await,
        Command::Daemon {
            actors,
            role,
            run,
            observe,
            http,
        } => daemon::run(g, &run, &observe, &http, actors, role).await,
        Command::Watch {
            threads,
            kinds,
            all,
        } => watch::run(g, threads, kinds, all).await,
        Command::Metrics { observe } => observe::metrics(g, &observe).await,
        Command::Alerts { replay, observe } => observe::alerts(g, &observe, replay).await,
        Command::Rotate {
            to,
            force,
            requested_by,
            run,
        } => client::rotate(g, &run, to, force, requested_by).await,
        Command::Rollback { requested_by, run } => client::rollback(g, &run, requested_by).await,
        Command::Revoke {
            version,
            reason,
            force,
            requested_by,
            run,
        } => client::revoke(g, &run, version, reason, force, requested_by).await,
        Command::Grace {
            version,
            change,
            requested_by,
            run,
        } => client::grace(g, &run, version, change, requested_by).await,
        Command::Sign {
            batch: true,
            key_version,
            run,
            ..
        } => client::sign_batch(g, &run, key_version).await,
        Command::Sign {
            payload,
            key_version,
            run,
            ..
        } => client::sign(g, &run, payload.unwrap_or_default(), key_version).await,
        Command::Verify {
            batch: true, run, ..
        } => client::verify_batch(g, &run).await,
        Command::Verify {
            payload,
            signature,
            key_version,
            run,
            ..
        } => {
            // clap requires all three without --batch.
            let (Some(payload), Some(signature), Some(key_version)) =
                (payload, signature, key_version)
            else {
                unreachable!("clap requires payload, signature and --key-version without --batch")
            };
            client::verify(g, &run, payload, signature, key_version).await
        }
        Command::Bump {
            scope,
            entity,
            key_version,
            run,
        } => client::bump(g, &run, scope, entity, key_version).await,
        Command::Status => client::status(g, &cli::RunOptions::from_environment()).await,
        Command::Health { actors } => health::run(g, actors),
        Command::Archive {
            version,
            dry_run,
            run,
        } => bundles::archive(g, &run, version, dry_run).await,
        Command::Bundles(Bundles::Ls { all, bundles: o }) => bundles::ls(g, &o, all).await,
        Command::Replay { to_seq, until } => replay::run(g, to_seq, until),
        Command::Init(run) => init::run(g, &run).await,
        Command::Audit(Audit::Verify {
            checkpoint,
            witnesses,
        }) => audit::verify(g, checkpoint, &witnesses).await,
        Command::Audit(Audit::Key) => audit::key(g),
        Command::Audit(Audit::Checkpoint) => audit::checkpoint(g),
        Command::Audit(Audit::Prove { seq, checkpoint }) => audit::prove(g, seq, checkpoint),
        Command::Secret(Secret::Put { version, replace }) => secret::put(g, version, replace),
        Command::Secret(Secret::List) => secret::list(g),
    }
}

/// Logs go to stderr (stdout is for results). The daemon logs at info, the
/// other verbs at warn; `RUST_LOG` overrides.
fn init_logging(cli: &Cli) {
    let default = if matches!(cli.command, Command::Daemon { .. }) {
        "info"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal who has not asked for none.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if log_json(cli) {
        // Flat: the event's fields beside timestamp, level and target, as
        // worker-events.log's lines are (not nested under "fields").
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.init();
    }
}

/// `--log-json`, `TES_LOG_JSON=true` or `TES_LOG_FORMAT=json`.
fn log_json(cli: &Cli) -> bool {
    cli.global.log_json
        || std::env::var("TES_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"))
}
