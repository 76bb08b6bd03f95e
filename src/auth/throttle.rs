//! Sign-in and sign-up throttling, in PostgreSQL so every app instance enforces the same limits.
//!
//! Sign-in: attempts are counted per account and address, per address and per account, over a sliding window. An
//! attempt is counted (as a failure) *before* its password is checked, atomically with the check of the limits
//! ([`begin`]), and a right password takes it back ([`succeeded`]): parallel guesses cannot all pass the check
//! before any of them is recorded. A throttled attempt is refused before any hashing work. Sign-up: every attempt
//! is counted per address and overall ([`begin_signup`]). IPv6 addresses count per /64 ([`counted_address`]).

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use super::error::AuthError;

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

/// The address attempts are counted under: an IPv4 address as it is, an IPv6 address by its /64. One subscriber
/// usually holds a whole /64 and can pick any of its 2^64 addresses, so counting per /128 counts nothing.
pub fn counted_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// Failures within the window: for the account from the address, from the address, for the account.
struct RecentFailures {
    pair: i64,
    address: i64,
    account: i64,
    pair_oldest: Option<DateTime<Utc>>,
    address_oldest: Option<DateTime<Utc>>,
    account_oldest: Option<DateTime<Utc>>,
}

/// A sign-in attempt that has been counted as a failure until [`succeeded`] says otherwise.
#[derive(Debug)]
pub struct Attempt {
    id: i64,
}

/// Takes PostgreSQL advisory locks on `keys` for the rest of the transaction, in one order (no deadlocks): every
/// instance that counts the same account or address waits for the others.
async fn lock_keys(tx: &mut Transaction<'_, Postgres>, keys: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0)))
         FROM (SELECT DISTINCT unnest($1::text[]) AS k ORDER BY 1) AS keys",
        keys
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(())
}

/// The refusal when any of `limits` (reached?, its oldest counted attempt) is reached, or `Ok` when none is.
fn refusal(
    limits: &[(bool, Option<DateTime<Utc>>)],
    window_secs: i64,
    what: &str,
    ip: &Option<String>,
) -> Result<(), AuthError> {
    // Each reached limit reopens when its oldest counted attempt leaves the window; the latest of them decides.
    let reopens = limits
        .iter()
        .filter_map(|(reached, oldest)| reached.then_some(*oldest).flatten())
        .map(|oldest| oldest + chrono::Duration::seconds(window_secs));
    match reopens.max() {
        Some(at) => {
            let retry_after_secs = (at - Utc::now()).num_seconds().max(1) as u64;
            tracing::warn!(client_ip = ?ip, retry_after_secs, "{what} throttled");
            Err(AuthError::Throttled { retry_after_secs })
        }
        None => Ok(()),
    }
}

/// Counts a sign-in attempt for `email` (normalised, or as typed when it is not an email) from `ip` *before* the
/// password is checked, or refuses it with [`AuthError::Throttled`] when any limit is reached.
///
/// The count and the insert happen under advisory locks on the account and the address, so concurrent attempts
/// (on any instance) are counted one after another: 30 parallel guesses get at most the limit's worth of password
/// checks. The attempt stays counted as a failure unless [`succeeded`] removes it. A refused attempt is not counted,
/// so a count never passes its limit.
pub async fn begin(pool: &PgPool, email: &str, ip: Option<IpAddr>) -> Result<Attempt, AuthError> {
    let ip = ip.map(|ip| counted_address(ip).to_string());
    let mut tx = pool.begin().await?;
    let mut keys = vec![format!("sign-in account {email}")];
    keys.extend(ip.iter().map(|ip| format!("sign-in address {ip}")));
    lock_keys(&mut tx, &keys).await?;
    let counts = sqlx::query_as!(
        RecentFailures,
        r#"SELECT count(*) FILTER (WHERE email = $1 AND client_ip IS NOT DISTINCT FROM $2::text::inet) AS "pair!",
                count(*) FILTER (WHERE client_ip = $2::text::inet) AS "address!",
                count(*) FILTER (WHERE email = $1) AS "account!",
                min(failed_at) FILTER (WHERE email = $1 AND client_ip IS NOT DISTINCT FROM $2::text::inet) AS "pair_oldest: _",
                min(failed_at) FILTER (WHERE client_ip = $2::text::inet) AS "address_oldest: _",
                min(failed_at) FILTER (WHERE email = $1) AS "account_oldest: _"
         FROM login_failures
         WHERE failed_at > now() - make_interval(secs => $3) AND (email = $1 OR client_ip = $2::text::inet)"#,
        email,
        ip.as_deref(),
        WINDOW_SECS as f64
    )
    .fetch_one(&mut *tx)
    .await?;
    // The earliest moment the exceeded count drops below its limit: its oldest failure leaving the window.
    let limits = [
        (counts.pair >= MAX_PER_ACCOUNT_AND_ADDRESS, counts.pair_oldest),
        (counts.address >= MAX_PER_ADDRESS, counts.address_oldest),
        (counts.account >= MAX_PER_ACCOUNT, counts.account_oldest),
    ];
    refusal(&limits, WINDOW_SECS, "sign-in", &ip)?;
    let id = sqlx::query_scalar!(
        "INSERT INTO login_failures (email, client_ip) VALUES ($1, $2::text::inet) RETURNING id",
        email,
        ip.as_deref()
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Attempt { id })
}

/// The attempt's password was right: it is not a failure, and the earlier failures of its account from its
/// address are forgotten.
pub async fn succeeded(pool: &PgPool, attempt: Attempt, email: &str, ip: Option<IpAddr>) -> Result<(), AuthError> {
    sqlx::query!(
        "DELETE FROM login_failures
         WHERE id = $1 OR (email = $2 AND client_ip IS NOT DISTINCT FROM $3::text::inet)",
        attempt.id,
        email,
        ip.map(|ip| counted_address(ip).to_string())
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Sign-ups allowed per address (IPv6: per /64) within [`SIGNUP_WINDOW_SECS`], and over all addresses: each costs an
/// Argon2 hash (and a Stripe customer), and "this email is taken" answers must not be an enumeration oracle at speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignupLimits {
    pub per_address: i64,
    pub overall: i64,
}

impl SignupLimits {
    /// The limits `config` sets (`TALLY_SIGNUPS_PER_ADDRESS_PER_HOUR`, `TALLY_SIGNUPS_PER_HOUR`).
    pub fn from_config(config: &crate::config::Config) -> SignupLimits {
        SignupLimits { per_address: config.signups_per_address_per_hour, overall: config.signups_per_hour }
    }
}

/// How far back sign-up attempts count.
pub const SIGNUP_WINDOW_SECS: i64 = 60 * 60;

/// Counts a sign-up attempt from `ip` before any hashing, or refuses it with [`AuthError::Throttled`]. Every
/// attempt counts, taken emails and refusals for bad input included; under the same kind of advisory locks as
/// [`begin`], so parallel requests cannot pass the limits.
pub async fn begin_signup(pool: &PgPool, ip: Option<IpAddr>, limits: SignupLimits) -> Result<(), AuthError> {
    let ip = ip.map(|ip| counted_address(ip).to_string());
    let mut tx = pool.begin().await?;
    let mut keys = vec!["sign-up overall".to_owned()];
    keys.extend(ip.iter().map(|ip| format!("sign-up address {ip}")));
    lock_keys(&mut tx, &keys).await?;
    let counts = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE client_ip IS NOT DISTINCT FROM $1::text::inet) AS "address!",
                  count(*) AS "overall!",
                  min(attempted_at) FILTER (WHERE client_ip IS NOT DISTINCT FROM $1::text::inet) AS "address_oldest: DateTime<Utc>",
                  min(attempted_at) AS "overall_oldest: DateTime<Utc>"
           FROM signup_attempts WHERE attempted_at > now() - make_interval(secs => $2)"#,
        ip.as_deref(),
        SIGNUP_WINDOW_SECS as f64
    )
    .fetch_one(&mut *tx)
    .await?;
    let reached = [
        (counts.address >= limits.per_address, counts.address_oldest),
        (counts.overall >= limits.overall, counts.overall_oldest),
    ];
    refusal(&reached, SIGNUP_WINDOW_SECS, "sign-up", &ip)?;
    sqlx::query!("INSERT INTO signup_attempts (client_ip) VALUES ($1::text::inet)", ip.as_deref())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes failures and sign-up attempts older than their windows; returns how many.
pub async fn prune(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let failures = sqlx::query!(
        "DELETE FROM login_failures WHERE failed_at <= now() - make_interval(secs => $1)",
        WINDOW_SECS as f64
    )
    .execute(pool)
    .await?;
    let signups = sqlx::query!(
        "DELETE FROM signup_attempts WHERE attempted_at <= now() - make_interval(secs => $1)",
        SIGNUP_WINDOW_SECS as f64
    )
    .execute(pool)
    .await?;
    Ok(failures.rows_affected() + signups.rows_affected())
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
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let one: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        assert_eq!(counted_address(one), counted_address(other));
        assert_eq!(counted_address(one), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(counted_address(one), counted_address("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(counted_address("::ffff:198.51.100.7".parse().unwrap()), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(counted_address("198.51.100.7".parse().unwrap()), "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_falls_back_to_the_peer() {
        let request = parts(&["not-an-ip"], Some("[::1]:5000"));
        assert_eq!(client_ip(&request, true), Some("::1".parse().unwrap()));
        assert_eq!(client_ip(&parts(&[], None), false), None);
    }
}
