//! The verified-credential cache: after a password passed argon2, the same user and
//! password are accepted without running argon2 again for `auth.cache_ttl`. That is
//! what lets an application open a connection and log in per message (Dovecot's
//! auth cache does the same for Postfix).
//!
//! An entry is an HMAC-SHA256, under a random key made at start-up and never
//! stored, of the user name, the stored password hash and the password: the
//! password itself is kept nowhere, and a dump of the process memory gives only
//! tags that cannot be tested offline without the key. The stored hash is part of
//! the tag and is read from the store at every login, so `user passwd` and `user
//! remove` (even run by the CLI, in another process) make the old entries miss at
//! once: the new hash gives another tag, or there is no user.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

type Tag = [u8; 32];

/// Most entries held; entries exist only for right passwords, so only real users
/// fill it.
const CAPACITY: usize = 10_000;

pub struct VerifiedCache {
    key: [u8; 32],
    ttl: Duration,
    /// When each tag was verified.
    entries: Mutex<HashMap<Tag, Instant>>,
}

impl VerifiedCache {
    /// A cache whose entries last `ttl` (zero: a cache that holds nothing).
    pub fn new(ttl: Duration) -> VerifiedCache {
        VerifiedCache {
            key: rand::random(),
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn tag(&self, user: &str, stored_hash: &str, secret: &str) -> Tag {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        // Length prefixes, so no two (user, hash, secret) triples share an input.
        for part in [user, stored_hash] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `secret` was verified against `stored_hash` for `user` within the ttl.
    pub fn contains(&self, user: &str, stored_hash: &str, secret: &str) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let tag = self.tag(user, stored_hash, secret);
        let mut entries = self.entries.lock().expect("cache lock");
        match entries.get(&tag) {
            Some(at) if at.elapsed() < self.ttl => true,
            Some(_) => {
                entries.remove(&tag);
                false
            }
            None => false,
        }
    }

    /// Notes that `secret` matched `stored_hash` for `user`.
    pub fn insert(&self, user: &str, stored_hash: &str, secret: &str) {
        if self.ttl.is_zero() {
            return;
        }
        let tag = self.tag(user, stored_hash, secret);
        let mut entries = self.entries.lock().expect("cache lock");
        if entries.len() >= CAPACITY {
            let ttl = self.ttl;
            entries.retain(|_, at| at.elapsed() < ttl);
            if entries.len() >= CAPACITY
                && let Some(oldest) = entries.iter().min_by_key(|(_, at)| **at).map(|(t, _)| *t)
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(tag, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_only_the_same_user_hash_and_password() {
        let cache = VerifiedCache::new(Duration::from_secs(60));
        cache.insert("alice", "$hash1", "pw");
        assert!(cache.contains("alice", "$hash1", "pw"));
        assert!(!cache.contains("alice", "$hash1", "pw2"));
        assert!(!cache.contains("alice", "$hash2", "pw"), "password changed");
        assert!(!cache.contains("bob", "$hash1", "pw"));
    }

    #[test]
    fn entries_expire_and_a_zero_ttl_holds_nothing() {
        let cache = VerifiedCache::new(Duration::from_millis(20));
        cache.insert("alice", "$h", "pw");
        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.contains("alice", "$h", "pw") {
            assert!(Instant::now() < deadline, "entry never expired");
            std::thread::yield_now();
        }
        let off = VerifiedCache::new(Duration::ZERO);
        off.insert("alice", "$h", "pw");
        assert!(!off.contains("alice", "$h", "pw"));
    }
}
