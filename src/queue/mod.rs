//! The queue: decides what to deliver, when, and over how many connections.
//!
//! Messages reach it two ways. Fresh mail comes straight from inbound (with its
//! content in memory) when the in-memory window has room; everything else — retries,
//! overflow, mail left by a previous run — is claimed from the store by a scanner
//! once due. The window (`delivery.max_messages_in_memory` and
//! `max_bytes_in_memory`) bounds memory: a queue of a million messages keeps at most
//! that many (and that much content) in memory; the rest stay in the store.
//!
//! Work is grouped per destination (a route's host, or a domain's best MX hosts, so
//! domains sharing MX hosts share limits) into ready queues. Each has at most
//! `max_connections` workers; a worker keeps its connection open for up to
//! `max_messages_per_connection` messages, and for `idle_timeout` when its queue runs
//! dry. A connection failure or a "slow down" reply suspends the destination: its
//! queued work is deferred and new work is deferred at once until the suspension ends.
//! When nodes share the store (PostgreSQL), the connection limit, the pace and the
//! suspensions hold for all of them together (`cluster.rs`).
//!
//! Delivery is at least once: a claim is a lease in the store, so work lost in a
//! crash is claimed again after restart.
//!
//! Leases are reckoned on the store's clock (`QueueStore::clock`: the database
//! server's on PostgreSQL), read once per scan; this node's clock only measures
//! the time since, so nodes whose clocks disagree agree on when a lease ends.
//!
//! A node that cannot reach the store cannot renew its claims nor record what it
//! delivers: once a renewal or a record fails it starts no delivery (its jobs are
//! dropped, their claims run out and any node takes them) and claims nothing
//! until a renewal succeeds again. Outcomes it could not record are retried for
//! up to a lease, so a short outage costs no second delivery.

mod cluster;
mod destinations;
mod retry;
mod window;
mod worker;

use crate::bounce::reputation;
use crate::config::Config;
use crate::dns::Resolver;
use crate::metrics::Metrics;
use crate::outbound::RemoteReply;
use crate::outbound::TlsClient;
use crate::smtp::{Domain, Mailbox};
use crate::store::{
    DomainPause, DueMessage, DueRecipient, MessageSummary, NewMessage, QueueId, RecipientStatus,
    RecipientUpdate, Store,
};
use crate::unsubscribe::UnsubscribeKey;
use destinations::Destinations;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OnceCell};
use window::{Place, Window};
use worker::Attempt;

/// The claim lease of versions before node names: their claims have no holder,
/// so at start-up deferred recipients due within this long are taken for such
/// claims and made due at once (real retries among them are merely early; a
/// restart has forgotten the suspensions that deferred them anyway).
const HOLDERLESS_LEASE: Duration = Duration::from_secs(600);
/// Messages whose claims one write renews.
const RENEW_SLICE: usize = 256;
/// How soon a renewal that failed is tried again (sooner if a third of the
/// lease is shorter): deliveries wait for it.
const RENEW_RETRY: Duration = Duration::from_secs(1);
/// How often the scanner looks for due work when nothing wakes it earlier.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Most messages claimed by one scan.
const SCAN_BATCH: usize = 1000;
/// A sending domain's rates are judged at most this often, however many of its
/// bounces and complaints come in.
const JUDGE_INTERVAL: Duration = Duration::from_secs(1);

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A message held in memory while some of its recipients are being delivered.
pub(crate) struct HeldMessage {
    pub id: QueueId,
    /// Envelope sender; `None` for the null sender `<>`.
    pub mail_from: Option<Mailbox>,
    pub smtputf8: bool,
    pub received_at: i64,
    content: OnceCell<Arc<Vec<u8>>>,
    held: Arc<Mutex<HashMap<QueueId, Weak<HeldMessage>>>>,
    _place: Place,
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
    /// envelope sender's domain; none for the null sender (bounces).
    pub fn sending_domain(&self) -> Option<&Domain> {
        self.mail_from.as_ref().map(Mailbox::domain)
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
    /// The ready queue it waits in (see `destinations`).
    pub destination: String,
    pub recipients: Vec<DueRecipient>,
}

pub(crate) struct Engine {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub resolver: Arc<dyn Resolver>,
    pub tls: TlsClient,
    pub metrics: Arc<Metrics>,
    /// Signs the return path of each delivery (`bounce::return_path`).
    pub return_path_key: Arc<UnsubscribeKey>,
    window: Window,
    held: Arc<Mutex<HashMap<QueueId, Weak<HeldMessage>>>>,
    pub destinations: Destinations,
    /// The cluster's connection slots this node's workers hold (shared store only).
    held_slots: cluster::HeldSlots,
    wake_scanner: Notify,
    /// Sending domains paused (`bounce::reputation`), as last read from the store
    /// (where `outpost domain pause|resume` change them) or paused here.
    paused: Mutex<HashMap<String, DomainPause>>,
    /// Sending domains whose bounce or complaint rates may have changed.
    reputation_changed: reputation::Changed,
    /// The store's clock minus this machine's (ms), as last measured.
    clock_offset: AtomicI64,
    /// Until when every claim this node holds is known to last: a lease from
    /// the start of the last renewal that succeeded; moved to the past when a
    /// renewal or a record fails (see the module's comment).
    claims_valid: Mutex<Instant>,
}

/// What inbound holds to hand messages to the queue.
#[derive(Clone)]
pub struct QueueHandle {
    engine: Arc<Engine>,
}

/// A destination delivery has suspended for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuspendedDestination {
    pub destination: String,
    /// Unix ms.
    pub until: i64,
    pub reply: String,
}

/// A place in the in-memory window, taken before the message is committed.
pub struct Reservation {
    engine: Arc<Engine>,
    place: Place,
}

impl QueueHandle {
    /// A place in the window for a message of `size` octets, if there is one.
    /// Without it the message simply waits in the store for the scanner.
    pub fn try_reserve(&self, size: usize) -> Option<Reservation> {
        // A node that cannot renew its claims would not deliver it: it waits in
        // the store, unclaimed, for whichever node scans first.
        if !self.engine.may_deliver() {
            return None;
        }
        let place = self.engine.window.try_take(size)?;
        Some(Reservation {
            engine: self.engine.clone(),
            place,
        })
    }

    /// A time of this machine's clock (unix ms) on the store's clock, which
    /// due times are compared on.
    pub fn store_time(&self, local: i64) -> i64 {
        self.engine.store_time(local)
    }

    /// Destinations suspended now.
    pub fn suspended(&self) -> Vec<SuspendedDestination> {
        self.engine.destinations.suspended()
    }

    /// Messages in the in-memory window now (a queue-depth gauge).
    pub fn in_memory(&self) -> usize {
        self.engine.config.delivery.max_messages_in_memory - self.engine.window.room()
    }

    /// A bounce email or complaint for mail of `sending_domain` was recorded: its
    /// rates are judged again.
    pub fn feedback_recorded(&self, sending_domain: &str) {
        self.engine.reputation_changed.note(sending_domain);
    }
}

impl Reservation {
    /// The claim on the store's copy of a message received at `received_at` (ms):
    /// when it is first due, and the node holding it. Delivery already holds the
    /// message, so it is due after the lease (renewed while it is held) and no
    /// scan takes it twice; should this process die, the lease runs out and a
    /// scan, of any node, finds it.
    pub fn claim(&self, received_at: i64) -> (i64, String) {
        (
            self.engine.store_time(received_at) + self.engine.lease_ms(),
            self.engine.config.server.node_name.clone(),
        )
    }

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
                size: message.content.len(),
                smtputf8: message.smtputf8,
                received_at: message.received_at,
                recipients: Vec::new(),
            },
            self.place,
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
    metrics: Arc<Metrics>,
    return_path_key: Arc<UnsubscribeKey>,
) -> QueueHandle {
    let lease = config.store.lease.get();
    let window = Window::new(
        config.delivery.max_messages_in_memory,
        config.delivery.max_bytes_in_memory,
    );
    let engine = Arc::new(Engine {
        config,
        store,
        resolver,
        tls: TlsClient::new(),
        metrics,
        return_path_key,
        window,
        held: Arc::new(Mutex::new(HashMap::new())),
        destinations: Destinations::default(),
        held_slots: cluster::HeldSlots::default(),
        wake_scanner: Notify::new(),
        paused: Mutex::new(HashMap::new()),
        reputation_changed: reputation::Changed::default(),
        clock_offset: AtomicI64::new(0),
        // Nothing is held yet: whatever is claimed from now on is fresh.
        claims_valid: Mutex::new(Instant::now() + lease),
    });
    tokio::spawn(engine.clone().scan_loop());
    tokio::spawn(engine.clone().judge_reputations());
    QueueHandle { engine }
}

impl Engine {
    fn hold(
        &self,
        due: DueMessage,
        place: Place,
        content: Option<Arc<Vec<u8>>>,
    ) -> Arc<HeldMessage> {
        let message = Arc::new(HeldMessage {
            id: due.id,
            mail_from: due.mail_from,
            smtputf8: due.smtputf8,
            received_at: due.received_at,
            content: OnceCell::new_with(content),
            held: self.held.clone(),
            _place: place,
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
    /// Mail of a paused sending domain is deferred without being tried.
    async fn dispatch(self: &Arc<Self>, message: Arc<HeldMessage>, recipients: Vec<DueRecipient>) {
        let recipients = self.drop_suppressed(&message, recipients).await;
        let paused = self.pause_reply(&message).await;
        let mut by_domain: Vec<(String, Vec<DueRecipient>)> = Vec::new();
        for r in recipients {
            let domain = r.address.domain().as_str();
            match by_domain.iter_mut().find(|(d, _)| d == domain) {
                Some((_, list)) => list.push(r),
                None => by_domain.push((domain.to_string(), vec![r])),
            }
        }
        for (domain, recipients) in by_domain {
            if let Some(reply) = &paused {
                // Deferred untried until the next retry, or until the domain is
                // resumed (which makes its mail due at once).
                let job = Job {
                    message: message.clone(),
                    destination: String::new(),
                    domain,
                    recipients,
                };
                let until = Instant::now() + self.config.delivery.retry[0].get();
                let reply = reply.clone();
                self.record(&job, Attempt::Skipped { reply, until }).await;
                continue;
            }
            let job = Job {
                message: message.clone(),
                destination: self.destination_key(&domain).await,
                domain,
                recipients,
            };
            if let Err(refused) = self.destinations.push(self, job) {
                let engine = self.clone();
                tokio::spawn(async move {
                    let destinations::Suspended { job, reply, until } = *refused;
                    engine.record(&job, Attempt::Skipped { reply, until }).await
                });
            }
        }
    }

    /// Names the ready queue for `domain`: its route's host, or its best MX hosts
    /// (looked up through the resolver's cache). Lookup failures fall back to the
    /// domain itself; the worker meets the failure again and records it.
    async fn destination_key(&self, domain: &str) -> String {
        if let Some(route) = crate::outbound::route_for(&self.config, domain) {
            return format!("route:{}", route.to);
        }
        match self.resolver.mx(domain).await {
            Ok(crate::dns::MxAnswer::Exchanges(exchanges)) => {
                let best = exchanges[0].0;
                let mut hosts: Vec<&str> = exchanges
                    .iter()
                    .filter(|(preference, _)| *preference == best)
                    .map(|(_, host)| host.as_str())
                    .collect();
                hosts.sort_unstable();
                format!("mx:{}", hosts.join(","))
            }
            _ => format!("domain:{domain}"),
        }
    }

    /// The reply that defers mail of a paused sending domain, untried, if its
    /// domain is paused.
    async fn pause_reply(&self, message: &HeldMessage) -> Option<RemoteReply> {
        let domain = message.sending_domain()?.as_str().to_ascii_lowercase();
        if !self
            .paused
            .lock()
            .expect("paused lock")
            .contains_key(&domain)
        {
            return None;
        }
        // `outpost domain resume` makes the domain's mail due in the same commit
        // that lifts the pause: the store has the last word, or mail claimed just
        // after a resume would wait for its next retry.
        self.refresh_paused().await;
        let paused = self.paused.lock().expect("paused lock");
        let pause = paused.get(&domain)?;
        Some(RemoteReply::local(
            451,
            [4, 7, 1],
            format!(
                "sending from {domain} is paused: {} (outpost domain resume {domain})",
                pause.reason
            ),
        ))
    }

    /// Reads the paused sending domains from the store, where another process
    /// (`outpost domain pause|resume`) may have changed them.
    async fn refresh_paused(&self) {
        match self.store.paused_domains().await {
            Ok(list) => {
                *self.paused.lock().expect("paused lock") =
                    list.into_iter().map(|p| (p.domain.clone(), p)).collect();
            }
            Err(e) => tracing::error!(error = %e, "cannot read the paused sending domains"),
        }
    }

    /// Judges the rates of the sending domains whose bounces or complaints came
    /// in, and pauses those past their ceiling (`bounce::reputation`).
    async fn judge_reputations(self: Arc<Self>) {
        let config = &self.config.deliverability;
        loop {
            for domain in self.reputation_changed.take().await {
                match reputation::judge(self.store.as_ref(), config, &domain, now_ms()).await {
                    Ok(Some(pause)) => {
                        self.paused
                            .lock()
                            .expect("paused lock")
                            .insert(pause.domain.clone(), pause);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(%domain, error = %e, "cannot judge the sending domain's rates")
                    }
                }
            }
            tokio::time::sleep(JUDGE_INTERVAL).await;
        }
    }

    /// Records the suppressed recipients as such and returns the others.
    async fn drop_suppressed(
        &self,
        message: &HeldMessage,
        recipients: Vec<DueRecipient>,
    ) -> Vec<DueRecipient> {
        let Some(domain) = message.sending_domain() else {
            return recipients;
        };
        let mut send = Vec::with_capacity(recipients.len());
        let mut suppressed = Vec::new();
        for r in recipients {
            match self
                .store
                .suppression(domain.as_str(), &r.address.to_string())
                .await
            {
                Ok(Some(s)) => suppressed.push(RecipientUpdate {
                    idx: r.idx,
                    status: RecipientStatus::Suppressed,
                    next_attempt: 0,
                    reply: format!(
                        "not sent: <{}> is on the suppression list of {domain} ({})",
                        r.address, s.reason
                    ),
                    class: None,
                    attempted: false,
                    path: Default::default(),
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

    fn lease_ms(&self) -> i64 {
        self.config.store.lease.get().as_millis() as i64
    }

    /// Now on the store's clock (unix ms).
    pub(crate) fn now(&self) -> i64 {
        self.store_time(now_ms())
    }

    /// A time of this machine's clock (unix ms) on the store's.
    fn store_time(&self, local: i64) -> i64 {
        local + self.clock_offset.load(Ordering::Relaxed)
    }

    /// Measures the store's clock against this machine's (as NTP does: the
    /// store's reading is taken to be from the middle of the round trip).
    async fn sync_clock(&self) {
        let before = now_ms();
        match self.store.clock().await {
            Ok(store) => {
                let local = before + (now_ms() - before) / 2;
                self.clock_offset.store(store - local, Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "cannot read the store's clock"),
        }
    }

    /// Whether a delivery may start: the claims held are known to last at
    /// least another third of a lease (a renewal is due every third, so this
    /// is false only once one has failed or is late).
    pub(crate) fn may_deliver(&self) -> bool {
        let valid = *self.claims_valid.lock().expect("claims lock");
        Instant::now() + self.config.store.lease.get() / 3 < valid
    }

    /// The store did not take a write: claims may be lost, deliveries stop
    /// until a renewal succeeds.
    pub(crate) fn store_failed(&self) {
        let mut valid = self.claims_valid.lock().expect("claims lock");
        if *valid > Instant::now() {
            *valid = Instant::now();
            tracing::warn!(
                "the store does not answer: no new deliveries until it does (claims cannot be renewed)"
            );
        }
    }

    /// Renews the claims on the messages held in memory, a few times per lease,
    /// so that no other node takes over a delivery that is only slow. Each
    /// renewal is also the node's heartbeat, the first at start-up. One that
    /// fails is tried again within [`RENEW_RETRY`].
    async fn renew_loop(self: Arc<Self>) {
        let every = self.config.store.lease.get() / 3;
        loop {
            let started = Instant::now();
            let renewed = self.renew_once().await;
            let was_stopped = *self.claims_valid.lock().expect("claims lock") <= started;
            if renewed {
                *self.claims_valid.lock().expect("claims lock") =
                    started + self.config.store.lease.get();
                if was_stopped {
                    tracing::info!("the store answers again: deliveries resume");
                    self.wake_scanner.notify_one();
                }
            } else {
                self.store_failed();
            }
            let pause = if renewed {
                every
            } else {
                every.min(RENEW_RETRY)
            };
            tokio::time::sleep_until((started + pause).into()).await;
        }
    }

    /// Renews every held message's claims; false if a write failed.
    async fn renew_once(&self) -> bool {
        let held: Vec<QueueId> = self
            .held
            .lock()
            .expect("held lock")
            .iter()
            .filter(|(_, m)| m.strong_count() > 0)
            .map(|(id, _)| id.clone())
            .collect();
        let now = self.now();
        let node = &self.config.server.node_name;
        // In slices, so that a full window (thousands of messages) does not
        // hold up the acceptances committing beside it; an empty one still
        // beats the heartbeat.
        let mut slices: Vec<Vec<QueueId>> =
            held.chunks(RENEW_SLICE).map(<[QueueId]>::to_vec).collect();
        if slices.is_empty() {
            slices.push(Vec::new());
        }
        for slice in slices {
            if let Err(e) = self
                .store
                .renew_claims(node, slice, now, now + self.lease_ms())
                .await
            {
                tracing::error!(error = %e, "cannot renew the claims of deliveries in progress");
                return false;
            }
        }
        true
    }

    async fn scan_loop(self: Arc<Self>) {
        self.sync_clock().await;
        let now = self.now();
        let lease_until = now + HOLDERLESS_LEASE.as_millis() as i64;
        let node = &self.config.server.node_name;
        match self.store.release_claims(node, now, lease_until).await {
            Ok(n) if n > 0 => tracing::info!(
                recipients = n,
                "resuming deliveries left by the previous run"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot release old claims"),
        }
        // Finding what a previous run left unfinished reads every stored message, so
        // it takes time in proportion to the queue: it runs beside delivery instead
        // of delaying the first one.
        tokio::spawn({
            let engine = self.clone();
            async move { engine.finish_leftovers().await }
        });
        tokio::spawn(self.clone().renew_loop());
        tokio::spawn(self.clone().renew_slots_loop());
        let mut retry_seen = self.store.retry_requested_at().await.unwrap_or_default();
        let mut suspensions_read = None;
        let mut clock_synced = Instant::now();
        loop {
            // Once a scan interval: a busy scanner loops far more often.
            if clock_synced.elapsed() >= SCAN_INTERVAL {
                self.sync_clock().await;
                clock_synced = Instant::now();
            }
            self.refresh_paused().await;
            // `outpost queue retry` runs in another process (or on another
            // node): its request lifts the suspensions here too, or retried mail
            // would be deferred untried.
            if let Ok(requested) = self.store.retry_requested_at().await
                && requested > retry_seen
            {
                retry_seen = requested;
                self.destinations.lift_suspensions();
            }
            // After the retry request: a suspension still in the store was made
            // after it, or its request is yet to be seen (the store drops them
            // in the request's commit).
            self.adopt_suspensions(&mut suspensions_read).await;
            if self.scan_once().await {
                // More may be due: go on as soon as the window has room.
                self.window.wait_for_room(SCAN_INTERVAL).await;
                continue;
            }
            let _ = tokio::time::timeout(SCAN_INTERVAL, self.wake_scanner.notified()).await;
        }
    }

    /// Claims and dispatches due work; true when more may be due right away.
    async fn scan_once(self: &Arc<Self>) -> bool {
        let room = self.window.room().min(SCAN_BATCH);
        if room == 0 {
            return true;
        }
        if !self.may_deliver() {
            return false;
        }
        let now = self.now();
        let lease_until = now + self.lease_ms();
        let node = &self.config.server.node_name;
        let claimed = match self.store.claim_due(node, now, lease_until, room).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot claim due messages");
                return false;
            }
        };
        let more = claimed.iter().map(|m| m.recipients.len()).sum::<usize>() >= room;
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
                None => match self.window.try_take(due.size) {
                    Some(place) => self.hold(due, place, None),
                    None => {
                        // Inbound took the room meanwhile: give the claim back.
                        let _ = self.store.unclaim(&due.id, now).await;
                        continue;
                    }
                },
            };
            // Dispatching looks up the destination's MX, which for a domain whose DNS
            // does not answer takes the resolver's whole timeout; awaiting it here
            // would hold every other due message behind it.
            let engine = self.clone();
            tokio::spawn(async move { engine.dispatch(message, recipients).await });
        }
        more
    }

    /// Sends the bounce reports a previous run owed but did not send. Runs while
    /// this run delivers, so it leaves alone what this run finishes itself: a message
    /// still held by a job (its outcome is being recorded and finished), and one whose
    /// content is gone since the list was read (finished meanwhile; a job lets go of
    /// its message only after finishing it). Either would get a second report.
    async fn finish_leftovers(&self) {
        // Paged: `finish` takes each message off the list, but one it leaves (held,
        // or failing) must not be read again and again.
        let mut after = None;
        loop {
            let list = match self.store.unfinalized(after.as_ref(), SCAN_BATCH).await {
                Ok(list) => list,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list unfinished messages");
                    return;
                }
            };
            let complete = list.len() < SCAN_BATCH;
            after = list.last().map(|m| m.id.clone());
            for summary in list {
                let held = self
                    .held
                    .lock()
                    .expect("held lock")
                    .get(&summary.id)
                    .and_then(Weak::upgrade)
                    .is_some();
                if held {
                    continue;
                }
                match self.store.message_content(&summary.id).await {
                    Ok(Some(content)) => self.finish(&summary, Some(&content)).await,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(queue_id = %summary.id, error = %e, "cannot read an unfinished message; will retry at next start")
                    }
                }
            }
            if complete {
                return;
            }
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
            // The summary is the store's view: its sender was a Mailbox when stored.
            if let Some(report) = report
                && let Some(sender) = Mailbox::parse(&summary.mail_from)
            {
                let now = self.now();
                let dsn = NewMessage {
                    id: QueueId::generate(),
                    mail_from: None,
                    recipients: vec![crate::store::NewRecipient {
                        local: self.config.relay.is_local(sender.domain()),
                        address: sender,
                    }],
                    auth_user: None,
                    smtputf8: summary.smtputf8,
                    content: Arc::new(report),
                    received_at: now,
                    first_attempt_at: now,
                    claimed_by: None,
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
