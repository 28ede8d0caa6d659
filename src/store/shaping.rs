//! Traffic shaping that the nodes of a cluster share: per destination (a route's
//! host, or a set of MX hosts), the connection slots, the pace of
//! `messages_per_minute`, and suspensions after failures or "slow down"
//! replies (docs/cluster.md).
//!
//! Only a store that several nodes share keeps them. On SQLite, which one node
//! uses at a time, that node's memory (`queue/destinations.rs`) already sees
//! every connection and message, so [`ShapingStore::shared_shaping`] is `None`
//! and delivery asks the store nothing per connection or message.

use super::StoreFuture;

/// One of a destination's `max_connections` connection slots, held by one
/// worker of one node for as long as its connection is open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectionSlot {
    pub destination: String,
    /// Below the destination's connection limit.
    pub number: u32,
    /// The node holding it (`[server] node_name`).
    pub holder: String,
    /// Tells this holding from an earlier or later one of the same slot: a
    /// renewal or release of a slot taken over since does nothing.
    pub token: i64,
}

/// A destination suspended by one node for every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationSuspension {
    pub destination: String,
    /// Unix ms.
    pub until: i64,
    /// The reply that caused it.
    pub reply: String,
    /// The node that suspended it.
    pub node: String,
}

/// The role: whether this store shapes traffic for a cluster.
pub trait ShapingStore: Send + Sync {
    /// The shaping shared with the other nodes of the store; `None` when no
    /// other node can use the store (SQLite).
    fn shared_shaping(&self) -> Option<&dyn SharedShaping>;
}

/// Shaping kept in a shared store. Times are unix ms from the caller's clock.
/// Slots and paces are leases and turns, not records: a backend may keep them
/// where a crash of the database loses them (every slot is then free).
pub trait SharedShaping: Send + Sync {
    /// Takes a slot of `destination` numbered below `limit` that nobody holds
    /// (never taken, released, or its lease ended by `now`) for node `holder`
    /// until `lease_until`; `None` when every one is held (or another node took
    /// the last free one at the same moment: asking again soon is the remedy).
    fn take_slot(
        &self,
        destination: &str,
        limit: u32,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreFuture<'_, Option<ConnectionSlot>>;
    /// Extends the leases of `slots` to `lease_until`; returns those still
    /// held, so a slot missing from the answer was taken over (its lease ran
    /// out) or lost with the database's state, and its connection must end.
    fn renew_slots(
        &self,
        slots: Vec<ConnectionSlot>,
        lease_until: i64,
    ) -> StoreFuture<'_, Vec<ConnectionSlot>>;
    /// Frees a slot (its connection is closed); nothing if it was taken over.
    fn release_slot(&self, slot: ConnectionSlot) -> StoreFuture<'_, ()>;
    /// The start, at or after `now`, of the next message to `destination`,
    /// `interval` ms after the one before it (which every node asks for here):
    /// one pace per destination for the whole cluster.
    fn next_send(&self, destination: &str, interval: i64, now: i64) -> StoreFuture<'_, i64>;
    /// Suspends a destination for every node until `suspension.until`; a
    /// suspension ending later already in force is kept.
    fn suspend_destination(&self, suspension: DestinationSuspension) -> StoreFuture<'_, ()>;
    /// The suspensions in force at `now`, by destination. `retry_now` (an
    /// operator's retry) lifts them all.
    fn destination_suspensions(&self, now: i64) -> StoreFuture<'_, Vec<DestinationSuspension>>;
}
