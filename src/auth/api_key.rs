//! API keys: `opk_` and 43 random letters and digits (256 bits), printed once by
//! `outpost key add`. A key is stored as its SHA-256, not as an argon2 hash:
//! argon2's cost only protects secrets a person chose, which an attacker holding
//! the database could guess by the billion; a 256-bit random key cannot be guessed
//! whatever the hash costs, so a fast hash loses nothing and lets a login with a
//! key cost microseconds (and be looked up by its hash, without a user name).

use crate::store::{AccountStore, ApiKeyStore, NewApiKey, StoreError};
use sha2::{Digest, Sha256};

/// Every key starts with this, so a secret is told to be a key without a lookup.
pub const PREFIX: &str = "opk_";
/// Letters after the prefix: 43 from a 62-letter alphabet is just over 256 bits.
const RANDOM_LEN: usize = 43;

/// A new random key.
pub fn generate() -> String {
    format!("{PREFIX}{}", super::password::random_text(RANDOM_LEN))
}

/// Whether `secret` is to be checked as an API key (and never as a password).
pub fn is_key(secret: &str) -> bool {
    secret.starts_with(PREFIX)
}

/// What the store keeps of a key.
pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Longest label of a key (`key add --name`, the Users page).
pub const MAX_NAME: usize = 64;

/// Why [`issue`] made no key.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("no user {0:?}")]
    NoUser(String),
    #[error("{domain:?} is not a domain of {user} (its domains: {})", granted.join(", "))]
    NotGranted {
        user: String,
        domain: String,
        granted: Vec<String>,
    },
    #[error("a key's name has at most {MAX_NAME} characters")]
    LongName,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key just made: the only time the key itself is known.
#[derive(Debug)]
pub struct Issued {
    pub id: i64,
    pub key: String,
    /// What it is restricted to (lower case); empty: every domain of its user.
    pub domains: Vec<String>,
}

/// Makes and stores a key for `user` (`outpost key add` and the Users page):
/// restricted to `domains`, each one the user is granted, or unrestricted when
/// `domains` is empty.
pub async fn issue<S: AccountStore + ApiKeyStore + ?Sized>(
    store: &S,
    user: &str,
    name: Option<String>,
    domains: &[&str],
    now: i64,
) -> Result<Issued, IssueError> {
    if name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME) {
        return Err(IssueError::LongName);
    }
    let record = store
        .user(user)
        .await?
        .ok_or_else(|| IssueError::NoUser(user.to_string()))?;
    let mut checked: Vec<String> = Vec::new();
    for d in domains {
        let domain = crate::smtp::Domain::parse(d)
            .map(|d| d.to_string().to_ascii_lowercase())
            .filter(|d| record.domains.contains(d))
            .ok_or_else(|| IssueError::NotGranted {
                user: user.to_string(),
                domain: d.to_string(),
                granted: record.domains.clone(),
            })?;
        if !checked.contains(&domain) {
            checked.push(domain);
        }
    }
    let key = generate();
    let id = store
        .add_api_key(NewApiKey {
            user: user.to_string(),
            name,
            key_hash: hash(&key),
            domains: checked.clone(),
            created_at: now,
        })
        .await?
        // Removed in between.
        .ok_or_else(|| IssueError::NoUser(user.to_string()))?;
    Ok(Issued {
        id,
        key,
        domains: checked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_hashed() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(is_key(&a) && !is_key("correct horse"));
        assert_eq!(a.len(), PREFIX.len() + RANDOM_LEN);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
    }

    #[tokio::test]
    async fn keys_are_issued_for_granted_domains_only() {
        use crate::store::{SqliteStore, UserRecord};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        assert!(matches!(
            issue(&*store, "alice", None, &[], 1).await,
            Err(IssueError::NoUser(_))
        ));
        store
            .add_user(UserRecord {
                name: "alice".into(),
                password_hash: "x".into(),
                admin: false,
                domains: vec!["a.example".into(), "b.example".into()],
            })
            .await
            .unwrap();
        let refused = issue(&*store, "alice", None, &["c.example"], 1)
            .await
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "\"c.example\" is not a domain of alice (its domains: a.example, b.example)"
        );
        let long = Some("x".repeat(MAX_NAME + 1));
        assert!(matches!(
            issue(&*store, "alice", long, &[], 1).await,
            Err(IssueError::LongName)
        ));
        let issued = issue(
            &*store,
            "alice",
            Some("ci".into()),
            &["A.example", "a.example"],
            7,
        )
        .await
        .unwrap();
        assert_eq!(issued.domains, ["a.example"]);
        let stored = store
            .api_key_by_hash(&hash(&issued.key))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (stored.id, stored.name.as_deref(), stored.created_at),
            (issued.id, Some("ci"), 7)
        );
        assert_eq!(stored.domains, ["a.example"]);
    }
}
