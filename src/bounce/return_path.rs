//! Return paths (VERP): the envelope sender of each delivered message is an address
//! of Outpost's own, `b-ID-N-TAG@HOST`, so that a bounce arriving hours later says by
//! its envelope recipient which message (queue id `ID`) and which recipient (index
//! `N`, or `x` when the transaction had several) it is about. `TAG` is an HMAC of the
//! rest (the relay's link-signing key, kept in the store and the same on every
//! node, with its own context), so a forged bounce cannot name a message and
//! suppress an address.
//!
//! `HOST` is the sending domain's return-path host: the first of
//! `relay.local_domains` that is the sending domain or one of its subdomains (so SPF
//! is checked on a domain that aligns with the `From:` domain for DMARC), else the
//! first local domain. Everything is lower case: some MTAs lower-case local parts.

use crate::store::QueueId;
use crate::unsubscribe::UnsubscribeKey;
use hmac::Mac;

/// Local part prefix of return-path addresses.
pub const PREFIX: &str = "b-";
const CONTEXT: &str = "return-path";
/// Bytes of the HMAC kept (80 bits: forging one needs 2^80 tries).
const TAG_BYTES: usize = 10;

/// What a return-path address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnPath {
    pub message: QueueId,
    /// The recipient's index in the message, when the transaction had one
    /// recipient; otherwise the bounce's own report names the recipient.
    pub recipient: Option<usize>,
}

/// Why a return-path address was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReturnPathError {
    #[error("not a return-path address")]
    NotReturnPath,
    #[error("malformed return-path token")]
    Malformed,
    #[error("the return-path token's signature is wrong (forged or from another key)")]
    BadSignature,
}

fn payload(rp: &ReturnPath) -> String {
    let index = rp.recipient.map_or("x".to_string(), |i| i.to_string());
    format!("{}-{index}", rp.message.as_str().to_ascii_lowercase())
}

/// The envelope sender for `rp`, at `host`.
pub fn address(key: &UnsubscribeKey, rp: &ReturnPath, host: &str) -> String {
    let payload = payload(rp);
    let tag = key
        .mac_for(CONTEXT, payload.as_bytes())
        .finalize()
        .into_bytes();
    format!(
        "{PREFIX}{payload}-{}@{host}",
        hex::encode(&tag[..TAG_BYTES])
    )
}

/// Reads and verifies a return-path address (or its local part).
pub fn verify(key: &UnsubscribeKey, address: &str) -> Result<ReturnPath, ReturnPathError> {
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    let token = local
        .get(..PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(PREFIX))
        .map(|_| &local[PREFIX.len()..])
        .ok_or(ReturnPathError::NotReturnPath)?;
    let mut parts = token.splitn(3, '-');
    let (Some(id), Some(index), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ReturnPathError::Malformed);
    };
    let message: QueueId = id.parse().map_err(|_| ReturnPathError::Malformed)?;
    let recipient = match index {
        "x" | "X" => None,
        n => Some(n.parse().map_err(|_| ReturnPathError::Malformed)?),
    };
    let tag = hex::decode(tag).map_err(|_| ReturnPathError::Malformed)?;
    if tag.len() != TAG_BYTES {
        return Err(ReturnPathError::Malformed);
    }
    let rp = ReturnPath { message, recipient };
    key.mac_for(CONTEXT, payload(&rp).as_bytes())
        .verify_truncated_left(&tag)
        .map_err(|_| ReturnPathError::BadSignature)?;
    Ok(rp)
}

/// The return-path host of `sending_domain`: the first local domain that is it or
/// a subdomain of it (SPF then aligns for DMARC), else the first local domain.
pub fn host_for<'a>(local_domains: &'a [String], sending_domain: &str) -> &'a str {
    let sending = sending_domain.to_ascii_lowercase();
    local_domains
        .iter()
        .find(|d| {
            let d = d.to_ascii_lowercase();
            d == sending || d.ends_with(&format!(".{sending}"))
        })
        .or_else(|| local_domains.first())
        .map_or("", |d| d.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> UnsubscribeKey {
        UnsubscribeKey([byte; 32])
    }

    #[test]
    fn addresses_verify_and_altered_ones_do_not() {
        let rp = ReturnPath {
            message: "0123456789ABCDEF0123".parse().unwrap(),
            recipient: Some(2),
        };
        let address = address(&key(1), &rp, "bounces.example.com");
        assert!(
            address.starts_with("b-0123456789abcdef0123-2-"),
            "{address}"
        );
        let local = address.split('@').next().unwrap();
        assert!(local.len() <= 64, "RFC 5321 §4.5.3.1.1: {local}");
        assert_eq!(verify(&key(1), &address), Ok(rp.clone()));
        assert_eq!(verify(&key(1), &address.to_ascii_uppercase()), Ok(rp));
        assert_eq!(
            verify(&key(2), &address),
            Err(ReturnPathError::BadSignature)
        );
        let other_recipient = address.replacen("-2-", "-3-", 1);
        assert_eq!(
            verify(&key(1), &other_recipient),
            Err(ReturnPathError::BadSignature)
        );
        let several = ReturnPath {
            message: "0123456789ABCDEF0123".parse().unwrap(),
            recipient: None,
        };
        let address = super::address(&key(1), &several, "h.example");
        assert_eq!(verify(&key(1), &address), Ok(several));
        assert_eq!(
            verify(&key(1), "postmaster@h.example"),
            Err(ReturnPathError::NotReturnPath)
        );
        assert_eq!(
            verify(&key(1), "b-nothex-1-00@h.example"),
            Err(ReturnPathError::Malformed)
        );
    }

    #[test]
    fn the_host_aligns_with_the_sending_domain_when_it_can() {
        let local = vec![
            "relay.example.net".to_string(),
            "bounces.example.com".to_string(),
        ];
        assert_eq!(host_for(&local, "example.com"), "bounces.example.com");
        assert_eq!(host_for(&local, "Example.COM"), "bounces.example.com");
        assert_eq!(host_for(&local, "other.example"), "relay.example.net");
        assert_eq!(host_for(&local, "ample.com"), "relay.example.net");
    }
}
