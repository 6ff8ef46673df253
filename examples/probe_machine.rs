//! A tiny stand-in Machine image for the local platform's own tests: it reports who it is and
//! does on request what a real app might (answer with a `fly-replay`, exit, echo a WebSocket),
//! so the proxy and the Machines API can be tested without the whole of flyby.
//!
//! Listens on `LEPTOS_SITE_ADDR`, by default on every address (`[::]:8080`, dual-stack), as an
//! image's `ENV` would say. Routes:
//! - `GET /health` -> `ok`
//! - `GET /ws` (WebSocket upgrade) -> echoes each message back, prefixed with the Machine id
//! - `/exit?code=N` -> answers, then exits with status N
//! - anything else -> JSON `{machine_id, region, app, method, path, query, headers, body_len}`;
//!   with `?replay=<value>` it answers 307 with `fly-replay: <value>` instead, and with
//!   `?replay_json=<json>` it answers with the JSON form (`application/vnd.fly.replay+json`);
//!   `?only=<id>`: the replay is sent only when this Machine is not `<id>`.

use axum::{
    body::Bytes,
    extract::{ws::WebSocketUpgrade, Query},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use std::collections::HashMap;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let addr = std::env::var("LEPTOS_SITE_ADDR").unwrap_or_else(|_| "[::]:8080".into());
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ws", get(ws))
        .route("/exit", get(exit))
        .fallback(report);
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    use axum::extract::ws::Message;
    upgrade.on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Text(text) = message {
                let reply = format!("{}:{}", env("FLY_MACHINE_ID"), text.as_str());
                if socket.send(Message::Text(reply.into())).await.is_err() {
                    break;
                }
            }
        }
    })
}

async fn exit(Query(q): Query<HashMap<String, String>>) -> &'static str {
    let code: i32 = q.get("code").and_then(|c| c.parse().ok()).unwrap_or(0);
    tokio::spawn(async move {
        tokio::task::yield_now().await;
        std::process::exit(code);
    });
    "bye"
}

async fn report(
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let me = env("FLY_MACHINE_ID");
    let replay_applies = q.get("only").is_none_or(|only| *only != me);
    if replay_applies {
        if let Some(value) = q.get("replay") {
            return (
                StatusCode::TEMPORARY_REDIRECT,
                [("fly-replay", value.as_str())],
                "replaying",
            )
                .into_response();
        }
        if let Some(json) = q.get("replay_json") {
            return (
                StatusCode::OK,
                [("content-type", "application/vnd.fly.replay+json")],
                json.clone(),
            )
                .into_response();
        }
    }
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Json(serde_json::json!({
        "machine_id": me,
        "region": env("FLY_REGION"),
        "app": env("FLY_APP_NAME"),
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": headers,
        "body_len": body.len(),
    }))
    .into_response()
}
