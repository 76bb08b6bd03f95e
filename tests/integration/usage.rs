//! Billing periods and period totals.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tally::usage::{period, totals, AI_TOKENS_EVENT};

use crate::support::{app, DEFAULT_LIMIT};

fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().unwrap()
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn periods_are_calendar_months_of_the_billing_timezone(pool: PgPool) {
    // 15:00 UTC on 30 November is already 1 December in Tokyo.
    let december = crate::support::calendar_month(&pool, at("2026-11-30T15:00:00Z"), "Asia/Tokyo").await;
    assert_eq!(december.start, at("2026-11-30T15:00:00Z"));
    assert_eq!(december.end, at("2026-12-31T15:00:00Z"));
    assert_eq!((december.first_day.as_str(), december.last_day.as_str()), ("2026-12-01", "2026-12-31"));

    let november = crate::support::calendar_month(&pool, at("2026-11-30T14:59:59.999Z"), "Asia/Tokyo").await;
    assert_eq!(november.start, at("2026-10-31T15:00:00Z"));
    assert_eq!(november.end, december.start, "periods are contiguous");

    let leap = crate::support::calendar_month(&pool, at("2028-02-10T00:00:00Z"), "UTC").await;
    assert_eq!(leap.last_day, "2028-02-29");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn periods_survive_daylight_saving_changes(pool: PgPool) {
    // New York leaves daylight saving time on 1 November 2026: the month starts at UTC-4 and ends at UTC-5.
    let november = crate::support::calendar_month(&pool, at("2026-11-15T12:00:00Z"), "America/New_York").await;
    assert_eq!(november.start, at("2026-11-01T04:00:00Z"));
    assert_eq!(november.end, at("2026-12-01T05:00:00Z"));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn totals_count_only_this_users_events_of_this_type_inside_the_period(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    app.signup("bob@example.com").await;
    let ada = app.user_id("ada@example.com").await;
    let bob = app.user_id("bob@example.com").await;
    let november = crate::support::calendar_month(&app.pool, at("2026-11-15T00:00:00Z"), "Asia/Tokyo").await;

    app.insert_usage(ada, AI_TOKENS_EVENT, 1_000, "2026-10-31T15:00:00Z").await; // first instant: in
    app.insert_usage(ada, AI_TOKENS_EVENT, 234, "2026-11-20T09:30:00Z").await; // in
    app.insert_usage(ada, AI_TOKENS_EVENT, 7, "2026-10-31T14:59:59Z").await; // October in Tokyo: out
    app.insert_usage(ada, AI_TOKENS_EVENT, 9, "2026-11-30T15:00:00Z").await; // December in Tokyo: out
    app.insert_usage(ada, "image_generated", 50, "2026-11-20T09:30:00Z").await; // other type: out
    app.insert_usage(bob, AI_TOKENS_EVENT, 5_000, "2026-11-20T09:30:00Z").await; // other user: out

    let in_november = at("2026-11-15T00:00:00Z");
    let summary =
        totals::summary_at(&app.pool, &app.state.clock, &app.state.config.meters, ada, AI_TOKENS_EVENT, in_november)
            .await
            .unwrap()
            .unwrap();
    assert_eq!((summary.period_start, summary.period_end), (november.start, november.end));
    assert_eq!(summary.used, 1_234);
    assert_eq!(summary.limit, Some(DEFAULT_LIMIT));
    assert_eq!(summary.period_first_day, "2026-11-01");

    let nobody = totals::summary_at(
        &app.pool,
        &app.state.clock,
        &app.state.config.meters,
        uuid::Uuid::new_v4(),
        AI_TOKENS_EVENT,
        in_november,
    )
    .await
    .unwrap();
    assert_eq!(nobody, None);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn totals_are_bigint_sums_beyond_32_bits(pool: PgPool) {
    let app = app(pool);
    app.signup("heavy@example.com").await;
    let heavy = app.user_id("heavy@example.com").await;
    let now = Utc::now().to_rfc3339();
    for _ in 0..3 {
        app.insert_usage(heavy, AI_TOKENS_EVENT, 3_000_000_000, &now).await;
    }
    let summary =
        totals::summary_at(&app.pool, &app.state.clock, &app.state.config.meters, heavy, AI_TOKENS_EVENT, Utc::now())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(summary.used, 9_000_000_000);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_summary_server_function_answers_the_signed_in_user_only(pool: PgPool) {
    let app = app(pool);
    let reply = app.post_form("/api/usage/summary", &[], None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let cookie = app.signup("ada@example.com").await;
    let ada = app.user_id("ada@example.com").await;
    app.insert_usage(ada, AI_TOKENS_EVENT, 4_321, &Utc::now().to_rfc3339()).await;
    let reply = app.post_form("/api/usage/summary", &[], Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let summary = reply.json();
    assert_eq!(summary["used"], 4_321);
    assert_eq!(summary["limit"], DEFAULT_LIMIT);
    assert_eq!(summary["timezone"], "Asia/Tokyo");
    assert!(summary["periodStart"].is_string() && summary["periodEnd"].is_string(), "{summary}");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_database_refuses_non_positive_quantities(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let ada = app.user_id("ada@example.com").await;
    for quantity in [0_i64, -5] {
        let err = sqlx::query("INSERT INTO usage_events (id, user_id, event_type, quantity) VALUES ($1, $2, $3, $4)")
            .bind(uuid::Uuid::new_v4())
            .bind(ada)
            .bind(AI_TOKENS_EVENT)
            .bind(quantity)
            .execute(&app.pool)
            .await
            .unwrap_err();
        assert_eq!(err.as_database_error().unwrap().constraint(), Some("usage_events_quantity_positive"));
    }
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_monthly_view_groups_by_tokyo_month(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let ada = app.user_id("ada@example.com").await;
    app.insert_usage(ada, AI_TOKENS_EVENT, 10, "2026-11-30T14:00:00Z").await; // 23:00 on 30 Nov in Tokyo
    app.insert_usage(ada, AI_TOKENS_EVENT, 20, "2026-11-30T16:00:00Z").await; // 01:00 on 1 Dec in Tokyo
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT to_char(month, 'YYYY-MM'), total_quantity FROM usage_monthly WHERE user_id = $1 ORDER BY month",
    )
    .bind(ada)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows, vec![("2026-11".to_owned(), 10), ("2026-12".to_owned(), 20)]);
}

/// The dashboard's server functions share one period lookup per request: within a request the period stays the
/// one first read (all cards show the same period), the next request reads it afresh, another user is never
/// served this user's period.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_current_period_is_looked_up_once_per_request(pool: PgPool) {
    use leptos::prelude::{provide_context, Owner};
    let app = app(pool.clone());
    app.signup("memo@example.com").await;
    app.signup("other@example.com").await;
    let (user, other) = (app.user_id("memo@example.com").await, app.user_id("other@example.com").await);
    let request = Owner::new();
    request.set();
    provide_context(period::RequestMemo::default());
    let first = period::current(&app.state.usage, user).await.unwrap();

    // A subscription with its own period arrives mid-request.
    sqlx::query(
        "INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, user_id, status, current_period_start,
                                    current_period_end, state_at)
         SELECT 'sub_memo', 'cus_memo', $1, 'active', now() - interval '2 days', now() + interval '28 days', now()",
    )
    .bind(user)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(period::current(&app.state.usage, user).await.unwrap(), first, "same request, same period");
    let others = period::current(&app.state.usage, other).await.unwrap();
    assert_eq!(others, period::for_user(&pool, &app.state.clock, other, Utc::now()).await.unwrap());

    let next_request = Owner::new();
    next_request.set();
    provide_context(period::RequestMemo::default());
    let fresh = period::current(&app.state.usage, user).await.unwrap();
    assert_ne!(fresh, first, "the next request sees the subscription");
    assert_eq!(fresh.start, period::for_user(&pool, &app.state.clock, user, Utc::now()).await.unwrap().start);
}

/// The per-day history sums the writer's quarter-hour buckets; it must equal a sum over the events themselves for
/// periods whose edges are not on a quarter hour and in time zones whose offsets are not whole hours.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_daily_history_from_buckets_equals_a_sum_over_events(pool: PgPool) {
    let app = app(pool.clone());
    app.signup("buckets@example.com").await;
    let user = app.user_id("buckets@example.com").await;
    // A Stripe-like period starting and ending at odd seconds, and events on and around both edges.
    let (start, end) = (at("2026-11-03T04:12:37Z"), at("2026-12-03T04:12:37Z"));
    let mut instants = vec![
        start - chrono::Duration::seconds(1),
        start,
        start + chrono::Duration::seconds(1),
        at("2026-11-03T04:14:59Z"),
        at("2026-11-03T04:15:00Z"),
        end - chrono::Duration::seconds(1),
        at("2026-12-03T04:00:00Z"),
        end,
    ];
    for i in 0..200 {
        instants.push(start + chrono::Duration::minutes(7 * i * i % 43_200));
    }
    for (i, instant) in instants.iter().enumerate() {
        app.insert_usage(user, AI_TOKENS_EVENT, 1 + i as i64, &instant.to_rfc3339()).await;
    }
    let period = tally::usage::PeriodChoice {
        period_start: start,
        period_end: end,
        first_day: String::new(),
        last_day: String::new(),
    };
    for timezone in ["Asia/Tokyo", "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns", "UTC"] {
        let history = tally::usage::history::daily(&pool, user, AI_TOKENS_EVENT, &period, timezone).await.unwrap();
        let expected: Vec<(String, i64)> = sqlx::query_as(
            "SELECT to_char(date_trunc('day', occurred_at AT TIME ZONE $4), 'YYYY-MM-DD'), sum(quantity)::bigint
             FROM usage_events WHERE user_id = $1 AND occurred_at >= $2 AND occurred_at < $3 GROUP BY 1 ORDER BY 1",
        )
        .bind(user)
        .bind(start)
        .bind(end)
        .bind(timezone)
        .fetch_all(&pool)
        .await
        .unwrap();
        let shown: Vec<(String, i64)> =
            history.iter().filter(|d| d.quantity > 0).map(|d| (d.day.clone(), d.quantity)).collect();
        assert_eq!(shown, expected, "{timezone}");
    }
}

/// `GET /api/usage/allowance`: a service asks with its API key what it may still use this period.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_allowance_answers_an_api_key_from_the_period_counters(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    let ada = app.user_id("ada@example.com").await;
    crate::support::set_token_limit(&app.pool, Some(ada), Some(1000)).await;
    let key = app.api_key("ada@example.com").await;
    let bearer = format!("Bearer {key}");
    app.insert_usage(ada, AI_TOKENS_EVENT, 799, &chrono::Utc::now().to_rfc3339()).await;

    let reply = app.get_with("/api/usage/allowance", &[("authorization", &bearer)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let allowance = reply.json();
    assert_eq!(allowance["eventType"], AI_TOKENS_EVENT);
    assert_eq!((allowance["used"].as_i64(), allowance["limit"].as_i64()), (Some(799), Some(1000)));
    assert_eq!((allowance["remaining"].as_i64(), allowance["percent"].as_i64()), (Some(201), Some(79)));
    assert_eq!((allowance["warning"].as_bool(), allowance["limitReached"].as_bool()), (Some(false), Some(false)));
    // The period is the meter's: the same as the signed-in summary says.
    let summary = app.post_form("/api/usage/summary", &[], Some(&cookie)).await.json();
    assert_eq!(allowance["periodStart"], summary["periodStart"]);
    assert_eq!(allowance["periodEnd"], summary["periodEnd"]);

    // The warning starts where the record API's does (80 % by default), the limit is reached at 100 %, and what is
    // left never goes below zero.
    app.insert_usage(ada, AI_TOKENS_EVENT, 1, &chrono::Utc::now().to_rfc3339()).await;
    let query = format!("/api/usage/allowance?eventType={AI_TOKENS_EVENT}");
    assert_eq!(app.get_with(&query, &[("authorization", &bearer)]).await.json()["warning"], true);
    app.insert_usage(ada, AI_TOKENS_EVENT, 300, &chrono::Utc::now().to_rfc3339()).await;
    let over = app.get_with(&query, &[("authorization", &bearer)]).await.json();
    assert_eq!(
        (over["remaining"].as_i64(), over["percent"].as_i64(), over["limitReached"].as_bool()),
        (Some(0), Some(110), Some(true))
    );

    // A browser's session may ask too; nobody else may.
    assert_eq!(app.get_with("/api/usage/allowance", &[("cookie", &cookie)]).await.json()["used"], 1100);
    let nobody = app.get_with("/api/usage/allowance", &[]).await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);
    assert_eq!(nobody.json()["code"], "unauthorized");
    let forged = app.get_with("/api/usage/allowance", &[("authorization", "Bearer tly_live_not_a_real_key")]).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    // A bad key is refused even with a session beside it: a service's mistake is never answered for someone else.
    let both = app.get_with("/api/usage/allowance", &[("authorization", "Bearer nope"), ("cookie", &cookie)]).await;
    assert_eq!(both.status, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn the_allowance_of_an_unknown_event_type_is_a_clear_422(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let key = app.api_key("ada@example.com").await;
    let reply = app
        .get_with("/api/usage/allowance?eventType=gpu_seconds", &[("authorization", &format!("Bearer {key}"))])
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", reply.body);
    let error = reply.json();
    assert_eq!(error["code"], "invalid");
    assert!(error["error"].as_str().unwrap().contains("gpu_seconds"), "{error}");
    assert!(error["error"].as_str().unwrap().contains(AI_TOKENS_EVENT), "says what is metered: {error}");
}

/// `occurredAt`: backfilled usage counts at its own time, inside Stripe's window and a period whose invoice is open.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn occurred_at_is_kept_inside_stripes_window_and_an_open_invoice(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let key = format!("Bearer {}", app.api_key("ada@example.com").await);
    let clock = app.state.usage.time.clone();
    let grace = i64::from(app.state.config.delivery.invoice_grace_minutes);
    assert_eq!(grace, 60, "the test's times assume Stripe's default hour of grace");
    let record = |at: &'static str, quantity: i64| {
        let body = format!(r#"{{"eventType": "{AI_TOKENS_EVENT}", "quantity": {quantity}, "occurredAt": "{at}"}}"#);
        let (app, key) = (&app, key.clone());
        async move { app.post_json("/api/usage/record", &body, &[("authorization", &key)]).await }
    };
    let counted = |period_start: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT sum(quantity)::bigint FROM usage_period_totals
                 WHERE period_kind = 'calendar' AND period_start = $1::timestamptz",
            )
            .bind(period_start)
            .fetch_one(&pool)
            .await
            .unwrap()
            .unwrap_or(0)
        }
    };
    // December in Asia/Tokyo starts at 2026-11-30T15:00Z; the clock is half an hour into it.
    clock.set("2026-11-30T15:30:00Z".parse().unwrap());

    // November's invoice is still open (its end + an hour of grace, less the delivery margin): counted in November.
    let late = record("2026-11-30T14:50:00Z", 7).await;
    assert_eq!(late.status, StatusCode::OK, "{}", late.body);
    let id: uuid::Uuid = late.json()["id"].as_str().unwrap().parse().unwrap();
    let stored: DateTime<Utc> = sqlx::query_scalar("SELECT occurred_at FROM usage_events WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, "2026-11-30T14:50:00Z".parse::<DateTime<Utc>>().unwrap());
    assert_eq!(counted("2026-10-31T15:00:00Z").await, 7, "November's counter");
    // Now, with an offset, is December's.
    assert_eq!(record("2026-12-01T00:25:00+09:00", 5).await.status, StatusCode::OK);
    assert_eq!(counted("2026-11-30T15:00:00Z").await, 5, "December's counter");

    // Five minutes before November's invoice deadline the delivery could not reach it any more: refused.
    clock.set("2026-11-30T15:55:00Z".parse().unwrap());
    let closed = record("2026-11-30T14:50:00Z", 7).await;
    assert_eq!(closed.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", closed.body);
    let error = closed.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("2026-11-30T15:00:00+00:00") && error.contains("invoice"), "{error}");
    assert_eq!(counted("2026-10-31T15:00:00Z").await, 7, "nothing stored");

    // Ahead of the clock by more than 5 minutes, older than Stripe's 35 days, or not a time: 422, saying why.
    let ahead = record("2026-11-30T16:01:00Z", 1).await;
    assert_eq!(ahead.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(ahead.json()["error"].as_str().unwrap().contains("ahead"));
    let old = record("2026-10-20T00:00:00Z", 1).await;
    assert!(old.json()["error"].as_str().unwrap().contains("35 days"), "{}", old.body);
    let malformed = record("2026-11-30 15:00", 1).await;
    assert_eq!(malformed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(malformed.json()["error"].as_str().unwrap().contains("RFC 3339"));

    // A batch is all or nothing: the event in a closed period is named by its index, and nothing is stored.
    let batch = format!(
        r#"{{"events": [{{"eventType": "{AI_TOKENS_EVENT}", "quantity": 3, "occurredAt": "2026-11-30T15:50:00Z"}},
                        {{"eventType": "{AI_TOKENS_EVENT}", "quantity": 4, "occurredAt": "2026-11-29T00:00:00Z"}}]}}"#
    );
    let refused = app.post_json("/api/usage/batch", &batch, &[("authorization", &key)]).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", refused.body);
    let problems = refused.json()["events"].clone();
    assert_eq!(problems.as_array().unwrap().len(), 1, "{problems}");
    assert_eq!(problems[0]["index"], 1);
    assert_eq!(counted("2026-11-30T15:00:00Z").await, 5, "the valid event of the refused batch is not stored either");
}

/// A backfilled event counts against the hard limit of its own period, not the current one's.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn occurred_at_counts_against_its_own_periods_limit(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let ada = app.user_id("ada@example.com").await;
    crate::support::set_token_limit(&app.pool, Some(ada), Some(10)).await;
    let key = format!("Bearer {}", app.api_key("ada@example.com").await);
    app.state.usage.time.set("2026-11-30T15:30:00Z".parse().unwrap());
    let record = |at: &'static str, quantity: i64| {
        let body = format!(r#"{{"eventType": "{AI_TOKENS_EVENT}", "quantity": {quantity}, "occurredAt": "{at}"}}"#);
        let (app, key) = (&app, key.clone());
        async move { app.post_json("/api/usage/record", &body, &[("authorization", &key)]).await.status }
    };
    assert_eq!(record("2026-11-30T14:00:00Z", 8).await, StatusCode::OK, "November: 8 of 10");
    assert_eq!(record("2026-11-30T14:10:00Z", 5).await, StatusCode::TOO_MANY_REQUESTS, "November would reach 13");
    assert_eq!(record("2026-11-30T15:10:00Z", 5).await, StatusCode::OK, "December has its own 10");
    assert_eq!(record("2026-11-30T14:20:00Z", 2).await, StatusCode::OK, "November: exactly 10");
}
