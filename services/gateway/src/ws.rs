//! `GET /api/dev/version-ws`: a WebSocket that streams version and key
//! events to UI clients, as JSON: first `{"type":"status", …}` (the health
//! body), then `{"type":"event","event":<envelope>}` for each event on the
//! bus (heartbeats and checkpoints left out).
//!
//! Subprotocol enforcement (the seed's "tes-ui-v2 mandates V2 keys"): a
//! client asking for `tes-ui-v<N>` is accepted only while the active key
//! version is at least N, else refused with 403 `Deprecate V<active>`; a
//! subprotocol that is not `tes-ui-v<N>` is a 400.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;
use tes_bus::typed::decode_event;
use tes_proto::command::Status;
use tes_proto::event::kind;
use tes_proto::subject::ALL_EVENTS;
use tes_proto::thread::colour;
use tes_proto::ThreadId;

use crate::server::{call, from_call, health_body, refuse, text, App};

/// `tes-ui-v<N>` → N.
fn required_version(protocol: &str) -> Option<u32> {
    protocol
        .strip_prefix("tes-ui-v")?
        .parse()
        .ok()
        .filter(|n| *n >= 1)
}

pub(crate) async fn version_ws(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(rejection) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("a WebSocket upgrade is expected here ({rejection})"),
                colour::REJECTED_ORANGE_RED,
            )
        }
    };
    let asked: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let mut needs = 0;
    for protocol in &asked {
        match required_version(protocol) {
            Some(n) => needs = needs.max(n),
            None => {
                return refuse(
                    &app,
                    "GET /api/dev/version-ws",
                    StatusCode::BAD_REQUEST,
                    &format!("Unknown subprotocol {protocol:?} (expected tes-ui-v<N>)"),
                    "unknown subprotocol",
                )
                .await
            }
        }
    }
    let status = match call(&app, ThreadId::VersionManagement, Status::default()).await {
        Ok(s) => s,
        Err(e) => return from_call(e),
    };
    let active = status.key_version.map_or(0, |v| v.get());
    if active < needs {
        return refuse(
            &app,
            "GET /api/dev/version-ws",
            StatusCode::FORBIDDEN,
            &format!("Deprecate V{}", active.max(1)),
            &format!("tes-ui-v{needs} needs key version v{needs} or later; v{active} is active"),
        )
        .await;
    }
    let hello = json!({"type": "status", "status": health_body(&status, &app)});
    let upgrade = match asked.first() {
        Some(p) => upgrade.protocols([p.clone()]),
        None => upgrade,
    };
    upgrade.on_upgrade(move |socket| stream(socket, app, hello))
}

async fn stream(mut socket: WebSocket, app: Arc<App>, hello: serde_json::Value) {
    let Ok(mut events) = app.bus.subscribe(ALL_EVENTS, None).await else {
        let _ = socket.send(Message::Close(None)).await;
        return;
    };
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            message = events.next() => {
                let Some(message) = message else { break };
                let Ok(event) = decode_event(&message) else { continue };
                if matches!(event.body.kind(), kind::SIGNER_HEARTBEAT | kind::CHECKPOINT) {
                    continue;
                }
                let line = json!({"type": "event", "event": event, "hsl": event.body.hsl(), "label": event.body.seed_label()});
                if socket.send(Message::Text(line.to_string().into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}
