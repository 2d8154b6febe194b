//! On a three-server NATS cluster (three `nats-server` processes with
//! routes on loopback, JetStream R3): the streams and the bucket tes makes
//! keep three replicas with no flag saying "cluster", and the event stream
//! goes on storing with one server of three killed.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use tes_bus::jetstream::{replicas, CommandStream, EventStream};
use tes_bus::test_server::{TestCluster, TestServer};
use tes_bus::{NatsBus, NatsConfig};

async fn connect(url: String) -> async_nats::Client {
    NatsBus::connect(&NatsConfig {
        url,
        ..Default::default()
    })
    .await
    .expect("connects to the cluster")
    .client()
    .clone()
}

async fn stream_info(client: &async_nats::Client, name: &str) -> jetstream::stream::Info {
    jetstream::new(client.clone())
        .get_stream(name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone()
}

/// A ledger event at `seq` (a checkpoint: the body does not matter here).
fn event(seq: u64) -> (u64, tes_proto::Envelope<tes_proto::Event>) {
    use tes_proto::event::Checkpoint;
    use tes_proto::{Channel, Envelope, Event, MsgId, ThreadId, Timestamp};
    let body = Event::Checkpoint(Checkpoint {
        seq,
        hash: String::new(),
        root: String::new(),
        note: String::new(),
    });
    let e = Envelope::new(
        MsgId::generate(),
        Timestamp::now(),
        ThreadId::VersionManagement,
        Channel::Event,
        body,
    );
    (seq, e)
}

#[tokio::test]
async fn streams_keep_three_copies_and_store_on_with_one_server_down() {
    let mut cluster = TestCluster::start(3);
    cluster.ready().await;
    // The whole cluster as one comma-separated URL, as TES_NATS_URL takes it.
    let client = connect(cluster.url()).await;
    assert_eq!(replicas(&client), 3);
    EventStream::ensure(client.clone()).await.unwrap();
    CommandStream::ensure(client.clone()).await.unwrap();
    tes_bus::jetstream::tes_bucket(client.clone())
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    for name in ["TES_EVENTS", "TES_COMMANDS", "KV_tes"] {
        let info = stream_info(&client, name).await;
        assert_eq!(info.config.num_replicas, 3, "{name}");
    }

    let store = |i: u32| {
        let js = js.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let stored = match js
                    .publish("tes.evt.0x6001.key_rotate", format!("event {i}").into())
                    .await
                {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if stored {
                    return;
                }
                assert!(Instant::now() < deadline, "event {i} never stored");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    for i in 0..10 {
        store(i).await;
    }
    // One server of three gone (kill -9): a quorum of two stores on.
    cluster.servers[0].kill();
    for i in 10..20 {
        store(i).await;
    }
    let mut stream = js.get_stream("TES_EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 20);
    cluster.servers[0].restart();
}

#[tokio::test]
async fn a_lone_server_gets_one_copy() {
    let server = TestServer::start();
    server.ready(None).await;
    let client = connect(server.url()).await;
    assert_eq!(replicas(&client), 1);
    EventStream::ensure(client.clone()).await.unwrap();
    let info = stream_info(&client, "TES_EVENTS").await;
    assert_eq!(info.config.num_replicas, 1);
}

/// `TES_LEDGER`: a writer's append at a seq another writer already took is
/// refused by the stream itself (expected last sequence), whatever the
/// lease says; a resend of an event the stream already holds at its seq
/// is taken as held; the stream keeps three copies.
#[tokio::test]
async fn appends_to_the_replicated_ledger_are_fenced() {
    use tes_bus::ledger_stream::{AppendError, LedgerStream};
    use tes_proto::ContentType;

    let cluster = TestCluster::start(3);
    cluster.ready().await;
    let client = connect(cluster.url()).await;
    let ledger = LedgerStream::ensure(client.clone()).await.unwrap();
    let ct = ContentType::Json;
    // Writer A appends 1..=3 in one pipelined chunk.
    let a: Vec<_> = (1..=3).map(event).collect();
    let (held, error) = ledger.append(ct, None, &a).await;
    assert_eq!((held, error.is_none()), (3, true));
    // Writer B (the successor) appends 4.
    let b4 = vec![event(4)];
    assert_eq!(ledger.append(ct, Some(a[2].1.id), &b4).await.0, 1);
    // A, not knowing, appends its own 4 and 5 (pipelined): refused at 4,
    // and 5 too, though the stream's last seq is 4 as it expects: its 4
    // is not the stream's.
    let late: Vec<_> = (4..=5).map(event).collect();
    let (held, error) = ledger.append(ct, Some(a[2].1.id), &late).await;
    assert_eq!(held, 0);
    match error {
        Some(AppendError::Fenced { seq, theirs, .. }) => {
            assert_eq!(seq, 4);
            assert_eq!(theirs, b4[0].1.id.to_string());
        }
        other => panic!("expected a fenced append, got {other:?}"),
    }
    // A resend of what the stream holds (a lost ack) is held, not fenced.
    let (held, error) = ledger.append(ct, Some(a[0].1.id), &a[1..]).await;
    assert_eq!((held, error.is_none()), (2, true), "{error:?}");
    let info = stream_info(&client, "TES_LEDGER").await;
    assert_eq!(info.state.messages, 4);
    assert_eq!(info.config.num_replicas, 3);
    // A follower from seq 3 sees 3 and 4, then that it caught up.
    let mut follow = ledger.follow_from(3).await.unwrap();
    let mut seen = Vec::new();
    while let tes_bus::jetstream::Followed::Event { ledger_seq, .. } = follow.recv().await.unwrap()
    {
        seen.push(ledger_seq);
    }
    assert_eq!(seen, vec![Some(3), Some(4)]);
}

/// A standby follows the ledger through an ordered consumer, which lives on
/// one server. When that server dies the follower must go on from the
/// next seq within seconds (async-nats alone notices only after two missed
/// 15 s heartbeats: longer than the lease a standby must take over in).
#[tokio::test]
async fn a_ledger_follower_goes_on_when_its_consumers_server_dies() {
    use futures_util::TryStreamExt;
    use tes_bus::jetstream::Followed;
    use tes_bus::ledger_stream::LedgerStream;
    use tes_proto::ContentType;

    let mut cluster = TestCluster::start(3);
    cluster.ready().await;
    let writer = LedgerStream::ensure(connect(cluster.url()).await)
        .await
        .unwrap();
    let ct = ContentType::Json;
    let first: Vec<_> = (1..=3).map(event).collect();
    assert_eq!(writer.append(ct, None, &first).await.0, 3);

    let follower_client = connect(cluster.url()).await;
    let mut follow = LedgerStream::ensure(follower_client.clone())
        .await
        .unwrap()
        .follow_from(1)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Followed::Event { ledger_seq, .. } = follow.recv().await.unwrap() {
        seen.push(ledger_seq.unwrap());
    }
    assert_eq!(seen, vec![1, 2, 3]);

    // The server that holds the follower's consumer.
    let js = jetstream::new(follower_client);
    let consumers: Vec<_> = js
        .get_stream("TES_LEDGER")
        .await
        .unwrap()
        .consumers()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(consumers.len(), 1, "one consumer: the follower's");
    let leader = consumers[0]
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the consumer has a leader");
    let index = leader.trim_start_matches('n').parse::<usize>().unwrap() - 1;
    cluster.servers[index].kill();

    // The writer goes on appending on the two servers left.
    let more: Vec<_> = (4..=6).map(event).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut held = 0;
    while held < more.len() {
        let previous = if held == 0 {
            first[2].1.id
        } else {
            more[held - 1].1.id
        };
        let (n, _) = writer.append(ct, Some(previous), &more[held..]).await;
        held += n;
        assert!(
            Instant::now() < deadline,
            "the writer could not append on two servers"
        );
        if held < more.len() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let started = Instant::now();
    let mut after = Vec::new();
    while after.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), follow.recv()).await {
            Ok(Some(Followed::Event { ledger_seq, .. })) => after.push(ledger_seq.unwrap()),
            Ok(Some(Followed::CaughtUp)) => {}
            Ok(None) => panic!("the follower ended"),
            Err(_) => panic!(
                "the follower got {after:?} of seqs 4..=6 within 10 s of its consumer's server ({leader}) dying"
            ),
        }
    }
    assert_eq!(after, vec![4, 5, 6], "in order, each once");
    eprintln!("the follower went on after {:?}", started.elapsed());
}

#[test]
fn test_clusters_drop_lost_connections_as_the_production_config_does() {
    // The fault figures hold for ops/nats-server.conf only if the test
    // cluster drops a silent client or route as it does.
    let ops = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../ops/nats-server.conf"
    ))
    .unwrap();
    for line in tes_bus::test_server::CLUSTER_CONFIG.lines() {
        assert!(
            ops.lines().any(|l| l.trim() == line),
            "ops/nats-server.conf has no {line:?}"
        );
    }
}
