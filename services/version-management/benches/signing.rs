//! Signing throughput, each figure beside a baseline measured in the same
//! run on the same machine (absolute numbers on shared machines drift; the
//! ratios are what to compare). Run: `cargo bench -p tes-version-management`.
//!
//! 1. Keyring signature vs the raw pre-keyed `Hmac<Sha256>` clone.
//! 2. Engine: signatures made durable in the ledger (group commit of 1000,
//!    WAL, synchronous=FULL, hash chain) vs a raw SQLite batch insert of
//!    1000 hash-chained rows of the same size.
//! 3. Signing over the in-process bus with 256 requests in flight vs a bare
//!    request/reply echo on the same bus with 256 in flight.
//! 4. Signing over a real nats-server (the ledger writer alone; then the
//!    writer and one signer replica), 256 in flight, vs a bare NATS
//!    request/reply echo on the same server. Needs a nats-server (see
//!    `tes_bus::test_server`; `./tests/run` installs one); skipped without.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tes_bus::typed::{self, call};
use tes_bus::{Bus, InProcessBus, Message};
use tes_keyring::{KeyStore, Keyring, Secret, SigningKey};
use tes_proto::command::{Sign, SignBatch};
use tes_proto::{Channel, ContentType, Envelope, KeyVersion, MsgId, ThreadId, Timestamp};
use tes_version_management::actor::{self, ActorConfig};
use tes_version_management::core::Policy;
use tes_version_management::engine::system_clock;
use tes_version_management::{Engine, EngineConfig, Request};

/// The allocator the `tes` binary runs with, so the bench measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef0123456789abcdef0123";

/// Best of `rounds` runs of `f`, which does `n` operations: operations per second.
fn best(rounds: usize, n: u64, mut f: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    n as f64 / best.as_secs_f64()
}

/// CPU time (user + system) process `pid` has used so far.
fn cpu_of(pid: u32) -> Duration {
    tes_bus::test_server::cpu_time(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// CPU per operation of the nats-server and of this process (clients,
/// writer, replica) while `run` did `ops` operations: where the time goes.
async fn cpu_split<Fut: std::future::Future<Output = f64>>(
    server: u32,
    ops: usize,
    run: Fut,
) -> (f64, String) {
    let me = std::process::id();
    let (s0, m0) = (cpu_of(server), cpu_of(me));
    let rate = run.await;
    let (s1, m1) = (cpu_of(server), cpu_of(me));
    let per = |d: Duration| d.as_secs_f64() * 1e6 / ops as f64;
    (
        rate,
        format!(
            "CPU per operation: nats-server {:.1} µs, bench process {:.1} µs",
            per(s1 - s0),
            per(m1 - m0)
        ),
    )
}

fn row(name: &str, ours: f64, baseline_name: &str, baseline: f64) {
    println!(
        "{name:<44} {:>12.0}/s   {baseline_name:<34} {:>12.0}/s   ratio {:.2}",
        ours,
        baseline,
        ours / baseline
    );
}

/// `cargo bench --bench signing -- engine` runs the sections whose name
/// holds one of the words given (keyring, engine, bus, nats); none: all.
fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    println!("TES signing benchmarks (best of several rounds; ratio = ours / baseline)\n");
    if wanted("keyring") {
        hmac_vs_keyring();
    }
    if wanted("engine") {
        engine_vs_sqlite();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if wanted("bus") {
        rt.block_on(bus_sign_vs_echo());
    }
    if wanted("nats") {
        rt.block_on(nats_sign_vs_echo());
    }
}

fn hmac_vs_keyring() {
    let payload = vec![0x5au8; 256];
    let n = 200_000u64;
    let raw = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    let baseline = best(5, n, || {
        for _ in 0..n {
            let mut m = raw.clone();
            m.update(&payload);
            std::hint::black_box(m.finalize().into_bytes());
        }
    });
    let key = SigningKey::new(
        KeyVersion::V1,
        &Secret::from_text("bench", SECRET.as_bytes().to_vec()).unwrap(),
    );
    let ours = best(5, n, || {
        for _ in 0..n {
            std::hint::black_box(key.sign(&payload));
        }
    });
    row(
        "keyring sign, 256 B",
        ours,
        "raw pre-keyed HMAC clone, 256 B",
        baseline,
    );
}

fn engine_vs_sqlite() {
    const BATCH: u64 = 1000;
    const BATCHES: u64 = 20;
    let dir = tempfile::tempdir().unwrap();

    let keyring = Keyring::load(
        vec![("VERSION_SIGNING_KEY".to_string(), SECRET.to_string())],
        &KeyStore::new(dir.path().join("ks")),
        false,
    )
    .unwrap();
    let config = EngineConfig {
        ledger_path: dir.path().join("ledger.db"),
        policy: Policy::default(),
        snapshot_every: 0,
        replace: None,
    };
    let mut engine = Engine::open(config, keyring, system_clock()).unwrap();
    let requests = || -> Vec<Request> {
        (0..BATCH)
            .map(|i| {
                Request::Sign(Envelope::new(
                    MsgId::generate(),
                    Timestamp::now(),
                    ThreadId::VersionManagement,
                    Channel::Command,
                    Sign {
                        payload: format!("{{\"manifest\":{i}}}"),
                        key_version: None,
                    },
                ))
            })
            .collect()
    };
    // The requests are the client's work: made before the clock starts.
    let mut prepared: Vec<Vec<Request>> = (0..3 * BATCHES).map(|_| requests()).collect();
    let ours = best(3, BATCH * BATCHES, || {
        for _ in 0..BATCHES {
            let (outcomes, _) = engine.handle_batch(prepared.pop().unwrap());
            assert!(outcomes.iter().all(|o| o.is_ok()));
        }
    });
    // The size of the signature events our rows carry, read back from the
    // ledger the engine wrote, so the baseline's rows are as large.
    let event_bytes: f64 = rusqlite::Connection::open(dir.path().join("ledger.db"))
        .unwrap()
        .query_row(
            "SELECT avg(length(payload)) FROM events WHERE kind = 'signature_generated'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let event_bytes = event_bytes.round() as usize;

    // Baseline: the bare minimum a hash-chained log of rows shaped like
    // ours costs: the ledger's own table (same columns, UNIQUE id, the
    // causation index, the append-only triggers; WAL, synchronous=FULL),
    // the ledger's row hash per row, ids and hashes as the same text, a
    // payload of the size a signature event's is, one transaction per 1000.
    let conn = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(tes_ledger::store::SCHEMA).unwrap();
    let mut seq = 0u64;
    let mut prev = tes_ledger::GENESIS;
    let payload = vec![b'x'; event_bytes];
    let baseline = best(3, BATCH * BATCHES, || {
        for _ in 0..BATCHES {
            let tx = conn.unchecked_transaction().unwrap();
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO events (seq, id, ts, thread, kind, key_version, causation_id,
                                             correlation_id, schema, payload, prev_hash, hash)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    )
                    .unwrap();
                for _ in 0..BATCH {
                    seq += 1;
                    let (id, cause) = (MsgId::generate(), MsgId::generate());
                    let ts = 1_700_000_000_000 + seq;
                    let hash = tes_ledger::chain::row_hash(
                        &prev,
                        &tes_ledger::chain::RowFields {
                            seq,
                            id: id.0.as_bytes(),
                            ts,
                            thread: 0x6001,
                            kind: "signature_generated",
                            key_version: Some(1),
                            causation_id: Some(cause.0.as_bytes()),
                            correlation_id: None,
                            schema: 1,
                            payload: &payload,
                        },
                    );
                    // Text bound from the stack, no allocation per row:
                    // the least a row of text ids and hashes can cost.
                    let (mut id_buf, mut cause_buf) = ([0u8; 36], [0u8; 36]);
                    let (mut prev_buf, mut hash_buf) = ([0u8; 64], [0u8; 64]);
                    st.execute(rusqlite::params![
                        seq,
                        &*id.0.hyphenated().encode_lower(&mut id_buf),
                        ts,
                        "0x6001",
                        "signature_generated",
                        1,
                        &*cause.0.hyphenated().encode_lower(&mut cause_buf),
                        None::<&str>,
                        1,
                        &payload[..],
                        tes_ledger::chain::hex_in(&prev, &mut prev_buf),
                        tes_ledger::chain::hex_in(&hash, &mut hash_buf),
                    ])
                    .unwrap();
                    prev = hash;
                }
            }
            tx.commit().unwrap();
        }
    });

    row(
        "engine: durable signatures, batches of 1000",
        ours,
        "raw SQLite chained insert, 1000/tx",
        baseline,
    );
}

async fn bus_sign_vs_echo() {
    const IN_FLIGHT: usize = 256;
    const TOTAL: usize = 40_000;
    let dir = tempfile::tempdir().unwrap();

    let echo_bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let baseline = echo_rate(echo_bus.clone(), echo_bus, IN_FLIGHT, TOTAL).await;

    let bus: Arc<dyn Bus> = Arc::new(InProcessBus::new());
    let keyring = Keyring::load(
        vec![("VERSION_SIGNING_KEY".to_string(), SECRET.to_string())],
        &KeyStore::new(dir.path().join("ks")),
        false,
    )
    .unwrap();
    let config = EngineConfig {
        ledger_path: dir.path().join("ledger.db"),
        policy: Policy::default(),
        snapshot_every: 0,
        replace: None,
    };
    let engine = Engine::open(config, keyring, system_clock()).unwrap();
    let running = actor::start(engine, bus.clone(), ActorConfig::default())
        .await
        .unwrap();
    let ours = drive(IN_FLIGHT, TOTAL, {
        let bus = bus.clone();
        move || sign_once(bus.clone())
    })
    .await;
    drop(running.stop().await);
    row(
        "bus: durable signatures, 256 in flight",
        ours,
        "bare in-process echo, 256 in flight",
        baseline,
    );
}

/// Runs `total` calls of `f` with `in_flight` at a time; calls per second (best of 3).
async fn drive<F, Fut>(in_flight: usize, total: usize, f: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut best_time = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let per_worker = total / in_flight;
        let mut workers = Vec::new();
        for _ in 0..in_flight {
            let f = f.clone();
            workers.push(tokio::spawn(async move {
                for _ in 0..per_worker {
                    f().await;
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        best_time = best_time.min(t.elapsed());
    }
    (total / in_flight * in_flight) as f64 / best_time.as_secs_f64()
}

async fn nats_sign_vs_echo() {
    use tes_bus::jetstream::EventStream;
    use tes_bus::test_server::{binary, TestServer};
    use tes_bus::{NatsBus, NatsConfig};
    use tes_version_management::replica::{self, ReplicaConfig};
    if std::process::Command::new(binary())
        .arg("--version")
        .output()
        .is_err()
    {
        println!("(no nats-server found: NATS benchmarks skipped)");
        return;
    }
    const IN_FLIGHT: usize = 256;
    const TOTAL: usize = 20_000;
    let server = TestServer::start();
    server.ready(None).await;
    let connect = |name: &'static str| {
        let url = server.url();
        async move {
            NatsBus::connect(&NatsConfig {
                url,
                name: name.into(),
                ..NatsConfig::default()
            })
            .await
            .unwrap()
        }
    };
    let dir = tempfile::tempdir().unwrap();

    let client: Arc<dyn Bus> = Arc::new(connect("client").await);
    let (baseline, echo_cpu) = cpu_split(
        server.pid(),
        3 * TOTAL,
        echo_rate(
            Arc::new(connect("echo").await),
            client.clone(),
            IN_FLIGHT,
            TOTAL,
        ),
    )
    .await;

    let keys = || {
        Keyring::load(
            vec![("VERSION_SIGNING_KEY".to_string(), SECRET.to_string())],
            &KeyStore::new(dir.path().join("ks")),
            false,
        )
        .unwrap()
    };
    // What the JetStream stream costs: the same writer with no stream
    // (the events stay in the ledger only), its own ledger.
    {
        let config = EngineConfig {
            ledger_path: dir.path().join("no-stream.db"),
            policy: Policy::default(),
            snapshot_every: 0,
            replace: None,
        };
        let engine = Engine::open(config, keys(), system_clock()).unwrap();
        let writer = actor::start(
            engine,
            Arc::new(connect("writer-no-stream").await),
            ActorConfig::default(),
        )
        .await
        .unwrap();
        warm_up(&client).await;
        let client = client.clone();
        let (rate, cpu) = cpu_split(
            server.pid(),
            3 * TOTAL,
            drive(IN_FLIGHT, TOTAL, move || sign_once(client.clone())),
        )
        .await;
        println!("  (the writer with no event stream: {rate:.0}/s; {cpu})");
        drop(writer.stop().await);
    }
    let writer_bus = connect("writer").await;
    let stream = EventStream::ensure(writer_bus.client().clone())
        .await
        .unwrap();
    let config = EngineConfig {
        ledger_path: dir.path().join("ledger.db"),
        policy: Policy::default(),
        snapshot_every: 0,
        replace: None,
    };
    let engine = Engine::open(config, keys(), system_clock()).unwrap();
    let writer = actor::start(
        engine,
        Arc::new(writer_bus),
        ActorConfig {
            event_stream: Some(stream.clone()),
            ..ActorConfig::default()
        },
    )
    .await
    .unwrap();
    warm_up(&client).await;
    let sign = {
        let client = client.clone();
        move || sign_once(client.clone())
    };
    let (alone, alone_cpu) = cpu_split(
        server.pid(),
        3 * TOTAL,
        drive(IN_FLIGHT, TOTAL, sign.clone()),
    )
    .await;
    row(
        "NATS: durable signatures, writer alone",
        alone,
        "bare NATS echo, 256 in flight",
        baseline,
    );
    println!("  echo: {echo_cpu}\n  writer alone: {alone_cpu}");

    // One request at a time: a sign's latency against an echo's, the same
    // client (the echo responder of the baseline still answers).
    let sign_p50 = {
        let client = client.clone();
        p50(1000, move || sign_once(client.clone())).await
    };
    let echo_p50 = {
        let client = client.clone();
        p50(1000, move || echo_once(client.clone())).await
    };
    println!(
        "{:<44} {:>10.3} ms   {:<28} {:>10.3} ms   {:.1}×",
        "NATS: one sign at a time, p50",
        sign_p50.as_secs_f64() * 1e3,
        "bare NATS echo, one at a time",
        echo_p50.as_secs_f64() * 1e3,
        sign_p50.as_secs_f64() / echo_p50.as_secs_f64()
    );

    // One client, one request at a time: single signs against batches
    // (each item its own audit record, all durable before the reply).
    let single = {
        let client = client.clone();
        drive(1, 2000, move || sign_once(client.clone())).await
    };
    for size in [100usize, 1000] {
        let client = client.clone();
        let batches = drive(1, 200_000 / size / 10, move || {
            sign_batch_once(client.clone(), size)
        })
        .await;
        row(
            &format!("NATS: batch of {size}, one client"),
            batches * size as f64,
            "single signs, one client, 1 in flight",
            single,
        );
    }

    let replica_bus = connect("replica").await;
    let replica_config = ReplicaConfig {
        name: "bench-replica".into(),
        wire: ContentType::Binary,
        policy: Policy::default(),
        timeout: Duration::from_secs(10),
    };
    let replica = replica::start(stream, Arc::new(replica_bus), keys(), replica_config)
        .await
        .unwrap();
    let (with_replica, replica_cpu) =
        cpu_split(server.pid(), 3 * TOTAL, drive(IN_FLIGHT, TOTAL, sign)).await;
    row(
        "NATS: durable signatures, writer + 1 replica",
        with_replica,
        "bare NATS echo, 256 in flight",
        baseline,
    );
    println!("  writer + replica: {replica_cpu}");
    replica.stop().await;
    drop(writer.stop().await);
}

/// Waits until a signer answers on `bus` (its subscription reached the
/// server), so no timed run starts before there is anyone to ask.
async fn warm_up(bus: &Arc<dyn Bus>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = typed::command(
            ThreadId::VersionManagement,
            Sign {
                payload: "warm-up".into(),
                key_version: None,
            },
        );
        let answered = call::<Sign>(
            &**bus,
            ThreadId::VersionManagement,
            ContentType::Binary,
            &c,
            Duration::from_secs(10),
        )
        .await;
        match answered {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!("no signer answers: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Signs one manifest through `bus`, as a client does.
async fn sign_once(bus: Arc<dyn Bus>) {
    let c = typed::command(
        ThreadId::VersionManagement,
        Sign {
            payload: "{\"manifest\":1}".into(),
            key_version: None,
        },
    );
    call::<Sign>(
        &*bus,
        ThreadId::VersionManagement,
        ContentType::Binary,
        &c,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
}

/// Signs `size` manifests in one `sign_batch` request.
async fn sign_batch_once(bus: Arc<dyn Bus>, size: usize) {
    let c = typed::command(
        ThreadId::VersionManagement,
        SignBatch {
            items: (0..size)
                .map(|i| Sign {
                    payload: format!("{{\"manifest\":{i}}}"),
                    key_version: None,
                })
                .collect(),
        },
    );
    let reply = call::<SignBatch>(
        &*bus,
        ThreadId::VersionManagement,
        ContentType::Binary,
        &c,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(reply
        .results
        .iter()
        .all(|r| matches!(r, tes_proto::Reply::Ok(_))));
}

/// Where the baseline's bare echo answers.
const ECHO_SUBJECT: &str = "bench.echo";

/// The median time of `n` calls of `f`, one after the other.
async fn p50<F, Fut>(n: usize, f: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed());
    }
    times.sort();
    times[n / 2]
}

/// One request to the echo [`echo_rate`] serves.
async fn echo_once(client: Arc<dyn Bus>) {
    client
        .request(
            Message::new(ECHO_SUBJECT, bytes::Bytes::from(vec![7u8; 200])),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// The baseline: request/reply through `client` to a bare echo served on
/// `server`, `in_flight` at a time.
async fn echo_rate(
    server: Arc<dyn Bus>,
    client: Arc<dyn Bus>,
    in_flight: usize,
    total: usize,
) -> f64 {
    let mut sub = server.subscribe(ECHO_SUBJECT, None).await.unwrap();
    let responder = server.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            responder
                .publish(Message::new(m.reply.clone().unwrap(), m.payload.clone()))
                .await
                .unwrap();
        }
    });
    let payload = bytes::Bytes::from(vec![7u8; 200]);
    drive(in_flight, total, move || {
        let (client, payload) = (client.clone(), payload.clone());
        async move {
            client
                .request(Message::new(ECHO_SUBJECT, payload), Duration::from_secs(10))
                .await
                .unwrap();
        }
    })
    .await
}
