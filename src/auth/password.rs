//! Argon2id password hashing, off the async runtime (one hash costs tens of milliseconds of CPU).

use std::sync::LazyLock;

use super::error::AuthError;

/// Hashes a new password (Argon2id with `password-auth`'s default parameters, random salt, PHC string).
pub async fn hash(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || password_auth::generate_hash(password)).await.map_err(AuthError::Hashing)
}

/// Whether `password` matches `hash`. With `hash == None` (unknown email) a dummy hash is checked instead, so the
/// answer takes as long as for a known email and does not tell which emails have accounts.
pub async fn verify(password: String, hash: Option<String>) -> Result<bool, AuthError> {
    static DUMMY_HASH: LazyLock<String> =
        LazyLock::new(|| password_auth::generate_hash("not the password of any account"));
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        // The hash is checked first, always: `known && verify(..)` skipped the work for unknown emails, and the
        // time saved told which emails have accounts.
        let matches = password_auth::verify_password(password, &hash).is_ok();
        matches && known
    })
    .await
    .map_err(AuthError::Hashing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let hash = hash("correct horse battery staple".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify("correct horse battery staple".into(), Some(hash.clone())).await.unwrap());
        assert!(!verify("correct horse battery stapler".into(), Some(hash)).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies() {
        assert!(!verify("not the password of any account".into(), None).await.unwrap());
    }
}
