//! Outbound alert webhooks: `alert_webhooks` rows (queued with the crossing usage, see `alerts.rs`) are POSTed to
//! the user's URL, signed the Standard Webhooks way (`webhook-id`, `webhook-timestamp`, `webhook-signature:
//! v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with the user's `whsec_` secret), and retried with backoff
//! until the receiver answers 2xx. Rows are claimed `FOR UPDATE SKIP LOCKED` under a lease, so any number of
//! instances may run the worker and each alert is sent by one at a time; the `webhook-id` stays the same on
//! every attempt, so receivers can drop a repeat after a lost answer.

use std::time::Duration;

use base64::Engine;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::AppError;

/// Attempts before an alert is marked failed (with backoff capped at an hour, about a day of trying).
const MAX_ATTEMPTS: i32 = 30;
const LEASE: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A new signing secret: `whsec_` and 24 random bytes in base64.
pub fn new_secret() -> Result<String, AppError> {
    let mut bytes = [0_u8; 24];
    getrandom::fill(&mut bytes).map_err(AppError::internal)?;
    Ok(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// The `webhook-signature` header value for one message.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, AppError> {
    let webhook = standardwebhooks::Webhook::new(secret).map_err(|err| AppError::internal(format!("{err:?}")))?;
    webhook.sign(id, timestamp, body).map_err(|err| AppError::internal(format!("{err:?}")))
}

/// Delivers queued alert webhooks.
#[derive(Clone)]
pub struct AlertWebhookWorker {
    pool: PgPool,
    http: reqwest::Client,
    allow_private: bool,
    retry_base: Duration,
    poll: Duration,
}

struct Due {
    id: Uuid,
    url: String,
    body: String,
    attempts: i32,
    secret: Option<String>,
}

impl AlertWebhookWorker {
    /// `allow_private` lets alerts go to this machine and private networks (`TALLY_ALERT_WEBHOOK_ALLOW_PRIVATE`,
    /// local development only; see `outbound.rs`).
    pub fn new(pool: PgPool, allow_private: bool, retry_base: Duration, poll: Duration) -> Self {
        // No redirects, public addresses only: a signed alert goes where the user said, and never inside.
        let http = crate::outbound::client(allow_private, REQUEST_TIMEOUT);
        AlertWebhookWorker { pool, http, allow_private, retry_base, poll }
    }

    /// Delivers forever.
    pub async fn run(self) {
        self.run_until(tokio::sync::watch::channel(false).1).await;
    }

    /// Sends until `stop` turns true, then returns after the step in progress: each step settles what it
    /// claimed, so no lease is left behind for another instance to wait out.
    pub async fn run_until(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        while !*stop.borrow() {
            match self.step().await {
                Ok(sent) if sent > 0 => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "alert webhook step failed; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Claims and sends what is due; returns how many were attempted.
    /// Errors are the database's own, so the worker's log names the cause.
    pub async fn step(&self) -> Result<usize, sqlx::Error> {
        let due = sqlx::query_as!(
            Due,
            r#"UPDATE alert_webhooks w
             SET leased_until = now() + $1 * interval '1 millisecond', attempts = w.attempts + 1
             FROM users u
             WHERE u.id = w.user_id AND w.id IN (
                 SELECT id FROM alert_webhooks
                 WHERE status = 'pending' AND next_attempt_at <= now()
                   AND (leased_until IS NULL OR leased_until <= now())
                 ORDER BY next_attempt_at
                 LIMIT 16
                 FOR UPDATE SKIP LOCKED)
             RETURNING w.id, w.url, w.body, w.attempts, u.alert_webhook_secret AS secret"#,
            LEASE.as_millis() as f64
        )
        .fetch_all(&self.pool)
        .await?;
        let count = due.len();
        let results = futures::future::join_all(due.into_iter().map(|d| self.send(d))).await;
        for result in results {
            result?;
        }
        Ok(count)
    }

    async fn send(&self, due: Due) -> Result<(), sqlx::Error> {
        let outcome = match &due.secret {
            None => Err("no signing secret: set the alert URL again".to_owned()),
            Some(secret) => self.post(&due, secret).await,
        };
        match outcome {
            Ok(()) => {
                sqlx::query!(
                    "UPDATE alert_webhooks SET status = 'delivered', delivered_at = now(), leased_until = NULL,
                                               last_error = NULL
                     WHERE id = $1",
                    due.id
                )
                .execute(&self.pool)
                .await?;
            }
            Err(error) => {
                let delay = crate::retry::backoff(due.attempts, self.retry_base, Duration::from_secs(3600), 0.75);
                tracing::info!(alert = %due.id, attempts = due.attempts, %error, "alert webhook not accepted; will retry");
                sqlx::query!(
                    "UPDATE alert_webhooks
                     SET status = CASE WHEN attempts >= $4 THEN 'failed' ELSE 'pending' END,
                         next_attempt_at = now() + $2 * interval '1 millisecond', leased_until = NULL, last_error = $3
                     WHERE id = $1",
                    due.id,
                    delay.as_millis() as f64,
                    &error,
                    MAX_ATTEMPTS
                )
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    async fn post(&self, due: &Due, secret: &str) -> Result<(), String> {
        // Checked again at send time: a URL saved before this check existed, or an address literal, which the
        // client's resolver never sees.
        let url = url::Url::parse(&due.url).map_err(|_| format!("{} is not a URL", due.url))?;
        if let Err(refusal) = crate::outbound::check_url(&url, self.allow_private) {
            return Err(format!("refused to send to {}: {refusal:?}", due.url));
        }
        let id = due.id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(secret, &id, timestamp, due.body.as_bytes()).map_err(|e| e.to_string())?;
        let response = self
            .http
            .post(&due.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(due.body.clone())
            .send()
            .await
            .map_err(|err| format!("could not reach {}: {}", due.url, error_chain(&err.without_url())))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {}", due.url, response.status()))
        }
    }
}

/// An error with its causes ("error sending request: …: host resolves to no public address").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
