//! Sign-up, log-in, log-out: happy paths, bad input that stores nothing, and session handling.

use axum::http::StatusCode;
use sqlx::PgPool;

use crate::support::{app, assert_no_internals, DEFAULT_LIMIT, PASSWORD};

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn signup_creates_an_account_with_a_hashed_password_and_signs_in(pool: PgPool) {
    let app = app(pool);
    let reply =
        app.post_form("/api/auth/signup", &[("email", " Ada@Example.com "), ("password", PASSWORD)], None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    let (email, hash, id): (String, String, uuid::Uuid) =
        sqlx::query_as("SELECT email, password_hash, id FROM users").fetch_one(&app.pool).await.unwrap();
    // No limit of its own: the meter's default applies.
    let limits = tally::auth::users::limits(&app.pool, &app.state.config.meters, id).await.unwrap();
    let limit = limits.iter().find(|(event_type, ..)| event_type == tally::usage::AI_TOKENS_EVENT).unwrap();
    assert_eq!(email, "ada@example.com");
    assert!(hash.starts_with("$argon2id$"), "stored hash is Argon2id: {hash}");
    assert!(!hash.contains(PASSWORD));
    assert_eq!((limit.1, limit.2), (Some(DEFAULT_LIMIT), false));

    let cookie = reply.session_cookie_header().expect("session cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Lax"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain-http deployments get no Secure flag: {cookie}");
    assert_eq!(app.count("tower_sessions.session").await, 1);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn bad_signups_get_a_clear_message_and_store_nothing(pool: PgPool) {
    let app = app(pool);
    let cases: &[(&str, &str, StatusCode, &str)] = &[
        ("", PASSWORD, StatusCode::UNPROCESSABLE_ENTITY, "enter your email"),
        ("not-an-email", PASSWORD, StatusCode::UNPROCESSABLE_ENTITY, "not a valid email"),
        ("ada@example.com", "short", StatusCode::UNPROCESSABLE_ENTITY, "at least 10 characters"),
    ];
    for (email, password, status, message) in cases {
        let reply = app.post_form("/api/auth/signup", &[("email", email), ("password", password)], None).await;
        assert_eq!(reply.status, *status, "{email:?}/{password:?}: {}", reply.body);
        assert!(reply.body.contains(message), "{email:?}: {}", reply.body);
        assert!(reply.session_cookie().is_none());
        assert_no_internals(&reply.body);
    }
    // A missing field is a malformed request.
    let reply = app.post_form("/api/auth/signup", &[("email", "ada@example.com")], None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);

    assert_eq!(app.count("users").await, 0);
    assert_eq!(app.count("tower_sessions.session").await, 0);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_duplicate_email_is_a_conflict_whatever_its_case(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let reply = app
        .post_form("/api/auth/signup", &[("email", "ADA@example.com"), ("password", "another password")], None)
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.body.contains("already exists"), "{}", reply.body);
    assert_no_internals(&reply.body);
    assert_eq!(app.count("users").await, 1);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn login_with_the_right_password_starts_a_new_session(pool: PgPool) {
    let app = app(pool);
    let signup_cookie = app.signup("ada@example.com").await;

    let reply = app
        .post_form("/api/auth/login", &[("email", "ada@example.com"), ("password", PASSWORD)], Some(&signup_cookie))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let login_cookie = reply.session_cookie().expect("login sets a session cookie");
    assert_ne!(login_cookie, signup_cookie, "the session id is cycled at login");

    let me = app.post_form("/api/auth/me", &[], Some(&login_cookie)).await;
    assert_eq!(me.json()["email"], "ada@example.com");
    // The old id no longer signs anybody in.
    let stale = app.post_form("/api/auth/me", &[], Some(&signup_cookie)).await;
    assert_eq!(stale.json(), serde_json::Value::Null);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn wrong_password_and_unknown_email_get_the_same_answer_and_no_session(pool: PgPool) {
    let app = app(pool);
    app.signup("ada@example.com").await;
    let sessions_before = app.count("tower_sessions.session").await;

    for (email, password) in [("ada@example.com", "wrong password!"), ("nobody@example.com", PASSWORD), ("", "")] {
        let reply = app.post_form("/api/auth/login", &[("email", email), ("password", password)], None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{email:?}: {}", reply.body);
        assert!(reply.body.contains("email or password is incorrect"), "{}", reply.body);
        assert!(reply.session_cookie().is_none(), "no session for a failed login");
    }
    assert_eq!(app.count("tower_sessions.session").await, sessions_before);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn logout_ends_the_session(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    let reply = app.post_form("/api/auth/logout", &[], Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(app.count("tower_sessions.session").await, 0);
    let me = app.post_form("/api/auth/me", &[], Some(&cookie)).await;
    assert_eq!(me.json(), serde_json::Value::Null);
}

async fn session_expires_in_days(app: &crate::support::TestApp) -> f64 {
    sqlx::query_scalar("SELECT extract(epoch FROM expiry_date - now())::float8 / 86400 FROM tower_sessions.session")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_session_in_use_is_renewed_once_a_day(pool: PgPool) {
    let app = app(pool);
    let cookie = app.signup("ada@example.com").await;
    // As if signed in 13 days ago: one day left.
    sqlx::query("UPDATE tower_sessions.session SET expiry_date = now() + interval '1 day'")
        .execute(&app.pool)
        .await
        .unwrap();
    let me = app.post_form("/api/auth/me", &[], Some(&cookie)).await;
    assert_eq!(me.json()["email"], "ada@example.com");
    let left = session_expires_in_days(&app).await;
    assert!(left > 13.9, "used today, so it lasts 14 more days: {left}");

    // Used again the same day: no second write.
    sqlx::query("UPDATE tower_sessions.session SET expiry_date = now() + interval '1 day'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.post_form("/api/auth/me", &[], Some(&cookie)).await;
    let left = session_expires_in_days(&app).await;
    assert!(left < 1.1, "renewed at most once a day: {left}");
}
