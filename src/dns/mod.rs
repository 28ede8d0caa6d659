//! DNS for delivery and for checking a domain's records: the `Resolver` trait (MX,
//! address and TXT lookups with the answers callers need to tell apart) and its
//! hickory implementation.
//!
//! Tests do not mock this trait: they run a real DNS server on loopback and point
//! `[dns] nameservers` at it, so the hickory code path is what they exercise.

mod hickory;

pub use hickory::HickoryResolver;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// An MX answer (RFC 5321 §5.1, RFC 7505).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// Exchanges, lowest preference first.
    Exchanges(Vec<(u16, String)>),
    /// The domain exists but has no MX: deliver to its A/AAAA (implicit MX).
    None,
    /// `MX 0 .`: the domain accepts no mail.
    Null,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist. Permanent.
    #[error("domain {0} does not exist")]
    NotFound(String),
    /// SERVFAIL, timeouts and the like. Temporary.
    #[error("DNS lookup failed for {name}: {reason}")]
    Temporary { name: String, reason: String },
}

impl DnsError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, DnsError::NotFound(_))
    }
}

pub type DnsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DnsError>> + Send + 'a>>;

pub trait Resolver: Send + Sync {
    fn mx(&self, domain: &str) -> DnsFuture<'_, MxAnswer>;
    /// IPv4 and IPv6 addresses of `host`; empty when it has none.
    fn addresses(&self, host: &str) -> DnsFuture<'_, Vec<IpAddr>>;
    /// The TXT records at `name`, each one's character-strings joined (RFC 7208
    /// §3.3, RFC 6376 §3.6.2.2); empty when there are none.
    fn txt(&self, name: &str) -> DnsFuture<'_, Vec<String>>;
}
