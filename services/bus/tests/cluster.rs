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
        let info = js
            .get_stream(name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
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
    let info = jetstream::new(client)
        .get_stream("TES_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 1);
}
