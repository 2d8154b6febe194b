//! Both buses pass the same conformance suite: the in-process one, and the
//! NATS one against a real nats-server started for the test.

use std::sync::Arc;

use tes_bus::test_server::TestServer;
use tes_bus::{NatsBus, NatsConfig};

#[tokio::test]
async fn in_process_bus_conforms() {
    tes_bus::conformance::run_all(Arc::new(tes_bus::InProcessBus::new())).await;
}

/// In one process the bus knows its subscribers: a subject nobody
/// subscribes to (or whose subscription was dropped) has no interest, so
/// Version Management does not encode events nobody would receive.
#[tokio::test]
async fn the_in_process_bus_knows_when_nobody_listens() {
    use tes_bus::Bus;
    let bus = tes_bus::InProcessBus::new();
    assert!(!bus.has_interest("tes.evt.0x6001.signature_generated"));
    let watch = bus.subscribe("tes.evt.>", None).await.unwrap();
    assert!(bus.has_interest("tes.evt.0x6001.signature_generated"));
    assert!(!bus.has_interest("tes.cmd.0x6001.sign"));
    drop(watch);
    assert!(!bus.has_interest("tes.evt.0x6001.signature_generated"));
}

#[tokio::test]
async fn nats_bus_conforms() {
    let server = TestServer::start();
    server.ready(None).await;
    let bus = NatsBus::connect(&NatsConfig {
        url: server.url(),
        name: "conformance".into(),
        ..NatsConfig::default()
    })
    .await
    .unwrap();
    tes_bus::conformance::run_all(Arc::new(bus)).await;
}

#[tokio::test]
async fn connecting_to_nothing_fails_fast_with_the_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = NatsBus::connect(&NatsConfig {
        url: url.clone(),
        ..NatsConfig::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&url), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
