//! ops/RUNBOOK.md, executed as written: every ```sh block, in order, in one
//! bash (variables carry from block to block as in an operator's shell), in
//! a folder laid out like the repository (`ops/` and `target/release/tes`)
//! so its relative paths mean what they say, on free ports (the stack's
//! `TES_STACK_*` settings).
//!
//! What the test adds to the blocks, and only between them: an operator's
//! traffic (signatures as the `client` user) where a block needs some to
//! mean anything, and checks of what the blocks did (the key state, that a
//! restore lost nothing acknowledged, the event log). Two shell functions
//! stand in for a person: `tes watch` runs for 3 s, as if Ctrl-C came then;
//! the `nats` CLI, which no registry of this machine carries, is skipped
//! with a note where it is not installed (its KV signal is tested in
//! services/bus/tests/permissions.rs and services/supervisor).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The ```sh blocks of `markdown`, each with the `## ` heading it is under.
fn sh_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let (mut heading, mut block) = (String::from("(top)"), None::<String>);
    for line in markdown.lines() {
        match &mut block {
            Some(b) if line.trim_start().starts_with("```") => {
                out.push((heading.clone(), std::mem::take(b)));
                block = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None if line.trim_start() == "```sh" => block = Some(String::new()),
            None if line.starts_with("## ") => heading = line[3..].to_string(),
            None => {}
        }
    }
    out
}

/// What runs after the `n`th block (from 0) under `heading`: traffic and checks.
fn after(heading: &str, n: usize) -> &'static str {
    match (heading.split('.').next().unwrap_or(""), n) {
        ("(top)", 0) => r#"check "v1 signs" '[ "$(tes --json status | jq -r .keyVersion)" = 1 ]'"#,
        // The daemon notices the key store within a few seconds.
        ("1", 0) => {
            r#"wait_until "v3 provisioned" 'tes --json status | jq -e ".keys[] | select(.version == \"v3\" and .status == \"provisioned\")"'"#
        }
        ("3", 0) => {
            r#"check "v3 signs" '[ "$(tes --json status | jq -r .keyVersion)" = 3 ]'
sign_as_client one two three"#
        }
        ("6", 0) => {
            r#"check "rolled back to v2" '[ "$(tes --json status | jq -r .keyVersion)" = 2 ]'"#
        }
        // Between the backup and the restore: what the restore must not lose.
        ("9", 0) => {
            r#"check "the backup and its note" '[ -s $b.db ] && [ -s $b.note ]'
sign_as_client after-backup-1 after-backup-2
tes rotate
before=$(tes --json status | jq -r .headSeq)
echo "ledger head before the restore: $before""#
        }
        ("9", 1) => {
            r#"check "nothing acknowledged after the backup was lost" '[ "$(tes --json status | jq -r .headSeq)" -ge "$before" ]'
check "the rotation after the backup survived the restore" '[ "$(tes --json status | jq -r .keyVersion)" = 3 ]'
check "the writer took the events back from TES_EVENTS" 'grep -q "took back" .stack/logs/version.log'
sign_as_client after-restore
wait_until "the event log has the signature after the restore" 'grep -q "$(printf %s after-restore | sha256sum | cut -c1-64)" .stack/logs/worker-events.log'"#
        }
        _ => "",
    }
}

const PRELUDE: &str = r#"set -euo pipefail
fail() { echo "RUNBOOK CHECK FAILED: $*" >&2; exit 1; }
check() { echo "check: $1"; eval "$2" >/dev/null || fail "$1"; }
wait_until() { # what, command: up to 20 s
    for _ in $(seq 1 100); do eval "$2" >/dev/null 2>&1 && return 0; sleep 0.2; done
    fail "$1 (waited 20 s)"
}
sign_as_client() {
    for p in "$@"; do
        TES_NATS_USER=client TES_NATS_PASSWORD_FILE=.stack/secrets/nats_pw_client tes sign "$p" >/dev/null
    done
}
# A person stops `tes watch` with Ctrl-C; here it is stopped after 3 s.
tes() {
    case " $* " in
        *" watch "*) local rc=0; timeout -s INT 3 "$(type -P tes)" "$@" || rc=$?; [ $rc = 0 ] || [ $rc = 124 ] || [ $rc = 130 ] ;;
        *) command tes "$@" ;;
    esac
}
export -f tes
if ! command -v nats >/dev/null; then
    nats() { echo "(skipped: the nats CLI is not installed here)"; }
fi
"#;

#[test]
fn every_command_block_of_the_runbook_runs_as_written() {
    let runbook = std::fs::read_to_string(root().join("ops/RUNBOOK.md")).unwrap();
    let blocks = sh_blocks(&runbook);
    assert!(blocks.len() >= 12, "found {} blocks", blocks.len());

    // A folder shaped like the repository: ops/ and target/release/tes.
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::os::unix::fs::symlink(root().join("ops").canonicalize().unwrap(), w.join("ops")).unwrap();
    std::fs::create_dir_all(w.join("target/release")).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_tes"), w.join("target/release/tes")).unwrap();

    let mut script = String::from(PRELUDE);
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (heading, body) in &blocks {
        let n = seen.iter().filter(|(h, _)| h == heading).count();
        seen.push((heading.clone(), n));
        script.push_str(&format!("echo '::: {heading} (block {})'\n", n + 1));
        script.push_str(body);
        script.push_str(after(heading, n));
        script.push('\n');
    }
    let stack = StackGuard(w.to_path_buf());
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(w)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", w)
        .env("TES_NATS_SERVER", tes_bus::test_server::binary())
        .env("TES_STACK_NATS_PORT", free_port().to_string())
        .env("TES_STACK_NATS_MONITOR_PORT", free_port().to_string())
        .env("TES_STACK_HTTP_PORT", free_port().to_string())
        .env("TES_STACK_METRICS_PORT", free_port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs = || {
        walk(&w.join(".stack/logs"))
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {}\n{}",
                    p.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        out.status.success(),
        "the runbook stopped at a command (exit {:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n{}",
        out.status.code(),
        logs()
    );
    // For whoever reads the test's output: what the runbook printed.
    println!("{stdout}");
    // Every block ran, the last one too.
    assert!(stdout.contains("::: 10. Audit"), "{stdout}");
    assert!(stdout.contains("stack down"), "{stdout}");
    // The restore took the events after the backup back from the stream.
    let version_log = std::fs::read_to_string(w.join(".stack/logs/version.log")).unwrap();
    assert!(version_log.contains("took back"), "{version_log}");
    // Keys made by the runbook never reach a log or the output.
    for f in [
        "version_signing_key",
        "version_signing_key_v2",
        "admin_token",
    ] {
        let secret = std::fs::read_to_string(w.join(".stack/secrets").join(f)).unwrap();
        let secret = secret.trim();
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{f} printed"
        );
        for p in walk(&w.join(".stack/logs")) {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(!text.contains(secret), "{f} in {}", p.display());
        }
    }
    drop(stack);
}

/// `ops/stack.sh down` in the runbook's folder, even when the test fails
/// half-way (the stack must not outlive it).
struct StackGuard(PathBuf);

impl Drop for StackGuard {
    fn drop(&mut self) {
        let _ = Command::new(self.0.join("ops/stack.sh"))
            .arg("down")
            .current_dir(&self.0)
            .env("TES_NATS_SERVER", tes_bus::test_server::binary())
            .output();
    }
}

#[test]
fn the_runbook_blocks_are_found() {
    let blocks =
        sh_blocks("# t\n```sh\na\n```\n## 1. One\ntext\n```sh\nb\nc\n```\n```text\nx\n```\n");
    assert_eq!(
        blocks,
        vec![
            ("(top)".to_string(), "a\n".to_string()),
            ("1. One".to_string(), "b\nc\n".to_string()),
        ]
    );
}
