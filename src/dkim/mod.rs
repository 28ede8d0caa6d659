//! DKIM for registered sending domains (SPEC §5.1, §5.2): key generation, the
//! signing of accepted messages and the DNS records to publish (`records`). The
//! check of what is actually published is `crate::diagnose::records`.
//!
//! Signing (`sign`) is relaxed/relaxed, rsa-sha256, plus ed25519-sha256 when the
//! domain has an Ed25519 key (RFC 8463). It is our own code on `ring`, not
//! mail-auth's signer, whose canonicalization and formatting verifiers refuse
//! (`sign` says how); mail-auth only generates the keys. Keys live in the store;
//! [`DkimSigners`] keeps them in memory and reloads them at most every
//! [`RELOAD_INTERVAL`], so signing costs no store read per message and a domain
//! added or removed with the CLI takes effect within that interval.
//!
//! A message is signed only when the domain of its `From:` header is registered
//! and its sender may relay (an authenticated user or a trusted network); nothing
//! else is ever signed.

pub mod records;
pub(crate) mod sign;

pub use sign::{DomainSigners, SIGNED_HEADERS};

use crate::store::{DkimAlgorithm, DkimKeyRecord, SendingDomain, Store, StoreError};
use mail_auth::dkim::generate::DkimKeyPair;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How stale the in-memory keys may be.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// RSA modulus size of generated keys (RFC 8301 §3.2: at least 1024, 2048 advised).
pub const RSA_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("cannot generate a DKIM key: {0}")]
    Generate(String),
    #[error("stored DKIM key {selector} of {domain} is unusable: {reason}")]
    BadKey {
        domain: String,
        selector: String,
        reason: String,
    },
    #[error("DKIM signing failed: {0}")]
    Sign(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The dated selector for keys made at `now`: `op` + year and month (`op202611`),
/// with an `e` suffix for Ed25519, so a later rotation gets a fresh name.
pub fn selector(now: chrono::DateTime<chrono::Utc>, algorithm: DkimAlgorithm) -> String {
    let suffix = match algorithm {
        DkimAlgorithm::Rsa => "",
        DkimAlgorithm::Ed25519 => "e",
    };
    format!("op{}{suffix}", now.format("%Y%m"))
}

/// A new sending domain with an RSA-2048 key, and an Ed25519 key when asked.
pub fn generate(
    name: &str,
    ed25519: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<SendingDomain, DkimError> {
    let rsa =
        DkimKeyPair::generate_rsa(RSA_BITS).map_err(|e| DkimError::Generate(e.to_string()))?;
    let (private_key, public_pkcs1) = rsa.into_inner();
    let mut keys = vec![DkimKeyRecord {
        selector: selector(now, DkimAlgorithm::Rsa),
        algorithm: DkimAlgorithm::Rsa,
        private_key,
        public_key: rsa_spki(&public_pkcs1),
    }];
    if ed25519 {
        let (private_key, public_key) = DkimKeyPair::generate_ed25519()
            .map_err(|e| DkimError::Generate(e.to_string()))?
            .into_inner();
        keys.push(DkimKeyRecord {
            selector: selector(now, DkimAlgorithm::Ed25519),
            algorithm: DkimAlgorithm::Ed25519,
            private_key,
            public_key,
        });
    }
    Ok(SendingDomain {
        name: name.to_ascii_lowercase(),
        created_at: now.timestamp_millis(),
        keys,
    })
}

/// Wraps a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo, the form RFC 6376 §3.6.1
/// puts in `p=` and that every verifier reads.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    const ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8]; // no unused bits
    bits.extend_from_slice(pkcs1);
    let mut body = ALGORITHM.to_vec();
    body.extend(der(0x03, &bits));
    der(0x30, &body)
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

type Snapshot = Arc<HashMap<String, Arc<DomainSigners>>>;

/// The signing keys of every registered domain, cached in memory.
pub struct DkimSigners {
    store: Arc<dyn Store>,
    cached: Mutex<Option<(Instant, Snapshot)>>,
}

impl DkimSigners {
    pub fn new(store: Arc<dyn Store>) -> DkimSigners {
        DkimSigners {
            store,
            cached: Mutex::new(None),
        }
    }

    /// The keys, reloaded from the store when older than [`RELOAD_INTERVAL`].
    async fn snapshot(&self) -> Result<Snapshot, DkimError> {
        if let Some((loaded, snapshot)) = &*self.cached.lock().expect("dkim cache lock")
            && loaded.elapsed() < RELOAD_INTERVAL
        {
            return Ok(snapshot.clone());
        }
        let mut map = HashMap::new();
        for domain in self.store.domains().await? {
            match DomainSigners::new(&domain) {
                Ok(signers) => {
                    map.insert(domain.name.clone(), Arc::new(signers));
                }
                // One broken domain must not stop the others from being signed.
                Err(e) => tracing::error!(error = %e, "DKIM key not loaded"),
            }
        }
        let snapshot = Arc::new(map);
        *self.cached.lock().expect("dkim cache lock") = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    /// The `DKIM-Signature:` fields for `message` when the domain of its `From:`
    /// is registered, `None` when it is not.
    pub async fn sign(&self, message: &[u8]) -> Result<Option<String>, DkimError> {
        let Some(domains) = crate::message::from_domains(message) else {
            return Ok(None);
        };
        let snapshot = self.snapshot().await?;
        // RFC 6376 does not allow several From: authors to be signed separately;
        // the first author's domain is the one DMARC looks at.
        let Some(signers) = domains.first().and_then(|d| snapshot.get(d)) else {
            return Ok(None);
        };
        signers.sign(message).map(Some)
    }
}
