//! Acceptance: the one path by which a message enters Outpost, shared by SMTP
//! (`inbound/data.rs`) and the HTTP API (`api/messages.rs`).
//!
//! It checks that an authenticated user may use the `From:` header's domains
//! (SPEC §2), adds the trace header (`Received:`, RFC 5321 §4.4) and, for
//! submissions, `Date:` and `Message-ID:` when missing (RFC 6409 §8), signs it
//! with DKIM when its `From:` domain is registered (SPEC §5.2), commits the
//! message durably, and only then hands it to the queue. Whatever the caller
//! answers (`250` or `202`) it answers after [`Acceptor::accept`] returned `Ok`.
//!
//! It does not parse protocol input or decide relay rules: callers pass a
//! validated envelope.

use crate::auth::AuthenticatedUser;
use crate::config::Config;
use crate::dkim::DkimSigners;
use crate::message;
use crate::metrics::Metrics;
use crate::queue::QueueHandle;
use crate::smtp::Mailbox;
use crate::store::{NewMessage, NewRecipient, QueueId, Store, StoreError};
use crate::unsubscribe::{MAILTO_PREFIX, UnsubscribeKey};
use std::sync::Arc;

/// Why a message was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The `From:` header is missing or names a domain the user may not send as.
    #[error("the From: header is missing or not in the sender's domains")]
    NotAuthorized,
    /// The content has a NUL octet: relayed as is, `<CRLF>NUL.<CRLF>` ends the
    /// data early at a receiver that drops NULs (the smuggling class, outbound).
    #[error("NUL in message data is not allowed")]
    Nul,
    /// The DKIM keys could not be loaded (temporary: the message is not sent unsigned).
    #[error("cannot DKIM-sign: {0}")]
    Signing(String),
    /// The store could not commit the message (temporary).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a message came from, for its `Received:` header.
pub struct Origin {
    /// The `from` clause: `helo ([ip])` for SMTP.
    pub from: String,
    /// Negotiated TLS parameters, when the client used TLS.
    pub tls: Option<String>,
    /// The `with` protocol name (`ESMTPSA`, `HTTP`, ...).
    pub protocol: String,
    /// `smtp` or `http`: a label for metrics and logs.
    pub source: &'static str,
}

/// A validated envelope and content waiting to be accepted.
pub struct Submission {
    /// Envelope sender; `None` for the null sender `<>`.
    pub mail_from: Option<Mailbox>,
    pub recipients: Vec<NewRecipient>,
    pub user: Option<AuthenticatedUser>,
    pub smtputf8: bool,
    /// The message as submitted: CRLF line endings, not dot-stuffed.
    pub content: Vec<u8>,
    pub origin: Origin,
    /// Add `Date:`/`Message-ID:` when missing (a submission rather than a relay).
    pub submission: bool,
    /// The sender may relay (authenticated, or a trusted network). Only such mail
    /// is DKIM-signed: a stranger writing to our own domains with a forged `From:`
    /// must not obtain our signature.
    pub may_relay: bool,
}

/// What acceptance needs: shared by every SMTP session and HTTP request.
#[derive(Clone)]
pub struct Acceptor {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    /// Delivery, when it runs: committed messages go to it directly while its
    /// in-memory window has room; otherwise its store scan finds them.
    pub queue: Option<QueueHandle>,
    pub metrics: Arc<Metrics>,
    /// Verifies `unsubscribe+TOKEN@<local domain>` recipients (RFC 2369 mailto).
    pub unsubscribe: Arc<UnsubscribeKey>,
    /// DKIM keys of the registered sending domains.
    pub dkim: Arc<DkimSigners>,
}

/// The `Message-ID:` Outpost gives a message: the queue id, a random part and the
/// host name.
pub fn message_id(id: &QueueId, hostname: &str) -> String {
    format!("{id}.{:08x}@{hostname}", rand::random::<u32>())
}

impl Acceptor {
    /// Checks, completes and durably stores `submission`; returns its queue id.
    pub async fn accept(&self, submission: Submission) -> Result<QueueId, AcceptError> {
        self.accept_as(QueueId::generate(), submission).await
    }

    /// [`Acceptor::accept`] under an id the caller generated (so it could use it in
    /// the content, e.g. in `Message-ID:`).
    pub async fn accept_as(
        &self,
        id: QueueId,
        submission: Submission,
    ) -> Result<QueueId, AcceptError> {
        let source = submission.origin.source;
        let result = self.commit(id, submission).await;
        self.metrics.message_outcome(source, result.is_ok());
        result
    }

    async fn commit(&self, id: QueueId, s: Submission) -> Result<QueueId, AcceptError> {
        if s.content.contains(&0) {
            tracing::warn!(origin = %s.origin.from, source = s.origin.source, "message with NUL rejected");
            return Err(AcceptError::Nul);
        }
        let now = chrono::Utc::now();
        let hostname = &self.config.hostname;
        let headers = added_headers(hostname, &id, &message_id(&id, hostname), &s, &now);
        let mut full = Vec::with_capacity(headers.len() + s.content.len() + 1024);
        full.extend_from_slice(headers.as_bytes());
        full.extend_from_slice(&s.content);
        if let Some(user) = &s.user {
            // SPEC §2: the From: header, too, must be in the user's domains. Read in
            // the completed message, the one signed and delivered: a first line of
            // the content that begins with white space continues the last added
            // field there, so a `From:` on it is no author.
            let authorized = message::from_domains(&full)
                .is_some_and(|domains| domains.iter().all(|d| user.may_send_as(d)));
            if !authorized {
                tracing::warn!(user = %user.name, source = s.origin.source, "From: header not authorized");
                return Err(AcceptError::NotAuthorized);
            }
        }
        // Signed once final and before the commit, so every delivered copy carries
        // the same signature.
        if s.may_relay {
            match self.dkim.sign(&full).await {
                Ok(Some(signatures)) => {
                    full.splice(0..0, signatures.into_bytes());
                }
                Ok(None) => {}
                Err(e) => return Err(AcceptError::Signing(e.to_string())),
            }
        }
        let size = full.len();
        let rcpts = s.recipients.len();
        // With a place in delivery's window the message goes there directly, and
        // the queue says when the store's copy is due.
        let reservation = self.queue.as_ref().and_then(|q| q.try_reserve(full.len()));
        let received_at = now.timestamp_millis();
        let (first_attempt_at, claimed_by) = match &reservation {
            Some(r) => {
                let (due, node) = r.claim(received_at);
                (due, Some(node))
            }
            // Due at once, on the clock the scanners compare due times with.
            None => (
                self.queue
                    .as_ref()
                    .map_or(received_at, |q| q.store_time(received_at)),
                None,
            ),
        };
        let user = s.user.map(|u| u.name);
        let message = NewMessage {
            id: id.clone(),
            mail_from: s.mail_from,
            recipients: s.recipients,
            auth_user: user,
            smtputf8: s.smtputf8,
            content: Arc::new(full),
            received_at,
            first_attempt_at,
            claimed_by,
        };
        self.store.enqueue(message.clone()).await?;
        let from = message
            .mail_from
            .as_ref()
            .map_or(String::new(), Mailbox::to_string);
        tracing::info!(queue_id = %id, origin = %s.origin.from, from = %from, rcpts, size,
            source = s.origin.source, tls = s.origin.tls.is_some(),
            user = message.auth_user.as_deref(), "message accepted");
        if let Some(reservation) = reservation {
            reservation.submit(&message);
        }
        self.mailto_unsubscribes(&message.recipients).await;
        self.feedback(&message).await;
        Ok(id)
    }

    /// Bounces and complaints for a return path (`b-TOKEN@<local domain>`) are
    /// matched to the message they are about and recorded (`bounce::feedback`);
    /// the email itself stays stored as local mail whatever it was. Failures are
    /// logged: the sender of a bounce cannot act on them.
    async fn feedback(&self, message: &NewMessage) {
        let now = message.received_at;
        for r in message.recipients.iter().filter(|r| r.local) {
            match crate::bounce::feedback::process(
                self.store.as_ref(),
                &self.unsubscribe,
                &r.address.to_string(),
                &message.content,
                now,
            )
            .await
            {
                Ok(crate::bounce::feedback::Outcome::Recorded { domain, .. }) => {
                    if let Some(queue) = &self.queue {
                        queue.feedback_recorded(&domain);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(queue_id = %message.id, rcpt = %r.address, error = %e, "cannot record a bounce or complaint")
                }
            }
        }
    }

    /// Mail to `unsubscribe+TOKEN@<local domain>` (the `List-Unsubscribe` mailto)
    /// unsubscribes when the token verifies; the message itself is kept as local
    /// mail either way.
    async fn mailto_unsubscribes(&self, recipients: &[NewRecipient]) {
        for r in recipients.iter().filter(|r| r.local) {
            let local_part = r.address.local();
            let Some(token) = local_part
                .get(..MAILTO_PREFIX.len())
                .filter(|p| p.eq_ignore_ascii_case(MAILTO_PREFIX))
                .map(|_| &local_part[MAILTO_PREFIX.len()..])
            else {
                continue;
            };
            match self.unsubscribe.verify(token) {
                Some(u) => {
                    if let Err(e) = crate::unsubscribe::apply(self.store.as_ref(), &u).await {
                        tracing::error!(error = %e, "cannot record a mailto unsubscribe");
                    }
                }
                None => {
                    tracing::warn!(rcpt = %r.address, "mailto unsubscribe with an invalid token ignored")
                }
            }
        }
    }
}

/// `Received:` always (RFC 5321 §4.4); `Date:` and `Message-ID:` when a submitted
/// message lacks them (RFC 6409 §8); `message_id` is the one to use then.
pub(crate) fn added_headers(
    hostname: &str,
    id: &QueueId,
    message_id: &str,
    s: &Submission,
    now: &chrono::DateTime<chrono::Utc>,
) -> String {
    let date = now.to_rfc2822();
    let tls = s
        .origin
        .tls
        .as_ref()
        .map_or(String::new(), |t| format!("\r\n\t({t})"));
    let recipient = match s.recipients.as_slice() {
        [only] => format!("\r\n\tfor <{}>", only.address),
        _ => String::new(),
    };
    let mut headers = format!(
        "Received: from {from}{tls}\r\n\tby {hostname} (Outpost) with {protocol} id {id}{recipient};\r\n\t{date}\r\n",
        from = s.origin.from,
        protocol = s.origin.protocol,
    );
    if s.submission {
        let block = message::header_block(&s.content);
        if !message::has_header(block, "Date") {
            headers.push_str(&format!("Date: {date}\r\n"));
        }
        if !message::has_header(block, "Message-ID") {
            headers.push_str(&format!("Message-ID: <{message_id}>\r\n"));
        }
    }
    headers
}
