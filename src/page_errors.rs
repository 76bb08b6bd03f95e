//! Errors carried in a page's URL: only the ones this server put there are shown.
//!
//! With JavaScript off, a form's server function answers a failure by redirecting back to the page with
//! `?__path=<function>&__err=<encoded error>`, and the page shows that error in its form. Anyone can write such a
//! link, so a crafted `/login?__path=…&__err=…` would show an attacker's text inside Tally's sign-in form
//! (phishing that Tally appears to say). So the server signs the `__path` and `__err` of every redirect it makes
//! (`__sig`, HMAC-SHA256 with a key kept in the database, shared by every instance), and a request whose error
//! is not signed has the three parameters removed before the page sees them.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;

const KEY_NAME: &str = "page_errors";

/// The signing key, read from the database on first use.
#[derive(Clone)]
pub struct PageErrorKey {
    pool: PgPool,
    key: std::sync::Arc<tokio::sync::OnceCell<Vec<u8>>>,
}

impl PageErrorKey {
    pub fn new(pool: PgPool) -> Self {
        PageErrorKey { pool, key: Default::default() }
    }

    async fn get(&self) -> Result<Vec<u8>, sqlx::Error> {
        self.key.get_or_try_init(|| load_key(&self.pool)).await.cloned()
    }
}

/// The signing key: created once per database, the same for every instance.
async fn load_key(pool: &PgPool) -> Result<Vec<u8>, sqlx::Error> {
    let mut fresh = [0_u8; 32];
    getrandom::fill(&mut fresh).map_err(|err| sqlx::Error::Protocol(format!("no randomness: {err}")))?;
    sqlx::query!(
        "INSERT INTO server_keys (name, key) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        KEY_NAME,
        &fresh[..]
    )
    .execute(pool)
    .await?;
    sqlx::query_scalar!("SELECT key FROM server_keys WHERE name = $1", KEY_NAME).fetch_one(pool).await
}

fn mac(key: &[u8], path: &str, err: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(path.as_bytes());
    mac.update(b"\n");
    mac.update(err.as_bytes());
    mac
}

fn signature(key: &[u8], path: &str, err: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac(key, path, err).finalize().into_bytes())
}

/// The raw (still percent-encoded) value of `name` in `query`.
fn raw_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// `query` without the parameters `names`.
fn without(query: &str, names: &[&str]) -> String {
    query
        .split('&')
        .filter(|pair| !names.iter().any(|name| pair.split('=').next() == Some(*name)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether `query` carries an error this server signed (or none at all). Compared in constant time.
fn verified(key: &[u8], query: &str) -> bool {
    let Some(err) = raw_param(query, "__err") else { return true };
    let path = raw_param(query, "__path").unwrap_or_default();
    let Some(given) =
        raw_param(query, "__sig").and_then(|sig| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).ok())
    else {
        return false;
    };
    mac(key, path, err).verify_slice(&given).is_ok()
}

/// The signing key, or `None` (logged) when the database could not give it: errors are then neither shown nor
/// signed, never shown unsigned.
async fn key_or_none(keys: &PageErrorKey) -> Option<Vec<u8>> {
    match keys.get().await {
        Ok(key) => Some(key),
        Err(err) => {
            tracing::error!(error = %err, "no page error key; form errors from URLs are not shown");
            None
        }
    }
}

/// The middleware: drops unsigned errors from requests and signs the errors of redirects. The key is only asked
/// for by a request or redirect that carries an error.
pub async fn guard(State(keys): State<PageErrorKey>, mut request: Request, next: Next) -> Response {
    if let Some(query) = request.uri().query().filter(|q| q.contains("__err=")) {
        let signed = key_or_none(&keys).await.is_some_and(|key| verified(&key, query));
        if !signed {
            let query = without(query, &["__path", "__err", "__sig"]);
            let path = request.uri().path();
            let rebuilt = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
            if let Ok(uri) = rebuilt.parse::<Uri>() {
                *request.uri_mut() = uri;
            }
        }
    }
    let mut response = next.run(request).await;
    let location = response.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()).map(str::to_owned);
    if let Some((base, query)) = location.as_deref().and_then(|l| l.split_once('?')) {
        // A signature left over from an earlier redirect goes; a new error gets its own.
        let query = without(query, &["__sig"]);
        let signature = match raw_param(&query, "__err") {
            Some(err) => key_or_none(&keys)
                .await
                .map(|key| signature(&key, raw_param(&query, "__path").unwrap_or_default(), err)),
            None => None,
        };
        let signed = match signature {
            Some(sig) => format!("{base}?{query}&__sig={sig}"),
            None if query.is_empty() => base.to_owned(),
            None => format!("{base}?{query}"),
        };
        if let Ok(value) = HeaderValue::from_str(&signed) {
            response.headers_mut().insert(header::LOCATION, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_signature_made_with_the_key_verifies() {
        let key = b"a key of any length";
        let sig = signature(key, "%2Fapi%2Fauth%2Flogin", "eyJlcnJvciI6IngifQ");
        let query = format!("__path=%2Fapi%2Fauth%2Flogin&__err=eyJlcnJvciI6IngifQ&__sig={sig}");
        assert!(verified(key, &query));
        assert!(!verified(b"another key", &query));
        assert!(!verified(key, "__path=%2Fapi%2Fauth%2Flogin&__err=eyJlcnJvciI6InkifQ&__sig={sig}"));
        assert!(!verified(key, "__path=%2Fapi%2Fauth%2Flogin&__err=eyJlcnJvciI6IngifQ"));
        assert!(verified(key, "lang=ja"));
        assert_eq!(without(&format!("lang=ja&{query}"), &["__path", "__err", "__sig"]), "lang=ja");
    }
}
