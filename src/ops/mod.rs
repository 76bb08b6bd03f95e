//! What operators need to run Tally: health and readiness (`health.rs`), `/metrics` (names in `telemetry.rs`),
//! request spans with a request id, JSON logs (`logs.rs`), and the HTTP layers that measure and trace every
//! request. `server.rs` mounts them; domains only count through `metrics`' names.

pub mod health;
pub mod logs;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::state::AppState;

/// Where Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";
/// The request id header: taken from the request when a proxy set one, else made here; answered in the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Health and readiness, and `/metrics` unless it has its own listener (`TALLY_METRICS_ADDR`).
pub fn router(metrics_on_public_router: bool) -> Router<AppState> {
    let router = Router::new()
        .route(health::LIVENESS_PATH, get(health::liveness))
        .route(health::READINESS_PATH, get(health::readiness));
    if metrics_on_public_router {
        router.route(METRICS_PATH, get(serve_metrics))
    } else {
        router
    }
}

/// `/metrics` alone, for its own listener (`TALLY_METRICS_ADDR`: a port the public never reaches).
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route(METRICS_PATH, get(serve_metrics)).with_state(state)
}

/// `GET /metrics`: Prometheus text format; with `TALLY_METRICS_TOKEN` set, only for `Authorization: Bearer <it>`.
async fn serve_metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = state.config.metrics_token.as_deref() {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        // Constant time: a timing difference must not reveal how much of a guess was right.
        let matches =
            given.is_some_and(|given| bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.as_bytes())));
        if !matches {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "metrics need the bearer token\n",
            )
                .into_response();
        }
    }
    let body = crate::telemetry::render(&state.pool).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Counts every request by method, matched route and status, with its latency. The route is the pattern
/// (`/api/usage/record`, `/api/{*rest}`), never the raw path: paths carry ids and would make unbounded series.
pub async fn count_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = route_of(&request);
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!(crate::telemetry::HTTP_REQUESTS, &labels).increment(1);
    metrics::histogram!(crate::telemetry::HTTP_SECONDS, &labels).record(started.elapsed().as_secs_f64());
    response
}

fn route_of(request: &Request) -> String {
    request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
}

/// The layers every request passes, outermost first: a request id (kept from the request or made), its echo in the
/// response, and a span per request (method, route, request id; status and latency when it ends; never headers,
/// bodies, keys or cookies).
pub fn add_request_layers(router: Router) -> Router {
    router
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", method = %request.method(), route = %route_of(request), request_id = %id)
                })
                .on_request(())
                .on_response(|response: &Response, latency: std::time::Duration, _span: &tracing::Span| {
                    tracing::info!(status = response.status().as_u16(), latency_ms = latency.as_secs_f64() * 1e3, "answered");
                }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}
