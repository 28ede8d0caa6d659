//! The queue: decides what to deliver, when, and over how many connections.
//!
//! Messages reach it two ways. Fresh mail comes straight from inbound (with its
//! content in memory) when the in-memory window has room; everything else — retries,
//! overflow, mail left by a previous run — is claimed from the store by a scanner
//! once due. The window (`delivery.max_messages_in_memory`) bounds memory: a queue of
//! a million messages keeps at most that many in memory, the rest stay in the store.
//!
//! Work is grouped per destination domain into ready queues. Each domain has at most
//! `max_connections` workers; a worker keeps its connection open for up to
//! `max_messages_per_connection` messages, and for `idle_timeout` when its queue runs
//! dry. A connection failure or a "slow down" reply suspends the domain: its queued
//! work is deferred and new work is deferred at once until the suspension ends.
//!
//! Delivery is at least once: a claim is a lease in the store, so work lost in a
//! crash is claimed again after restart.

mod domains;
mod retry;
mod worker;

use crate::config::Config;
use crate::dns::Resolver;
use crate::outbound::TlsClient;
use crate::store::{
    DueMessage, DueRecipient, MessageSummary, NewMessage, QueueId, RecipientStatus,
    RecipientUpdate, Store,
};
use domains::Domains;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, OnceCell, OwnedSemaphorePermit, Semaphore};

/// How long a claim in the store lasts before another scan may take the work again.
pub const CLAIM_LEASE: Duration = Duration::from_secs(600);
/// How often the scanner looks for due work when nothing wakes it earlier.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Most messages claimed by one scan.
const SCAN_BATCH: usize = 1000;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A message held in memory while some of its recipients are being delivered.
pub(crate) struct HeldMessage {
    pub id: QueueId,
    pub mail_from: String,
    pub smtputf8: bool,
    pub received_at: i64,
    content: OnceCell<Arc<Vec<u8>>>,
    held: Arc<Mutex<HashMap<QueueId, Weak<HeldMessage>>>>,
    _permit: OwnedSemaphorePermit,
}

impl HeldMessage {
    /// The content, loaded from the store the first time it is needed.
    pub async fn content(&self, store: &dyn Store) -> Result<Arc<Vec<u8>>, String> {
        self.content
            .get_or_try_init(|| async {
                match store.message_content(&self.id).await {
                    Ok(Some(content)) => Ok(Arc::new(content)),
                    Ok(None) => Err("message content is gone from the store".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await
            .cloned()
    }
}

impl HeldMessage {
    /// The domain the message is sent from, whose suppression list applies: the
    /// envelope sender's domain, lower case; empty for the null sender (bounces).
    pub fn sending_domain(&self) -> String {
        self.mail_from
            .rsplit_once('@')
            .map_or(String::new(), |(_, d)| d.to_ascii_lowercase())
    }
}

impl Drop for HeldMessage {
    fn drop(&mut self) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(&self.id);
        }
    }
}

/// Recipients of one message at one domain: one delivery transaction.
pub(crate) struct Job {
    pub message: Arc<HeldMessage>,
    pub domain: String,
    pub recipients: Vec<DueRecipient>,
}

pub(crate) struct Engine {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub resolver: Arc<dyn Resolver>,
    pub tls: TlsClient,
    window: Arc<Semaphore>,
    held: Arc<Mutex<HashMap<QueueId, Weak<HeldMessage>>>>,
    pub domains: Domains,
    wake_scanner: Notify,
}

/// What inbound holds to hand messages to the queue.
#[derive(Clone)]
pub struct QueueHandle {
    engine: Arc<Engine>,
}

/// A place in the in-memory window, taken before the message is committed.
pub struct Reservation {
    engine: Arc<Engine>,
    permit: OwnedSemaphorePermit,
}

impl QueueHandle {
    /// A place in the window, if there is one. Without it the message simply waits
    /// in the store for the scanner.
    pub fn try_reserve(&self) -> Option<Reservation> {
        let permit = self.engine.window.clone().try_acquire_owned().ok()?;
        Some(Reservation {
            engine: self.engine.clone(),
            permit,
        })
    }

    /// Wakes the scanner (after `queue retry`, for instance).
    pub fn wake(&self) {
        self.engine.wake_scanner.notify_one();
    }
}

impl Reservation {
    /// Hands a committed message to delivery.
    pub fn submit(self, message: &NewMessage) {
        let recipients = message
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.local)
            .map(|(idx, r)| DueRecipient {
                idx,
                address: r.address.clone(),
                attempts: 0,
            })
            .collect::<Vec<_>>();
        if recipients.is_empty() {
            return;
        }
        let held = self.engine.hold(
            DueMessage {
                id: message.id.clone(),
                mail_from: message.mail_from.clone(),
                smtputf8: message.smtputf8,
                received_at: message.received_at,
                recipients: Vec::new(),
            },
            self.permit,
            Some(message.content.clone()),
        );
        let engine = self.engine;
        tokio::spawn(async move { engine.dispatch(held, recipients).await });
    }
}

/// Starts the scanner and returns the handle inbound uses.
pub fn start(
    config: Arc<Config>,
    store: Arc<dyn Store>,
    resolver: Arc<dyn Resolver>,
) -> QueueHandle {
    let window = Arc::new(Semaphore::new(config.delivery.max_messages_in_memory));
    let engine = Arc::new(Engine {
        config,
        store,
        resolver,
        tls: TlsClient::new(),
        window,
        held: Arc::new(Mutex::new(HashMap::new())),
        domains: Domains::default(),
        wake_scanner: Notify::new(),
    });
    tokio::spawn(engine.clone().scan_loop());
    QueueHandle { engine }
}

impl Engine {
    fn hold(
        &self,
        due: DueMessage,
        permit: OwnedSemaphorePermit,
        content: Option<Arc<Vec<u8>>>,
    ) -> Arc<HeldMessage> {
        let message = Arc::new(HeldMessage {
            id: due.id,
            mail_from: due.mail_from,
            smtputf8: due.smtputf8,
            received_at: due.received_at,
            content: OnceCell::new_with(content),
            held: self.held.clone(),
            _permit: permit,
        });
        self.held
            .lock()
            .expect("held lock")
            .insert(message.id.clone(), Arc::downgrade(&message));
        message
    }

    /// Splits a message's recipients by domain into jobs and queues them. Recipients
    /// on the sending domain's suppression list are not sent to: they are recorded
    /// as `suppressed` with the reason (SPEC §5.4), so the sender sees the event.
    async fn dispatch(self: &Arc<Self>, message: Arc<HeldMessage>, recipients: Vec<DueRecipient>) {
        let recipients = self.drop_suppressed(&message, recipients).await;
        let mut by_domain: Vec<(String, Vec<DueRecipient>)> = Vec::new();
        for r in recipients {
            let domain = r
                .address
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_ascii_lowercase();
            match by_domain.iter_mut().find(|(d, _)| *d == domain) {
                Some((_, list)) => list.push(r),
                None => by_domain.push((domain, vec![r])),
            }
        }
        for (domain, recipients) in by_domain {
            let job = Job {
                message: message.clone(),
                domain,
                recipients,
            };
            if let Err((job, reply)) = self.domains.push(self, job) {
                // The domain is suspended: defer without trying.
                self.record(&job, vec![reply; job.recipients.len()]).await;
            }
        }
    }

    /// Records the suppressed recipients as such and returns the others.
    async fn drop_suppressed(
        &self,
        message: &HeldMessage,
        recipients: Vec<DueRecipient>,
    ) -> Vec<DueRecipient> {
        let domain = message.sending_domain();
        if domain.is_empty() {
            return recipients;
        }
        let mut send = Vec::with_capacity(recipients.len());
        let mut suppressed = Vec::new();
        for r in recipients {
            match self.store.suppression(&domain, &r.address).await {
                Ok(Some(s)) => suppressed.push(RecipientUpdate {
                    idx: r.idx,
                    status: RecipientStatus::Suppressed,
                    next_attempt: 0,
                    reply: format!(
                        "not sent: <{}> is on the suppression list of {domain} ({})",
                        r.address, s.reason
                    ),
                    class: None,
                }),
                Ok(None) => send.push(r),
                // Unknown is not suppressed: the list protects reputation, losing mail is worse.
                Err(e) => {
                    tracing::error!(queue_id = %message.id, error = %e, "cannot read the suppression list; sending");
                    send.push(r);
                }
            }
        }
        if !suppressed.is_empty() {
            tracing::info!(queue_id = %message.id, %domain, count = suppressed.len(), "suppressed recipients not sent");
            self.commit(message, suppressed).await;
        }
        send
    }

    async fn scan_loop(self: Arc<Self>) {
        let now = now_ms();
        match self.store.release_claims(now).await {
            Ok(n) if n > 0 => tracing::info!(
                recipients = n,
                "resuming deliveries left by the previous run"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot release old claims"),
        }
        self.finish_leftovers().await;
        loop {
            self.scan_once().await;
            let _ = tokio::time::timeout(SCAN_INTERVAL, self.wake_scanner.notified()).await;
        }
    }

    async fn scan_once(self: &Arc<Self>) {
        let room = self.window.available_permits().min(SCAN_BATCH);
        if room == 0 {
            return;
        }
        let now = now_ms();
        let lease_until = now + CLAIM_LEASE.as_millis() as i64;
        let claimed = match self.store.claim_due(now, lease_until, room).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot claim due messages");
                return;
            }
        };
        for mut due in claimed {
            let recipients = std::mem::take(&mut due.recipients);
            let existing = self
                .held
                .lock()
                .expect("held lock")
                .get(&due.id)
                .and_then(Weak::upgrade);
            let message = match existing {
                Some(m) => m,
                None => match self.window.clone().try_acquire_owned() {
                    Ok(permit) => self.hold(due, permit, None),
                    Err(_) => {
                        // Inbound took the room meanwhile: give the claim back.
                        let _ = self.store.retry_now(Some(&due.id), now).await;
                        continue;
                    }
                },
            };
            self.dispatch(message, recipients).await;
        }
    }

    /// Sends the bounce reports a previous run owed but did not send.
    async fn finish_leftovers(&self) {
        match self.store.unfinalized(SCAN_BATCH).await {
            Ok(list) => {
                for summary in list {
                    let content = self
                        .store
                        .message_content(&summary.id)
                        .await
                        .ok()
                        .flatten()
                        .map(Arc::new);
                    self.finish(&summary, content.as_deref().map(|c| c.as_slice()))
                        .await;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list unfinished messages"),
        }
    }

    /// Sends the bounce report a completed message owes, then drops its content.
    pub(crate) async fn finish(&self, summary: &MessageSummary, content: Option<&[u8]>) {
        if summary.needs_bounce_report() {
            let report = crate::bounce::delivery_status_notification(
                summary,
                content.unwrap_or(b""),
                &self.config.hostname,
                chrono::Utc::now(),
            );
            if let Some(report) = report {
                let now = now_ms();
                let sender_domain = summary
                    .mail_from
                    .rsplit_once('@')
                    .map_or("", |(_, d)| d)
                    .to_ascii_lowercase();
                let dsn = NewMessage {
                    id: QueueId::generate(),
                    mail_from: String::new(),
                    recipients: vec![crate::store::NewRecipient {
                        address: summary.mail_from.clone(),
                        local: self.config.relay.local_domains.contains(&sender_domain),
                    }],
                    auth_user: None,
                    smtputf8: summary.smtputf8,
                    content: Arc::new(report),
                    received_at: now,
                    first_attempt_at: now,
                };
                let dsn_id = dsn.id.clone();
                if let Err(e) = self.store.enqueue(dsn).await {
                    tracing::error!(queue_id = %summary.id, error = %e, "cannot queue the bounce report; will retry at next start");
                    return;
                }
                tracing::info!(queue_id = %summary.id, dsn = %dsn_id, to = %summary.mail_from, "bounce report queued");
                self.wake_scanner.notify_one();
            }
        }
        if let Err(e) = self.store.finalize(&summary.id).await {
            tracing::error!(queue_id = %summary.id, error = %e, "cannot finalize message");
        }
    }
}
