//! Records the store keeps.

use crate::smtp::Mailbox;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// A queue id: 12 hex digits of milliseconds since the epoch, then 8 random hex
/// digits, so ids sort by arrival and do not collide across nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct QueueId(pub(super) String);

impl QueueId {
    pub fn generate() -> QueueId {
        let millis = chrono::Utc::now().timestamp_millis().max(0) as u64;
        QueueId(format!(
            "{:012X}{:08X}",
            millis & 0xFFFF_FFFF_FFFF,
            rand::random::<u32>()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for QueueId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 20 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(QueueId(s.to_ascii_uppercase()))
        } else {
            Err(format!("{s:?} is not a queue id (20 hex digits)"))
        }
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a recipient stands. `Delivered`, `Bounced`, `Suppressed` and `Local` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecipientStatus {
    /// Waiting for its first attempt.
    Queued,
    /// An attempt failed temporarily; another is due at `next_attempt`.
    Deferred,
    Delivered,
    Bounced,
    Suppressed,
    /// Addressed to one of Outpost's own domains (bounces, complaints); kept for
    /// processing, never relayed.
    Local,
}

impl RecipientStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientStatus::Queued => "queued",
            RecipientStatus::Deferred => "deferred",
            RecipientStatus::Delivered => "delivered",
            RecipientStatus::Bounced => "bounced",
            RecipientStatus::Suppressed => "suppressed",
            RecipientStatus::Local => "local",
        }
    }

    pub fn parse(s: &str) -> Option<RecipientStatus> {
        Some(match s {
            "queued" => RecipientStatus::Queued,
            "deferred" => RecipientStatus::Deferred,
            "delivered" => RecipientStatus::Delivered,
            "bounced" => RecipientStatus::Bounced,
            "suppressed" => RecipientStatus::Suppressed,
            "local" => RecipientStatus::Local,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        !matches!(self, RecipientStatus::Queued | RecipientStatus::Deferred)
    }
}

/// A recipient as accepted: its address and whether it is for one of our own domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecipient {
    pub address: Mailbox,
    pub local: bool,
}

/// A message accepted by inbound, ready to be committed.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: QueueId,
    /// Envelope sender; `None` for the null sender `<>`.
    pub mail_from: Option<Mailbox>,
    pub recipients: Vec<NewRecipient>,
    /// The authenticated user who submitted it, if any.
    pub auth_user: Option<String>,
    /// Needs SMTPUTF8 from the next hop.
    pub smtputf8: bool,
    /// The full message, headers included, CRLF line endings, not dot-stuffed.
    pub content: std::sync::Arc<Vec<u8>>,
    /// Unix milliseconds.
    pub received_at: i64,
    /// When the scheduler may claim the message from the store (unix ms). Inbound
    /// sets it in the future when it hands the message straight to the queue, so a
    /// store scan does not pick it up a second time.
    pub first_attempt_at: i64,
    /// The node that holds the message's claim from the start (with
    /// `first_attempt_at` in the future), when inbound hands it straight to its
    /// own queue; `None` for mail any node may claim when due.
    pub claimed_by: Option<String>,
}

/// What `outpost cluster status` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeStatus>,
    /// Pending (queued or deferred) recipients, claimed or not: the queue's size.
    pub pending: usize,
}

/// A webhook endpoint's progress through the event log and the node posting to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookCursor {
    /// The last event id the endpoint acknowledged (0: none yet).
    pub acked: i64,
    /// The node that holds (or last held) the endpoint's lease.
    pub holder: Option<String>,
    /// Unix ms when the holder's lease ends unless renewed.
    pub lease_until: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub name: String,
    /// Unix ms of its last heartbeat; 0 for a holder of claims never seen beating.
    pub last_seen: i64,
    /// Pending recipients it holds a claim on.
    pub claims: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecipientState {
    pub address: String,
    pub status: RecipientStatus,
    pub attempts: u32,
    /// Unix milliseconds of the next attempt, for queued and deferred recipients.
    pub next_attempt: i64,
    pub last_reply: Option<String>,
    /// Bounce class of the last failed attempt, when it was classified.
    pub last_class: Option<String>,
    /// Unix milliseconds of the last delivery attempt, if one was made.
    pub last_attempt: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageSummary {
    pub id: QueueId,
    pub mail_from: String,
    pub auth_user: Option<String>,
    pub size: usize,
    pub received_at: i64,
    pub smtputf8: bool,
    pub recipients: Vec<RecipientState>,
}

impl MessageSummary {
    /// True when a delivery status notification is owed to the sender: something
    /// bounced and the sender is not the null sender (RFC 5321 §6.1).
    pub fn needs_bounce_report(&self) -> bool {
        !self.mail_from.is_empty()
            && self
                .recipients
                .iter()
                .any(|r| r.status == RecipientStatus::Bounced)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// PHC string (argon2id).
    pub password_hash: String,
    pub admin: bool,
    /// Lower-case domains this user may send as.
    pub domains: Vec<String>,
}

/// A message with recipients claimed for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueMessage {
    pub id: QueueId,
    /// Envelope sender; `None` for the null sender `<>`.
    pub mail_from: Option<Mailbox>,
    /// Size of the content in octets.
    pub size: usize,
    pub smtputf8: bool,
    pub received_at: i64,
    pub recipients: Vec<DueRecipient>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRecipient {
    /// Position of the recipient in the message's envelope.
    pub idx: usize,
    pub address: Mailbox,
    /// Attempts made so far.
    pub attempts: u32,
}

/// The outcome of one delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientUpdate {
    pub idx: usize,
    pub status: RecipientStatus,
    /// For `Deferred`: when to try again (unix ms).
    pub next_attempt: i64,
    pub reply: String,
    /// Bounce class of a failure (bad mailbox, mailbox full, policy, ...), if known.
    pub class: Option<String>,
    /// False when the recipient was deferred without trying (its destination is
    /// suspended): the attempt count, which drives the retry schedule, stays.
    pub attempted: bool,
    /// Where the attempt went, when a server was reached.
    pub path: AttemptPath,
}

/// The server an attempt reached and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptPath {
    /// The MX (or route) host name.
    pub mx_host: Option<String>,
    /// The TLS version (`TLS 1.3`), none for plain text.
    pub tls: Option<String>,
}

/// What happened, as recorded in the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Accepted,
    Delivered,
    Deferred,
    Bounced,
    Suppressed,
    Unsubscribed,
    /// A feedback-loop complaint (ARF) about a delivered message.
    Complained,
    /// Sending from a domain stopped to protect its reputation (`bounce::reputation`).
    #[serde(rename = "domain_paused")]
    DomainPaused,
    /// Sending from a paused domain allowed again.
    #[serde(rename = "domain_resumed")]
    DomainResumed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Accepted => "accepted",
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Bounced => "bounced",
            EventKind::Suppressed => "suppressed",
            EventKind::Unsubscribed => "unsubscribed",
            EventKind::Complained => "complained",
            EventKind::DomainPaused => "domain_paused",
            EventKind::DomainResumed => "domain_resumed",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "accepted" => EventKind::Accepted,
            "delivered" => EventKind::Delivered,
            "deferred" => EventKind::Deferred,
            "bounced" => EventKind::Bounced,
            "suppressed" => EventKind::Suppressed,
            "unsubscribed" => EventKind::Unsubscribed,
            "complained" => EventKind::Complained,
            "domain_paused" => EventKind::DomainPaused,
            "domain_resumed" => EventKind::DomainResumed,
            _ => return None,
        })
    }

    /// The event a recipient's new status produces.
    pub fn for_status(status: RecipientStatus) -> Option<EventKind> {
        match status {
            RecipientStatus::Delivered => Some(EventKind::Delivered),
            RecipientStatus::Deferred => Some(EventKind::Deferred),
            RecipientStatus::Bounced => Some(EventKind::Bounced),
            RecipientStatus::Suppressed => Some(EventKind::Suppressed),
            RecipientStatus::Queued | RecipientStatus::Local => None,
        }
    }
}

/// One entry of the durable event log. `id` is the paging cursor: it only grows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub kind: EventKind,
    pub message_id: Option<QueueId>,
    pub recipient: Option<String>,
    /// The authenticated user who sent the message, for per-tenant views.
    pub user: Option<String>,
    pub reply: Option<String>,
    pub class: Option<String>,
    /// Learnt after the delivery, from a bounce email or a complaint that came
    /// back to the message's return path.
    pub asynchronous: bool,
    /// The sending domain an event about a whole domain concerns
    /// (`domain_paused`, `domain_resumed`); none for events about a recipient.
    pub domain: Option<String>,
}

/// An address that must not be mailed from one sending domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suppression {
    /// The sending domain the suppression belongs to (lower case).
    pub domain: String,
    /// The suppressed recipient address (lower case).
    pub address: String,
    /// Why: `bounce: <reply>`, `unsubscribe`, `complaint`, `manual`.
    pub reason: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A DKIM signing key of a sending domain. The private key never leaves the store
/// except to sign; nothing prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct DkimKeyRecord {
    /// The selector: `<selector>._domainkey.<domain>` publishes the public key.
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// PKCS#1 DER (RSA) or PKCS#8 DER (Ed25519).
    pub private_key: Vec<u8>,
    /// The `p=` value's bytes: SubjectPublicKeyInfo DER (RSA) or the raw 32-byte key (Ed25519).
    pub public_key: Vec<u8>,
}

impl std::fmt::Debug for DkimKeyRecord {
    // Keeps the private key out of logs and panic messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKeyRecord")
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    Rsa,
    Ed25519,
}

impl DkimAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::Rsa => "rsa",
            DkimAlgorithm::Ed25519 => "ed25519",
        }
    }

    pub fn parse(s: &str) -> Option<DkimAlgorithm> {
        match s {
            "rsa" => Some(DkimAlgorithm::Rsa),
            "ed25519" => Some(DkimAlgorithm::Ed25519),
            _ => None,
        }
    }
}

/// Sending from a domain stopped: its mail waits in the queue until the domain is
/// resumed (`bounce::reputation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainPause {
    /// The sending domain (lower case); it need not be registered.
    pub domain: String,
    /// Unix milliseconds.
    pub since: i64,
    /// Why, for people: the rate that passed its ceiling, or the operator's note.
    pub reason: String,
}

/// A registered sending domain and its DKIM keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendingDomain {
    /// Lower case.
    pub name: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub keys: Vec<DkimKeyRecord>,
}
