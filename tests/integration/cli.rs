//! The `tally` binary's account commands, run as a user would run them.

use std::process::{Command, Output};

use sqlx::PgPool;

use crate::support::database_url;

fn tally(pool: &PgPool, args: &[&str]) -> Output {
    tally_with(pool, args, &[])
}

/// Runs `tally` with extra environment; Stripe settings a developer's shell may hold are cleared first.
fn tally_with(pool: &PgPool, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
    command
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .env("TALLY_METERS_FILE", meters_file())
        .env("TALLY_USER_PASSWORD", "operator password");
    for name in ["STRIPE_SECRET_KEY", "STRIPE_API_BASE"] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied()).output().expect("run tally")
}

/// A catalog whose token meter has a default limit of 25,000, written once per test binary.
fn meters_file() -> String {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("tally-cli-meters-{}.toml", std::process::id()));
        let text = include_str!("../../meters.toml").replace("limit = 1_000_000", "limit = 25_000");
        std::fs::write(&path, text).expect("write the catalog");
        path.display().to_string()
    })
    .clone()
}

/// `email`'s own limit on `event_type`: `None` without a row (the meter's default), `Some(None)` for unlimited.
async fn own_limit(pool: &PgPool, email: &str, event_type: &str) -> Option<Option<i64>> {
    sqlx::query_scalar(
        "SELECT l.usage_limit FROM usage_limits l JOIN users u ON u.id = l.user_id WHERE u.email = $1 AND l.event_type = $2",
    )
    .bind(email)
    .bind(event_type)
    .fetch_optional(pool)
    .await
    .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn user_create_stores_an_account_with_its_limit(pool: PgPool) {
    let out = tally(&pool, &["user", "create", "--email", "Ops@Example.com", "--limit", "1_000"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("created account ops@example.com"), "{}", text(&out));
    assert_eq!(own_limit(&pool, "ops@example.com", "ai_token_consumed").await, Some(Some(1_000)));

    let out = tally(&pool, &["user", "create", "--email", "default@example.com"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(own_limit(&pool, "default@example.com", "ai_token_consumed").await, None, "no limit of its own");
    assert!(text(&out).contains("limit 25000 per period"), "the catalog's default applies: {}", text(&out));
    let shown = tally(&pool, &["user", "show", "--email", "default@example.com"]);
    assert!(text(&shown).contains("limit of ai_token_consumed: 25000 (the meter's default)"), "{}", text(&shown));
    assert!(text(&shown).contains("limit of image_generated: 500 (the meter's default)"), "{}", text(&shown));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn user_create_refuses_duplicates_unless_asked_to_skip_them(pool: PgPool) {
    let args = ["user", "create", "--email", "ops@example.com"];
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
        (vec!["--email", "ops@example.com"], "at least 10 characters"),
        (vec!["--email", "nope"], "not a valid email"),
        (vec!["--email", "ops@example.com", "--limit", "0"], "positive whole number"),
    ] {
        let mut full = vec!["user", "create"];
        full.extend(args);
        let password = if message.contains("10 characters") { "short" } else { "operator password" };
        let out = tally_with(&pool, &full, &[("TALLY_USER_PASSWORD", password)]);
        assert!(!out.status.success());
        assert!(text(&out).contains(message), "{}", text(&out));
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(users, 0);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn apikey_create_list_and_revoke(pool: PgPool) {
    assert!(tally(&pool, &["user", "create", "--email", "ops@example.com"]).status.success());
    let created = tally(&pool, &["apikey", "create", "--email", "ops@example.com", "--name", "etl"]);
    assert!(created.status.success(), "{}", text(&created));
    let secret = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    assert!(tally::auth::api_key::is_well_formed(&secret), "stdout is exactly the key: {secret:?}");
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users").fetch_one(&pool).await.unwrap();
    assert_eq!(
        tally::auth::api_key::owner(&pool, tally::auth::api_key::lookup_hash(&secret).unwrap()).await.unwrap(),
        user
    );

    let listed = tally(&pool, &["apikey", "list", "--email", "ops@example.com"]);
    let listing = text(&listed);
    assert!(
        listing.contains(&secret[..13]) && listing.contains("\"etl\"") && listing.contains("last used"),
        "{listing}"
    );
    assert!(!listing.contains(&secret), "the secret is never listed");

    let revoked = tally(&pool, &["apikey", "revoke", &secret[..13]]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    assert!(
        tally::auth::api_key::owner(&pool, tally::auth::api_key::lookup_hash(&secret).unwrap()).await.is_err(),
        "a revoked key stops working"
    );

    let unknown = tally(&pool, &["apikey", "create", "--email", "nobody@example.com"]);
    assert!(!unknown.status.success());
    assert!(text(&unknown).contains("no account for nobody@example.com"));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn stripe_link_moves_waiting_events_and_status_reports_them(pool: PgPool) {
    assert!(tally(&pool, &["user", "create", "--email", "ops@example.com"]).status.success());
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users").fetch_one(&pool).await.unwrap();
    let event = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO usage_events (id, user_id, event_type, quantity) VALUES ($1, $2, 'ai_token_consumed', 5)")
        .bind(event)
        .bind(user)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO meter_event_outbox (usage_event_id, user_id, occurred_at, status)
         SELECT id, user_id, occurred_at, 'awaiting_customer' FROM usage_events WHERE id = $1 AND user_id = $2",
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
    assert!(tally(&pool, &["user", "create", "--email", "ops@example.com"]).status.success());
    let out = tally(
        &pool,
        &["user", "set-limit", "--email", "ops@example.com", "--limit", "5000", "--warning-percent", "95"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let warning = || async {
        sqlx::query_scalar::<_, i16>("SELECT usage_warning_percent FROM users").fetch_one(&pool).await.unwrap()
    };
    assert_eq!(
        (own_limit(&pool, "ops@example.com", "ai_token_consumed").await, warning().await),
        (Some(Some(5000)), 95)
    );

    assert!(tally(&pool, &["user", "set-limit", "--email", "ops@example.com", "--limit", "none"]).status.success());
    assert_eq!(own_limit(&pool, "ops@example.com", "ai_token_consumed").await, Some(None));
    assert_eq!(warning().await, 95, "the warning share stays unless given");

    // Each meter has its own limit; `default` gives the meter's default back.
    let images = ["user", "set-limit", "--email", "ops@example.com", "--event-type", "image_generated", "--limit", "7"];
    assert!(tally(&pool, &images).status.success());
    assert_eq!(own_limit(&pool, "ops@example.com", "image_generated").await, Some(Some(7)));
    assert_eq!(own_limit(&pool, "ops@example.com", "ai_token_consumed").await, Some(None), "the other meter's stays");
    assert!(tally(&pool, &["user", "set-limit", "--email", "ops@example.com", "--limit", "default"]).status.success());
    assert_eq!(own_limit(&pool, "ops@example.com", "ai_token_consumed").await, None);
    let unknown =
        tally(&pool, &["user", "set-limit", "--email", "ops@example.com", "--event-type", "nope", "--limit", "5"]);
    assert!(!unknown.status.success() && text(&unknown).contains("no meter \"nope\""), "{}", text(&unknown));

    let bad =
        tally(&pool, &["user", "set-limit", "--email", "ops@example.com", "--limit", "5", "--warning-percent", "0"]);
    assert!(!bad.status.success());
    let nobody = tally(&pool, &["user", "set-limit", "--email", "nobody@example.com", "--limit", "5"]);
    assert!(!nobody.status.success() && text(&nobody).contains("no account for nobody@example.com"));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn status_says_pending_events_wait_for_a_stripe_key(pool: PgPool) {
    let app = crate::support::app(pool.clone());
    app.signup("waiting@example.com").await;
    tally(&pool, &["stripe", "link", "--email", "waiting@example.com", "--customer", "cus_waiting"]);
    let user = app.user_id("waiting@example.com").await;
    app.insert_usage(user, "ai_token_consumed", 5, &chrono::Utc::now().to_rfc3339()).await;
    let status = text(&tally(&pool, &["stripe", "status"]));
    assert!(status.contains("pending") && status.contains("STRIPE_SECRET_KEY is not set"), "{status}");
    let worker = tally(&pool, &["worker", "--drain"]);
    assert!(!worker.status.success());
    assert!(text(&worker).contains("STRIPE_SECRET_KEY is not set"), "{}", text(&worker));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn setup_worker_and_reconcile_from_the_command_line(pool: PgPool) {
    // The double runs in this process; the CLI talks to it over HTTP like it would to Stripe.
    let double = stripe_double::StripeDouble::new(stripe_double::DEFAULT_SECRET_KEY);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(stripe_double::serve(listener, double.clone()));
    let env = [("STRIPE_SECRET_KEY", stripe_double::DEFAULT_SECRET_KEY), ("STRIPE_API_BASE", base.as_str())];
    let run = |args: &'static [&'static str]| {
        let pool = pool.clone();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            tally_with(&pool, args, &env)
        })
    };

    let first = run(&["stripe", "setup"]).await.unwrap();
    assert!(first.status.success(), "{}", text(&first));
    let saved = || async {
        sqlx::query_as::<_, (String, String, serde_json::Value)>(
            "SELECT event_type, stripe_price_id, price FROM meter_prices ORDER BY event_type",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let prices = saved().await;
    assert_eq!(prices.len(), 2, "a meter and a price per meter of the catalog: {}", text(&first));
    assert_eq!(prices[0].0, "ai_token_consumed");
    assert_eq!(prices[0].2["unit_amount_decimal"], "0.00005", "Stripe's price is kept as Stripe has it");
    assert_eq!(prices[1].2["unit_amount_decimal"], "3");
    let second = run(&["stripe", "setup"]).await.unwrap();
    assert!(text(&second).contains("(found)") && !text(&second).contains("(created)"), "{}", text(&second));
    assert_eq!(saved().await, prices, "the same prices both times");
    assert_eq!((double.state().meters, double.state().prices), (2, 2));
    let token_price = prices[0].1.clone();

    let app = crate::support::app(pool.clone());
    app.signup("cli-delivery@example.com").await;
    let user = app.user_id("cli-delivery@example.com").await;
    // One instant for the three: without a subscription, batches never sum across a second.
    let now = chrono::Utc::now().to_rfc3339();
    for quantity in [100, 200, 300] {
        app.insert_usage(user, "ai_token_consumed", quantity, &now).await;
    }
    let drained = run(&["worker", "--drain", "--timeout-seconds", "60"]).await.unwrap();
    assert!(drained.status.success(), "{}", text(&drained));
    assert!(text(&drained).contains("3 events batched into 1 meter events"), "{}", text(&drained));
    let customer: String = sqlx::query_scalar("SELECT stripe_customer_id FROM users WHERE id = $1")
        .bind(user)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(double.total(&customer, "ai_token_consumed"), 600);

    // The invoice Stripe drafts for the period (as its webhook records it) bills what was delivered.
    let invoice_line = |invoice: &'static str, quantity: i64| {
        sqlx::query(
            "INSERT INTO invoice_lines (stripe_invoice_id, line_id, user_id, stripe_customer_id, stripe_price_id,
                                        period_start, period_end, quantity, invoice_status)
             VALUES ($1, 'il_1', $2, $3, $5, now() - interval '1 day', now() + interval '1 day', $4, 'open')",
        )
        .bind(invoice)
        .bind(user)
        .bind(customer.clone())
        .bind(quantity)
        .bind(token_price.clone())
        .execute(&pool)
    };
    invoice_line("in_matching", 600).await.unwrap();
    let reconciled = run(&["stripe", "reconcile"]).await.unwrap();
    assert!(reconciled.status.success(), "{}", text(&reconciled));
    assert!(text(&reconciled).contains("1 periods compared, 0 differ"), "{}", text(&reconciled));
    assert!(text(&reconciled).contains("1 invoice lines compared, 0 differ"), "{}", text(&reconciled));
    // An invoice that billed less than was delivered in its period differs, with the reason under it.
    invoice_line("in_short", 500).await.unwrap();
    let short = run(&["stripe", "reconcile"]).await.unwrap();
    assert!(!short.status.success());
    let table = text(&short);
    assert!(table.contains("2 invoice lines compared, 1 differ"), "{table}");
    assert!(table.contains("in_short") && table.contains("why: Stripe billed less than Tally delivered"), "{table}");
    // The same comparison as JSON, with the same exit status.
    let json = run(&["stripe", "reconcile", "--json"]).await.unwrap();
    assert!(!json.status.success());
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON on stdout");
    assert_eq!((report["periodsDiffering"].as_u64(), report["invoiceLinesDiffering"].as_u64()), (Some(0), Some(1)));
    assert_eq!(report["periods"][0]["stripe"], 600);
    assert_eq!(report["invoiceLines"].as_array().map(Vec::len), Some(2));
    sqlx::query("DELETE FROM invoice_lines WHERE stripe_invoice_id = 'in_short'").execute(&pool).await.unwrap();
    // Usage Stripe holds that Tally never sent makes the period differ, and the command fail.
    let stripe =
        tally::billing::stripe::StripeClient::new(reqwest::Client::new(), &base, stripe_double::DEFAULT_SECRET_KEY);
    let stray = tally::billing::stripe::MeterEvent {
        event_name: "ai_token_consumed",
        customer: &customer,
        value: 9,
        identifier: "stray-cli",
        timestamp: chrono::Utc::now().timestamp(),
    };
    stripe.create_meter_event(&stray, "stray-cli").await.unwrap();
    let differs = run(&["stripe", "reconcile", "--since", "2020-01-01"]).await.unwrap();
    assert!(!differs.status.success());
    assert!(text(&differs).contains("DIFFERS"), "{}", text(&differs));
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn user_show_prints_the_account_and_its_events_by_delivery_state(pool: PgPool) {
    let app = crate::support::app(pool.clone());
    app.signup("shown@example.com").await;
    let user = app.user_id("shown@example.com").await;
    app.insert_usage(user, "ai_token_consumed", 5, &chrono::Utc::now().to_rfc3339()).await;
    let out = tally(&pool, &["user", "show", "--email", "shown@example.com"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("stripe customer: none"), "{shown}");
    assert!(shown.contains("usage events: 0 delivered, 0 pending, 1 awaiting a customer"), "{shown}");
    let missing = tally(&pool, &["user", "show", "--email", "nobody@example.com"]);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("no account for nobody@example.com"), "{}", text(&missing));
}

/// A meter catalog that cannot be used stops every command with the reason, naming the file; nothing runs on a
/// guess.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_broken_meter_catalog_is_refused_with_its_reason(pool: PgPool) {
    let path = std::env::temp_dir().join(format!("tally-bad-meters-{}.toml", std::process::id()));
    std::fs::write(&path, "[[meter]]\nevent_type = \"x\"\nlabel = { en = \"X\", ja = \"X\" }\nunit = { en = \"u\", ja = \"u\" }\nlimit = 0\n").unwrap();
    let out = tally_with(&pool, &["migrate"], &[("TALLY_METERS_FILE", path.to_str().unwrap())]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("limit must be positive") && text(&out).contains(path.to_str().unwrap()),
        "{}",
        text(&out)
    );
    let missing = tally_with(&pool, &["migrate"], &[("TALLY_METERS_FILE", "/nonexistent/meters.toml")]);
    assert!(
        !missing.status.success() && text(&missing).contains("cannot read the meter catalog"),
        "{}",
        text(&missing)
    );
}

/// A password is never an argument (argv is visible to every user of the machine): `--password` is refused, the
/// password comes from TALLY_USER_PASSWORD, from stdin with `--password-stdin`, or a terminal prompt; without any
/// of them the command says how.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn passwords_are_never_taken_from_the_command_line(pool: PgPool) {
    let argv = tally(&pool, &["user", "create", "--email", "argv@example.com", "--password", "operator password"]);
    assert!(!argv.status.success() && text(&argv).contains("--password"), "{}", text(&argv));

    let run = |stdin: &str, args: &[&str]| {
        use std::io::Write;
        let mut command = Command::new(env!("CARGO_BIN_EXE_tally"));
        command
            .args(args)
            .env("DATABASE_URL", database_url(&pool))
            .env("TALLY_METERS_FILE", meters_file())
            .env_remove("TALLY_USER_PASSWORD")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let piped = run("piped password\n", &["user", "create", "--email", "piped@example.com", "--password-stdin"]);
    assert!(piped.status.success(), "{}", text(&piped));
    let nothing = run("", &["user", "create", "--email", "none@example.com"]);
    assert!(!nothing.status.success() && text(&nothing).contains("TALLY_USER_PASSWORD"), "{}", text(&nothing));
    let app = crate::support::app(pool.clone());
    let login =
        app.post_form("/api/auth/login", &[("email", "piped@example.com"), ("password", "piped password")], None).await;
    assert!(login.session_cookie().is_some(), "the piped password signs in: {}", login.body);
}

/// Flags work after the subcommand too, and the read commands answer `--json`.
#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn read_commands_answer_json_with_flags_anywhere(pool: PgPool) {
    assert!(tally(&pool, &["user", "create", "--email", "json@example.com", "--limit", "700"]).status.success());
    assert!(tally(&pool, &["apikey", "create", "--email", "json@example.com", "--name", "svc"]).status.success());
    // DATABASE_URL as a flag after the subcommand (the environment's is wrong).
    let url = database_url(&pool);
    let shown = tally_with(
        &pool,
        &["user", "show", "--email", "json@example.com", "--json", "--database-url", url.as_str()],
        &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")],
    );
    assert!(shown.status.success(), "{}", text(&shown));
    let account: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("JSON");
    assert_eq!(account["limits"][0]["limit"], 700);
    assert_eq!(account["limits"][0]["own"], true);
    let keys: serde_json::Value =
        serde_json::from_slice(&tally(&pool, &["--json", "apikey", "list", "--email", "json@example.com"]).stdout)
            .unwrap();
    assert_eq!(keys[0]["name"], "svc");
    assert!(keys[0].get("keyHash").is_none(), "never the key's hash");
    let status: serde_json::Value =
        serde_json::from_slice(&tally(&pool, &["stripe", "status", "--json"]).stdout).unwrap();
    assert_eq!(status["unmatched_events"], 0);
}

/// Only `serve`, `worker` and `migrate` change the schema: a read command against a database that lacks this
/// release's migrations refuses, saying so, and changes nothing. A database a newer release migrated (additive
/// migrations) is accepted by every command: rolling deploys and a rollback by one release run.
#[sqlx::test(migrations = false)]
async fn only_serve_worker_and_migrate_change_the_schema_and_newer_schemas_are_accepted(pool: PgPool) {
    let show = tally(&pool, &["user", "show", "--email", "a@example.com"]);
    assert!(!show.status.success() && text(&show).contains("run `tally migrate`"), "{}", text(&show));
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tables, 0, "a read command migrated nothing");

    assert!(tally(&pool, &["migrate"]).status.success());
    // A later release adds a column and records its migration; this binary does not know it.
    sqlx::query("ALTER TABLE users ADD COLUMN nickname text").execute(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000001, 'a later release', true, '\\x00', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let again = tally(&pool, &["migrate"]);
    assert!(again.status.success(), "a newer schema is accepted: {}", text(&again));
    assert!(tally(&pool, &["user", "create", "--email", "rolled@example.com"]).status.success());
    let shown = tally(&pool, &["user", "show", "--email", "rolled@example.com"]);
    assert!(shown.status.success(), "{}", text(&shown));
    let state = tally::db::schema_state(&pool).await.unwrap();
    assert_eq!((state.missing.len(), state.newer), (0, vec![29_991_231_000_001]));
}
