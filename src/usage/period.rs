//! Billing periods: the one clock that the meter, the totals and (later) Stripe agree on.
//!
//! A user with a live Stripe subscription is billed for the subscription's current period, as Stripe reports it
//! in webhooks. Everyone else (and any instant outside a known subscription period) falls in a calendar month of
//! `BILLING_TIMEZONE`, cut by PostgreSQL's time zone database, the same one the `usage_monthly` view uses.
//!
//! The rule is written once, as the SQL functions `billing_period_at` and `calendar_month_at` (migration 15): the
//! usage writer, the meter and the hard limit, the history and delivery all call them, and this module is how Rust
//! asks. Copies that disagreed caused most billing bugs before.
//!
//! Usage counters are kept per period (see `totals.rs`), so a period must never change under a writer: writers
//! hold a shared per-user advisory lock ([`lock_users_shared`]) while they pick periods and count, and a webhook
//! that changes a user's period holds it exclusively ([`lock_user_exclusive`]) while it recounts the new period.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::error::AppError;

/// `[start, end)` of a billing period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Span {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }
}

/// The advisory lock key of a user's billing period (the high 64 bits of the id; a collision only adds waiting).
fn lock_key(user_id: Uuid) -> i64 {
    (user_id.as_u128() >> 64) as i64
}

/// Takes the shared period lock of `users` for the rest of the transaction (writers: many at once).
pub async fn lock_users_shared(tx: &mut Transaction<'_, Postgres>, users: &[Uuid]) -> Result<(), sqlx::Error> {
    let mut keys: Vec<i64> = users.iter().map(|u| lock_key(*u)).collect();
    keys.sort_unstable();
    keys.dedup();
    sqlx::query!(
        "SELECT count(pg_advisory_xact_lock_shared(k)) FROM (SELECT unnest($1::bigint[]) AS k ORDER BY 1) AS keys",
        &keys
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(())
}

/// Takes the exclusive period lock of `user_id` for the rest of the transaction: waits for writers in flight.
pub async fn lock_user_exclusive(tx: &mut Transaction<'_, Postgres>, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", lock_key(user_id)).fetch_one(&mut **tx).await?;
    Ok(())
}

/// Subscription statuses whose current period bills the user (and in which a user is not offered another
/// subscription). Subscriptions and their periods belong to usage: billing reports them to Stripe.
pub const LIVE_STATUSES: &[&str] = &["active", "trialing", "past_due", "unpaid", "incomplete"];

/// Which rule a period comes from: a live Stripe subscription's current period, or a calendar month of the billing
/// time zone. Stored as text (`period_kind`) next to every period counter and delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeriodKind {
    Subscription,
    Calendar,
}

impl PeriodKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Subscription => "subscription",
            PeriodKind::Calendar => "calendar",
        }
    }

    pub fn parse(kind: &str) -> Option<PeriodKind> {
        match kind {
            "subscription" => Some(PeriodKind::Subscription),
            "calendar" => Some(PeriodKind::Calendar),
            _ => None,
        }
    }
}

/// A period as counters and limits key it: its span and the rule it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    pub kind: PeriodKind,
    pub span: Span,
}

/// Stripe takes meter events from the past 35 days.
pub const STRIPE_WINDOW: chrono::Duration = chrono::Duration::days(35);
/// Usage of a period is sent at the latest this long before its invoice is finalized (period end + grace): a call
/// in flight at the deadline could otherwise land after it.
pub const DEADLINE_MARGIN: chrono::Duration = chrono::Duration::minutes(5);
/// How far ahead of the server's clock a caller's `occurredAt` may be (clocks drift; Stripe allows 5 minutes too).
pub const MAX_AHEAD: chrono::Duration = chrono::Duration::minutes(5);

/// Whether usage of a period ending at `period_end` can no longer reach its invoice at `now`: Stripe finalizes the
/// invoice `grace` after the period's end, and a delivery needs [`DEADLINE_MARGIN`] before that.
pub fn invoice_closed(period_end: DateTime<Utc>, grace: chrono::Duration, now: DateTime<Utc>) -> bool {
    period_end + grace <= now + DEADLINE_MARGIN
}

/// The period that applies to user `$1` at the instant `$2`, cut in time zone `$3` (live statuses bound as `$4`,
/// [`LIVE_STATUSES`]): one row of `start, end, kind, first_day, last_day, timezone`. The rule itself is the SQL
/// function `billing_period_at` (migration 15), its one statement; this only names and formats its columns. Used
/// alone by [`for_user`] and inside the meter's one-statement read (`totals.rs`).
pub const PERIOD_AT: &str = "
    SELECT p.period_start AS start, p.period_end AS \"end\", p.period_kind AS kind,
           to_char(p.period_start AT TIME ZONE $3, 'YYYY-MM-DD') AS first_day,
           to_char((p.period_end - interval '1 microsecond') AT TIME ZONE $3, 'YYYY-MM-DD') AS last_day,
           $3 AS timezone
    FROM billing_period_at($1, $2, $3, $4) AS p";

/// The period `user_id` is billed for at `at`: the live subscription's current period containing it, else the
/// calendar month of `clock`'s time zone.
pub async fn for_user(
    pool: &PgPool,
    clock: &PeriodClock,
    user_id: Uuid,
    at: DateTime<Utc>,
) -> Result<BillingPeriod, sqlx::Error> {
    sqlx::query_as(PERIOD_AT).bind(user_id).bind(at).bind(&clock.timezone).bind(LIVE_STATUSES).fetch_one(pool).await
}

/// One request's memo of the signed-in user's current billing period. The dashboard's server functions (meter,
/// alerts, history, billing) each need it, and during server rendering they run within one request: one lookup
/// instead of four. Provided per request by the router (`server::router`); absent elsewhere (streams, workers).
#[derive(Clone, Default)]
pub struct RequestMemo(std::sync::Arc<tokio::sync::OnceCell<(Uuid, BillingPeriod)>>);

/// `user_id`'s current billing period, looked up at most once per request (see [`RequestMemo`]).
pub async fn current(state: &super::UsageState, user_id: Uuid) -> Result<BillingPeriod, AppError> {
    let lookup = || async { Ok(for_user(&state.pool, &state.clock, user_id, Utc::now()).await?) };
    let Some(memo) = leptos::prelude::use_context::<RequestMemo>() else {
        return lookup().await;
    };
    let (memo_user, period) =
        memo.0.get_or_try_init(|| async { Ok::<_, AppError>((user_id, lookup().await?)) }).await?;
    if *memo_user == user_id {
        Ok(period.clone())
    } else {
        lookup().await
    }
}

/// A billing period: `[start, end)`, with its first and last day in the billing time zone.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BillingPeriod {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// `subscription` or `calendar` ([`PeriodKind`]).
    pub kind: String,
    pub first_day: String,
    pub last_day: String,
    pub timezone: String,
}

impl BillingPeriod {
    /// Whether `at` falls inside the period.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.span().contains(at)
    }

    pub fn span(&self) -> Span {
        Span { start: self.start, end: self.end }
    }

    pub fn kind(&self) -> PeriodKind {
        PeriodKind::parse(&self.kind).unwrap_or(PeriodKind::Calendar)
    }

    /// The period without its days: what counters are keyed by.
    pub fn period(&self) -> Period {
        Period { kind: self.kind(), span: self.span() }
    }
}

/// The billing time zone: what the period functions need besides a user and an instant.
pub struct PeriodClock {
    /// The billing time zone calendar periods are cut in.
    pub timezone: String,
}

impl PeriodClock {
    pub fn new(timezone: String) -> Self {
        PeriodClock { timezone }
    }
}
