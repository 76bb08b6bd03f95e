//! `POST /api/stripe/webhook`: a plain axum route over the raw body (the signature covers the exact bytes).
//!
//! Order of work: verify the signature, parse, then in one transaction claim the event id in `stripe_events` and
//! apply the event's effect. A redelivery (or a concurrent duplicate, which waits on the id's unique index) finds
//! the id taken and is answered 200 without changing anything. No Stripe API call happens inside the request.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::BillingState;
use super::{events, signature};
use crate::error::AppError;

/// Where Stripe delivers events.
pub const PATH: &str = "/api/stripe/webhook";

/// Receives one Stripe event.
#[utoipa::path(
    post, path = "/api/stripe/webhook", tag = "stripe",
    params(("Stripe-Signature" = String, Header, description = "Stripe's signature of the payload (t=…,v1=…)")),
    request_body(content = Object, description = "A Stripe event, exactly as Stripe sent it", content_type = "application/json"),
    responses(
        (status = 200, description = "Verified and applied (or a duplicate): {received, duplicate, outcome}", body = Object),
        (status = 400, description = "Missing or bad signature, or not a Stripe event; nothing stored", body = crate::error::WireError),
        (status = 503, description = "No webhook secret configured, or the database is unavailable", body = crate::error::WireError),
    )
)]
pub async fn receive(
    State(state): State<BillingState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let secrets = state.config.stripe_webhook_secrets();
    if secrets.is_empty() {
        tracing::error!("a Stripe webhook arrived but STRIPE_WEBHOOK_SECRET is not set");
        return Err(AppError::Unavailable("Stripe webhooks are not configured".into()));
    }
    let header = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    let counted = |kind: &str, outcome: &'static str| {
        metrics::counter!(crate::telemetry::WEBHOOKS, "type" => kind.to_owned(), "outcome" => outcome).increment(1);
    };
    if let Err(err) = signature::verify(&body, header, &secrets, now, state.config.stripe_webhook_tolerance_seconds) {
        // An unverified body's type is not Stripe's word (and would let anyone mint series): not labelled.
        counted("unverified", "rejected");
        return Err(AppError::BadRequest(format!("invalid Stripe signature: {err}")));
    }
    let event: Value =
        serde_json::from_slice(&body).map_err(|_| AppError::BadRequest("event payload is not JSON".into()))?;
    let envelope = events::envelope(&event).map_err(AppError::BadRequest)?;

    let mut tx = state.pool.begin().await?;
    let claimed = sqlx::query_scalar!(
        "INSERT INTO stripe_events (id, type, created, livemode, api_version, stripe_customer_id, outcome, payload)
         VALUES ($1, $2, $3, $4, $5, $6, 'ignored', $7)
         ON CONFLICT (id) DO NOTHING
         RETURNING id",
        &envelope.id,
        &envelope.kind,
        envelope.created as _,
        envelope.livemode,
        envelope.api_version.as_deref(),
        events::customer_of(&envelope),
        sqlx::types::Json(&event) as _
    )
    .fetch_optional(&mut *tx)
    .await?;
    if claimed.is_none() {
        counted(&envelope.kind, "duplicate");
        return Ok(Json(json!({ "received": true, "duplicate": true })));
    }
    let outcome = events::apply(&mut tx, &envelope).await?;
    sqlx::query!("UPDATE stripe_events SET outcome = $2 WHERE id = $1", &envelope.id, outcome.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    counted(&envelope.kind, outcome.as_str());
    if outcome == events::Outcome::Unmatched {
        tracing::warn!(event = %envelope.id, kind = %envelope.kind, "Stripe event for a customer no user has");
    }
    Ok(Json(json!({ "received": true, "duplicate": false, "outcome": outcome.as_str() })))
}
