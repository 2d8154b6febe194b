//! `ops/nats-server.conf` against a real server: each user may publish only
//! its own subjects, the server refuses the rest, and only the Supervisor
//! may ask Version Management to rotate.
//!
//! A forbidden publish returns Ok at the client and the refusal arrives as a
//! server error event (NOTES.md), so each check waits for that event, or
//! for its absence plus delivery to a listener.

use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use futures_util::StreamExt;
use tes_bus::test_server::{ops_password, TestServer};
use tokio::sync::mpsc;

async fn server() -> TestServer {
    let s = TestServer::start_with_ops_config();
    s.ready(Some(("monitor", &ops_password("monitor")))).await;
    s
}

/// A client as `user`, with its server errors forwarded to a channel.
async fn connect(
    s: &TestServer,
    user: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = ConnectOptions::with_user_and_password(user.into(), ops_password(user))
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                if let Event::ServerError(err) = e {
                    let _ = tx.send(err.to_string());
                }
            }
        })
        .connect(s.url())
        .await
        .unwrap();
    (client, rx)
}

async fn refused(
    client: &async_nats::Client,
    errors: &mut mpsc::UnboundedReceiver<String>,
    subject: &str,
) -> bool {
    client
        .publish(subject.to_string(), "x".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    violation(errors, subject).await
}

/// Waits for the server's permissions violation about `subject`; earlier
/// violations (late news of other subjects) are passed over.
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, errors.recv()).await {
        if e.contains("Permissions Violation") && e.contains(&format!("\"{subject}\"")) {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn monitor_and_operator_cannot_publish_where_they_must_not() {
    let s = server().await;
    let (monitor, mut monitor_errors) = connect(&s, "monitor").await;
    for subject in [
        "tes.cmd.0x1001.rotate",
        "tes.cmd.0x6001.rotate",
        "tes.evt.0x6001.key_rotate",
    ] {
        assert!(
            refused(&monitor, &mut monitor_errors, subject).await,
            "monitor may not publish {subject}"
        );
    }
    let (operator, mut operator_errors) = connect(&s, "operator").await;
    for subject in [
        "tes.cmd.0x6001.rotate",
        "tes.cmd.0x6001.rollback",
        "tes.cmd.0x6001.revoke",
        "tes.cmd.0x6001.grace",
        "tes.cmd.0x6001.sign",
        "tes.evt.0x6001.key_rotate",
        "tes.evt.0x6001.key_revoked",
    ] {
        assert!(
            refused(&operator, &mut operator_errors, subject).await,
            "operator may not publish {subject}"
        );
    }
    let (client, mut client_errors) = connect(&s, "client").await;
    assert!(refused(&client, &mut client_errors, "tes.cmd.0x6001.rotate").await);
    assert!(refused(&client, &mut client_errors, "tes.cmd.0x1001.rotate").await);
    assert!(refused(&client, &mut client_errors, "tes.cmd.0x1001.revoke").await);
    // Batches of signatures and verifications are a client's to send.
    for subject in ["tes.cmd.0x6001.sign_batch", "tes.cmd.0x6001.verify_batch"] {
        assert!(
            !refused(&client, &mut client_errors, subject).await,
            "client may publish {subject}"
        );
    }
}

#[tokio::test]
async fn only_the_supervisor_reaches_version_managements_rotate() {
    let s = server().await;
    let (version, _) = connect(&s, "version").await;
    let mut rotations = version.subscribe("tes.cmd.0x6001.rotate").await.unwrap();
    version.flush().await.unwrap();

    let (operator, mut operator_errors) = connect(&s, "operator").await;
    assert!(refused(&operator, &mut operator_errors, "tes.cmd.0x6001.rotate").await);
    let (supervisor, mut supervisor_errors) = connect(&s, "supervisor").await;
    assert!(!refused(&supervisor, &mut supervisor_errors, "tes.cmd.0x6001.rotate").await);
    let got = tokio::time::timeout(Duration::from_secs(2), rotations.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.subject.as_str(), "tes.cmd.0x6001.rotate");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rotations.next())
            .await
            .is_err(),
        "exactly one rotate arrived"
    );
}

#[tokio::test]
async fn an_operator_may_ask_the_supervisor_and_read_events() {
    let s = server().await;
    let (supervisor, _) = connect(&s, "supervisor").await;
    let mut asks = supervisor.subscribe("tes.cmd.0x1001.>").await.unwrap();
    supervisor.flush().await.unwrap();
    let (operator, mut errors) = connect(&s, "operator").await;
    let mut events = operator.subscribe("tes.evt.>").await.unwrap();
    operator.flush().await.unwrap();
    assert!(!refused(&operator, &mut errors, "tes.cmd.0x1001.rotate").await);
    assert!(tokio::time::timeout(Duration::from_secs(2), asks.next())
        .await
        .unwrap()
        .is_some());
    let (version, _) = connect(&s, "version").await;
    version
        .publish("tes.evt.0x6001.key_rotate", "{}".into())
        .await
        .unwrap();
    version.flush().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(2), events.next())
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn a_wrong_password_is_refused_at_connect() {
    let s = server().await;
    let err = ConnectOptions::with_user_and_password("operator".into(), "wrong".into())
        .connect(s.url())
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
}

/// Asks JetStream's API as `client` and says whether the server refused it
/// (a permissions violation) — as opposed to JetStream answering.
async fn api_refused(
    client: &async_nats::Client,
    errors: &mut mpsc::UnboundedReceiver<String>,
    subject: &str,
    body: &'static str,
) -> bool {
    // Sent as a request would be, without waiting for an answer: the
    // refusal (or its absence) is what is checked.
    let inbox = client.new_inbox();
    client
        .publish_with_reply(subject.to_string(), inbox, body.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    violation(errors, subject).await
}

#[tokio::test]
async fn no_user_can_erase_history_and_only_the_writer_appends_to_it() {
    let s = server().await;
    // What a running deployment has: the writer's streams and lease bucket,
    // the Supervisor's command stream and durable consumer.
    let (version, _) = connect(&s, "version").await;
    tes_bus::jetstream::EventStream::ensure(version.clone())
        .await
        .unwrap();
    tes_bus::jetstream::CheckpointStream::ensure(version.clone())
        .await
        .unwrap();
    tes_bus::ledger_stream::LedgerStream::ensure(version.clone())
        .await
        .unwrap();
    tes_bus::jetstream::tes_bucket(version.clone())
        .await
        .unwrap();
    let (supervisor, _) = connect(&s, "supervisor").await;
    let commands = tes_bus::jetstream::CommandStream::ensure(supervisor.clone())
        .await
        .unwrap();
    commands
        .consumer("supervisor", tes_proto::ThreadId::Supervisor)
        .await
        .unwrap();

    let destructive = [
        ("$JS.API.STREAM.PURGE.TES_EVENTS", ""),
        ("$JS.API.STREAM.DELETE.TES_EVENTS", ""),
        ("$JS.API.STREAM.PURGE.TES_LEDGER", ""),
        ("$JS.API.STREAM.DELETE.TES_LEDGER", ""),
        ("$JS.API.STREAM.MSG.DELETE.TES_LEDGER", r#"{"seq":1}"#),
        ("$JS.API.STREAM.DELETE.TES_COMMANDS", ""),
        ("$JS.API.STREAM.DELETE.TES_CHECKPOINTS", ""),
        ("$JS.API.STREAM.DELETE.KV_tes", ""),
        ("$JS.API.STREAM.MSG.DELETE.TES_EVENTS", r#"{"seq":1}"#),
        (
            "$JS.API.STREAM.UPDATE.TES_EVENTS",
            r#"{"name":"TES_EVENTS","subjects":["x"]}"#,
        ),
        ("$JS.API.CONSUMER.DELETE.TES_COMMANDS.supervisor", ""),
    ];
    for user in tes_bus::test_server::OPS_USERS {
        let (client, mut errors) = connect(&s, user).await;
        for (subject, body) in destructive {
            assert!(
                api_refused(&client, &mut errors, subject, body).await,
                "{user} may not {subject}"
            );
        }
        if *user != "version" {
            for subject in [
                "tes.ledger.0x6001",
                "tes.evt.0x6001.key_rotate",
                "tes.evt.0x6001.checkpoint",
                "tes.evt.0x5003.alert",
            ] {
                assert!(
                    refused(&client, &mut errors, subject).await,
                    "{user} may not append {subject}"
                );
            }
        }
        if *user != "supervisor" {
            assert!(
                api_refused(
                    &client,
                    &mut errors,
                    "$JS.API.CONSUMER.MSG.NEXT.TES_COMMANDS.supervisor",
                    r#"{"batch":1}"#
                )
                .await,
                "{user} may not read the Supervisor's commands"
            );
        }
    }
    // Everything is still there.
    let js = async_nats::jetstream::new(version.clone());
    for stream in ["TES_EVENTS", "TES_LEDGER", "TES_CHECKPOINTS", "KV_tes"] {
        js.get_stream(stream).await.unwrap();
    }
    let js = async_nats::jetstream::new(supervisor);
    let commands = js.get_stream("TES_COMMANDS").await.unwrap();
    commands.consumer_info("supervisor").await.unwrap();

    // The operator can put the rotation signal (RUNBOOK §3).
    let (operator, _) = connect(&s, "operator").await;
    let kv = async_nats::jetstream::new(operator)
        .get_key_value("tes")
        .await
        .unwrap();
    kv.put("rotation-signal", "rotate".into()).await.unwrap();
}
