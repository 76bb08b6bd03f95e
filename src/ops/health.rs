//! `GET /healthz` (liveness: the process answers) and `GET /readyz` (readiness: this instance can take traffic).
//! JSON, no session, no secrets. A readiness failure is a 503 that names each check that failed.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::state::AppState;

pub const LIVENESS_PATH: &str = "/healthz";
pub const READINESS_PATH: &str = "/readyz";

/// How long the database may take to answer a readiness check.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was found, e.g. "21 of 21 applied" or why it failed.
    pub detail: String,
}

/// The process answers.
pub async fn liveness() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "alive" }))
}

/// The database answers, every migration this binary knows is applied (newer ones of a later release are
/// allowed: migrations are additive), the ingest writers and the LISTEN connection are up, and the instance is not
/// shutting down.
pub async fn readiness(State(state): State<AppState>) -> Response {
    let mut checks = Vec::with_capacity(5);
    let schema = tokio::time::timeout(DATABASE_TIMEOUT, crate::db::schema_state(&state.pool)).await;
    let (database, migrations) = match schema {
        Ok(Ok(schema)) => (
            Check { name: "database", ok: true, detail: "answers".into() },
            Check { name: "migrations", ok: schema.missing.is_empty(), detail: schema.to_string() },
        ),
        Ok(Err(err)) => (
            Check { name: "database", ok: false, detail: format!("does not answer: {err}") },
            Check { name: "migrations", ok: false, detail: "unknown: the database does not answer".into() },
        ),
        Err(_) => (
            Check { name: "database", ok: false, detail: format!("no answer within {} s", DATABASE_TIMEOUT.as_secs()) },
            Check { name: "migrations", ok: false, detail: "unknown: the database does not answer".into() },
        ),
    };
    checks.push(database);
    checks.push(migrations);
    let (alive, started) = state.writer.writers();
    checks.push(Check { name: "ingest_writers", ok: alive > 0, detail: format!("{alive} of {started} running") });
    let listening = state.usage.live.is_listening();
    checks.push(Check {
        name: "live_listener",
        ok: listening,
        detail: if listening { "listening".into() } else { "not connected (reconnecting)".into() },
    });
    let stopping = state.usage.live.is_shutting_down();
    checks.push(Check {
        name: "shutdown",
        ok: !stopping,
        detail: if stopping { "shutting down: send traffic elsewhere".into() } else { "serving".into() },
    });
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Readiness { status: if ready { "ready" } else { "not_ready" }, checks };
    (status, Json(body)).into_response()
}
