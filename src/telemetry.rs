//! Prometheus metrics (`GET /metrics`, text format, served by `ops`): the `metrics` facade, rendered by
//! `metrics-exporter-prometheus`. Code anywhere counts through the names below (this module sits below every
//! domain); the exporter is installed once per process ([`handle`]) and a scrape also reads what only the database
//! knows (the outbox backlog, the age of the oldest undelivered event, the pool) right before rendering.
//!
//! Every name, its labels and an example query are in the README's "Operating Tally".

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

/// HTTP requests by method, route (the matched pattern, never the raw path) and status; and their latency.
pub const HTTP_REQUESTS: &str = "tally_http_requests_total";
pub const HTTP_SECONDS: &str = "tally_http_request_duration_seconds";
/// Recording submissions (a record or batch request, or an AI call's tokens) by outcome: `recorded`,
/// `limit_exceeded` (the 429s of the hard limits), `unknown_caller`, `failed`.
pub const INGEST_SUBMISSIONS: &str = "tally_ingest_submissions_total";
/// Events of recorded submissions by outcome: `recorded` or `duplicate` (an idempotency key seen before).
pub const INGEST_EVENTS: &str = "tally_ingest_events_total";
/// Events per group commit, and the commit's time.
pub const INGEST_GROUP_EVENTS: &str = "tally_ingest_group_events";
pub const INGEST_COMMIT_SECONDS: &str = "tally_ingest_commit_seconds";
/// Undelivered outbox events by status (`pending`, `awaiting_customer`, `failed`, `expired`), read at scrape.
pub const OUTBOX_EVENTS: &str = "tally_outbox_events";
/// Age of the oldest usage event not yet at Stripe (pending or awaiting a customer), read at scrape; 0 when none.
pub const OUTBOX_OLDEST_SECONDS: &str = "tally_outbox_oldest_undelivered_age_seconds";
/// Stripe meter event calls by outcome (`delivered`, `retry`, `failed`, `expired`, `uncertain`) and their latency.
pub const STRIPE_CALL_SECONDS: &str = "tally_stripe_call_duration_seconds";
/// Stripe's 429 answers.
pub const STRIPE_RATE_LIMITED: &str = "tally_stripe_rate_limited_total";
/// Deliveries moved to the next invoice because they missed their own (late usage).
pub const DELIVERY_LATE: &str = "tally_delivery_late_total";
/// Stripe webhooks by event type and outcome (`applied`, `ignored`, `unmatched`, `stale`, `duplicate`, `rejected`).
pub const WEBHOOKS: &str = "tally_webhooks_total";
/// Open live meter streams (server-sent events) on this instance.
pub const LIVE_STREAMS: &str = "tally_live_streams";
/// Database pool connections by state (`in_use`, `idle`), read at scrape.
pub const DB_POOL: &str = "tally_db_pool_connections";

/// Latency buckets, in seconds: 1 ms to 30 s.
const SECONDS_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Group sizes, in events.
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0];

/// The process's exporter, installed on first use. `None` only when another recorder was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(INGEST_GROUP_EVENTS.into()), GROUP_BUCKETS))
                .map(PrometheusBuilder::build_recorder);
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    match metrics::set_global_recorder(recorder) {
                        Ok(()) => Some(handle),
                        Err(err) => {
                            tracing::warn!(error = %err, "metrics: another recorder is installed; /metrics is empty");
                            None
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "metrics: the exporter could not be built");
                    None
                }
            }
        })
        .as_ref()
}

/// Reads what only the database knows into gauges, then renders every metric. A database that does not answer
/// within 2 s leaves those gauges as they were (the scrape still answers).
pub async fn render(pool: &PgPool) -> String {
    let Some(handle) = handle() else { return String::new() };
    metrics::gauge!(DB_POOL, "state" => "in_use").set(f64::from(pool.size()) - pool.num_idle() as f64);
    metrics::gauge!(DB_POOL, "state" => "idle").set(pool.num_idle() as f64);
    match tokio::time::timeout(Duration::from_secs(2), backlog(pool)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "metrics: the outbox backlog could not be read"),
        Err(_) => tracing::warn!("metrics: the outbox backlog took over 2 s to read"),
    }
    handle.run_upkeep();
    handle.render()
}

/// The outbox backlog by status (the O(1) hourly counts of migration 18) and the oldest undelivered event's age
/// (the partial index of undelivered rows).
async fn backlog(pool: &PgPool) -> Result<(), sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT s.status AS "status!", coalesce(sum(c.events), 0)::bigint AS "events!"
           FROM unnest(ARRAY['pending', 'awaiting_customer', 'failed', 'expired']) AS s (status)
           LEFT JOIN meter_outbox_counts c ON c.status = s.status
           GROUP BY s.status"#
    )
    .fetch_all(pool)
    .await?;
    for row in rows {
        metrics::gauge!(OUTBOX_EVENTS, "status" => row.status).set(row.events as f64);
    }
    let oldest = sqlx::query_scalar!(
        r#"SELECT coalesce(extract(epoch FROM now() - min(occurred_at)), 0)::float8 AS "age!"
           FROM meter_event_outbox WHERE status IN ('pending', 'awaiting_customer')"#
    )
    .fetch_one(pool)
    .await?;
    metrics::gauge!(OUTBOX_OLDEST_SECONDS).set(oldest.max(0.0));
    Ok(())
}
