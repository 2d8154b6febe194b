//! The read endpoints behind the admin console (reads only: none of them
//! writes a row, takes a token or changes a key):
//!
//! - `GET /api/events?limit=&before=&kind=&thread=`: the newest ledger
//!   events (Version Management's `history`), each with its actor's colour
//!   and the seed's label, as the WebSocket sends live ones, so the page's
//!   feed starts with what happened before it loaded.
//! - `GET /api/signers`: the live signers, what each holds, and whether the
//!   next version would pass the Supervisor's gate (and who lacks it).
//! - `GET /api/audit`: the newest signed checkpoint and what each witness
//!   holds; `POST /api/audit/verify` also walks the whole chain against
//!   them (a POST because it costs a full read of the ledger, not because
//!   it changes anything; one walk at a time).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tes_proto::command::{Audit, History, SignersQuery};
use tes_proto::thread::colour;
use tes_proto::ThreadId;

use crate::server::{call, from_call, text, App};

/// How long a full verification may take before the page hears it did not
/// answer: about a second per million events on this machine kind.
const VERIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// `GET /api/events`'s query: `kind` may list several kinds, comma-separated.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    limit: Option<u32>,
    before: Option<u64>,
    kind: Option<String>,
    thread: Option<String>,
}

impl EventsQuery {
    fn into_command(self) -> Result<History, String> {
        let mut history = History::default();
        if let Some(limit) = self.limit {
            history.limit = limit;
        }
        history.before = self.before;
        history.kinds = self
            .kind
            .iter()
            .flat_map(|k| k.split(','))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect();
        history.thread = match self.thread.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) => Some(t.parse::<ThreadId>().map_err(|e| e.to_string())?),
        };
        Ok(history)
    }
}

pub(crate) async fn events(
    State(app): State<Arc<App>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let command = match query
        .map_err(|e| e.body_text())
        .and_then(|Query(q)| q.into_command())
    {
        Ok(c) => c,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("GET /api/events?limit=&before=&kind=&thread=: {e}"),
                colour::REJECTED_ORANGE_RED,
            )
        }
    };
    match call(&app, ThreadId::VersionManagement, command).await {
        Ok(history) => Json(json!({
            "events": history.events.iter().map(|stored| json!({
                "seq": stored.seq,
                "event": stored.event,
                "hsl": stored.event.body.hsl(),
                "label": stored.event.body.seed_label(),
            })).collect::<Vec<_>>(),
            "headSeq": history.head_seq,
            "nextBefore": history.next_before,
        }))
        .into_response(),
        Err(e) => from_call(e),
    }
}

pub(crate) async fn signers(State(app): State<Arc<App>>) -> Response {
    match call(&app, ThreadId::Supervisor, SignersQuery {}).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => from_call(e),
    }
}

pub(crate) async fn audit(State(app): State<Arc<App>>) -> Response {
    match call(&app, ThreadId::VersionManagement, Audit { verify: false }).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => from_call(e),
    }
}

pub(crate) async fn audit_verify(State(app): State<Arc<App>>) -> Response {
    let thread = ThreadId::VersionManagement;
    let envelope = tes_bus::typed::command(thread, Audit { verify: true });
    let called = tes_bus::typed::call::<Audit>(
        &*app.bus,
        thread,
        app.config.wire,
        &envelope,
        VERIFY_TIMEOUT,
    )
    .await;
    match called {
        Ok(report) => Json(report).into_response(),
        Err(e) => from_call(e),
    }
}
