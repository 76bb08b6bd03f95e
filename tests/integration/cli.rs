//! The `tally` binary's account commands, run as a user would run them.

use std::process::{Command, Output};

use sqlx::PgPool;

/// DATABASE_URL pointed at the test's own database.
fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let database = pool.connect_options().get_database().expect("test database name").to_owned();
    let (without_query, query) = base.split_once('?').map_or((base.as_str(), None), |(a, q)| (a, Some(q)));
    let server = without_query.rsplit_once('/').map_or(without_query, |(server, _)| server);
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

fn tally(pool: &PgPool, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .env("TALLY_DEFAULT_USAGE_LIMIT", "25000")
        .output()
        .expect("run tally")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn user_create_stores_an_account_with_its_limit(pool: PgPool) {
    let out = tally(
        &pool,
        &["user", "create", "--email", "Ops@Example.com", "--password", "operator password", "--limit", "1_000"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("created account ops@example.com"), "{}", text(&out));
    let limit: Option<i64> = sqlx::query_scalar("SELECT usage_limit FROM users WHERE email = 'ops@example.com'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(limit, Some(1_000));

    let out = tally(&pool, &["user", "create", "--email", "default@example.com", "--password", "operator password"]);
    assert!(out.status.success(), "{}", text(&out));
    let limit: Option<i64> = sqlx::query_scalar("SELECT usage_limit FROM users WHERE email = 'default@example.com'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(limit, Some(25_000), "TALLY_DEFAULT_USAGE_LIMIT applies");
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn user_create_refuses_duplicates_unless_asked_to_skip_them(pool: PgPool) {
    let args = ["user", "create", "--email", "ops@example.com", "--password", "operator password"];
    assert!(tally(&pool, &args).status.success());

    let again = tally(&pool, &args);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));

    let mut if_missing = args.to_vec();
    if_missing.push("--if-missing");
    let skipped = tally(&pool, &if_missing);
    assert!(skipped.status.success(), "{}", text(&skipped));
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(users, 1);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn user_create_rejects_bad_input_with_a_message(pool: PgPool) {
    for (args, message) in [
        (vec!["--email", "ops@example.com", "--password", "short"], "at least 10 characters"),
        (vec!["--email", "nope", "--password", "operator password"], "not a valid email"),
        (
            vec!["--email", "ops@example.com", "--password", "operator password", "--limit", "0"],
            "positive whole number",
        ),
    ] {
        let mut full = vec!["user", "create"];
        full.extend(args);
        let out = tally(&pool, &full);
        assert!(!out.status.success());
        assert!(text(&out).contains(message), "{}", text(&out));
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(users, 0);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn apikey_create_list_and_revoke(pool: PgPool) {
    assert!(tally(&pool, &["user", "create", "--email", "ops@example.com", "--password", "operator password"])
        .status
        .success());
    let created = tally(&pool, &["apikey", "create", "--email", "ops@example.com", "--name", "etl"]);
    assert!(created.status.success(), "{}", text(&created));
    let secret = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    assert!(tally::auth::api_key::is_well_formed(&secret), "stdout is exactly the key: {secret:?}");
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(tally::auth::api_key::authenticate(&pool, &secret).await.unwrap(), user);

    let listed = tally(&pool, &["apikey", "list", "--email", "ops@example.com"]);
    let listing = text(&listed);
    assert!(
        listing.contains(&secret[..13]) && listing.contains("\"etl\"") && listing.contains("last used"),
        "{listing}"
    );
    assert!(!listing.contains(&secret), "the secret is never listed");

    let revoked = tally(&pool, &["apikey", "revoke", &secret[..13]]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    assert!(tally::auth::api_key::authenticate(&pool, &secret).await.is_err(), "a revoked key stops working");

    let unknown = tally(&pool, &["apikey", "create", "--email", "nobody@example.com"]);
    assert!(!unknown.status.success());
    assert!(text(&unknown).contains("no account for nobody@example.com"));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn stripe_link_moves_waiting_events_and_status_reports_them(pool: PgPool) {
    assert!(tally(&pool, &["user", "create", "--email", "ops@example.com", "--password", "operator password"])
        .status
        .success());
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users").fetch_one(&pool).await.unwrap();
    let event = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO usage_events (id, user_id, event_type, quantity) VALUES ($1, $2, 'ai_token_consumed', 5)")
        .bind(event)
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO meter_event_outbox (usage_event_id, user_id, status) VALUES ($1, $2, 'awaiting_customer')",
    )
    .bind(event)
    .bind(user)
    .execute(&pool)
    .await
    .unwrap();

    let status = text(&tally(&pool, &["stripe", "status"]));
    assert!(status.contains("awaiting_customer") && status.contains("tally stripe link"), "{status}");

    let bad = tally(&pool, &["stripe", "link", "--email", "ops@example.com", "--customer", "acct_123"]);
    assert!(!bad.status.success() && text(&bad).contains("not a Stripe customer id"));
    let linked = tally(&pool, &["stripe", "link", "--email", "ops@example.com", "--customer", "cus_ops1"]);
    assert!(linked.status.success(), "{}", text(&linked));
    let outbox: String = sqlx::query_scalar("SELECT status FROM meter_event_outbox").fetch_one(&pool).await.unwrap();
    assert_eq!(outbox, "pending");
    assert!(text(&tally(&pool, &["stripe", "status"])).contains("pending"));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn user_set_limit_changes_the_limit_and_warning_share(pool: PgPool) {
    assert!(tally(&pool, &["user", "create", "--email", "ops@example.com", "--password", "operator password"])
        .status
        .success());
    let out = tally(
        &pool,
        &["user", "set-limit", "--email", "ops@example.com", "--limit", "5000", "--warning-percent", "95"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let row: (Option<i64>, i16) =
        sqlx::query_as("SELECT usage_limit, usage_warning_percent FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(row, (Some(5000), 95));

    assert!(tally(&pool, &["user", "set-limit", "--email", "ops@example.com", "--limit", "none"]).status.success());
    let row: (Option<i64>, i16) =
        sqlx::query_as("SELECT usage_limit, usage_warning_percent FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(row, (None, 95), "the warning share stays unless given");

    let bad =
        tally(&pool, &["user", "set-limit", "--email", "ops@example.com", "--limit", "5", "--warning-percent", "0"]);
    assert!(!bad.status.success());
    let nobody = tally(&pool, &["user", "set-limit", "--email", "nobody@example.com", "--limit", "5"]);
    assert!(!nobody.status.success() && text(&nobody).contains("no account for nobody@example.com"));
}
