//! What the web dashboard reads: hourly counters kept as mail flows, message
//! search, and the per-attempt details of a message's timeline.
//!
//! The counters are written in the same transaction as the status change they
//! count (enqueue, `record_attempt`, a new suppression), so the overview never
//! scans messages: it sums at most hours × domains × providers × outcomes rows.

use super::{MessageSummary, NewMessage, QueueId, RecipientStatus, StoreFuture};
use serde::Serialize;

/// Which sending domains a reader may see; `None` for all (an admin).
pub type DomainScope = Option<Vec<String>>;

/// One counter: how many recipients reached `outcome` in one hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CounterRow {
    /// Unix hour (ms / 3 600 000).
    pub hour: i64,
    pub sending_domain: String,
    /// The receiving provider (the MX host's domain); empty when not known
    /// (accepted, suppressed, unsubscribed).
    pub provider: String,
    /// `accepted`, `delivered`, `deferred`, `bounced`, `suppressed`, `unsubscribed`.
    pub outcome: String,
    /// Bounce class of a bounce; empty otherwise.
    pub class: String,
    pub count: i64,
}

/// The latest reply seen for a bounce class of a sending domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BounceExample {
    pub sending_domain: String,
    pub class: String,
    pub reply: String,
    pub at: i64,
}

/// A message search: free text plus filters, newest first, `limit` at a time.
#[derive(Debug, Clone, Default)]
pub struct MessageQuery {
    /// Matched against recipients, the sender, the subject and the queue id.
    pub text: Option<String>,
    /// Messages with at least one recipient in this state.
    pub status: Option<RecipientStatus>,
    /// Received at or after (unix ms).
    pub since: Option<i64>,
    /// Paging: messages older than this id.
    pub before: Option<QueueId>,
    pub domains: DomainScope,
    pub limit: usize,
}

/// A line of the message list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageRow {
    pub id: QueueId,
    pub mail_from: String,
    pub subject: String,
    pub received_at: i64,
    pub first_recipient: String,
    pub recipients: usize,
    /// The distinct states of its recipients.
    pub statuses: Vec<String>,
}

/// One delivery attempt of one recipient, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    /// Position of the recipient in the envelope.
    pub idx: usize,
    pub at: i64,
    pub status: RecipientStatus,
    /// The MX host (or route host) the attempt went to, when one was reached.
    pub mx_host: Option<String>,
    /// The TLS version negotiated (`TLSv1.3`), or none for plain text.
    pub tls: Option<String>,
    pub reply: String,
    /// False when the destination was suspended and the recipient was not tried.
    pub attempted: bool,
}

/// What the message page shows beyond the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageDetails {
    pub summary: MessageSummary,
    pub subject: String,
    pub sending_domain: String,
    /// How it was accepted: the `with` protocol of its `Received:` field
    /// (`ESMTPSA`, `HTTP`, ...).
    pub protocol: String,
    pub dkim_signed: bool,
    /// The content is still stored (it is dropped once nothing more is owed).
    pub content_kept: bool,
    pub attempts: Vec<AttemptRecord>,
}

/// A recipient waiting for delivery, for the queue page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingRecipient {
    pub message_id: QueueId,
    pub address: String,
    /// The recipient's domain: what the queue groups by.
    pub domain: String,
    pub status: RecipientStatus,
    pub attempts: u32,
    pub next_attempt: i64,
    pub last_reply: Option<String>,
}

/// Reads for the dashboard.
pub trait DashboardStore: Send + Sync {
    /// Counters of the hours from `since_hour` on, of the domains in scope.
    fn counters(&self, domains: DomainScope, since_hour: i64) -> StoreFuture<'_, Vec<CounterRow>>;
    /// The latest example reply of each bounce class, of the domains in scope.
    fn bounce_examples(&self, domains: DomainScope) -> StoreFuture<'_, Vec<BounceExample>>;
    fn search_messages(&self, query: MessageQuery) -> StoreFuture<'_, Vec<MessageRow>>;
    fn message_details(&self, id: &QueueId) -> StoreFuture<'_, Option<MessageDetails>>;
    /// Recipients still to be delivered, of the domains in scope, oldest first.
    fn pending(&self, domains: DomainScope, limit: usize)
    -> StoreFuture<'_, Vec<PendingRecipient>>;
    /// Recipients pending of the domains in scope (the queue size).
    fn pending_count(&self, domains: DomainScope) -> StoreFuture<'_, usize>;
}

/// The receiving provider of an MX host: its registrable domain, approximated as
/// the last two labels, or three under a two-letter country code whose second
/// level is a generic one (`mx.example.co.uk` → `example.co.uk`). Good enough to
/// group `gmail-smtp-in.l.google.com` under `google.com` without shipping the
/// public suffix list; an IP address stays as it is.
pub fn provider_of(host: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return host;
    }
    let labels: Vec<&str> = host.split('.').collect();
    let keep = match labels.as_slice() {
        [.., second, tld]
            if tld.len() == 2
                && labels.len() >= 3
                && matches!(
                    *second,
                    "co" | "com" | "net" | "org" | "ac" | "gov" | "edu" | "ne" | "or"
                ) =>
        {
            3
        }
        _ => 2,
    };
    labels[labels.len().saturating_sub(keep)..].join(".")
}

/// One hour in unix milliseconds: the counters' granularity.
pub(super) const HOUR_MS: i64 = 3_600_000;

/// The domain of a stored address, lower case; empty for the null sender.
pub(super) fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// The `with` protocol of the first `Received:` field (the one Outpost added).
pub(super) fn received_protocol(headers: &[u8]) -> String {
    crate::message::header_value(headers, "Received")
        .and_then(|r| {
            let (_, after) = r.split_once(" with ")?;
            after.split_whitespace().next().map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// What a message is found by in a search: its queue id, sender, subject and
/// recipients, space-separated.
pub(super) fn search_text(message: &NewMessage, sender: &str, subject: &str) -> String {
    let mut text = format!("{} {sender} {subject}", message.id);
    for r in &message.recipients {
        text.push(' ');
        text.push_str(&r.address.to_string());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_group_mx_hosts() {
        assert_eq!(provider_of("gmail-smtp-in.l.google.com."), "google.com");
        assert_eq!(
            provider_of("example-com.mail.protection.outlook.com"),
            "outlook.com"
        );
        assert_eq!(provider_of("mx1.example.co.uk"), "example.co.uk");
        assert_eq!(provider_of("mx.example.de"), "example.de");
        assert_eq!(provider_of("127.0.0.1"), "127.0.0.1");
        assert_eq!(provider_of("localhost"), "localhost");
    }

    #[test]
    fn protocol_is_read_from_our_received_field() {
        assert_eq!(
            received_protocol(
                b"Received: from x ([1.2.3.4])\r\n\tby relay (Outpost) with ESMTPSA id 1;\r\n\tdate\r\n"
            ),
            "ESMTPSA"
        );
        assert_eq!(received_protocol(b"Subject: x\r\n"), "unknown");
    }
}
