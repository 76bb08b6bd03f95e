//! API keys: how services outside the app record usage (`Authorization: Bearer tly_live_…`).
//!
//! A key is `tly_live_` + 40 random base62 characters + a 6-character CRC32 checksum of them. The checksum lets
//! Tally (and secret scanners) reject a mistyped or made-up key without a database lookup. Only the key's
//! SHA-256 hash is stored, with a short display prefix; the key itself is shown once, at creation.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::error::AuthError;
use super::ApiKeyInfo;
use crate::error::Problem;

/// Every key starts with this, so a leaked key is recognisable as Tally's.
pub const KEY_PREFIX: &str = "tly_live_";
const RANDOM_CHARS: usize = 40;
const CHECKSUM_CHARS: usize = 6;
/// How many characters of a key are kept to tell keys apart (prefix + 4 random characters).
const DISPLAY_CHARS: usize = KEY_PREFIX.len() + 4;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// A key's last-used time is written at most this often, so a busy key does not turn every request into a write.
const LAST_USED_RESOLUTION_SECONDS: i32 = 60;

/// A newly generated key: the secret (shown once) and what is stored about it.
pub struct NewApiKey {
    pub secret: String,
    pub display_prefix: String,
    pub hash: [u8; 32],
}

/// Generates a key from the operating system's random source (~238 bits).
pub fn generate() -> Result<NewApiKey, AuthError> {
    let mut random = String::with_capacity(RANDOM_CHARS);
    let mut buf = [0u8; 64];
    while random.len() < RANDOM_CHARS {
        getrandom::fill(&mut buf).map_err(AuthError::Random)?;
        // Rejection sampling: bytes ≥ 248 would make the first 248 % 62 symbols likelier.
        random.extend(buf.iter().filter(|b| **b < 248).map(|b| BASE62[usize::from(*b % 62)] as char));
    }
    random.truncate(RANDOM_CHARS);
    let secret = format!("{KEY_PREFIX}{random}{}", checksum(&random));
    Ok(NewApiKey { display_prefix: secret[..DISPLAY_CHARS].to_owned(), hash: hash(&secret), secret })
}

fn checksum(random: &str) -> String {
    let mut value = u64::from(crc32fast::hash(random.as_bytes()));
    let mut out = [b'0'; CHECKSUM_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `candidate` has the shape and checksum of a Tally key (says nothing about whether it exists).
pub fn is_well_formed(candidate: &str) -> bool {
    let Some(rest) = candidate.strip_prefix(KEY_PREFIX) else {
        return false;
    };
    if rest.len() != RANDOM_CHARS + CHECKSUM_CHARS || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (random, sum) = rest.split_at(RANDOM_CHARS);
    checksum(random) == sum
}

/// The SHA-256 of a key: what is stored and looked up.
pub type KeyHash = [u8; 32];

fn hash(secret: &str) -> KeyHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// The hash to look `candidate` up by, or `None` when it cannot be a Tally key (no database work for garbage).
pub fn lookup_hash(candidate: &str) -> Option<KeyHash> {
    is_well_formed(candidate).then(|| hash(candidate))
}

/// The owners of the live (unrevoked) keys among `hashes`, in one statement; at most once a minute per key it also
/// notes that the key was used. Unknown and revoked keys are simply absent from the answer.
pub async fn owners<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    hashes: &[KeyHash],
) -> Result<std::collections::HashMap<KeyHash, Uuid>, sqlx::Error> {
    let hashes: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
    let rows = sqlx::query!(
        r#"WITH live AS (
             SELECT id, user_id, key_hash FROM api_keys WHERE key_hash = ANY($1) AND revoked_at IS NULL
         ), touched AS (
             UPDATE api_keys SET last_used_at = now()
             FROM live
             WHERE api_keys.id = live.id
               AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < now() - make_interval(secs => $2::int))
         )
         SELECT key_hash AS "key_hash!", user_id AS "user_id!" FROM live"#,
        &hashes as &[&[u8]],
        LAST_USED_RESOLUTION_SECONDS
    )
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| Some((KeyHash::try_from(row.key_hash.as_slice()).ok()?, row.user_id)))
        .collect())
}

/// Stores a new key for `user_id` and returns it with its secret.
pub async fn create(pool: &PgPool, user_id: Uuid, name: &str) -> Result<(ApiKeyInfo, String), AuthError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(AuthError::Refused(Problem::KeyNameLength));
    }
    let key = generate()?;
    let id = Uuid::new_v4();
    let created_at = sqlx::query_scalar!(
        r#"INSERT INTO api_keys (id, user_id, name, display_prefix, key_hash) VALUES ($1, $2, $3, $4, $5)
         RETURNING created_at AS "created_at: DateTime<Utc>""#,
        id,
        user_id,
        name,
        &key.display_prefix,
        &key.hash[..]
    )
    .fetch_one(pool)
    .await?;
    let info = ApiKeyInfo {
        id,
        name: name.to_owned(),
        display_prefix: key.display_prefix,
        created_at,
        last_used_at: None,
        revoked_at: None,
    };
    Ok((info, key.secret))
}

/// The owner of the live key with this hash, or [`AuthError::UnknownKey`].
pub async fn owner(pool: &PgPool, hash: KeyHash) -> Result<Uuid, AuthError> {
    owners(pool, &[hash]).await?.get(&hash).copied().ok_or(AuthError::UnknownKey)
}

/// The user's keys, newest first, revoked ones included.
pub async fn list(pool: &PgPool, user_id: Uuid) -> Result<Vec<ApiKeyInfo>, AuthError> {
    Ok(sqlx::query_as!(
        ApiKeyInfo,
        r#"SELECT id, name, display_prefix, created_at AS "created_at: _", last_used_at AS "last_used_at: _",
                  revoked_at AS "revoked_at: _"
           FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id"#,
        user_id
    )
    .fetch_all(pool)
    .await?)
}

/// Revokes one of `user_id`'s keys, by id. Revoking twice is not an error; another user's key is "not found".
pub async fn revoke(pool: &PgPool, user_id: Uuid, key_id: Uuid) -> Result<(), AuthError> {
    revoke_where(pool, key_id, Some(user_id)).await?.map(|_| ()).ok_or(AuthError::Refused(Problem::NoSuchKey))
}

/// Revokes key `key_id` (only if `owner` owns it, when given); `None` when there is no such key.
async fn revoke_where(pool: &PgPool, key_id: Uuid, owner: Option<Uuid>) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
         WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2)
         RETURNING id",
        key_id,
        owner
    )
    .fetch_optional(pool)
    .await
}

/// Revokes the key with this id, whoever owns it (operators, through the CLI).
pub async fn revoke_by_id(pool: &PgPool, key_id: Uuid) -> Result<Uuid, AuthError> {
    revoke_where(pool, key_id, None).await?.ok_or_else(|| AuthError::Invalid(format!("no API key with id {key_id}")))
}

/// Revokes the key with this display prefix (as `tally apikey list` shows it). Several matches are refused.
pub async fn revoke_by_prefix(pool: &PgPool, display_prefix: &str) -> Result<Uuid, AuthError> {
    let ids = sqlx::query_scalar!("SELECT id FROM api_keys WHERE display_prefix = $1", display_prefix)
        .fetch_all(pool)
        .await?;
    match ids.as_slice() {
        [id] => revoke_by_id(pool, *id).await,
        [] => Err(AuthError::Invalid(format!("no API key starts with {display_prefix:?}"))),
        _ => Err(AuthError::Invalid(format!("several keys start with {display_prefix:?}; revoke by id"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_well_formed_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert!(a.secret.starts_with(KEY_PREFIX));
        assert_eq!(a.secret.len(), KEY_PREFIX.len() + RANDOM_CHARS + CHECKSUM_CHARS);
        assert!(is_well_formed(&a.secret));
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.display_prefix, a.secret[..DISPLAY_CHARS]);
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn a_changed_character_fails_the_checksum() {
        let key = generate().unwrap().secret;
        let mut typo = key.clone().into_bytes();
        let i = KEY_PREFIX.len() + 5;
        typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
        assert!(!is_well_formed(&String::from_utf8(typo).unwrap()));
        assert!(!is_well_formed(&key[..key.len() - 1]));
        assert!(!is_well_formed(&key.replace(KEY_PREFIX, "sk_live_")));
        assert!(!is_well_formed(""));
    }
}
