//! The feedback loop: bounce emails and complaints that arrive on port 25 for a
//! return-path address (`bounce::return_path`), hours or days after the message was
//! delivered with a `250`.
//!
//! The envelope recipient's token is verified first: a bounce with a bad token is
//! logged and ignored, so nobody can suppress an address by forging one. Then the
//! email is parsed (`bounce::parse`) and matched to the message and recipient the
//! token names:
//!
//! - a bounce (DSN or non-standard) records a `bounced` event with `async: true` for
//!   each failed recipient, and suppresses the address for the message's sending
//!   domain when its classification says the address is bad;
//! - a complaint (ARF) records a `complained` event and suppresses the address for
//!   the sending domain (reason `complaint`);
//! - an auto-reply, or anything unreadable, changes nothing.
//!
//! The email itself stays stored as local mail, whatever it was.

use super::parse::{Report, ReportKind, parse};
use super::return_path::{self, ReturnPath, ReturnPathError};
use crate::store::{Event, EventKind, MessageSummary, Store, StoreError, Suppression};
use crate::unsubscribe::UnsubscribeKey;

/// What one return-path email led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not addressed to a return path.
    NotReturnPath,
    /// The token did not verify, or names no stored message: ignored.
    Rejected(String),
    /// Recognised, and nothing to do (auto-reply, unreadable, no failed recipient).
    Ignored(ReportKind),
    /// Events recorded for these recipients of mail from sending domain `domain`;
    /// `suppressed` those put on the list.
    Recorded {
        kind: ReportKind,
        domain: String,
        recipients: Vec<String>,
        suppressed: Vec<String>,
    },
}

/// Handles `content`, received for the local address `rcpt`.
pub async fn process(
    store: &dyn Store,
    key: &UnsubscribeKey,
    rcpt: &str,
    content: &[u8],
    now: i64,
) -> Result<Outcome, StoreError> {
    let rp = match return_path::verify(key, rcpt) {
        Ok(rp) => rp,
        Err(ReturnPathError::NotReturnPath) => return Ok(Outcome::NotReturnPath),
        Err(e) => {
            tracing::warn!(%rcpt, error = %e, "mail to a return path with a bad token ignored");
            return Ok(Outcome::Rejected(e.to_string()));
        }
    };
    let Some(message) = store.message(&rp.message).await? else {
        tracing::warn!(%rcpt, queue_id = %rp.message, "bounce for a message no longer stored ignored");
        return Ok(Outcome::Rejected("no such message".into()));
    };
    let report = parse(content);
    if !matches!(report.kind, ReportKind::Dsn | ReportKind::Arf) {
        tracing::info!(queue_id = %rp.message, kind = report.kind.as_str(), "mail to a return path ignored: not a bounce");
        return Ok(Outcome::Ignored(report.kind));
    }
    let matched = matched_recipients(&rp, &message, &report);
    if matched.is_empty() {
        tracing::info!(queue_id = %rp.message, kind = report.kind.as_str(), "bounce names no failed recipient of its message: ignored");
        return Ok(Outcome::Ignored(report.kind));
    }
    let domain = message
        .mail_from
        .rsplit_once('@')
        .map_or(String::new(), |(_, d)| d.to_ascii_lowercase());
    let mut events = Vec::new();
    let mut suppressed = Vec::new();
    for m in &matched {
        let (kind, reason) = match report.kind {
            ReportKind::Arf => (EventKind::Complained, "complaint".to_string()),
            _ => (EventKind::Bounced, format!("bounce: {}", m.diagnostic)),
        };
        events.push(Event {
            id: 0,
            at: now,
            kind,
            message_id: Some(message.id.clone()),
            recipient: Some(m.address.clone()),
            user: message.auth_user.clone(),
            reply: Some(m.diagnostic.clone()).filter(|d| !d.is_empty()),
            class: Some(m.class.clone()),
            asynchronous: true,
            domain: None,
        });
        if m.suppress && !domain.is_empty() {
            let added = store
                .add_suppression(Suppression {
                    domain: domain.clone(),
                    address: m.address.to_ascii_lowercase(),
                    reason,
                    created_at: now,
                })
                .await?;
            if added {
                suppressed.push(m.address.clone());
            }
        }
        tracing::info!(queue_id = %message.id, rcpt = %m.address, kind = report.kind.as_str(),
            class = %m.class, suppress = m.suppress, diagnostic = %m.diagnostic, "feedback received");
    }
    store.append_events(events).await?;
    Ok(Outcome::Recorded {
        kind: report.kind,
        domain,
        recipients: matched.into_iter().map(|m| m.address).collect(),
        suppressed,
    })
}

/// A report recipient matched to the message's own recipient address.
struct Matched {
    address: String,
    diagnostic: String,
    class: String,
    suppress: bool,
}

/// The failed recipients of `report` that are recipients of `message`. A token that
/// names one recipient decides who the report is about (a forwarded address's
/// bounce names the forwarding target); otherwise the report's addresses are
/// matched to the message's.
fn matched_recipients(rp: &ReturnPath, message: &MessageSummary, report: &Report) -> Vec<Matched> {
    let failed: Vec<_> = report.recipients.iter().filter(|r| r.failed).collect();
    let of = |address: &str, r: &super::ReportRecipient| Matched {
        address: address.to_string(),
        diagnostic: r.diagnostic.clone(),
        class: r.class.clone(),
        suppress: r.suppress,
    };
    if let Some(idx) = rp.recipient {
        let Some(ours) = message.recipients.get(idx) else {
            return Vec::new();
        };
        let named = failed
            .iter()
            .find(|r| r.address.eq_ignore_ascii_case(&ours.address))
            .or_else(|| failed.first());
        return named.map(|r| of(&ours.address, r)).into_iter().collect();
    }
    failed
        .iter()
        .filter_map(|r| {
            message
                .recipients
                .iter()
                .find(|m| m.address.eq_ignore_ascii_case(&r.address))
                .map(|m| of(&m.address, r))
        })
        .collect()
}
