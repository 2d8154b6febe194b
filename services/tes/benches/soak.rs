//! The soak row: a `tes daemon` (the real binary) on a real nats-server,
//! signing at full rate for `TES_SOAK_SECS` (default 60; the issue's row is
//! 300) from an outside-process client with 256 requests in flight; its
//! resident memory is sampled after a warm-up and at the end
//! (`cargo bench -p tes --bench soak`). Flat memory means the end is about
//! the warm-up, however many signatures went by.
//!
//! Halfway through it rotates (v1 → v2) and reports the longest gap between
//! two consecutive replies (to any client) in the two seconds after the
//! rotation, beside the longest gap in the two seconds before it: what a
//! rotation costs the clients in stall.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tes_bus::test_server::{binary, TestServer};

const IN_FLIGHT: usize = 256;
const WARM_UP: Duration = Duration::from_secs(10);

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    if Command::new(binary()).arg("--version").output().is_err() {
        println!("(no nats-server found: the soak is skipped)");
        return;
    }
    let secs: u64 = std::env::var("TES_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let server = TestServer::start();
    server.ready(None).await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_tes"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--nats", &url, "daemon", "--actors", "version"])
        .env("VERSION_SIGNING_KEY", "soak-secret-0123456789abcdef0123")
        .env(
            "VERSION_SIGNING_KEY_V2",
            "soak-secret-v2-0123456789abcdef01",
        )
        .env("TES_LOG_DIR", dir.path().join("logs"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the tes binary");
    let pid = daemon.id();
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let echo_gap = echo_gap(&url, &client).await;
    let commit = raw_commits(dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .request("tes.cmd.0x6001.status", "{}".into())
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the daemon never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let signed = Arc::new(AtomicU64::new(0));
    let origin = Instant::now();
    let gaps = Arc::new(Gaps::default());
    let loops: Vec<_> = (0..IN_FLIGHT)
        .map(|w| {
            let (client, stop, signed, gaps) =
                (client.clone(), stop.clone(), signed.clone(), gaps.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = format!(r#"{{"payload":"soak-{w}-{i}"}}"#);
                    if let Ok(m) = client.request("tes.cmd.0x6001.sign", body.into()).await {
                        if m.payload.starts_with(b"{\"ok\"") {
                            signed.fetch_add(1, Ordering::Relaxed);
                            gaps.reply(origin.elapsed().as_micros() as u64);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(WARM_UP).await;
    let (warm_rss, warm_signed, warm_at) =
        (rss_kib(pid), signed.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs / 2)).await;
    // Two seconds measured as they are, then the rotation and two more.
    gaps.measure(Window::Before);
    tokio::time::sleep(GAP_WINDOW).await;
    gaps.measure(Window::After);
    let rotated = client
        .request("tes.cmd.0x6001.rotate", r#"{"requestedBy":"soak"}"#.into())
        .await
        .map(|m| m.payload.starts_with(b"{\"ok\""))
        .unwrap_or(false);
    tokio::time::sleep(GAP_WINDOW).await;
    gaps.measure(Window::Off);
    tokio::time::sleep(Duration::from_secs(secs - secs / 2)).await;
    let (end_rss, end_signed) = (rss_kib(pid), signed.load(Ordering::Relaxed));
    let rate = (end_signed - warm_signed) as f64 / warm_at.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    println!(
        "TES soak: the ledger writer on NATS, {IN_FLIGHT} in flight, {secs} s after a {} s warm-up\n",
        WARM_UP.as_secs()
    );
    println!("| signatures | rate | RSS after warm-up | RSS at the end | growth per signature |");
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {end_signed} | {:.1} k/s | {:.1} MiB | {:.1} MiB | {:.1} B |",
        rate / 1000.0,
        warm_rss as f64 / 1024.0,
        end_rss as f64 / 1024.0,
        (end_rss as f64 - warm_rss as f64) * 1024.0 / (end_signed - warm_signed).max(1) as f64
    );
    println!(
        "\n| rotation under load | longest gap between replies, 2 s after | 2 s before | goal | bare NATS echo, same load, 2 s |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| {} | {:.1} ms | {:.1} ms | ≤ 10 ms | {:.1} ms |",
        if rotated { "v1 → v2" } else { "REFUSED" },
        gaps.after.load(Ordering::Relaxed) as f64 / 1000.0,
        gaps.before.load(Ordering::Relaxed) as f64 / 1000.0,
        echo_gap as f64 / 1000.0
    );
    println!(
        "\nWhat bounds a gap: a durable commit on this disk (raw SQLite, WAL, synchronous=FULL, one row; 2 s): median {:.2} ms, longest {:.1} ms",
        commit.0 as f64 / 1000.0,
        commit.1 as f64 / 1000.0
    );
}

/// Median and longest time (µs) of a one-row durable commit into a raw
/// SQLite file beside the ledger, committed back to back for 2 s: the
/// floor under any reply that waits for its record.
fn raw_commits(dir: &std::path::Path) -> (u64, u64) {
    let conn = rusqlite::Connection::open(dir.join("raw-commits.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch("CREATE TABLE t (seq INTEGER PRIMARY KEY, payload BLOB)")
        .unwrap();
    let mut times = Vec::new();
    let until = Instant::now() + GAP_WINDOW;
    while Instant::now() < until {
        let t = Instant::now();
        conn.execute("INSERT INTO t (payload) VALUES (?1)", [&[7u8; 200][..]])
            .unwrap();
        times.push(t.elapsed().as_micros() as u64);
    }
    times.sort_unstable();
    (times[times.len() / 2], *times.last().unwrap())
}

/// The baseline for the gap row: the longest gap between two consecutive
/// replies (µs) of a bare NATS echo (on its own connection) under the same
/// load from the same client, over a 2 s window after a 2 s warm-up: what
/// this machine's scheduling and the server alone cost in stall.
async fn echo_gap(url: &str, client: &async_nats::Client) -> u64 {
    use futures_util::StreamExt;
    let responder = async_nats::connect(url).await.unwrap();
    let mut requests = responder.subscribe("soak.echo").await.unwrap();
    responder.flush().await.unwrap();
    let echo = {
        let responder = responder.clone();
        tokio::spawn(async move {
            while let Some(m) = requests.next().await {
                if let Some(reply) = m.reply {
                    let _ = responder.publish(reply, m.payload).await;
                }
            }
        })
    };
    let (stop, gaps, origin) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Gaps::default()),
        Instant::now(),
    );
    let loops: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (client, stop, gaps) = (client.clone(), stop.clone(), gaps.clone());
            tokio::spawn(async move {
                let body = "x".repeat(40);
                while !stop.load(Ordering::Relaxed) {
                    if client
                        .request("soak.echo", body.clone().into())
                        .await
                        .is_ok()
                    {
                        gaps.reply(origin.elapsed().as_micros() as u64);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(GAP_WINDOW).await;
    gaps.measure(Window::Before);
    tokio::time::sleep(GAP_WINDOW).await;
    gaps.measure(Window::Off);
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    echo.abort();
    gaps.before.load(Ordering::Relaxed)
}

const GAP_WINDOW: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
enum Window {
    Off = 0,
    Before = 1,
    After = 2,
}

/// The longest time between two consecutive replies (µs), per window.
#[derive(Default)]
struct Gaps {
    last: AtomicU64,
    window: std::sync::atomic::AtomicU8,
    before: AtomicU64,
    after: AtomicU64,
}

impl Gaps {
    fn measure(&self, w: Window) {
        self.window.store(w as u8, Ordering::SeqCst);
    }

    fn reply(&self, now_us: u64) {
        let prev = self.last.fetch_max(now_us, Ordering::SeqCst);
        let gap = now_us.saturating_sub(prev);
        match self.window.load(Ordering::Relaxed) {
            1 => self.before.fetch_max(gap, Ordering::Relaxed),
            2 => self.after.fetch_max(gap, Ordering::Relaxed),
            _ => 0,
        };
    }
}
