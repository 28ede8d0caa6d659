//! API keys: `opk_` and 43 random letters and digits (256 bits), printed once by
//! `outpost key add`. A key is stored as its SHA-256, not as an argon2 hash:
//! argon2's cost only protects secrets a person chose, which an attacker holding
//! the database could guess by the billion; a 256-bit random key cannot be guessed
//! whatever the hash costs, so a fast hash loses nothing and lets a login with a
//! key cost microseconds (and be looked up by its hash, without a user name).

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
}
