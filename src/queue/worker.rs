//! A delivery worker: takes jobs from one destination's ready queue, sends them over
//! one reused connection, and records each recipient's outcome.

use super::cluster::SlotLease;
use super::{Engine, HeldMessage, Job, retry};
use crate::bounce::return_path::{self, ReturnPath};
use crate::bounce::{classify, means_slow_down};
use crate::config::Shaping;
use crate::outbound::{self, Connector, Envelope, RemoteReply, SmtpClient};
use crate::smtp::Mailbox;
use crate::store::{AttemptPath, MessageSummary, RecipientStatus, RecipientUpdate, Suppression};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The first pause before an outcome the store did not take is written again;
/// it doubles up to the second.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(2);

pub(super) async fn run(engine: Arc<Engine>, destination: String, shaping: Shaping) {
    let idle_timeout = engine.config.delivery.idle_timeout.get();
    let mut connection: Option<(SmtpClient, usize)> = None;
    // The cluster's connection slot (shared store only): taken before a
    // connection opens, given back (dropped) once it is closed.
    let mut slot: Option<SlotLease> = None;
    while let Some(job) = engine
        .destinations
        .next_job(&destination, connection.is_some(), idle_timeout)
        .await
    {
        if !engine.may_deliver() {
            // Its outcome could not be recorded, and its claim may run out
            // meanwhile: it is left to the claim's end (docs/cluster.md).
            tracing::debug!(queue_id = %job.message.id, "store unreachable: delivery not started");
            continue;
        }
        if slot.as_ref().is_some_and(|s| !s.valid()) {
            // Another node may hold the slot now: this connection must end.
            if let Some((client, _)) = connection.take() {
                client.quit().await;
            }
            slot = None;
        }
        if connection.is_none() && slot.is_none() {
            slot = engine
                .take_slot(&destination, shaping.max_connections)
                .await;
            // Waiting for a slot may take a while: a node may have suspended
            // the destination meanwhile.
            if slot.is_some()
                && let Some((until, reply)) = engine.destinations.suspension(&destination)
            {
                slot = None;
                engine.record(&job, Attempt::Skipped { reply, until }).await;
                continue;
            }
        }
        engine.pace(&destination, shaping.messages_per_minute).await;
        let content = match job.message.content(engine.store.as_ref()).await {
            Ok(c) => c,
            Err(reason) => {
                tracing::error!(queue_id = %job.message.id, reason, "cannot load message for delivery");
                let reply = RemoteReply::local(451, [4, 3, 0], format!("local error: {reason}"));
                engine
                    .record(&job, Attempt::Made(vec![reply; job.recipients.len()]))
                    .await;
                continue;
            }
        };
        let (mut client, mut sent) = match connection.take() {
            Some(open) => open,
            None => match engine.open(&job.domain).await {
                Ok(client) => (client, 0),
                Err(reply) => {
                    slot = None;
                    engine.destination_failed(job, reply).await;
                    continue;
                }
            },
        };
        let recipients: Vec<Mailbox> = job.recipients.iter().map(|r| r.address.clone()).collect();
        let mail_from = engine.envelope_sender(&job);
        let envelope = Envelope {
            mail_from: mail_from.as_ref(),
            recipients: &recipients,
            smtputf8: job.message.smtputf8,
            content: &content,
        };
        let mut result = client.send(&envelope).await;
        let closed = match &result {
            Err(_) => true,
            Ok(replies) => replies.iter().all(|r| r.code == 421),
        };
        if closed && sent > 0 {
            // A reused connection may have been closed by the server while idle (or
            // with a 421 after its per-connection limit); that says nothing about
            // this message, so try once on a fresh one.
            match engine.open(&job.domain).await {
                Ok(fresh) => {
                    (client, sent) = (fresh, 0);
                    result = client.send(&envelope).await;
                }
                Err(reply) => {
                    slot = None;
                    engine.destination_failed(job, reply).await;
                    continue;
                }
            }
        }
        let remote = client.addr;
        let path = AttemptPath {
            mx_host: Some(client.host.clone()),
            tls: client.tls.clone(),
        };
        match result {
            Ok(replies) => {
                sent += 1;
                let slow_down = replies
                    .iter()
                    .find(|r| means_slow_down(r.code, &r.text))
                    .cloned();
                tracing::debug!(queue_id = %job.message.id, domain = %job.domain, %remote, "transaction done");
                // Recording waits for a group commit; the connection need not wait
                // with it. A crash before the commit means a second delivery, never a
                // lost one.
                let recorder = engine.clone();
                tokio::spawn(async move {
                    recorder
                        .record(
                            &job,
                            Attempt::Answered {
                                replies,
                                path,
                                remote,
                            },
                        )
                        .await
                });
                if let Some(reply) = slow_down {
                    client.quit().await;
                    slot = None;
                    engine.suspend(&destination, reply).await;
                } else if sent >= shaping.max_messages_per_connection {
                    client.quit().await;
                    slot = None;
                } else {
                    connection = Some((client, sent));
                }
            }
            Err(e) => {
                let replies = vec![e.as_reply(); job.recipients.len()];
                engine
                    .record(
                        &job,
                        Attempt::Answered {
                            replies,
                            path,
                            remote,
                        },
                    )
                    .await;
            }
        }
    }
    if let Some((client, _)) = connection {
        client.quit().await;
    }
    drop(slot);
}

/// What became of a job.
pub(super) enum Attempt {
    /// Replies made up for a failure to reach the destination, one per recipient.
    Made(Vec<RemoteReply>),
    /// Replies from a server that was reached (or made up for a session that
    /// failed there), one per recipient.
    Answered {
        replies: Vec<RemoteReply>,
        path: AttemptPath,
        /// The server's address, for the log.
        remote: SocketAddr,
    },
    /// Not tried: the destination is suspended until `until`.
    Skipped { reply: RemoteReply, until: Instant },
}

impl Engine {
    /// The envelope sender of a delivery: the message's signed return path
    /// (`bounce::return_path`) naming it and, when the transaction has one, its
    /// recipient; the null sender stays null (RFC 5321 §6.1).
    fn envelope_sender(&self, job: &Job) -> Option<Mailbox> {
        let from = job.message.mail_from.as_ref()?;
        if !self.config.deliverability.return_path {
            return Some(from.clone());
        }
        let rp = ReturnPath {
            message: job.message.id.clone(),
            recipient: match job.recipients.as_slice() {
                [only] => Some(only.idx),
                _ => None,
            },
        };
        let host = return_path::host_for(&self.config.relay.local_domains, from.domain().as_str());
        // A local domain is a valid domain and the token is hex: this parses.
        Mailbox::parse(&return_path::address(&self.return_path_key, &rp, host))
            .or_else(|| Some(from.clone()))
    }

    async fn open(&self, domain: &str) -> Result<SmtpClient, RemoteReply> {
        let destination =
            outbound::destination(&self.config, self.resolver.as_ref(), domain).await?;
        Connector {
            config: &self.config,
            resolver: self.resolver.as_ref(),
            tls: &self.tls,
        }
        .open(&destination)
        .await
    }

    /// The domain could not be reached: a permanent reason bounces the job; a
    /// temporary one defers it and suspends its destination.
    async fn destination_failed(&self, job: Job, reply: RemoteReply) {
        let destination = job.destination.clone();
        let permanent = reply.is_permanent();
        self.record(
            &job,
            Attempt::Made(vec![reply.clone(); job.recipients.len()]),
        )
        .await;
        if !permanent {
            self.suspend(&destination, reply).await;
        }
    }

    /// Suspends a destination for the first retry interval (for every node,
    /// when the store is shared) and defers, untried, what was waiting.
    async fn suspend(&self, destination: &str, reply: RemoteReply) {
        let until = Instant::now() + self.config.delivery.retry[0].get();
        let jobs = self.destinations.suspend(destination, until, reply.clone());
        self.publish_suspension(destination, until, &reply).await;
        self.defer_untried(jobs, reply, until).await;
    }

    /// Records one reply per recipient of `job`; finishes the message when it is
    /// the last outcome it was waiting for. A permanent failure that says the
    /// address is bad suppresses it for the message's sending domain.
    pub(super) async fn record(&self, job: &Job, attempt: Attempt) {
        let now = self.now();
        let delivery = &self.config.delivery;
        let (replies, attempted, resume_at, path, remote) = match attempt {
            Attempt::Made(replies) => (replies, true, None, AttemptPath::default(), None),
            Attempt::Answered {
                replies,
                path,
                remote,
            } => (replies, true, None, path, Some(remote)),
            Attempt::Skipped { reply, until } => {
                let wait = until.saturating_duration_since(Instant::now()).as_millis() as i64;
                let replies = vec![reply; job.recipients.len()];
                (
                    replies,
                    false,
                    Some(now + wait),
                    AttemptPath::default(),
                    None,
                )
            }
        };
        let mut suppress = Vec::new();
        let updates = job
            .recipients
            .iter()
            .zip(replies)
            .map(|(recipient, reply)| {
                let verdict = (!reply.is_positive())
                    .then(|| classify(reply.code, reply.enhanced, &reply.text, reply.stage));
                let (status, next_attempt, text) = if reply.is_positive() {
                    (RecipientStatus::Delivered, 0, reply.to_string())
                } else if reply.is_permanent() {
                    if verdict.as_ref().is_some_and(|v| v.suppress) {
                        suppress.push((recipient.address.to_string(), reply.to_string()));
                    }
                    (RecipientStatus::Bounced, 0, reply.to_string())
                } else if retry::expired(job.message.received_at, delivery.max_age, now) {
                    let text = format!(
                        "{} 4.4.7 Delivery time expired; last error: {reply}",
                        reply.code
                    );
                    (RecipientStatus::Bounced, 0, text)
                } else {
                    let next = resume_at.unwrap_or_else(|| {
                        retry::next_attempt(&delivery.retry, recipient.attempts + 1, now)
                    });
                    // The last try is at max_age, not at the first interval past it.
                    let expiry = job
                        .message
                        .received_at
                        .saturating_add(delivery.max_age.get().as_millis() as i64);
                    (
                        RecipientStatus::Deferred,
                        next.min(expiry),
                        reply.to_string(),
                    )
                };
                let latency = (status == RecipientStatus::Delivered).then(|| {
                    Duration::from_millis(now.saturating_sub(job.message.received_at).max(0) as u64)
                });
                self.metrics.delivery(status.as_str(), &job.domain, latency);
                RecipientUpdate {
                    idx: recipient.idx,
                    status,
                    next_attempt,
                    reply: text,
                    class: verdict.map(|v| v.class.as_str().to_string()),
                    attempted,
                    path: path.clone(),
                }
            })
            .collect::<Vec<_>>();
        log_attempt(job, &updates, remote, &path, attempted);
        let bounced = updates.iter().any(|u| u.status == RecipientStatus::Bounced);
        self.commit(&job.message, updates).await;
        let Some(domain) = job.message.sending_domain() else {
            return;
        };
        if bounced {
            self.reputation_changed.note(domain.as_str());
        }
        for (address, reply) in suppress {
            let suppression = Suppression {
                domain: domain.to_string(),
                address: address.clone(),
                reason: format!("bounce: {reply}"),
                created_at: now,
            };
            match self.store.add_suppression(suppression).await {
                Ok(_) => {
                    tracing::info!(%domain, rcpt = %address, "address suppressed after a permanent bounce")
                }
                Err(e) => {
                    tracing::error!(%domain, rcpt = %address, error = %e, "cannot add suppression")
                }
            }
        }
    }

    /// Writes recipient outcomes of `message`; sends the bounce report and drops the
    /// content when they were the last ones pending. A write the store does not
    /// take is tried again for up to a lease (the message stays held, so its
    /// claims are renewed as soon as the store is back): what was delivered
    /// during a short outage is recorded, not delivered twice.
    pub(super) async fn commit(&self, message: &HeldMessage, updates: Vec<RecipientUpdate>) {
        let now = self.now();
        let give_up = Instant::now() + self.config.store.lease.get();
        let mut pause = RECORD_RETRY_FIRST;
        let recorded = loop {
            match self
                .store
                .record_attempt(&message.id, updates.clone(), now)
                .await
            {
                Ok(recorded) => break recorded,
                Err(e) if Instant::now() + pause < give_up => {
                    self.store_failed();
                    tracing::warn!(queue_id = %message.id, error = %e, retry_in = ?pause, "cannot record delivery outcome yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RECORD_RETRY_MAX);
                }
                // The claim lease runs out and the recipients are tried again: at least once.
                Err(e) => {
                    self.store_failed();
                    tracing::error!(queue_id = %message.id, error = %e, "cannot record delivery outcome");
                    return;
                }
            }
        };
        if let Some(summary) = recorded.filter(MessageSummary::needs_bounce_report) {
            let content = message.content(self.store.as_ref()).await.ok();
            self.finish(&summary, content.as_deref().map(|c| c.as_slice()))
                .await;
        }
    }
}

/// One log line per outcome of a delivery attempt (usually one per attempt):
/// `delivered` and `deferred` at INFO, `bounced` at WARN, with the queue id, the
/// recipients, the server that answered, whether TLS was used, and its reply.
fn log_attempt(
    job: &Job,
    updates: &[RecipientUpdate],
    remote: Option<SocketAddr>,
    path: &AttemptPath,
    tried: bool,
) {
    let remote = remote.map_or_else(|| "none".to_string(), |a| a.to_string());
    let tls = path.tls.is_some();
    let mut groups: Vec<(RecipientStatus, &str, Vec<String>)> = Vec::new();
    for (update, recipient) in updates.iter().zip(&job.recipients) {
        let address = recipient.address.to_string();
        match groups
            .iter_mut()
            .find(|(status, reply, _)| *status == update.status && *reply == update.reply)
        {
            Some((_, _, rcpts)) => rcpts.push(address),
            None => groups.push((update.status, &update.reply, vec![address])),
        }
    }
    for (status, reply, rcpts) in groups {
        let rcpts = rcpts.join(",");
        let (queue_id, outcome) = (&job.message.id, status.as_str());
        if status == RecipientStatus::Bounced {
            tracing::warn!(%queue_id, outcome, %rcpts, domain = %job.domain, %remote, tls, reply, tried, "delivery");
        } else {
            tracing::info!(%queue_id, outcome, %rcpts, domain = %job.domain, %remote, tls, reply, tried, "delivery");
        }
    }
}
