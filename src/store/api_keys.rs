//! API keys: random secrets a user holds besides its password (`outpost key add`),
//! each usable as the SMTP AUTH password and as the HTTP credential. Only a hash of
//! each key is stored (see `crate::auth::api_key` for why a fast one).

use super::StoreFuture;

/// A key to store; `key_hash` is the SHA-256 of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    pub user: String,
    pub name: Option<String>,
    pub key_hash: Vec<u8>,
    /// Lower-case domains the key may send as; empty: every domain of its user.
    pub domains: Vec<String>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A stored key, without its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: i64,
    pub user: String,
    pub name: Option<String>,
    pub domains: Vec<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; recorded at most once a minute per key.
    pub last_used_at: Option<i64>,
}

/// API keys of users (`outpost key`).
pub trait ApiKeyStore: Send + Sync {
    /// Stores a key and returns its id; `None` if there is no such user.
    fn add_api_key(&self, key: NewApiKey) -> StoreFuture<'_, Option<i64>>;
    /// The key whose SHA-256 is `key_hash`, if it exists (not revoked).
    fn api_key_by_hash(&self, key_hash: &[u8]) -> StoreFuture<'_, Option<ApiKeyRecord>>;
    /// The keys of one user (or of all), by id.
    fn api_keys(&self, user: Option<&str>) -> StoreFuture<'_, Vec<ApiKeyRecord>>;
    /// Deletes a key; false if there was none.
    fn revoke_api_key(&self, id: i64) -> StoreFuture<'_, bool>;
    /// Notes when a key was last used.
    fn touch_api_key(&self, id: i64, at: i64) -> StoreFuture<'_, ()>;
}
