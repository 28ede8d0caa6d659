//! A delivery worker: takes jobs from one domain's ready queue, sends them over one
//! reused connection, and records each recipient's outcome.

use super::{Engine, Job, now_ms, retry};
use crate::bounce::means_slow_down;
use crate::outbound::{self, Connector, Envelope, RemoteReply, SmtpClient};
use crate::store::{RecipientStatus, RecipientUpdate};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn run(engine: Arc<Engine>, domain: String) {
    let delivery = &engine.config.delivery;
    let shaping = delivery.shaping_for(&domain);
    let idle_timeout = delivery.idle_timeout.get();
    let mut connection: Option<(SmtpClient, usize)> = None;
    while let Some(job) = engine
        .domains
        .next_job(&domain, connection.is_some(), idle_timeout)
        .await
    {
        engine
            .domains
            .pace(&domain, shaping.messages_per_minute)
            .await;
        let content = match job.message.content(engine.store.as_ref()).await {
            Ok(c) => c,
            Err(reason) => {
                tracing::error!(queue_id = %job.message.id, reason, "cannot load message for delivery");
                let reply = RemoteReply::local(451, [4, 3, 0], format!("local error: {reason}"));
                engine.record(&job, vec![reply; job.recipients.len()]).await;
                continue;
            }
        };
        let (mut client, mut sent) = match connection.take() {
            Some(open) => open,
            None => match engine.open(&domain).await {
                Ok(client) => (client, 0),
                Err(reply) => {
                    engine.destination_failed(job, reply).await;
                    continue;
                }
            },
        };
        let recipients: Vec<String> = job.recipients.iter().map(|r| r.address.clone()).collect();
        let envelope = Envelope {
            mail_from: &job.message.mail_from,
            recipients: &recipients,
            smtputf8: job.message.smtputf8,
            content: &content,
        };
        let mut result = client.send(&envelope).await;
        if result.is_err() && sent > 0 {
            // A reused connection may have been closed by the server while idle;
            // that says nothing about this message, so try once on a fresh one.
            match engine.open(&domain).await {
                Ok(fresh) => {
                    (client, sent) = (fresh, 0);
                    result = client.send(&envelope).await;
                }
                Err(reply) => {
                    engine.destination_failed(job, reply).await;
                    continue;
                }
            }
        }
        let remote = client.addr;
        match result {
            Ok(replies) => {
                sent += 1;
                let slow_down = replies
                    .iter()
                    .find(|r| means_slow_down(r.code, &r.text))
                    .cloned();
                tracing::info!(queue_id = %job.message.id, %domain, %remote, tls = client.tls,
                    replies = %replies.iter().map(ToString::to_string).collect::<Vec<_>>().join(" | "), "delivery attempt");
                // Recording waits for a group commit; the connection need not wait
                // with it. A crash before the commit means a second delivery, never a
                // lost one.
                let recorder = engine.clone();
                tokio::spawn(async move { recorder.record(&job, replies).await });
                if let Some(reply) = slow_down {
                    client.quit().await;
                    engine.suspend(&domain, reply).await;
                } else if sent >= shaping.max_messages_per_connection {
                    client.quit().await;
                } else {
                    connection = Some((client, sent));
                }
            }
            Err(e) => {
                tracing::info!(queue_id = %job.message.id, %domain, %remote, error = %e, "delivery attempt failed");
                engine
                    .record(&job, vec![e.as_reply(); job.recipients.len()])
                    .await;
            }
        }
    }
    if let Some((client, _)) = connection {
        client.quit().await;
    }
}

impl Engine {
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
    /// temporary one defers it and suspends the domain.
    async fn destination_failed(&self, job: Job, reply: RemoteReply) {
        tracing::info!(queue_id = %job.message.id, domain = %job.domain, reply = %reply, "destination unavailable");
        let domain = job.domain.clone();
        let permanent = reply.is_permanent();
        self.record(&job, vec![reply.clone(); job.recipients.len()])
            .await;
        if !permanent {
            self.suspend(&domain, reply).await;
        }
    }

    /// Suspends a domain for the first retry interval and defers what was waiting.
    async fn suspend(&self, domain: &str, reply: RemoteReply) {
        let pause: Duration = self.config.delivery.retry[0].get();
        for job in self
            .domains
            .suspend(domain, Instant::now() + pause, reply.clone())
        {
            self.record(&job, vec![reply.clone(); job.recipients.len()])
                .await;
        }
    }

    /// Records one reply per recipient of `job`; finishes the message when it is
    /// the last outcome it was waiting for.
    pub(super) async fn record(&self, job: &Job, replies: Vec<RemoteReply>) {
        let now = now_ms();
        let delivery = &self.config.delivery;
        let updates = job
            .recipients
            .iter()
            .zip(replies)
            .map(|(recipient, reply)| {
                let (status, next_attempt, text) = if reply.is_positive() {
                    (RecipientStatus::Delivered, 0, reply.to_string())
                } else if reply.is_permanent() {
                    (RecipientStatus::Bounced, 0, reply.to_string())
                } else if retry::expired(job.message.received_at, delivery.max_age, now) {
                    let text = format!("{} 4.4.7 Delivery time expired; last error: {reply}", reply.code);
                    (RecipientStatus::Bounced, 0, text)
                } else {
                    let next = retry::next_attempt(&delivery.retry, recipient.attempts + 1, now);
                    (RecipientStatus::Deferred, next, reply.to_string())
                };
                tracing::debug!(queue_id = %job.message.id, rcpt = %recipient.address, status = status.as_str(), reply = %text, "recipient");
                let latency = (status == RecipientStatus::Delivered)
                    .then(|| Duration::from_millis(now.saturating_sub(job.message.received_at).max(0) as u64));
                self.metrics.delivery(status.as_str(), &job.domain, latency);
                RecipientUpdate {
                    idx: recipient.idx,
                    status,
                    next_attempt,
                    reply: text,
                    class: None,
                }
            })
            .collect();
        match self.store.record_attempt(&job.message.id, updates).await {
            Ok(Some(summary)) if summary.needs_bounce_report() => {
                let content = job.message.content(self.store.as_ref()).await.ok();
                self.finish(&summary, content.as_deref().map(|c| c.as_slice()))
                    .await;
            }
            Ok(_) => {}
            // The claim lease runs out and the recipients are tried again: at least once.
            Err(e) => {
                tracing::error!(queue_id = %job.message.id, error = %e, "cannot record delivery outcome")
            }
        }
    }
}
