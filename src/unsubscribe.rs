//! Unsubscribing (RFC 8058, RFC 2369, SPEC §5.5): the signed token of
//! `List-Unsubscribe` links, the header fields, and the suppression an unsubscribe
//! makes. The HTTPS side is `api::unsubscribe` (`POST /u/{token}`); the mailto side
//! is the acceptance path, which unsubscribes on mail to
//! `unsubscribe+TOKEN@<a local domain>`.
//!
//! A token is `base64url(domain \n address \n user) . base64url(HMAC-SHA256(key,
//! payload))`. The key is 32 random bytes generated on first start and kept in
//! the store (secret `unsubscribe`), so every node of a cluster signs and
//! verifies with the same; changing it voids every link sent. A token that does
//! not verify changes nothing. Versions before it kept the key in
//! `data_dir/unsubscribe.key`: that file is imported on first start, so links
//! already sent keep working.

use crate::store::{Event, EventKind, SharedStore, Store, StoreError, Suppression};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path as FsPath;

/// Local part prefix of the mailto alternative: `unsubscribe+TOKEN@hostname`.
pub const MAILTO_PREFIX: &str = "unsubscribe+";

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The secret that signs unsubscribe tokens. Constructed in the crate only by
/// [`UnsubscribeKey::load`] and by the fuzz checks, which need no store.
pub struct UnsubscribeKey(pub(crate) [u8; 32]);

/// What a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscription {
    /// The sending domain whose list the address leaves.
    pub domain: String,
    pub address: String,
    /// The user who sent the message (so the event is visible to that tenant).
    pub user: String,
}

impl UnsubscribeKey {
    /// The key the store holds, stored first if there is none: the key of
    /// `dir/unsubscribe.key` if that file is there (kept by older versions), else
    /// a new random one. The file, once in the store, is renamed
    /// `unsubscribe.key.imported` (it is no longer read; a restored backup of it
    /// would otherwise be imported again into a store that lost its key).
    pub async fn load(store: &dyn SharedStore, dir: &FsPath) -> Result<UnsubscribeKey, StoreError> {
        let path = dir.join(KEY_FILE);
        let file = read_key_file(&path)?;
        let candidate = file.unwrap_or_else(rand::random);
        let stored = store.shared_secret(SECRET, candidate.to_vec()).await?;
        let key: [u8; 32] = stored.try_into().map_err(|_| {
            StoreError::Backend(format!("the store's secret {SECRET:?} is not 32 bytes"))
        })?;
        match file {
            Some(old) => {
                if old == key {
                    tracing::info!(path = %path.display(), "imported the unsubscribe link key into the store");
                } else {
                    tracing::warn!(path = %path.display(), "this node's unsubscribe link key differs from the one in the store, which another node put there first: links this node signed no longer verify");
                }
                let imported = path.with_extension("key.imported");
                if let Err(e) = std::fs::rename(&path, &imported) {
                    tracing::warn!(error = %e, path = %path.display(), "cannot rename the imported unsubscribe key file");
                }
            }
            None if key == candidate => {
                tracing::info!("generated the unsubscribe link key (kept in the store)");
            }
            None => {}
        }
        Ok(UnsubscribeKey(key))
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(payload);
        mac
    }

    /// The same key for another kind of token (return paths): `context` is signed
    /// first, so a token of one kind is never valid as the other.
    pub(crate) fn mac_for(&self, context: &str, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(context.as_bytes());
        mac.update(b"\0");
        mac.update(payload);
        mac
    }

    pub fn token(&self, u: &Unsubscription) -> String {
        let payload = format!(
            "{}\n{}\n{}",
            u.domain.to_lowercase(),
            u.address.to_lowercase(),
            u.user
        );
        let tag = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The token's contents if its signature is right (constant-time check).
    pub fn verify(&self, token: &str) -> Option<Unsubscription> {
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(&payload).verify_slice(&tag).ok()?;
        let text = String::from_utf8(payload).ok()?;
        let mut parts = text.splitn(3, '\n');
        Some(Unsubscription {
            domain: parts.next()?.to_string(),
            address: parts.next()?.to_string(),
            user: parts.next()?.to_string(),
        })
    }

    /// `List-Unsubscribe` and `List-Unsubscribe-Post` (RFC 8058 §3.1) for `u`.
    pub fn headers(
        &self,
        u: &Unsubscription,
        public_url: &str,
        hostname: &str,
    ) -> Vec<(&'static str, String)> {
        let token = self.token(u);
        vec![
            (
                "List-Unsubscribe",
                format!(
                    "<{}/u/{token}>, <mailto:{MAILTO_PREFIX}{token}@{hostname}>",
                    public_url.trim_end_matches('/')
                ),
            ),
            (
                "List-Unsubscribe-Post",
                "List-Unsubscribe=One-Click".to_string(),
            ),
        ]
    }
}

/// The store's name for the key.
const SECRET: &str = "unsubscribe";
/// Where versions before the store kept it, in `data_dir`.
const KEY_FILE: &str = "unsubscribe.key";

/// The key in a file of an older version; `None` if there is no file.
fn read_key_file(path: &FsPath) -> Result<Option<[u8; 32]>, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Backend(format!(
                "unsubscribe key {}: {e}",
                path.display()
            )));
        }
    };
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok());
    bytes.map(Some).ok_or_else(|| {
        StoreError::Backend(format!(
            "unsubscribe key {} is not 64 hex digits",
            path.display()
        ))
    })
}

/// Suppresses `u.address` for `u.domain` (reason `unsubscribe`) and logs an
/// `unsubscribed` event; false (and no event) if it was already suppressed.
pub async fn apply(store: &dyn Store, u: &Unsubscription) -> Result<bool, StoreError> {
    let now = chrono::Utc::now().timestamp_millis();
    let added = store
        .add_suppression(Suppression {
            domain: u.domain.clone(),
            address: u.address.clone(),
            reason: "unsubscribe".into(),
            created_at: now,
        })
        .await?;
    if added {
        store
            .append_events(vec![Event {
                id: 0,
                at: now,
                kind: EventKind::Unsubscribed,
                message_id: None,
                recipient: Some(u.address.clone()),
                user: Some(u.user.clone()),
                reply: None,
                class: None,
                asynchronous: false,
                domain: None,
            }])
            .await?;
        tracing::info!(domain = %u.domain, address = %u.address, "unsubscribed");
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_verify_and_altered_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(dir.path(), 16).unwrap();
        let key = UnsubscribeKey::load(store.as_ref(), dir.path())
            .await
            .unwrap();
        let again = UnsubscribeKey::load(store.as_ref(), dir.path())
            .await
            .unwrap();
        let u = Unsubscription {
            domain: "a.example".into(),
            address: "b@b.example".into(),
            user: "alice".into(),
        };
        let token = key.token(&u);
        assert_eq!(again.verify(&token), Some(u.clone()));
        let forged = Unsubscription {
            address: "c@b.example".into(),
            ..u
        };
        let (_, tag) = token.split_once('.').unwrap();
        let other_payload = key.token(&forged);
        let (payload, _) = other_payload.split_once('.').unwrap();
        assert_eq!(key.verify(&format!("{payload}.{tag}")), None);
        assert_eq!(key.verify("garbage"), None);
        assert!(
            !dir.path().join(KEY_FILE).exists(),
            "the key is not written to a file"
        );
    }

    #[tokio::test]
    async fn a_key_file_of_an_older_version_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        let old = UnsubscribeKey([9; 32]);
        std::fs::write(dir.path().join(KEY_FILE), hex::encode(old.0) + "\n").unwrap();
        let u = Unsubscription {
            domain: "a.example".into(),
            address: "b@b.example".into(),
            user: "alice".into(),
        };
        let sent = old.token(&u);
        let store = crate::store::SqliteStore::open(dir.path(), 16).unwrap();
        let key = UnsubscribeKey::load(store.as_ref(), dir.path())
            .await
            .unwrap();
        assert_eq!(
            key.verify(&sent),
            Some(u.clone()),
            "links already sent keep working"
        );
        assert!(!dir.path().join(KEY_FILE).exists());
        assert!(dir.path().join("unsubscribe.key.imported").exists());
        // Another node's file does not replace the key the store holds.
        std::fs::write(dir.path().join(KEY_FILE), hex::encode([1u8; 32])).unwrap();
        let key = UnsubscribeKey::load(store.as_ref(), dir.path())
            .await
            .unwrap();
        assert_eq!(key.verify(&sent), Some(u));
        std::fs::write(dir.path().join(KEY_FILE), "not hex").unwrap();
        let Err(e) = UnsubscribeKey::load(store.as_ref(), dir.path()).await else {
            panic!("a damaged key file was taken");
        };
        assert!(e.to_string().contains("not 64 hex digits"), "{e}");
    }
}
