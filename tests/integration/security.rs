//! Guards in front of every route: cross-site writes, body size, response headers.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use sqlx::PgPool;

use crate::support::{app, PASSWORD};

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn a_cross_site_signup_is_refused_and_stores_nothing(pool: PgPool) {
    let app = app(pool);
    let request = Request::post("/api/auth/signup")
        .header(header::HOST, "127.0.0.1:3000")
        .header(header::ORIGIN, "https://evil.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("email=ada%40example.com&password={}", PASSWORD.replace(' ', "+"))))
        .unwrap();
    let reply = app.send(request).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["error"], "cross-site request refused");
    assert_eq!(app.count("users").await, 0);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn state_changing_server_functions_refuse_get(pool: PgPool) {
    let app = app(pool);
    let reply = app.get("/api/auth/signup?email=ada%40example.com&password=long+enough+pw", None).await;
    assert!(reply.status.is_client_error(), "GET must not create accounts: {}", reply.status);
    assert_eq!(app.count("users").await, 0);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn oversized_bodies_are_refused(pool: PgPool) {
    let app = app(pool);
    let huge = "a".repeat(tally::server::MAX_BODY_BYTES + 1);
    let request = Request::post("/api/auth/login")
        .header(header::HOST, "127.0.0.1:3000")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::CONTENT_LENGTH, huge.len())
        .body(Body::from(format!("email={huge}")))
        .unwrap();
    assert_eq!(app.send(request).await.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[sqlx::test(migrator = "tally::db::MIGRATOR")]
async fn pages_carry_security_headers(pool: PgPool) {
    let app = app(pool);
    let reply = app.get("/login", None).await;
    assert_eq!(reply.headers["x-content-type-options"], "nosniff");
    assert_eq!(reply.headers["x-frame-options"], "DENY");
}
