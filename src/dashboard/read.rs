//! The dashboard's one statement. Each part calls the SQL its card's own server function runs (the functions
//! `billing_period_at`, `usage_days`, `usage_period_choices` and `meter_sync`, the counters, the tables), so the
//! first render and a later re-read of one card cannot disagree; `tests/integration/dashboard.rs` checks that they
//! do not.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::DashboardData;
use crate::auth::{ApiKeyInfo, CurrentUser};
use crate::billing::{BillingCycle, BillingOverview, BillingState, SubscriptionInfo};
use crate::usage::period::LIVE_STATUSES;
use crate::usage::summary::{meter_params, summarize, MeterRow, PeriodFacts};
use crate::usage::{AlertMeter, AlertsOverview, DayUsage, PeriodAlerts, PeriodChoice, UsageHistory, UsageSummary};

/// `user_id`'s dashboard at `at`, or `None` when the account no longer exists.
pub async fn dashboard(
    state: &BillingState,
    user_id: Uuid,
    at: DateTime<Utc>,
) -> Result<Option<DashboardData>, sqlx::Error> {
    let timezone = &state.config.billing_timezone;
    let catalog = &state.config.meters;
    let (types, defaults) = meter_params(catalog, None);
    let Some(row) = sqlx::query!(
        r#"WITH u AS (
               SELECT id, email, usage_warning_percent, alert_webhook_url, alert_webhook_secret,
                      stripe_customer_id IS NOT NULL AS has_customer
               FROM users WHERE id = $1
           ), p AS (
               SELECT b.period_start AS start, b.period_end AS "end", b.period_kind AS kind,
                      to_char(b.period_start AT TIME ZONE $3, 'YYYY-MM-DD') AS first_day,
                      to_char((b.period_end - interval '1 microsecond') AT TIME ZONE $3, 'YYYY-MM-DD') AS last_day
               FROM billing_period_at($1, $2, $3, $4) AS b
           )
           SELECT u.email, u.usage_warning_percent, u.has_customer AS "has_customer!", u.alert_webhook_url, u.alert_webhook_secret,
                  p.start AS "period_start!: DateTime<Utc>", p."end" AS "period_end!: DateTime<Utc>",
                  p.kind AS "period_kind!", p.first_day AS "first_day!", p.last_day AS "last_day!",
                  mtr.meters AS "meters!: Json<Vec<MeterRow>>",
                  al.alerts AS "alerts!: Json<PeriodAlerts>",
                  coalesce((SELECT json_agg(json_build_object(
                                'periodStart', c.period_start, 'periodEnd', c.period_end,
                                'firstDay', c.first_day, 'lastDay', c.last_day) ORDER BY c.period_start DESC)
                            FROM usage_period_choices(u.id, $3) c), '[]') AS "choices!: Json<Vec<PeriodChoice>>",
                  coalesce((SELECT json_agg(json_build_object('day', d.day, 'quantity', d.quantity) ORDER BY d.day)
                            FROM usage_days(u.id, $5, p.start, p."end", $3) d), '[]') AS "days!: Json<Vec<DayUsage>>",
                  (SELECT json_build_object(
                              'status', s.status, 'currentPeriodStart', s.current_period_start,
                              'currentPeriodEnd', s.current_period_end, 'cancelAtPeriodEnd', s.cancel_at_period_end)
                   FROM subscriptions s WHERE s.user_id = u.id ORDER BY s.state_at DESC LIMIT 1)
                      AS "subscription: Json<SubscriptionInfo>",
                  coalesce((SELECT json_agg(json_build_object(
                                'stripeInvoiceId', c.stripe_invoice_id,
                                'firstDay', to_char(c.period_start AT TIME ZONE $3, 'YYYY-MM-DD'),
                                'lastDay', to_char(GREATEST(c.period_start, c.period_end - interval '1 microsecond')
                                                   AT TIME ZONE $3, 'YYYY-MM-DD'),
                                'amountPaid', c.amount_paid, 'currency', c.currency, 'status', c.status)
                              ORDER BY c.period_start DESC, c.created_at DESC)
                            FROM (SELECT * FROM billing_cycles WHERE user_id = u.id
                                  ORDER BY period_start DESC, created_at DESC LIMIT $6) AS c), '[]')
                      AS "cycles!: Json<Vec<BillingCycle>>",
                  (SELECT count(*) FROM subscriptions s WHERE s.user_id = u.id AND s.status = ANY($4))
                      AS "live_subscriptions!",
                  EXISTS (SELECT 1 FROM meter_prices) AS "priced!",
                  m.events AS "events!", m.pending AS "pending!", m.awaiting_customer AS "awaiting_customer!",
                  m.failed AS "failed!", m.expired AS "expired!", m.last_failure, m.last_retry_error,
                  m.reported AS "reported!", m.last_report,
                  coalesce((SELECT json_agg(json_build_object(
                                'id', k.id, 'name', k.name, 'displayPrefix', k.display_prefix,
                                'createdAt', k.created_at, 'lastUsedAt', k.last_used_at, 'revokedAt', k.revoked_at)
                              ORDER BY k.created_at DESC, k.id)
                            FROM api_keys k WHERE k.user_id = u.id), '[]') AS "api_keys!: Json<Vec<ApiKeyInfo>>"
           FROM u CROSS JOIN p CROSS JOIN LATERAL meter_sync(u.id, p.start, p."end", p.kind) AS m
           CROSS JOIN LATERAL usage_meters_of(u.id, p.kind, p.start, p."end", $7, $8) AS mtr
           CROSS JOIN LATERAL usage_alerts_of(u.id, p.start, $3) AS al"#,
        user_id,
        at as _,
        timezone,
        LIVE_STATUSES as _,
        &catalog.primary().event_type,
        crate::billing::history::SHOWN_CYCLES,
        &types,
        &defaults as &[Option<i64>]
    )
    .fetch_optional(&state.pool)
    .await?
    else {
        return Ok(None);
    };
    let current = PeriodChoice {
        period_start: row.period_start,
        period_end: row.period_end,
        first_day: row.first_day.clone(),
        last_day: row.last_day.clone(),
    };
    let period = PeriodFacts {
        start: row.period_start,
        end: row.period_end,
        first_day: row.first_day,
        last_day: row.last_day,
        timezone: timezone.clone(),
    };
    let meters: Vec<UsageSummary> = row
        .meters
        .0
        .into_iter()
        .map(|meter| summarize(catalog, meter, &period, row.usage_warning_percent, at))
        .collect();
    let PeriodAlerts { alerts, rules } = row.alerts.0;
    let sync = crate::billing::status::SyncCounts {
        events: row.events,
        pending: row.pending,
        awaiting_customer: row.awaiting_customer,
        failed: row.failed,
        expired: row.expired,
        last_failure: row.last_failure,
        last_retry_error: row.last_retry_error,
        reported: row.reported,
        last_report: row.last_report,
    };
    let mut billing = BillingOverview {
        subscription: row.subscription.map(|s| s.0),
        can_subscribe: false,
        has_customer: row.has_customer,
        can_manage: false,
        cycles: row.cycles.0,
        duplicate_subscription: row.live_subscriptions > 1,
        sync: sync.into(),
    };
    state.complete(&mut billing, row.priced);
    Ok(Some(DashboardData {
        user: CurrentUser { id: user_id, email: row.email },
        alerts: AlertsOverview {
            alerts,
            rules,
            meters: AlertMeter::all(&meters),
            timezone: timezone.clone(),
            webhook_url: row.alert_webhook_url,
            webhook_secret: row.alert_webhook_secret,
        },
        history: UsageHistory {
            periods: crate::usage::history::with_current(row.choices.0, current.clone()),
            selected: current,
            days: row.days.0,
            timezone: timezone.clone(),
        },
        meters: crate::usage::summary::shown(catalog, meters),
        billing,
        api_keys: row.api_keys.0,
    }))
}
