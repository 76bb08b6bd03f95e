//! Runtime configuration, read from the environment (and `.env` for local runs) or the same-named CLI flags.

use crate::error::AppError;

/// Everything the server and the CLI commands read from the environment. Secrets are never printed: `Debug` is
/// implemented by hand below and hides the database URL.
#[derive(clap::Args, Clone)]
pub struct Config {
    /// PostgreSQL connection string. `scripts/dev` and `scripts/test` start a local cluster and set it when unset.
    #[arg(global = true, long, env = "DATABASE_URL", hide_env_values = true, default_value = "")]
    pub database_url: String,

    /// Size of the connection pool of one app instance.
    #[arg(global = true, long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// Time zone whose calendar months are the billing periods of users without a Stripe subscription.
    #[arg(global = true, long, env = "BILLING_TIMEZONE", default_value = "Asia/Tokyo")]
    pub billing_timezone: String,

    /// The meter catalog (event types, labels, default limits, prices when Stripe is off: `meters.toml`'s own
    /// comments say how). Unset: `meters.toml` in the working directory if there is one, else AI tokens alone.
    #[arg(global = true, long, env = "TALLY_METERS_FILE")]
    pub meters_file: Option<std::path::PathBuf>,

    /// The catalog read from `meters_file` ([`Config::load_meters`]).
    #[arg(skip)]
    pub meters: std::sync::Arc<crate::meters::Catalog>,

    /// The address users reach Tally at. An `https://` URL makes the session cookie `Secure`.
    #[arg(global = true, long, env = "TALLY_PUBLIC_URL", default_value = "http://127.0.0.1:3000")]
    pub public_url: String,

    /// Take the client address from the last `X-Forwarded-For` entry (set it only behind a proxy that appends it);
    /// otherwise the connection's peer address is used. Sign-in throttling counts per address.
    #[arg(global = true, long, env = "TALLY_TRUST_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_forwarded_for: bool,

    /// Let alert webhook URLs point at this machine or private networks (local development only): otherwise
    /// loopback, private, link-local and other non-public addresses are refused when saved and when sent to.
    #[arg(global = true, long, env = "TALLY_ALERT_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub alert_webhook_allow_private: bool,

    /// Seconds a client may take to send a request's head (its line and headers) before the connection is closed.
    #[arg(global = true, long, env = "TALLY_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,

    /// Seconds a request body may stop arriving before the request is ended.
    #[arg(global = true, long, env = "TALLY_BODY_READ_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_read_timeout_secs: u64,

    /// Largest request head (request line and headers) in bytes; larger ones are answered 431.
    #[arg(global = true, long, env = "TALLY_MAX_HEADER_BYTES", default_value_t = 16_384)]
    pub max_header_bytes: usize,

    /// Connections served at once; more wait in the kernel's backlog. Keep it below `ulimit -n`.
    #[arg(global = true, long, env = "TALLY_MAX_CONNECTIONS", default_value_t = 4_096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Sign-ups allowed per client address (IPv6: per /64) per hour.
    #[arg(global = true, long, env = "TALLY_SIGNUPS_PER_ADDRESS_PER_HOUR", default_value_t = 10)]
    pub signups_per_address_per_hour: i64,

    /// Sign-ups allowed per hour over all addresses.
    #[arg(global = true, long, env = "TALLY_SIGNUPS_PER_HOUR", default_value_t = 1_000)]
    pub signups_per_hour: i64,

    /// A bearer token `/metrics` requires (`Authorization: Bearer <token>`); unset: no token needed.
    #[arg(global = true, long, env = "TALLY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Serve `/metrics` on this address only (e.g. `0.0.0.0:9464`, a port the public never reaches) instead of on
    /// the public router.
    #[arg(global = true, long, env = "TALLY_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// On SIGTERM or Ctrl-C: seconds to finish in-flight requests and acknowledged commits before exiting anyway.
    #[arg(global = true, long, env = "TALLY_SHUTDOWN_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_seconds: u64,

    /// Concurrent ingestion transactions (group-commit writers) per app instance.
    #[arg(global = true, long, env = "TALLY_INGEST_WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub ingest_writers: u16,

    /// API key of an OpenAI-compatible chat completions service; without it the AI route uses its offline model.
    #[arg(global = true, long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,

    /// Base URL of the OpenAI-compatible service.
    #[arg(global = true, long, env = "OPENAI_BASE_URL", default_value = "https://api.openai.com/v1")]
    pub openai_base_url: String,

    /// Model asked for by the AI route.
    #[arg(global = true, long, env = "OPENAI_MODEL", default_value = "gpt-4o-mini")]
    pub openai_model: String,

    /// Signing secret(s) of the Stripe webhook endpoint (`whsec_…`), comma-separated while a secret is rolled.
    #[arg(global = true, long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,

    /// Stripe secret key (`sk_…`); without it nothing is sent to Stripe and Checkout is not offered.
    #[arg(global = true, long, env = "STRIPE_SECRET_KEY", hide_env_values = true)]
    pub stripe_secret_key: Option<String>,

    /// Stripe's API address (a test double's in tests).
    #[arg(global = true, long, env = "STRIPE_API_BASE", default_value = "https://api.stripe.com")]
    pub stripe_api_base: String,

    /// How far a webhook signature's timestamp may be from now, in seconds (either way).
    #[arg(global = true, long, env = "STRIPE_WEBHOOK_TOLERANCE_SECONDS", default_value_t = 300)]
    pub stripe_webhook_tolerance_seconds: i64,
    /// How usage is delivered to Stripe's meter.
    #[command(flatten)]
    pub delivery: DeliveryConfig,
}

/// Settings of the meter event delivery worker (`src/billing/delivery.rs`).
#[derive(clap::Args, Clone, Debug)]
pub struct DeliveryConfig {
    /// Run the delivery worker inside `tally serve` (it also runs alone as `tally worker`).
    #[arg(global = true, long = "stripe-worker", env = "STRIPE_WORKER", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_in_server: bool,
    /// Meter event calls per second, shared by every worker on the database (Stripe's limit is per account).
    /// Unset: 1,000 with a live key, 25 with a test key (Stripe's documented limits).
    #[arg(global = true, long, env = "STRIPE_CALLS_PER_SECOND", value_parser = clap::value_parser!(u32).range(1..))]
    pub calls_per_second: Option<u32>,
    /// Meter event calls in flight at once, per worker process (never more than one per customer and meter).
    #[arg(global = true, long, env = "STRIPE_MAX_IN_FLIGHT", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_in_flight: u32,
    /// Most usage events summed into one meter event; 1 sends every event on its own.
    #[arg(global = true, long, env = "STRIPE_BATCH_MAX_EVENTS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_max_events: u32,
    /// First retry delay after a 429, a 5xx or a timeout, in milliseconds; it doubles per attempt, with jitter.
    #[arg(global = true, long, env = "STRIPE_RETRY_BASE_MS", default_value_t = 1_000)]
    pub retry_base_ms: u64,
    /// Longest retry delay, in milliseconds.
    #[arg(global = true, long, env = "STRIPE_RETRY_MAX_MS", default_value_t = 600_000)]
    pub retry_max_ms: u64,
    /// Time one Stripe call may take before it counts as failed (and is retried), in milliseconds.
    #[arg(global = true, long, env = "STRIPE_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// How long a worker holds a claimed delivery before another worker may take it over, in milliseconds
    /// (a worker that died mid-call leaves its lease behind).
    #[arg(global = true, long, env = "STRIPE_LEASE_MS", default_value_t = 90_000)]
    pub lease_ms: u64,
    /// How often an idle worker looks for due work, in milliseconds.
    #[arg(global = true, long, env = "STRIPE_POLL_MS", default_value_t = 500)]
    pub poll_ms: u64,
    /// Create a Stripe customer for every account that has none (at sign-up, and by the worker for the rest).
    #[arg(global = true, long = "stripe-create-customers", env = "STRIPE_CREATE_CUSTOMERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_customers: bool,
    /// Stripe's invoice finalization grace on this account, in minutes (Stripe's default: 60). Usage of a
    /// subscription period is sent before its end plus this grace; what still misses it is billed on the next
    /// invoice (see docs/reliability.md).
    #[arg(global = true, long, env = "STRIPE_INVOICE_GRACE_MINUTES", default_value_t = 60, value_parser = clap::value_parser!(u32).range(10..=10_080))]
    pub invoice_grace_minutes: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            run_in_server: true,
            calls_per_second: None,
            max_in_flight: 32,
            batch_max_events: 10_000,
            retry_base_ms: 1_000,
            retry_max_ms: 600_000,
            request_timeout_ms: 30_000,
            lease_ms: 90_000,
            poll_ms: 500,
            create_customers: true,
            invoice_grace_minutes: 60,
        }
    }
}

/// A usage limit as configured: `None` means unlimited. (A newtype so clap does not read `Option` as "optional".)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageLimit(pub Option<i64>);

/// Parses a usage limit: a positive integer (`_` and `,` allowed as separators) or `none`.
pub fn parse_usage_limit(raw: &str) -> Result<UsageLimit, AppError> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("none") || raw.eq_ignore_ascii_case("unlimited") {
        return Ok(UsageLimit(None));
    }
    let digits: String = raw.chars().filter(|c| !matches!(c, '_' | ',')).collect();
    match digits.parse::<i64>() {
        Ok(limit) if limit > 0 => Ok(UsageLimit(Some(limit))),
        _ => Err(AppError::Invalid(format!("usage limit must be a positive whole number or \"none\", not {raw:?}"))),
    }
}

impl Config {
    /// Reads the meter catalog: `meters_file`, else `meters.toml` if the working directory has one, else the
    /// built-in catalog. A named file that is missing or wrong is an error, never a silent fallback.
    pub fn load_meters(&mut self) -> Result<(), crate::meters::CatalogError> {
        let catalog = match &self.meters_file {
            Some(path) => crate::meters::Catalog::load(path)?,
            None if std::path::Path::new("meters.toml").is_file() => {
                crate::meters::Catalog::load(std::path::Path::new("meters.toml"))?
            }
            None => crate::meters::Catalog::builtin(),
        };
        self.meters = std::sync::Arc::new(catalog);
        Ok(())
    }

    /// The configured webhook secrets, trimmed, without empty entries.
    pub fn stripe_webhook_secrets(&self) -> Vec<String> {
        self.stripe_webhook_secret
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Whether cookies must carry the `Secure` attribute (Tally is served over https).
    pub fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &"<hidden>")
            .field("database_max_connections", &self.database_max_connections)
            .field("billing_timezone", &self.billing_timezone)
            .field("meters_file", &self.meters_file)
            .field("meters", &self.meters.event_types())
            .field("public_url", &self.public_url)
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .field("alert_webhook_allow_private", &self.alert_webhook_allow_private)
            .field("signups_per_address_per_hour", &self.signups_per_address_per_hour)
            .field("signups_per_hour", &self.signups_per_hour)
            .field("header_read_timeout_secs", &self.header_read_timeout_secs)
            .field("body_read_timeout_secs", &self.body_read_timeout_secs)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_connections", &self.max_connections)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "<hidden>"))
            .field("metrics_addr", &self.metrics_addr)
            .field("shutdown_seconds", &self.shutdown_seconds)
            .field("ingest_writers", &self.ingest_writers)
            .field("openai_api_key", &self.openai_api_key.as_ref().map(|_| "<hidden>"))
            .field("openai_base_url", &self.openai_base_url)
            .field("openai_model", &self.openai_model)
            .field("stripe_webhook_secret", &self.stripe_webhook_secret.as_ref().map(|_| "<hidden>"))
            .field("stripe_webhook_tolerance_seconds", &self.stripe_webhook_tolerance_seconds)
            .field("stripe_secret_key", &self.stripe_secret_key.as_ref().map(|_| "<hidden>"))
            .field("stripe_api_base", &self.stripe_api_base)
            .field("delivery", &self.delivery)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_limits_parse_with_separators_or_none() {
        assert_eq!(parse_usage_limit("1_000_000").unwrap(), UsageLimit(Some(1_000_000)));
        assert_eq!(parse_usage_limit("100,000").unwrap(), UsageLimit(Some(100_000)));
        assert_eq!(parse_usage_limit("none").unwrap(), UsageLimit(None));
    }

    #[test]
    fn zero_negative_and_garbage_limits_are_refused() {
        for raw in ["0", "-5", "ten", "", "99999999999999999999"] {
            assert!(parse_usage_limit(raw).is_err(), "{raw:?} should be refused");
        }
    }

    #[test]
    fn delivery_defaults_from_the_environment_equal_the_default_value() {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            delivery: DeliveryConfig,
        }
        let parsed = <Only as clap::Parser>::try_parse_from(["tally"]).expect("no flags needed");
        assert_eq!(format!("{:?}", parsed.delivery), format!("{:?}", DeliveryConfig::default()));
    }

    #[test]
    fn debug_output_hides_the_database_url() {
        let config = Config {
            database_url: "postgres://tally:s3cret@db/tally".into(),
            database_max_connections: 5,
            billing_timezone: "Asia/Tokyo".into(),
            meters_file: None,
            meters: Default::default(),
            public_url: "https://tally.example".into(),
            trust_forwarded_for: false,
            alert_webhook_allow_private: false,
            signups_per_address_per_hour: 10,
            signups_per_hour: 1_000,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            max_header_bytes: 16_384,
            max_connections: 4_096,
            metrics_token: Some("s3cret-metrics".into()),
            metrics_addr: None,
            shutdown_seconds: 20,
            ingest_writers: 2,
            openai_api_key: Some("sk-s3cret".into()),
            openai_base_url: "http://127.0.0.1:9".into(),
            openai_model: "gpt-4o-mini".into(),
            stripe_webhook_secret: Some(" whsec_a , whsec_b,".into()),
            stripe_webhook_tolerance_seconds: 300,
            stripe_secret_key: Some("sk_test_s3cret".into()),
            stripe_api_base: "http://127.0.0.1:12111".into(),
            delivery: DeliveryConfig::default(),
        };
        assert_eq!(config.stripe_webhook_secrets(), ["whsec_a", "whsec_b"]);
        assert!(!format!("{config:?}").contains("whsec_"));
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(config.secure_cookies());
    }
}
