//! Sign-in throttling: failed attempts are counted per account and address, per address and per account, over a
//! sliding window, in PostgreSQL so every app instance enforces the same limits.
//!
//! A throttled attempt is refused before the password is checked (and is not counted again), so guessing stops
//! costing hashing work too. A successful sign-in clears the failures of its own account and address only.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::error::AppError;

/// How far back failures count.
pub const WINDOW_SECS: i64 = 15 * 60;
/// Failures allowed for one account from one address within the window.
pub const MAX_PER_ACCOUNT_AND_ADDRESS: i64 = 5;
/// Failures allowed from one address over all accounts (credential stuffing).
pub const MAX_PER_ADDRESS: i64 = 20;
/// Failures allowed for one account over all addresses (distributed guessing). Higher than the per-address limits,
/// because reaching it also locks the account's owner out until the window passes.
pub const MAX_PER_ACCOUNT: i64 = 50;

/// The client address of a request: the peer of the connection, or, when Tally runs behind a proxy it trusts
/// (`TALLY_TRUST_FORWARDED_FOR`), the address that proxy appended to `X-Forwarded-For` last. Earlier entries are
/// whatever the client sent and are never trusted.
pub fn client_ip(parts: &Parts, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for {
        let forwarded =
            parts.headers.get_all("x-forwarded-for").iter().filter_map(|value| value.to_str().ok()).next_back();
        if let Some(ip) = forwarded.and_then(|value| value.rsplit(',').next()).and_then(|ip| ip.trim().parse().ok()) {
            return Some(ip);
        }
    }
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| peer.ip())
}

/// Failures within the window: for the account from the address, from the address, for the account.
#[derive(sqlx::FromRow)]
struct RecentFailures {
    pair: i64,
    address: i64,
    account: i64,
    pair_oldest: Option<DateTime<Utc>>,
    address_oldest: Option<DateTime<Utc>>,
    account_oldest: Option<DateTime<Utc>>,
}

/// Refuses with [`AppError::TooManyAttempts`] when any limit is reached for `email` (normalised) from `ip`.
pub async fn check(pool: &PgPool, email: &str, ip: Option<IpAddr>) -> Result<(), AppError> {
    let ip = ip.map(|ip| ip.to_string());
    let counts: RecentFailures = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE email = $1 AND client_ip IS NOT DISTINCT FROM $2::inet) AS pair,
                count(*) FILTER (WHERE client_ip = $2::inet) AS address,
                count(*) FILTER (WHERE email = $1) AS account,
                min(failed_at) FILTER (WHERE email = $1 AND client_ip IS NOT DISTINCT FROM $2::inet) AS pair_oldest,
                min(failed_at) FILTER (WHERE client_ip = $2::inet) AS address_oldest,
                min(failed_at) FILTER (WHERE email = $1) AS account_oldest
         FROM login_failures
         WHERE failed_at > now() - make_interval(secs => $3) AND (email = $1 OR client_ip = $2::inet)",
    )
    .bind(email)
    .bind(&ip)
    .bind(WINDOW_SECS as f64)
    .fetch_one(pool)
    .await?;

    // The earliest moment the exceeded count drops below its limit: its oldest failure leaving the window (a
    // throttled attempt is not counted, so a count never passes its limit by more than concurrent attempts).
    let reopens = [
        (counts.pair >= MAX_PER_ACCOUNT_AND_ADDRESS, counts.pair_oldest),
        (counts.address >= MAX_PER_ADDRESS, counts.address_oldest),
        (counts.account >= MAX_PER_ACCOUNT, counts.account_oldest),
    ]
    .into_iter()
    .filter_map(|(exceeded, oldest)| exceeded.then_some(oldest).flatten())
    .map(|oldest| oldest + chrono::Duration::seconds(WINDOW_SECS))
    .max();
    match reopens {
        Some(at) => {
            let retry_after_secs = (at - Utc::now()).num_seconds().max(1) as u64;
            tracing::warn!(client_ip = ?ip, retry_after_secs, "sign-in throttled");
            Err(AppError::TooManyAttempts { retry_after_secs })
        }
        None => Ok(()),
    }
}

/// Counts a failed attempt for `email` (normalised, or as typed when it is not an email) from `ip`.
pub async fn record_failure(pool: &PgPool, email: &str, ip: Option<IpAddr>) -> Result<(), AppError> {
    sqlx::query("INSERT INTO login_failures (email, client_ip) VALUES ($1, $2::inet)")
        .bind(email)
        .bind(ip.map(|ip| ip.to_string()))
        .execute(pool)
        .await?;
    Ok(())
}

/// Forgets the failures of `email` from `ip` after a successful sign-in.
pub async fn clear(pool: &PgPool, email: &str, ip: Option<IpAddr>) -> Result<(), AppError> {
    sqlx::query("DELETE FROM login_failures WHERE email = $1 AND client_ip IS NOT DISTINCT FROM $2::inet")
        .bind(email)
        .bind(ip.map(|ip| ip.to_string()))
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes failures older than the window; returns how many.
pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM login_failures WHERE failed_at <= now() - make_interval(secs => $1)")
        .bind(WINDOW_SECS as f64)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(forwarded: &[&str], peer: Option<&str>) -> Parts {
        let mut request = Request::get("/");
        for value in forwarded {
            request = request.header("x-forwarded-for", *value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        if let Some(peer) = peer {
            parts.extensions.insert(ConnectInfo::<SocketAddr>(peer.parse().unwrap()));
        }
        parts
    }

    #[test]
    fn the_peer_address_is_used_unless_a_proxy_is_trusted() {
        let request = parts(&["203.0.113.9"], Some("10.0.0.2:5000"));
        assert_eq!(client_ip(&request, false), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(client_ip(&request, true), Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn only_the_entry_the_proxy_appended_counts() {
        // The client sent "1.2.3.4" itself; the proxy appended the real address last.
        let request = parts(&["1.2.3.4, 198.51.100.7"], Some("10.0.0.2:5000"));
        assert_eq!(client_ip(&request, true), Some("198.51.100.7".parse().unwrap()));
        let request = parts(&["1.2.3.4", "198.51.100.8"], None);
        assert_eq!(client_ip(&request, true), Some("198.51.100.8".parse().unwrap()));
    }

    #[test]
    fn garbage_falls_back_to_the_peer() {
        let request = parts(&["not-an-ip"], Some("[::1]:5000"));
        assert_eq!(client_ip(&request, true), Some("::1".parse().unwrap()));
        assert_eq!(client_ip(&parts(&[], None), false), None);
    }
}
