//! Shaping across the nodes of a cluster (docs/cluster.md), when the store is
//! shared ([`SharedShaping`], PostgreSQL). The limits of `destinations.rs` still
//! hold per node and are checked first; the store adds what the other nodes do:
//!
//! - a worker takes one of its destination's `max_connections` slots in the
//!   store before it connects, and gives it back once the connection is closed;
//!   the node renews the leases of the slots it holds (every third of
//!   `[store] lease`), so a dead node's slots free themselves;
//! - the pace of `messages_per_minute` is one turn after another in the store;
//! - a suspension is written to the store, and every node adopts the others'
//!   (read at most once per scan interval). An operator's retry drops them in
//!   the store as it lifts them here.
//!
//! Times are on the store's clock (`Engine::now`), as the claims' leases are, so
//! nodes whose clocks disagree agree on when a slot's lease ends.
//!
//! On SQLite none of this runs, and delivery asks the store nothing per
//! connection or message.

use super::{Engine, Job, SCAN_INTERVAL, worker::Attempt};
use crate::outbound::RemoteReply;
use crate::store::{ConnectionSlot, DestinationSuspension, SharedShaping};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The first wait before asking again for a slot when all are held; doubled
/// up to [`SLOT_POLL_MAX`] while they stay held.
const SLOT_POLL_MIN: Duration = Duration::from_millis(20);
const SLOT_POLL_MAX: Duration = Duration::from_millis(500);
/// A suspension read back from the store is the one in force here unless it
/// ends this much later (the two clocks' readings that convert it differ).
const ADOPT_MARGIN: Duration = Duration::from_secs(1);

/// The slots this node's workers hold, by token, with each lease's end as
/// last renewed (unix ms; 0 once the slot is known to be lost).
#[derive(Default)]
pub(crate) struct HeldSlots(Mutex<HashMap<i64, Arc<HeldSlot>>>);

pub(crate) struct HeldSlot {
    slot: ConnectionSlot,
    lease_until: AtomicI64,
}

/// A worker's slot: it may keep its connection while [`SlotLease::valid`];
/// dropping it (after the connection is closed) gives the slot back.
pub(crate) struct SlotLease {
    held: Arc<HeldSlot>,
    engine: Arc<Engine>,
}

impl SlotLease {
    /// False once the lease ran out without a renewal, or a renewal found the
    /// slot gone: another node may have it, so the connection must end.
    pub fn valid(&self) -> bool {
        self.engine.now() < self.held.lease_until.load(Ordering::Relaxed)
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        let token = self.held.slot.token;
        self.engine
            .held_slots
            .0
            .lock()
            .expect("held slots lock")
            .remove(&token);
        // Without a runtime (the process is stopping) the lease runs out instead.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (engine, slot) = (self.engine.clone(), self.held.slot.clone());
        runtime.spawn(async move {
            let Some(shaping) = engine.store.shared_shaping() else {
                return;
            };
            if let Err(e) = shaping.release_slot(slot).await {
                tracing::warn!(error = %e, "cannot give back a connection slot; its lease will run out");
            }
        });
    }
}

impl Engine {
    fn shared(&self) -> Option<&dyn SharedShaping> {
        self.store.shared_shaping()
    }

    /// A connection slot of `destination` among `limit` for the cluster,
    /// waiting until one is free; `None` at once when the store is not shared
    /// (the node's own worker count is then the whole limit). While the store
    /// cannot be reached no slot is given: delivery waits for it.
    pub(super) async fn take_slot(
        self: &Arc<Self>,
        destination: &str,
        limit: usize,
    ) -> Option<SlotLease> {
        let shaping = self.shared()?;
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let node = &self.config.server.node_name;
        let mut wait = SLOT_POLL_MIN;
        let mut failing = false;
        loop {
            let now = self.now();
            let lease_until = now + self.lease_ms();
            match shaping
                .take_slot(destination, limit, node, now, lease_until)
                .await
            {
                Ok(Some(slot)) => {
                    let held = Arc::new(HeldSlot {
                        slot,
                        lease_until: AtomicI64::new(lease_until),
                    });
                    self.held_slots
                        .0
                        .lock()
                        .expect("held slots lock")
                        .insert(held.slot.token, held.clone());
                    return Some(SlotLease {
                        held,
                        engine: self.clone(),
                    });
                }
                Ok(None) => failing = false,
                // Said once per outage of each waiting worker, not at every poll.
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(destination, error = %e, "cannot take a connection slot; delivery to it waits for the database")
                }
                Err(e) => tracing::debug!(destination, error = %e, "cannot take a connection slot"),
            }
            // Jittered, so that nodes waiting together do not ask together.
            let jitter = rand::random::<u64>() % (wait.as_millis() as u64 / 2 + 1);
            tokio::time::sleep(wait + Duration::from_millis(jitter)).await;
            wait = (wait * 2).min(SLOT_POLL_MAX);
        }
    }

    /// Renews the leases of the slots held here, every third of a lease.
    pub(super) async fn renew_slots_loop(self: Arc<Self>) {
        let Some(shaping) = self.shared() else {
            return;
        };
        let mut every = tokio::time::interval(self.config.store.lease.get() / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let held: Vec<Arc<HeldSlot>> = self
                .held_slots
                .0
                .lock()
                .expect("held slots lock")
                .values()
                .cloned()
                .collect();
            if held.is_empty() {
                continue;
            }
            let lease_until = self.now() + self.lease_ms();
            let slots = held.iter().map(|h| h.slot.clone()).collect();
            match shaping.renew_slots(slots, lease_until).await {
                Ok(renewed) => {
                    for h in &held {
                        if renewed.iter().any(|s| s.token == h.slot.token) {
                            h.lease_until.store(lease_until, Ordering::Relaxed);
                        } else {
                            tracing::warn!(destination = %h.slot.destination, slot = h.slot.number,
                                "connection slot lost (its lease ran out, or the database lost it); closing its connection");
                            h.lease_until.store(0, Ordering::Relaxed);
                        }
                    }
                }
                // The leases run out as last renewed; their connections end then.
                Err(e) => tracing::error!(error = %e, "cannot renew the connection slots"),
            }
        }
    }

    /// Waits for this destination's turn when `messages_per_minute` is set: in
    /// the store when it is shared (one pace for the cluster), else here. When
    /// the store cannot be reached the node keeps the pace on its own.
    pub(super) async fn pace(&self, destination: &str, messages_per_minute: Option<u32>) {
        if let (Some(shaping), Some(rate)) = (self.shared(), messages_per_minute.filter(|r| *r > 0))
        {
            // Rounded up: never faster than asked.
            let interval = i64::from(60_000u32.div_ceil(rate));
            match shaping.next_send(destination, interval, self.now()).await {
                Ok(start) => {
                    // A turn further off than this is not a turn (a wrong clock).
                    let wait = Duration::from_millis((start - self.now()).max(0) as u64)
                        .min(self.config.delivery.timeout.get());
                    tokio::time::sleep(wait).await;
                    return;
                }
                Err(e) => {
                    tracing::error!(destination, error = %e, "cannot take a turn of the shared pace; pacing this node alone")
                }
            }
        }
        self.destinations
            .pace(destination, messages_per_minute)
            .await
    }

    /// Tells the other nodes that this one suspended `destination` until
    /// `until`.
    pub(super) async fn publish_suspension(
        &self,
        destination: &str,
        until: Instant,
        reply: &RemoteReply,
    ) {
        let Some(shaping) = self.shared() else {
            return;
        };
        let suspension = DestinationSuspension {
            destination: destination.to_string(),
            until: self.now() + until.saturating_duration_since(Instant::now()).as_millis() as i64,
            reply: reply.to_string(),
            node: self.config.server.node_name.clone(),
        };
        if let Err(e) = shaping.suspend_destination(suspension).await {
            tracing::error!(destination, error = %e, "cannot share a destination's suspension with the other nodes");
        }
    }

    /// Adopts the suspensions other nodes made; defers, untried, the jobs
    /// waiting here for those destinations.
    pub(super) async fn adopt_suspensions(self: &Arc<Self>, last: &mut Option<Instant>) {
        let Some(shaping) = self.shared() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < SCAN_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        let now = self.now();
        let list = match shaping.destination_suspensions(now).await {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the destinations other nodes suspended");
                return;
            }
        };
        for s in list {
            let until = Instant::now() + Duration::from_millis((s.until - now).max(0) as u64);
            let reply = crate::outbound::client::parse_reply(format!("{}\r\n", s.reply).as_bytes())
                .unwrap_or_else(|_| RemoteReply::local(451, [4, 4, 5], s.reply.clone()));
            let Some(jobs) = self.destinations.adopt(
                &s.destination,
                until,
                ADOPT_MARGIN,
                reply.clone(),
                &s.node,
            ) else {
                continue;
            };
            let engine = self.clone();
            tokio::spawn(async move { engine.defer_untried(jobs, reply, until).await });
        }
    }

    /// Records `jobs` as deferred without a try, until `until`.
    pub(super) async fn defer_untried(&self, jobs: Vec<Job>, reply: RemoteReply, until: Instant) {
        for job in jobs {
            let reply = reply.clone();
            self.record(&job, Attempt::Skipped { reply, until }).await;
        }
    }
}
