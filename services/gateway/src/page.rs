//! The admin page (`/admin`): plain HTML, CSS and a little JavaScript,
//! compiled into the binary (no build step). It reads the health, the
//! numbers and the open alerts over HTTP, follows the events over the
//! WebSocket, and rotates or rolls back with a fresh CSRF token and the
//! admin credential the person types in.

use axum::http::header;
use axum::response::{Html, IntoResponse};

pub(crate) async fn html() -> Html<&'static str> {
    Html(include_str!("../assets/admin.html"))
}

pub(crate) async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/admin.js"),
    )
}

pub(crate) async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/admin.css"),
    )
}
