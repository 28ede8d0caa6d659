//! Authentication: argon2id credentials, SASL PLAIN/LOGIN decoding, the sender-domain
//! rule that stops one customer from sending as another, and per-IP throttling of
//! failed attempts.
//!
//! Deliberately absent: mechanisms that need the clear password on the server
//! (CRAM-MD5, SCRAM) — we keep only argon2id hashes.

pub mod password;
pub mod sasl;
pub mod throttle;

pub use throttle::{AuthThrottle, Refused};

use crate::store::{Store, StoreError, UserRecord};
use std::sync::Arc;

/// An authenticated user's identity for the rest of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedUser {
    pub name: String,
    pub admin: bool,
    pub domains: Vec<String>,
}

impl AuthenticatedUser {
    /// SPEC §2: an address may be used only in a domain granted to the user
    /// (`user add NAME --domain D`); subdomains are not implied.
    pub fn may_send_as(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

impl From<UserRecord> for AuthenticatedUser {
    fn from(user: UserRecord) -> Self {
        AuthenticatedUser {
            name: user.name,
            admin: user.admin,
            domains: user.domains,
        }
    }
}

/// Checks user names and passwords against the store, for SMTP AUTH and the HTTP
/// API alike.
pub struct CredentialChecker {
    store: Arc<dyn Store>,
    /// Verified when a user does not exist, so the time taken does not reveal
    /// which user names are valid.
    dummy_password_hash: String,
}

impl CredentialChecker {
    pub fn new(store: Arc<dyn Store>) -> CredentialChecker {
        CredentialChecker {
            store,
            dummy_password_hash: password::hash(&password::generate()),
        }
    }

    /// The user, when `password` is theirs; argon2 runs off the async threads.
    pub async fn check(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<AuthenticatedUser>, StoreError> {
        let record = self.store.user(username).await?;
        let hash = record
            .as_ref()
            .map_or(self.dummy_password_hash.clone(), |r| {
                r.password_hash.clone()
            });
        let password = password.to_string();
        let matches = tokio::task::spawn_blocking(move || password::verify(&password, &hash))
            .await
            .unwrap_or(false);
        Ok(record.filter(|_| matches).map(AuthenticatedUser::from))
    }
}
