//! The PostgreSQL store (`[store] url = "postgres://..."`): the same roles as the
//! SQLite store, on a database that several nodes can share (issue #13; today one
//! node at a time, see docs/cluster.md).
//!
//! Writes go through one group-commit writer task (`writer.rs`) that owns one
//! connection: it takes every write waiting (up to `store.max_batch`), runs each in
//! its own SAVEPOINT inside one transaction and commits once, with
//! `synchronous_commit = on`, so a write resolves `Ok` only once the server has
//! flushed its WAL (the durability contract of `store/mod.rs`). Reads run on a
//! small pool of connections of their own (`Reader`). Each role of the store is
//! implemented in its own file, as for SQLite: `queue.rs`, `events.rs`,
//! `suppressions.rs`, `accounts.rs` (domains and users), `api_keys.rs`,
//! `dashboard.rs`, `shaping.rs` (what the nodes share to shape traffic, outside
//! the group commit), `shared.rs` (secrets, webhook cursors); `schema.rs` holds
//! the versioned migrations run at open.
//!
//! Connections are plain TCP (or a Unix socket): TLS to the database is not
//! supported yet (`sslmode=require` fails to connect).
//!
//! Every round trip is bounded (`[store] timeout`): a database that stops
//! answering fails the statement instead of holding its caller, and the
//! connection is dropped (what it was doing is unknown) and made anew for the
//! next write or read. A lost connection is replaced the same way, so a node
//! resumes by itself once the database is back.

mod accounts;
mod api_keys;
mod dashboard;
mod events;
mod queue;
mod schema;
mod shaping;
mod shared;
mod suppressions;
mod writer;

use super::*;
use crate::metrics::CommitStages;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{Client, NoTls, Row, Statement};

/// Most read connections one store opens.
const MAX_READERS: usize = 8;
/// How long one round trip may take, unless the caller says (`[store] timeout`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct PostgresStore {
    config: tokio_postgres::Config,
    timeout: Duration,
    jobs: writer::Jobs,
    readers: Mutex<Vec<Conn>>,
    reader_slots: tokio::sync::Semaphore,
}

impl PostgresStore {
    /// Connects to the database at `url`, brings its schema up to date and starts
    /// the writer task (on the current tokio runtime).
    pub async fn open(url: &str, max_batch: usize) -> StoreResult<Arc<PostgresStore>> {
        Self::open_measured(url, max_batch, DEFAULT_TIMEOUT, Arc::default()).await
    }

    /// [`PostgresStore::open`] with each round trip bounded by `timeout`,
    /// reporting the group commit's stages into `stages`.
    pub async fn open_measured(
        url: &str,
        max_batch: usize,
        timeout: Duration,
        stages: Arc<CommitStages>,
    ) -> StoreResult<Arc<PostgresStore>> {
        Self::start(url, max_batch, timeout, stages, true).await
    }

    /// [`PostgresStore::open`] of a database that already holds a store: an
    /// error, rather than new empty tables, when Outpost's tables are not in the
    /// URL's database and search path (a command given the wrong URL says so
    /// instead of reporting an empty queue).
    pub async fn open_existing(url: &str, max_batch: usize) -> StoreResult<Arc<PostgresStore>> {
        Self::start(url, max_batch, DEFAULT_TIMEOUT, Arc::default(), false).await
    }

    async fn start(
        url: &str,
        max_batch: usize,
        timeout: Duration,
        stages: Arc<CommitStages>,
        create: bool,
    ) -> StoreResult<Arc<PostgresStore>> {
        let config = parse_url(url).map_err(StoreError::Backend)?;
        let conn = Conn::connect(&config, timeout).await?;
        if !create && !schema::exists(&conn).await? {
            return Err(StoreError::Backend(
                "no Outpost store in this PostgreSQL database (no schema_version table in its \
                 search path)"
                    .into(),
            ));
        }
        schema::migrate(&conn).await?;
        Ok(Arc::new(PostgresStore {
            jobs: writer::start(config.clone(), timeout, conn, max_batch.max(1), stages),
            config,
            timeout,
            readers: Mutex::new(Vec::new()),
            reader_slots: tokio::sync::Semaphore::new(MAX_READERS),
        }))
    }

    /// A read connection of the pool, given back when dropped.
    async fn reader(&self) -> StoreResult<Reader<'_>> {
        let slot = self
            .reader_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Backend("store is closed".into()))?;
        let pooled = {
            let mut pool = self.readers.lock().expect("reader pool lock");
            pool.retain(Conn::usable);
            pool.pop()
        };
        let conn = match pooled {
            Some(conn) => conn,
            None => Conn::connect(&self.config, self.timeout).await?,
        };
        Ok(Reader {
            store: self,
            conn: Some(conn),
            _slot: slot,
        })
    }
}

/// Checks a `postgres://` URL (what `[store] url` takes) without connecting.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("not a postgres:// or postgresql:// URL".into());
    }
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| format!("bad PostgreSQL URL: {e}"))
}

/// A pooled read connection.
struct Reader<'a> {
    store: &'a PostgresStore,
    conn: Option<Conn>,
    _slot: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Conn;

    fn deref(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("a reader holds its connection until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take().filter(Conn::usable) {
            self.store
                .readers
                .lock()
                .expect("reader pool lock")
                .push(conn);
        }
    }
}

/// One connection and the statements prepared on it (each SQL text is parsed
/// and planned once per connection; the texts are constants or a few variants).
pub(super) struct Conn {
    client: Client,
    statements: Mutex<HashMap<String, Statement>>,
    /// Bound of each round trip (`[store] timeout`).
    timeout: Duration,
    /// A round trip ran out of time: what the server did with it is unknown,
    /// so the connection is not used again.
    timed_out: AtomicBool,
    /// The task driving the socket, stopped with the connection: one whose
    /// server hangs would otherwise wait on it forever.
    task: tokio::task::JoinHandle<()>,
    /// The events the writer's open transaction has logged, inserted just
    /// before its COMMIT (`events.rs` says why); always empty on a reader.
    logged: Mutex<Vec<Event>>,
}

pub(super) type Params<'a> = [&'a (dyn ToSql + Sync)];

impl Conn {
    async fn connect(config: &tokio_postgres::Config, timeout: Duration) -> StoreResult<Conn> {
        let connecting = async {
            let (client, connection) = config.connect(NoTls).await?;
            let task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "PostgreSQL connection ended");
                }
            });
            // Whatever the server's default, a commit returns only once its WAL
            // is flushed: the durability contract.
            let set = client.batch_execute("SET synchronous_commit = on").await;
            if let Err(e) = set {
                task.abort();
                return Err(e.into());
            }
            Ok(Conn {
                client,
                statements: Mutex::new(HashMap::new()),
                timeout,
                timed_out: AtomicBool::new(false),
                task,
                logged: Mutex::new(Vec::new()),
            })
        };
        tokio::time::timeout(timeout, connecting)
            .await
            .unwrap_or_else(|_| Err(no_answer(timeout)))
    }

    /// Whether the connection can take another statement.
    fn usable(&self) -> bool {
        !self.client.is_closed() && !self.timed_out.load(Ordering::Relaxed)
    }

    /// Runs one round trip within the timeout; past it, the connection is
    /// given up.
    async fn bounded<T>(
        &self,
        round_trip: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> StoreResult<T> {
        if self.timed_out.load(Ordering::Relaxed) {
            return Err(no_answer(self.timeout));
        }
        match tokio::time::timeout(self.timeout, round_trip).await {
            Ok(result) => Ok(result?),
            Err(_) => {
                self.timed_out.store(true, Ordering::Relaxed);
                self.task.abort();
                Err(no_answer(self.timeout))
            }
        }
    }

    /// Logs an event of the open transaction (inserted at its end).
    pub(super) fn log_event(&self, event: Event) {
        self.logged.lock().expect("event log lock").push(event);
    }

    /// How many events the open transaction has logged: a mark to roll back to.
    fn logged_count(&self) -> usize {
        self.logged.lock().expect("event log lock").len()
    }

    /// Forgets the events logged after `mark` (their write was rolled back).
    fn forget_logged(&self, mark: usize) {
        self.logged.lock().expect("event log lock").truncate(mark);
    }

    /// The events logged, emptying the log.
    fn take_logged(&self) -> Vec<Event> {
        std::mem::take(&mut *self.logged.lock().expect("event log lock"))
    }

    async fn statement(&self, sql: &str) -> StoreResult<Statement> {
        if let Some(s) = self
            .statements
            .lock()
            .expect("statement cache lock")
            .get(sql)
        {
            return Ok(s.clone());
        }
        let prepared = self.bounded(self.client.prepare(sql)).await?;
        self.statements
            .lock()
            .expect("statement cache lock")
            .insert(sql.to_string(), prepared.clone());
        Ok(prepared)
    }

    pub(super) async fn query(&self, sql: &str, params: &Params<'_>) -> StoreResult<Vec<Row>> {
        let statement = self.statement(sql).await?;
        self.bounded(self.client.query(&statement, params)).await
    }

    pub(super) async fn query_opt(
        &self,
        sql: &str,
        params: &Params<'_>,
    ) -> StoreResult<Option<Row>> {
        let statement = self.statement(sql).await?;
        self.bounded(self.client.query_opt(&statement, params))
            .await
    }

    /// The first column of the one row `sql` returns.
    pub(super) async fn value<T>(&self, sql: &str, params: &Params<'_>) -> StoreResult<T>
    where
        T: for<'r> FromSql<'r>,
    {
        let statement = self.statement(sql).await?;
        let row = self
            .bounded(self.client.query_one(&statement, params))
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Rows changed.
    pub(super) async fn execute(&self, sql: &str, params: &Params<'_>) -> StoreResult<u64> {
        let statement = self.statement(sql).await?;
        self.bounded(self.client.execute(&statement, params)).await
    }

    /// True when `sql` changed a row.
    pub(super) async fn changes_rows(&self, sql: &str, params: &Params<'_>) -> StoreResult<bool> {
        Ok(self.execute(sql, params).await? > 0)
    }

    /// Runs statements without parameters or results (transaction control, DDL).
    async fn batch(&self, sql: &str) -> StoreResult<()> {
        self.bounded(self.client.batch_execute(sql)).await
    }
}

/// What a round trip that ran out of time reports.
fn no_answer(timeout: Duration) -> StoreError {
    StoreError::Unavailable(format!(
        "PostgreSQL did not answer within {timeout:?} ([store] timeout)"
    ))
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        // tokio-postgres has no public error kinds: a lost connection is
        // `is_closed`, a failed socket carries an io::Error, a connect timeout
        // of the URL's says so in its text.
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        let timed_out = e.as_db_error().is_none() && e.to_string().contains("timeout");
        let unreachable = e.is_closed()
            || io
            || timed_out
            || e.code().is_some_and(|c| {
                // Class 08 (connection exception); the server shutting down.
                c.code().starts_with("08")
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                    ]
                    .contains(c)
            });
        // A write that lost a deadlock or a serialization conflict was rolled
        // back and may succeed when sent again: a temporary failure (`451`),
        // not a full store (`452`).
        let lost_race = e.code().is_some_and(|c| {
            [
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::T_R_SERIALIZATION_FAILURE,
            ]
            .contains(c)
        });
        if unreachable || lost_race {
            return StoreError::Unavailable(e.to_string());
        }
        match e.code() {
            Some(&SqlState::DISK_FULL) => StoreError::Full(e.to_string()),
            // The server's message, not just "db error".
            _ => StoreError::Backend(match e.as_db_error() {
                Some(db) => format!("{}: {}", db.code().code(), db.message()),
                None => e.to_string(),
            }),
        }
    }
}

/// True when `e` is a unique or primary key violation.
fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// Rows as `T`, each made by `f`.
fn rows<T>(
    rows: Vec<Row>,
    f: impl Fn(&Row) -> Result<T, tokio_postgres::Error>,
) -> StoreResult<Vec<T>> {
    Ok(rows.iter().map(f).collect::<Result<_, _>>()?)
}

/// What only PostgreSQL does (the rest is the contract, `store/contract.rs`).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::{TestSchema, connect, message};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_stores_claim_at_once_without_overlap() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let (a, b) = (
            PostgresStore::open(&schema.url, 64).await.unwrap(),
            PostgresStore::open(&schema.url, 64).await.unwrap(),
        );
        for _ in 0..100 {
            a.enqueue(message(&["x@example.net"])).await.unwrap();
        }
        let mut claimed = Vec::new();
        loop {
            let (from_a, from_b) =
                tokio::join!(a.claim_due("a", 10, 1000, 7), b.claim_due("b", 10, 1000, 7));
            let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
            if from_a.is_empty() && from_b.is_empty() {
                break;
            }
            claimed.extend(from_a.into_iter().chain(from_b).map(|m| m.id));
        }
        let total = claimed.len();
        claimed.sort();
        claimed.dedup();
        assert_eq!((total, claimed.len()), (100, 100), "each claimed once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadlock_is_a_temporary_failure() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let (a, b) = (connect(&schema.url).await, connect(&schema.url).await);
        a.batch_execute("CREATE TABLE t (k BIGINT PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
            .await
            .unwrap();
        a.batch_execute("BEGIN; UPDATE t SET k = k WHERE k = 1")
            .await
            .unwrap();
        b.batch_execute("BEGIN; UPDATE t SET k = k WHERE k = 2")
            .await
            .unwrap();
        // Each waits for the other's row: PostgreSQL fails one of them.
        let (from_a, from_b) = tokio::join!(
            a.batch_execute("UPDATE t SET k = k WHERE k = 2"),
            b.batch_execute("UPDATE t SET k = k WHERE k = 1")
        );
        let lost = from_a.err().or(from_b.err()).expect("a deadlock");
        assert_eq!(lost.code(), Some(&SqlState::T_R_DEADLOCK_DETECTED));
        let e = StoreError::from(lost);
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    }

    #[tokio::test]
    async fn concurrent_enqueues_share_commits() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let metrics = crate::metrics::Metrics::default();
        let store =
            PostgresStore::open_measured(&schema.url, 64, DEFAULT_TIMEOUT, metrics.commit_stages())
                .await
                .unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.enqueue(message(&["x@example.net"])).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let text = metrics.render(None, None, &Default::default());
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        let (writes, commits) = (
            value("outpost_store_batch_writes_sum"),
            value("outpost_store_batch_writes_count"),
        );
        assert_eq!(writes, 200.0);
        assert!(commits < 200.0, "{commits} commits for 200 writes");
        assert_eq!(store.pending_recipients().await.unwrap(), 200);
    }

    /// Another session's uncommitted user `name`: a store adding the same user
    /// waits for it. Returns the session and its transaction id.
    async fn hold_user(url: &str, name: &str) -> (tokio_postgres::Client, String) {
        let client = connect(url).await;
        client.batch_execute("BEGIN").await.unwrap();
        client
            .execute(
                "INSERT INTO users (name, password_hash, admin) VALUES ($1, 'h', FALSE)",
                &[&name],
            )
            .await
            .unwrap();
        let xid = client
            .query_one("SELECT pg_current_xact_id()::TEXT", &[])
            .await
            .unwrap()
            .get(0);
        (client, xid)
    }

    /// Waits until a session waits for transaction `xid`.
    async fn wait_for_waiter(observer: &tokio_postgres::Client, xid: &str) {
        let end = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let waiting: i64 = observer
                .query_one(
                    "SELECT COUNT(*) FROM pg_locks WHERE NOT granted
                     AND locktype = 'transactionid' AND transactionid::TEXT = $1",
                    &[&xid],
                )
                .await
                .unwrap()
                .get(0);
            if waiting > 0 {
                return;
            }
            assert!(std::time::Instant::now() < end, "nobody waits for {xid}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls `future` once: a store write is in its writer's queue after that.
    async fn submit<F: Future + Unpin>(future: &mut F) {
        std::future::poll_fn(|cx| {
            let _ = std::pin::Pin::new(&mut *future).poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
    }

    /// Node A's transaction logs an event, then waits (here for a row lock)
    /// before it can commit; meanwhile node B commits an event. A reader that
    /// has read B's must still find A's once A commits: A's id must be the
    /// greater. (With ids drawn when the event is written, A's is the smaller
    /// and the reader, past it, never sees it.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_committed_late_is_not_skipped_by_a_reader() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let (a, b) = (
            PostgresStore::open(&schema.url, 16).await.unwrap(),
            PostgresStore::open(&schema.url, 16).await.unwrap(),
        );
        let observer = connect(&schema.url).await;
        let user = |name: &str| UserRecord {
            name: name.into(),
            password_hash: "h".into(),
            admin: false,
            domains: Vec::new(),
        };
        // A's writer is held up by a first write, so the next two queue behind
        // it and share a transaction: the acceptance, then a write that waits.
        let (first_holder, first_xid) = hold_user(&schema.url, "first").await;
        let (second_holder, second_xid) = hold_user(&schema.url, "second").await;
        let mut first = a.add_user(user("first"));
        submit(&mut first).await;
        wait_for_waiter(&observer, &first_xid).await;
        let pause = |domain: &str| DomainPause {
            domain: domain.into(),
            since: 1,
            reason: "test".into(),
        };
        let mut paused_on_a = a.pause_domain(pause("a.example"));
        submit(&mut paused_on_a).await;
        let mut second = a.add_user(user("second"));
        submit(&mut second).await;
        first_holder.batch_execute("ROLLBACK").await.unwrap();
        first.await.unwrap();
        wait_for_waiter(&observer, &second_xid).await;

        // A's event is written, not committed; B's commits. (Not acceptances:
        // those share a row of the dashboard's counters, so B would wait for A.)
        assert!(b.pause_domain(pause("b.example")).await.unwrap());
        let read = a.events(0, 100).await.unwrap();
        assert_eq!(read.len(), 1, "only B's event is visible: {read:?}");
        let cursor = read[0].id;
        second_holder.batch_execute("ROLLBACK").await.unwrap();
        assert!(paused_on_a.await.unwrap());
        second.await.unwrap();
        let rest = a.events(cursor, 100).await.unwrap();
        let domains: Vec<_> = read
            .iter()
            .chain(&rest)
            .map(|e| e.domain.clone().unwrap())
            .collect();
        assert_eq!(domains, ["b.example", "a.example"]);
    }

    /// The events a write logs go with it: not inserted when it fails, while
    /// its neighbours' in the same commit are.
    #[tokio::test]
    async fn events_of_a_failed_write_are_not_inserted() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let store = PostgresStore::open(&schema.url, 16).await.unwrap();
        let event = |kind| Event {
            id: 0,
            at: 1,
            kind,
            message_id: None,
            recipient: Some("x@example.net".into()),
            user: None,
            reply: None,
            class: None,
            asynchronous: false,
            domain: None,
        };
        let failing = store.write(move |conn| {
            Box::pin(async move {
                conn.log_event(event(EventKind::Complained));
                conn.execute("SELECT 1 / 0", &[]).await?;
                Ok(())
            })
        });
        let (failed, appended) = tokio::join!(
            failing,
            store.append_events(vec![event(EventKind::Unsubscribed)])
        );
        assert!(failed.is_err());
        appended.unwrap();
        let kinds: Vec<EventKind> = store
            .events(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, vec![EventKind::Unsubscribed]);
    }

    #[tokio::test]
    async fn open_existing_creates_nothing() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let Err(e) = PostgresStore::open_existing(&schema.url, 16).await else {
            panic!("opened a store in an empty schema");
        };
        assert!(e.to_string().contains("no Outpost store"), "{e}");
        let tables: i64 = connect(&schema.url)
            .await
            .query_one(
                "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(tables, 0);
        drop(PostgresStore::open(&schema.url, 16).await.unwrap());
        PostgresStore::open_existing(&schema.url, 16).await.unwrap();
    }

    #[tokio::test]
    async fn a_schema_newer_than_this_version_is_refused() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        drop(PostgresStore::open(&schema.url, 16).await.unwrap());
        // Opening again runs no migration twice.
        drop(PostgresStore::open(&schema.url, 16).await.unwrap());
        connect(&schema.url)
            .await
            .batch_execute("INSERT INTO schema_version (version) VALUES (999)")
            .await
            .unwrap();
        let Err(e) = PostgresStore::open(&schema.url, 16).await else {
            panic!("opened a schema of version 999");
        };
        assert!(e.to_string().contains("newer than this Outpost"), "{e}");
    }

    #[test]
    fn only_postgres_urls_are_taken() {
        assert!(parse_url("postgres://u@h/db").is_ok());
        assert!(parse_url("postgresql://u@h:5433/db?options=-csearch_path%3Dx").is_ok());
        assert!(parse_url("sqlite:/var/lib/outpost").is_err());
        assert!(parse_url("postgres://u@h/db?nonsense=1").is_err());
    }
}
