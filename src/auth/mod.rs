//! Authentication: the one login gate every sign-in uses ([`LoginGate`]: SMTP AUTH,
//! the HTTP API, and later the dashboard), argon2id passwords and API keys, the
//! verified-credential cache, SASL PLAIN/LOGIN decoding, the sender-domain rule
//! that stops one customer from sending as another, and the throttling of wrong
//! passwords per address and per account.
//!
//! Deliberately absent: mechanisms that need the clear password on the server
//! (CRAM-MD5, SCRAM) — we keep only argon2id hashes.

pub mod api_key;
mod cache;
mod gate;
pub mod password;
pub mod sasl;
mod throttle;

pub use gate::{Credential, LoginGate, LoginOutcome, Principal};
pub use throttle::Lock;

use crate::store::UserRecord;

/// An authenticated user's identity for the rest of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedUser {
    pub name: String,
    pub admin: bool,
    pub domains: Vec<String>,
}

impl AuthenticatedUser {
    /// The sending domains whose data this user sees: `None` (all) for an admin.
    pub fn domain_scope(&self) -> crate::store::DomainScope {
        (!self.admin).then(|| self.domains.clone())
    }

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
