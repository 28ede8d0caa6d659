//! Unsubscribing (RFC 8058, RFC 2369, SPEC §5.5): the signed token of
//! `List-Unsubscribe` links, the header fields, and the suppression an unsubscribe
//! makes. The HTTPS side is `api::unsubscribe` (`POST /u/{token}`); the mailto side
//! is the acceptance path, which unsubscribes on mail to
//! `unsubscribe+TOKEN@<a local domain>`.
//!
//! A token is `base64url(domain \n address \n user) . base64url(HMAC-SHA256(key,
//! payload))`. The key is 32 random bytes generated on first start and kept in
//! `data_dir/unsubscribe.key` (mode 0600); changing it voids every link sent. A
//! token that does not verify changes nothing.

use crate::store::{Event, EventKind, Store, StoreError, Suppression};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path as FsPath;

/// Local part prefix of the mailto alternative: `unsubscribe+TOKEN@hostname`.
pub const MAILTO_PREFIX: &str = "unsubscribe+";

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The secret that signs unsubscribe tokens. Constructed in the crate only by
/// [`UnsubscribeKey::load_or_create`] and by the fuzz checks, which need no file.
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
    /// Reads `dir/unsubscribe.key`, creating it (0600) on first start.
    pub fn load_or_create(dir: &FsPath) -> Result<UnsubscribeKey, StoreError> {
        let path = dir.join("unsubscribe.key");
        let io = |e: std::io::Error| {
            StoreError::Backend(format!("unsubscribe key {}: {e}", path.display()))
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32);
                let bytes = bytes.ok_or_else(|| {
                    StoreError::Backend(format!(
                        "unsubscribe key {} is not 64 hex digits",
                        path.display()
                    ))
                })?;
                let mut key = [0; 32];
                key.copy_from_slice(&bytes);
                Ok(UnsubscribeKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io)?;
                let key: [u8; 32] = rand::random();
                write_private(&path, hex::encode(key).as_bytes()).map_err(io)?;
                tracing::info!(path = %path.display(), "generated the unsubscribe link key");
                Ok(UnsubscribeKey(key))
            }
            Err(e) => Err(io(e)),
        }
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

/// Creates `path` readable by its owner only, and syncs it.
fn write_private(path: &FsPath, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
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

    #[test]
    fn tokens_verify_and_altered_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let key = UnsubscribeKey::load_or_create(dir.path()).unwrap();
        let again = UnsubscribeKey::load_or_create(dir.path()).unwrap();
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
        let mode = std::fs::metadata(dir.path().join("unsubscribe.key"))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }
}
