//! SASL PLAIN (RFC 4616) and LOGIN decoding. Pure functions over the base64 text the
//! client sent; the session drives the challenge/response exchange.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("invalid base64")]
    Base64,
    #[error("malformed PLAIN message")]
    Malformed,
    #[error("authorization identity differs from the authentication identity")]
    AuthzMismatch,
}

pub fn decode_base64(text: &str) -> Result<Vec<u8>, SaslError> {
    STANDARD.decode(text.trim()).map_err(|_| SaslError::Base64)
}

pub fn decode_utf8(text: &str) -> Result<String, SaslError> {
    String::from_utf8(decode_base64(text)?).map_err(|_| SaslError::Malformed)
}

/// `[authzid] NUL authcid NUL passwd`, base64-encoded. An authzid, if present, must
/// equal the authcid: we do not let one user act for another.
pub fn decode_plain(text: &str) -> Result<Credentials, SaslError> {
    let raw = decode_base64(text)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    let (authz, username, password) = (text(authz)?, text(user)?, text(pass)?);
    if username.is_empty() {
        return Err(SaslError::Malformed);
    }
    if !authz.is_empty() && authz != username {
        return Err(SaslError::AuthzMismatch);
    }
    Ok(Credentials { username, password })
}

/// Base64 of a server challenge (`334 <this>`).
pub fn encode(text: &str) -> String {
    STANDARD.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_with_and_without_authzid() {
        let c = decode_plain(&STANDARD.encode("\0alice\0pw")).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("alice", "pw"));
        assert!(decode_plain(&STANDARD.encode("alice\0alice\0pw")).is_ok());
        assert_eq!(
            decode_plain(&STANDARD.encode("bob\0alice\0pw")),
            Err(SaslError::AuthzMismatch)
        );
    }

    #[test]
    fn plain_rejects_garbage() {
        assert_eq!(decode_plain("!!!"), Err(SaslError::Base64));
        assert_eq!(
            decode_plain(&STANDARD.encode("alice")),
            Err(SaslError::Malformed)
        );
        assert_eq!(
            decode_plain(&STANDARD.encode("\0\0pw")),
            Err(SaslError::Malformed)
        );
        assert_eq!(
            decode_plain(&STANDARD.encode("\0a\0b\0c")),
            Err(SaslError::Malformed)
        );
    }
}
