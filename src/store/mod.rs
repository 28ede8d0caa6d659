//! The store: everything Outpost must not forget (messages, envelopes, per-recipient
//! delivery state, users and their domains), behind object-safe traits so that a
//! PostgreSQL backend can later serve several nodes (SPEC §3, §10).
//!
//! # Durability contract
//! A write future resolves `Ok` only after its data is on stable storage. Inbound
//! replies `250` only after `enqueue` resolved `Ok`; any error becomes a temporary
//! reply (`451 4.3.0` when the database cannot be reached, `452 4.3.1`
//! otherwise), so a client never hears `250` for a message that is not on disk.
//! Writes may share one commit (group commit); none skips it.
//!
//! # Roles
//! The store is one object with several roles, each its own trait, so a backend
//! (and a reader) finds every method of a concern in one place:
//!
//! | trait | what it keeps | file (in `sqlite/` and `postgres/`) |
//! |---|---|---|
//! | [`QueueStore`] | messages, envelopes, per-recipient delivery state, claims | `queue.rs` |
//! | [`EventStore`] | the ordered event log (`GET /v1/events`, webhooks) | `events.rs` |
//! | [`SuppressionStore`] | addresses not to send to, per sending domain | `suppressions.rs` |
//! | [`DomainStore`] | sending domains, their DKIM keys, paused domains | `accounts.rs` |
//! | [`AccountStore`] | users (SMTP/API credentials) and their domains | `accounts.rs` |
//! | [`ApiKeyStore`] | users' API keys (their hashes), by hash and by user | `api_keys.rs` |
//! | [`DashboardStore`] | hourly counters, search, attempt details (the web dashboard) | `dashboard.rs` |
//! | [`SharedStore`] | what nodes share besides mail: generated secrets, webhook cursors and leases | `shared.rs` |
//! | [`ShapingStore`] | connection slots, paces, suspensions shared by a cluster's nodes | `shaping.rs` |
//!
//! # Backends
//! [`SqliteStore`] (`sqlite/`) is the default: one embedded database in
//! `data_dir`. [`PostgresStore`] (`postgres/`, `[store] url = "postgres://..."`)
//! keeps the same data in a PostgreSQL database (docs/cluster.md). Both pass the
//! same contract tests (`contract.rs`): a behaviour a caller relies on is a test
//! there, run against each backend.
//!
//! [`Store`] is all of them together: it has no methods of its own and is
//! implemented for every type that implements each role, so callers hold one
//! `Arc<dyn Store>` and call any role's method on it (trait objects see their
//! supertraits' methods without an import); the CLI does too, whichever backend
//! `[store] url` names. Code holding a concrete backend (`Arc<SqliteStore>`)
//! imports the role traits whose methods it calls
//! (`use outpost::store::{QueueStore, ...}`). A new method goes into the role it
//! belongs to (a new concern gets a new role trait, added to `Store`'s
//! supertraits); each backend implements it in that role's file, writes go
//! through the backend's group commit (`sqlite/writer.rs`, `postgres/writer.rs`),
//! and a contract test says what it does.
//!
//! Time comes from the caller (`now`, unix milliseconds) wherever a method stamps
//! or compares times, so backends agree and tests control the clock.
//!
//! # Recovery
//! There is nothing to replay: a message is either in a committed transaction or it
//! never got a `250`. On start-up the delivery engine finds every recipient that is
//! not final and schedules it, so messages that were being delivered when the
//! process died are delivered again (at least once).

mod api_keys;
#[cfg(test)]
pub(crate) mod contract;
mod dashboard;
mod migrate;
mod postgres;
mod shaping;
mod sqlite;
mod types;

pub use api_keys::{ApiKeyRecord, ApiKeyStore, NewApiKey};
pub use dashboard::*;
pub use migrate::{Copied, sqlite_to_postgres as migrate_sqlite_to_postgres};
pub use postgres::{PostgresStore, parse_url as parse_postgres_url};
pub use shaping::*;
pub use sqlite::SqliteStore;
pub use types::*;

use std::future::Future;
use std::pin::Pin;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The disk or database is full.
    #[error("store is full: {0}")]
    Full(String),
    /// The named record already exists.
    #[error("{0} already exists")]
    Conflict(String),
    /// The database cannot be reached or did not answer in time, or the write
    /// lost a deadlock or serialization conflict (PostgreSQL): nothing was
    /// committed; the same write may succeed when tried again.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: I/O errors, corruption, a stopped writer.
    #[error("store error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Store errors never mean the request itself was wrong, except a conflict.
    pub fn is_permanent(&self) -> bool {
        matches!(self, StoreError::Conflict(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

/// Messages and their recipients' delivery state: acceptance writes here, the
/// scheduler claims and records attempts, the CLI and API inspect and retry.
pub trait QueueStore: Send + Sync {
    /// Durably stores a message and its envelope; resolves after the commit.
    fn enqueue(&self, message: NewMessage) -> StoreFuture<'_, ()>;
    /// Messages that still have recipients in a non-final state, oldest first.
    fn queued_messages(&self, limit: usize) -> StoreFuture<'_, Vec<MessageSummary>>;
    /// Recipients still to be delivered (queued or deferred): the queue depth.
    fn pending_recipients(&self) -> StoreFuture<'_, usize>;
    /// One message's envelope and per-recipient state.
    fn message(&self, id: &QueueId) -> StoreFuture<'_, Option<MessageSummary>>;
    /// The stored message bytes (headers and body).
    fn message_content(&self, id: &QueueId) -> StoreFuture<'_, Option<Vec<u8>>>;
    /// Removes a message and its recipients; false if there was none.
    fn delete_message(&self, id: &QueueId) -> StoreFuture<'_, bool>;

    /// Claims up to `limit` queued or deferred recipients due at `now` for the
    /// node `node`, oldest first, by moving their `next_attempt` to `lease_until`
    /// and noting `node` as their holder; grouped by message. A recipient whose
    /// attempt is never recorded (its node died) is claimed again once the lease
    /// runs out unless its node renews it ([`QueueStore::renew_claims`]).
    fn claim_due(
        &self,
        node: &str,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<DueMessage>>;
    /// Records an attempt made at `now` (each update adds one to the recipient's
    /// attempts; the events it logs are stamped `now`). When no recipient of the
    /// message is left pending, returns the message's summary, and if no bounce
    /// report is owed, finalizes it in the same commit. `now` is the attempt's
    /// time (the recipients' last attempt, when `attempted`, and the events').
    fn record_attempt(
        &self,
        id: &QueueId,
        updates: Vec<RecipientUpdate>,
        now: i64,
    ) -> StoreFuture<'_, Option<MessageSummary>>;
    /// Marks a message whose recipients are all final as finished and drops its
    /// content, unless it has local recipients (local mail is kept); the envelope
    /// and recipient states stay for status queries.
    fn finalize(&self, id: &QueueId) -> StoreFuture<'_, ()>;
    /// Messages whose recipients are all final but that were not finalized (the
    /// process stopped in between): their bounce reports may still be owed.
    /// Ordered by id, the first `limit` after `after`. Mail only for our own domains
    /// is never listed: it owes no report.
    fn unfinalized(
        &self,
        after: Option<&QueueId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<MessageSummary>>;
    /// Makes pending recipients due now: of one message, or of all with `None`, and
    /// notes the request so a running scheduler also lifts its suspensions
    /// (and a shared store drops the destination suspensions it keeps, see
    /// [`SharedShaping`]). Returns how many recipients were changed.
    fn retry_now(&self, id: Option<&QueueId>, now: i64) -> StoreFuture<'_, usize>;
    /// Gives back a claim the scheduler cannot serve now: the message's pending
    /// recipients become due at `now` (no retry request is noted).
    fn unclaim(&self, id: &QueueId, now: i64) -> StoreFuture<'_, ()>;
    /// When `retry_now` was last asked for (unix ms; 0 if never).
    fn retry_requested_at(&self) -> StoreFuture<'_, i64>;
    /// At start-up of node `node`: the claims its previous run left are void, so
    /// their recipients are made due at `now`. Claims of other nodes are left to
    /// run out (they may be alive), except on SQLite, which one node uses at a
    /// time: there every claim is its previous run's. Claims made by versions
    /// that did not note a holder are void too; they end by `lease_until` (now
    /// plus those versions' lease): queued recipients due after `now`, and
    /// deferred ones due between `now` and `lease_until` (such a claim cannot be
    /// told from a retry due that soon; trying the latter early is harmless).
    fn release_claims(&self, node: &str, now: i64, lease_until: i64) -> StoreFuture<'_, usize>;
    /// Node `node` is alive at `now` (its heartbeat, for `outpost cluster
    /// status`) and still holds the messages `held`: their recipients it claimed
    /// that are still pending and not yet due get `lease_until` as their new
    /// due time, so no other node takes them over. Returns how many.
    fn renew_claims(
        &self,
        node: &str,
        held: Vec<QueueId>,
        now: i64,
        lease_until: i64,
    ) -> StoreFuture<'_, usize>;
    /// The nodes that have renewed claims (their heartbeats), by name, and the
    /// recipients each holds; with the number of pending recipients no node holds.
    fn cluster_status(&self) -> StoreFuture<'_, ClusterStatus>;
    /// The store's clock (unix ms), the one the `now` given to the claim methods
    /// should be read from: the database server's on PostgreSQL, so that nodes
    /// whose clocks disagree still agree on when a lease ends; this machine's on
    /// SQLite.
    fn clock(&self) -> StoreFuture<'_, i64>;
}

/// The event log: one ordered cursor over what happened to messages.
pub trait EventStore: Send + Sync {
    /// Events with an id greater than `after`, oldest first.
    fn events(&self, after: i64, limit: usize) -> StoreFuture<'_, Vec<Event>>;
    /// Appends events that no message write produced (unsubscribes, manual actions).
    fn append_events(&self, events: Vec<Event>) -> StoreFuture<'_, ()>;
}

/// Addresses a sending domain must not send to (bounces, unsubscribes, manual).
pub trait SuppressionStore: Send + Sync {
    /// Adds a suppression; false if the address was already suppressed for the domain.
    fn add_suppression(&self, suppression: Suppression) -> StoreFuture<'_, bool>;
    /// False if there was no such suppression.
    fn remove_suppression(&self, domain: &str, address: &str) -> StoreFuture<'_, bool>;
    /// The suppression of `address` for sending domain `domain`, if any.
    fn suppression(&self, domain: &str, address: &str) -> StoreFuture<'_, Option<Suppression>>;
    /// Suppressions of one sending domain (or all), ordered by domain and address,
    /// starting after `after` (a `(domain, address)` cursor).
    fn suppressions(
        &self,
        domain: Option<&str>,
        after: Option<(String, String)>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Suppression>>;
}

/// Sending domains: the registered ones and their DKIM keys, and the paused ones
/// (registered or not).
pub trait DomainStore: Send + Sync {
    /// Registers a sending domain with its keys; `Conflict` if it exists.
    fn add_domain(&self, domain: SendingDomain) -> StoreFuture<'_, ()>;
    /// Every registered sending domain with its keys, by name.
    fn domains(&self) -> StoreFuture<'_, Vec<SendingDomain>>;
    /// False if there was no such domain.
    fn remove_domain(&self, name: &str) -> StoreFuture<'_, bool>;
    /// Pauses sending from `pause.domain` and logs a `domain_paused` event at
    /// `pause.since`, in one commit; false (and nothing logged) if it was paused
    /// already.
    fn pause_domain(&self, pause: DomainPause) -> StoreFuture<'_, bool>;
    /// Lifts the pause of `domain`, logs a `domain_resumed` event and makes the
    /// domain's pending recipients due at `now`, in one commit; false if it was not
    /// paused.
    fn resume_domain(&self, domain: &str, now: i64) -> StoreFuture<'_, bool>;
    /// The paused sending domains, by name.
    fn paused_domains(&self) -> StoreFuture<'_, Vec<DomainPause>>;
}

/// Users: their credentials, admin flag and the domains they may send as.
pub trait AccountStore: Send + Sync {
    /// `Conflict` if the user exists.
    fn add_user(&self, user: UserRecord) -> StoreFuture<'_, ()>;
    fn user(&self, name: &str) -> StoreFuture<'_, Option<UserRecord>>;
    fn users(&self) -> StoreFuture<'_, Vec<UserRecord>>;
    /// False if there is no such user.
    fn remove_user(&self, name: &str) -> StoreFuture<'_, bool>;
    /// False if there is no such user.
    fn set_password(&self, name: &str, password_hash: &str) -> StoreFuture<'_, bool>;
    /// Lets a user send as `domain` too; false if there is no such user.
    fn grant_domain(&self, name: &str, domain: &str) -> StoreFuture<'_, bool>;
    /// Takes `domain` from a user's grants; false if it was not granted.
    fn revoke_domain(&self, name: &str, domain: &str) -> StoreFuture<'_, bool>;
}

/// What the nodes of a cluster share besides the mail: secrets generated once
/// (the first node to store one wins), and for each webhook endpoint its cursor
/// in the event log and the lease of the one node that posts to it.
pub trait SharedStore: Send + Sync {
    /// The secret `name`: `candidate` is stored if there is none yet; the
    /// stored one is returned either way, so every node gets the same.
    fn shared_secret(&self, name: &str, candidate: Vec<u8>) -> StoreFuture<'_, Vec<u8>>;
    /// Node `node` takes or renews the lease on webhook endpoint `endpoint`
    /// until `lease_until`. Granted when nobody holds it, `node` does, or the
    /// holder's lease ended by `now`; then returns the endpoint's cursor (the
    /// last event id it acknowledged, 0 for a new one). `None` while another
    /// node's lease runs.
    fn lease_webhook(
        &self,
        endpoint: &str,
        node: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreFuture<'_, Option<i64>>;
    /// Moves `endpoint`'s cursor forward to `acked` (never back) if `node`
    /// still holds its lease, even run out, as long as nobody took it over;
    /// false (nothing changed) if another node did.
    fn advance_webhook(&self, endpoint: &str, node: &str, acked: i64) -> StoreFuture<'_, bool>;
    /// A cursor kept outside the store by an older version: moves `endpoint`'s
    /// cursor forward to `acked` (never back), adding the endpoint unleased.
    fn import_webhook_cursor(&self, endpoint: &str, acked: i64) -> StoreFuture<'_, ()>;
    /// `endpoint`'s cursor and lease; `None` if it has had neither.
    fn webhook_cursor(&self, endpoint: &str) -> StoreFuture<'_, Option<WebhookCursor>>;
}

/// The whole store: every role. Implemented for any type that has them all.
pub trait Store:
    QueueStore
    + EventStore
    + SuppressionStore
    + DomainStore
    + AccountStore
    + ApiKeyStore
    + DashboardStore
    + SharedStore
    + ShapingStore
{
}

impl<T> Store for T where
    T: QueueStore
        + EventStore
        + SuppressionStore
        + DomainStore
        + AccountStore
        + ApiKeyStore
        + DashboardStore
        + SharedStore
        + ShapingStore
        + ?Sized
{
}
