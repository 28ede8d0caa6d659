//! The embedded store: one SQLite database in WAL mode with `synchronous = FULL`.
//!
//! Why SQLite: it gives atomic multi-row commits (message + envelope + recipients in
//! one transaction), crash recovery that has been tested for decades, and indexed
//! queries for the scheduler (`status, next_attempt`) and the CLI, without another
//! server. A file-per-message spool would need fsync + rename + directory fsync per
//! message and hand-written indexes; SQLite's WAL gives one sequential fsync per
//! commit instead.
//!
//! Group commit: all writes go to one writer thread. It takes every job waiting in
//! its channel (up to `store.max_batch`), runs each inside its own SAVEPOINT (one
//! failing job does not undo the others), commits once (one WAL fsync), and only then
//! answers every job. Under load, many sessions share one fsync.
//!
//! Reads run on a small pool of read-only connections in `spawn_blocking`; WAL lets
//! them proceed while the writer commits.

use super::*;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::oneshot;

type Completion = Box<dyn FnOnce(StoreResult<()>) + Send>;

/// One write waiting for the next group commit.
trait Job: Send {
    /// Runs the write inside the open transaction; the completion answers the caller
    /// once the commit's outcome is known.
    fn run(self: Box<Self>, conn: &Connection) -> Completion;
    /// Answers the caller without running (the transaction could not start).
    fn abort(self: Box<Self>, error: StoreError);
}

struct WriteJob<F, R> {
    write: F,
    reply: oneshot::Sender<StoreResult<R>>,
}

impl<F, R> Job for WriteJob<F, R>
where
    F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    R: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Completion {
        let result = in_savepoint(conn, self.write);
        let reply = self.reply;
        Box::new(move |commit: StoreResult<()>| {
            let _ = reply.send(commit.and(result));
        })
    }

    fn abort(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    mail_from TEXT NOT NULL,
    auth_user TEXT,
    smtputf8 INTEGER NOT NULL,
    size INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    content BLOB
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    last_reply TEXT,
    last_class TEXT,
    PRIMARY KEY (message_id, idx)
);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients(status, next_attempt);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    message_id TEXT,
    recipient TEXT,
    user TEXT,
    reply TEXT,
    class TEXT
);
CREATE TABLE IF NOT EXISTS suppressions (
    domain TEXT NOT NULL,
    address TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (domain, address)
);
CREATE TABLE IF NOT EXISTS control (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sending_domains (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dkim_keys (
    domain TEXT NOT NULL REFERENCES sending_domains(name) ON DELETE CASCADE,
    selector TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    private_key BLOB NOT NULL,
    public_key BLOB NOT NULL,
    PRIMARY KEY (domain, selector)
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    admin INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS user_domains (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    domain TEXT NOT NULL,
    PRIMARY KEY (user, domain)
);
";

pub struct SqliteStore {
    jobs: mpsc::Sender<Box<dyn Job>>,
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    /// Bounds the read connections: readers beyond it wait for one instead of
    /// opening (and parsing the schema for) a connection of their own.
    reader_slots: tokio::sync::Semaphore,
}

const MAX_READERS: usize = 16;

impl SqliteStore {
    /// The database file of the store kept in data directory `dir`.
    pub fn database_path(dir: &Path) -> PathBuf {
        dir.join("outpost.db")
    }

    /// Opens (creating if needed) `dir/outpost.db` and starts the writer thread.
    pub fn open(dir: &Path, max_batch: usize) -> StoreResult<Arc<SqliteStore>> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = Self::database_path(dir);
        let conn = Connection::open(&path).map_err(backend)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA wal_autocheckpoint = 32768;",
        )
        .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        migrate(&conn).map_err(backend)?;
        let (jobs, rx) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx, max_batch))
            .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
        Ok(Arc::new(SqliteStore {
            jobs,
            path,
            readers: Mutex::new(Vec::new()),
            reader_slots: tokio::sync::Semaphore::new(MAX_READERS),
        }))
    }

    /// Runs `f` in the next group commit; resolves after the commit.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(WriteJob { write: f, reply });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Backend("store writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("store writer has stopped".into()))?
    }

    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> StoreResult<R> {
        let _slot = self
            .reader_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Backend("store is closed".into()))?;
        let conn = match self.readers.lock().expect("reader pool lock").pop() {
            Some(conn) => conn,
            None => Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(backend)?,
        };
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let result = f(&conn);
            (conn, result)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?;
        self.readers.lock().expect("reader pool lock").push(conn);
        result.map_err(backend)
    }
}

/// Brings a database made by an older version up to the current schema.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_class: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('recipients') WHERE name = 'last_class'",
        [],
        |row| row.get(0),
    )?;
    if !has_class {
        conn.execute_batch("ALTER TABLE recipients ADD COLUMN last_class TEXT")?;
    }
    Ok(())
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Box<dyn Job>>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let e = backend(e);
                tracing::error!(error = %e, "store cannot begin a transaction");
                batch.into_iter().for_each(|job| job.abort(e.clone()));
                continue;
            }
        };
        let completions: Vec<Completion> = batch.into_iter().map(|job| job.run(&tx)).collect();
        // A failed COMMIT rolls the transaction back when `tx` is dropped.
        match tx.commit().map_err(backend) {
            Ok(()) => completions.into_iter().for_each(|c| c(Ok(()))),
            Err(e) => {
                tracing::error!(error = %e, writes = completions.len(), "store commit failed");
                completions.into_iter().for_each(|c| c(Err(e.clone())));
            }
        }
    }
}

fn in_savepoint<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> StoreResult<R>,
) -> StoreResult<R> {
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map_err(backend)
    };
    run("SAVEPOINT job")?;
    let result = f(conn);
    if result.is_err() {
        run("ROLLBACK TO job")?;
    }
    run("RELEASE job")?;
    result
}

fn backend(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Runs one statement; true when it changed a row.
fn changes_rows<P: rusqlite::Params>(conn: &Connection, sql: &str, params: P) -> StoreResult<bool> {
    conn.execute(sql, params).map(|n| n > 0).map_err(backend)
}

fn load_summaries(
    conn: &Connection,
    where_sql: &str,
    arg: &dyn rusqlite::ToSql,
) -> rusqlite::Result<Vec<MessageSummary>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, mail_from, auth_user, size, received_at, smtputf8 FROM messages {where_sql}"
    ))?;
    let mut messages: Vec<MessageSummary> = stmt
        .query_map([arg], |row| {
            Ok(MessageSummary {
                id: QueueId(row.get(0)?),
                mail_from: row.get(1)?,
                auth_user: row.get(2)?,
                size: row.get::<_, i64>(3)? as usize,
                received_at: row.get(4)?,
                smtputf8: row.get(5)?,
                recipients: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut rcpts = conn.prepare_cached(
        "SELECT address, status, attempts, next_attempt, last_reply, last_class FROM recipients WHERE message_id = ?1 ORDER BY idx",
    )?;
    for message in &mut messages {
        message.recipients = rcpts
            .query_map([message.id.as_str()], |row| {
                let status: String = row.get(1)?;
                Ok(RecipientState {
                    address: row.get(0)?,
                    status: RecipientStatus::parse(&status).unwrap_or(RecipientStatus::Deferred),
                    attempts: row.get(2)?,
                    next_attempt: row.get(3)?,
                    last_reply: row.get(4)?,
                    last_class: row.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(messages)
}

fn claim_due(
    conn: &Connection,
    now: i64,
    lease_until: i64,
    limit: usize,
) -> rusqlite::Result<Vec<DueMessage>> {
    // One range scan per status keeps the (status, next_attempt) index usable.
    let mut rows: Vec<(String, i64, String, u32, i64)> = Vec::new();
    let mut select = conn.prepare_cached(
        "SELECT message_id, idx, address, attempts, next_attempt FROM recipients
         WHERE status = ?1 AND next_attempt <= ?2 ORDER BY next_attempt LIMIT ?3",
    )?;
    for status in ["queued", "deferred"] {
        let found = select.query_map(params![status, now, limit as i64], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?;
        for row in found {
            rows.push(row?);
        }
    }
    rows.sort_by_key(|r| r.4);
    rows.truncate(limit);
    let mut lease = conn.prepare_cached(
        "UPDATE recipients SET next_attempt = ?3 WHERE message_id = ?1 AND idx = ?2",
    )?;
    let mut envelope = conn.prepare_cached(
        "SELECT mail_from, smtputf8, received_at, size FROM messages WHERE id = ?1",
    )?;
    let mut messages: Vec<DueMessage> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (id, idx, address, attempts, _) in rows {
        lease.execute(params![id, idx, lease_until])?;
        let recipient = DueRecipient {
            idx: idx as usize,
            address,
            attempts,
        };
        if let Some(&i) = index.get(&id) {
            messages[i].recipients.push(recipient);
            continue;
        }
        let (mail_from, smtputf8, received_at, size) = envelope.query_row([&id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get::<_, i64>(3)?))
        })?;
        index.insert(id.clone(), messages.len());
        messages.push(DueMessage {
            id: QueueId(id),
            mail_from,
            size: size as usize,
            smtputf8,
            received_at,
            recipients: vec![recipient],
        });
    }
    Ok(messages)
}

/// The sender's user and the addresses of the updated recipients, for events.
fn event_context(
    conn: &Connection,
    id: &str,
    updates: &[RecipientUpdate],
) -> rusqlite::Result<Option<(Option<String>, Vec<String>)>> {
    let Some(user) = conn
        .prepare_cached("SELECT auth_user FROM messages WHERE id = ?1")?
        .query_row([id], |row| row.get::<_, Option<String>>(0))
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt =
        conn.prepare_cached("SELECT address FROM recipients WHERE message_id = ?1 AND idx = ?2")?;
    let addresses = updates
        .iter()
        .map(|u| stmt.query_row(params![id, u.idx as i64], |row| row.get(0)))
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Some((user, addresses)))
}

fn insert_event(conn: &Connection, e: &Event) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO events (at, kind, message_id, recipient, user, reply, class) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        e.at,
        e.kind.as_str(),
        e.message_id.as_ref().map(|m| m.as_str().to_string()),
        e.recipient,
        e.user,
        e.reply,
        e.class
    ])?;
    Ok(())
}

fn row_to_suppression(row: &rusqlite::Row<'_>) -> rusqlite::Result<Suppression> {
    Ok(Suppression {
        domain: row.get(0)?,
        address: row.get(1)?,
        reason: row.get(2)?,
        created_at: row.get(3)?,
    })
}

/// Pending recipients (of one message, or all) become due at `now`.
fn make_due(conn: &Connection, id: Option<&str>, now: i64) -> rusqlite::Result<usize> {
    match id {
        Some(id) => conn.execute(
            "UPDATE recipients SET next_attempt = ?2 WHERE message_id = ?1 AND status IN ('queued', 'deferred')",
            params![id, now],
        ),
        None => conn.execute(
            "UPDATE recipients SET next_attempt = ?1 WHERE status IN ('queued', 'deferred') AND next_attempt > ?1",
            [now],
        ),
    }
}

fn load_user(conn: &Connection, name: &str) -> rusqlite::Result<Option<UserRecord>> {
    let Some((password_hash, admin)) = conn
        .query_row(
            "SELECT password_hash, admin FROM users WHERE name = ?1",
            [name],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?)),
        )
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt =
        conn.prepare_cached("SELECT domain FROM user_domains WHERE user = ?1 ORDER BY domain")?;
    let domains = stmt
        .query_map([name], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(UserRecord {
        name: name.to_string(),
        password_hash,
        admin,
        domains,
    }))
}

impl Store for SqliteStore {
    fn enqueue(&self, message: NewMessage) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO messages (id, mail_from, auth_user, smtputf8, size, received_at, content)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    message.id.as_str(),
                    message.mail_from,
                    message.auth_user,
                    message.smtputf8,
                    message.content.len() as i64,
                    message.received_at,
                    &message.content[..],
                ])
            })
            .map_err(backend)?;
            let mut stmt = conn
                .prepare_cached(
                    "INSERT INTO recipients (message_id, idx, address, domain, status, next_attempt)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(backend)?;
            for (idx, rcpt) in message.recipients.iter().enumerate() {
                let status = if rcpt.local {
                    RecipientStatus::Local
                } else {
                    RecipientStatus::Queued
                };
                stmt.execute(params![
                    message.id.as_str(),
                    idx as i64,
                    rcpt.address,
                    domain_of(&rcpt.address),
                    status.as_str(),
                    message.first_attempt_at,
                ])
                .map_err(backend)?;
            }
            for rcpt in &message.recipients {
                insert_event(
                    conn,
                    &Event {
                        id: 0,
                        at: message.received_at,
                        kind: EventKind::Accepted,
                        message_id: Some(message.id.clone()),
                        recipient: Some(rcpt.address.clone()),
                        user: message.auth_user.clone(),
                        reply: None,
                        class: None,
                    },
                )
                .map_err(backend)?;
            }
            Ok(())
        }))
    }

    fn queued_messages(&self, limit: usize) -> StoreFuture<'_, Vec<MessageSummary>> {
        Box::pin(self.read(move |conn| {
            load_summaries(
                conn,
                "WHERE id IN (SELECT DISTINCT message_id FROM recipients WHERE status IN ('queued', 'deferred'))
                 ORDER BY id LIMIT ?1",
                &(limit as i64),
            )
        }))
    }

    fn pending_recipients(&self) -> StoreFuture<'_, usize> {
        Box::pin(self.read(|conn| {
            // Two range counts on the (status, next_attempt) index.
            conn.prepare_cached(
                "SELECT (SELECT COUNT(*) FROM recipients WHERE status = 'queued')
                      + (SELECT COUNT(*) FROM recipients WHERE status = 'deferred')",
            )?
            .query_row([], |row| row.get::<_, i64>(0))
            .map(|n| n as usize)
        }))
    }

    fn message(&self, id: &QueueId) -> StoreFuture<'_, Option<MessageSummary>> {
        let id = id.to_string();
        Box::pin(self.read(move |conn| Ok(load_summaries(conn, "WHERE id = ?1", &id)?.pop())))
    }

    fn message_content(&self, id: &QueueId) -> StoreFuture<'_, Option<Vec<u8>>> {
        let id = id.to_string();
        Box::pin(self.read(move |conn| {
            conn.query_row("SELECT content FROM messages WHERE id = ?1", [id], |row| {
                row.get::<_, Option<Vec<u8>>>(0)
            })
            .optional()
            .map(Option::flatten)
        }))
    }

    fn delete_message(&self, id: &QueueId) -> StoreFuture<'_, bool> {
        let id = id.to_string();
        Box::pin(
            self.write(move |conn| changes_rows(conn, "DELETE FROM messages WHERE id = ?1", [id])),
        )
    }

    fn claim_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<DueMessage>> {
        Box::pin(self.write(move |conn| claim_due(conn, now, lease_until, limit).map_err(backend)))
    }

    fn record_attempt(
        &self,
        id: &QueueId,
        updates: Vec<RecipientUpdate>,
    ) -> StoreFuture<'_, Option<MessageSummary>> {
        let id = id.to_string();
        Box::pin(self.write(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE recipients SET status = ?3, next_attempt = ?4, last_reply = ?5, last_class = ?6,
                     attempts = attempts + ?7 WHERE message_id = ?1 AND idx = ?2",
                )
                .map_err(backend)?;
            for u in &updates {
                stmt.execute(params![
                    id,
                    u.idx as i64,
                    u.status.as_str(),
                    u.next_attempt,
                    u.reply,
                    u.class,
                    i64::from(u.attempted)
                ])
                    .map_err(backend)?;
            }
            if let Some((user, addresses)) = event_context(conn, &id, &updates).map_err(backend)? {
                let at = chrono::Utc::now().timestamp_millis();
                for (u, address) in updates.iter().zip(addresses) {
                    let Some(kind) = EventKind::for_status(u.status) else {
                        continue;
                    };
                    let event = Event {
                        id: 0,
                        at,
                        kind,
                        message_id: Some(QueueId(id.clone())),
                        recipient: Some(address),
                        user: user.clone(),
                        reply: Some(u.reply.clone()),
                        class: u.class.clone(),
                    };
                    insert_event(conn, &event).map_err(backend)?;
                }
            }
            let pending: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM recipients WHERE message_id = ?1 AND status IN ('queued', 'deferred')",
                )
                .and_then(|mut stmt| stmt.query_row([&id], |row| row.get(0)))
                .map_err(backend)?;
            if pending > 0 {
                return Ok(None);
            }
            let summary = load_summaries(conn, "WHERE id = ?1", &id).map_err(backend)?.pop();
            if summary.as_ref().is_some_and(|s| !s.needs_bounce_report()) {
                conn.execute("UPDATE messages SET content = NULL WHERE id = ?1", [&id])
                    .map_err(backend)?;
            }
            Ok(summary)
        }))
    }

    fn finalize(&self, id: &QueueId) -> StoreFuture<'_, ()> {
        let id = id.to_string();
        Box::pin(self.write(move |conn| {
            conn.execute("UPDATE messages SET content = NULL WHERE id = ?1", [id])
                .map(|_| ())
                .map_err(backend)
        }))
    }

    fn unfinalized(&self, limit: usize) -> StoreFuture<'_, Vec<MessageSummary>> {
        Box::pin(self.read(move |conn| {
            load_summaries(
                conn,
                "WHERE content IS NOT NULL AND NOT EXISTS (SELECT 1 FROM recipients r
                     WHERE r.message_id = messages.id AND r.status IN ('queued', 'deferred'))
                 ORDER BY id LIMIT ?1",
                &(limit as i64),
            )
        }))
    }

    fn retry_now(&self, id: Option<&QueueId>, now: i64) -> StoreFuture<'_, usize> {
        let id = id.map(|id| id.to_string());
        Box::pin(self.write(move |conn| {
            conn.execute(
                "INSERT INTO control (key, value) VALUES ('retry_requested', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [now],
            )
            .map_err(backend)?;
            make_due(conn, id.as_deref(), now).map_err(backend)
        }))
    }

    fn unclaim(&self, id: &QueueId, now: i64) -> StoreFuture<'_, ()> {
        let id = id.to_string();
        Box::pin(
            self.write(move |conn| make_due(conn, Some(&id), now).map(|_| ()).map_err(backend)),
        )
    }

    fn retry_requested_at(&self) -> StoreFuture<'_, i64> {
        Box::pin(self.read(|conn| {
            conn.prepare_cached("SELECT value FROM control WHERE key = 'retry_requested'")?
                .query_row([], |row| row.get(0))
                .optional()
                .map(Option::unwrap_or_default)
        }))
    }

    fn release_claims(&self, now: i64, lease_until: i64) -> StoreFuture<'_, usize> {
        Box::pin(self.write(move |conn| {
            conn.execute(
                "UPDATE recipients SET next_attempt = ?1 WHERE next_attempt > ?1
                 AND (status = 'queued' OR (status = 'deferred' AND next_attempt <= ?2))",
                [now, lease_until],
            )
            .map_err(backend)
        }))
    }

    fn events(&self, after: i64, limit: usize) -> StoreFuture<'_, Vec<Event>> {
        Box::pin(self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, at, kind, message_id, recipient, user, reply, class FROM events
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![after, limit as i64], |row| {
                let kind: String = row.get(2)?;
                Ok(Event {
                    id: row.get(0)?,
                    at: row.get(1)?,
                    kind: EventKind::parse(&kind).unwrap_or(EventKind::Deferred),
                    message_id: row.get::<_, Option<String>>(3)?.map(QueueId),
                    recipient: row.get(4)?,
                    user: row.get(5)?,
                    reply: row.get(6)?,
                    class: row.get(7)?,
                })
            })?
            .collect()
        }))
    }

    fn append_events(&self, events: Vec<Event>) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| {
            events
                .iter()
                .try_for_each(|e| insert_event(conn, e))
                .map_err(backend)
        }))
    }

    fn add_suppression(&self, suppression: Suppression) -> StoreFuture<'_, bool> {
        Box::pin(self.write(move |conn| {
            changes_rows(conn,
                "INSERT OR IGNORE INTO suppressions (domain, address, reason, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    suppression.domain.to_lowercase(),
                    suppression.address.to_lowercase(),
                    suppression.reason,
                    suppression.created_at
                ],
            )
        }))
    }

    fn remove_suppression(&self, domain: &str, address: &str) -> StoreFuture<'_, bool> {
        let (domain, address) = (domain.to_lowercase(), address.to_lowercase());
        Box::pin(self.write(move |conn| {
            changes_rows(
                conn,
                "DELETE FROM suppressions WHERE domain = ?1 AND address = ?2",
                [domain, address],
            )
        }))
    }

    fn suppression(&self, domain: &str, address: &str) -> StoreFuture<'_, Option<Suppression>> {
        let (domain, address) = (domain.to_lowercase(), address.to_lowercase());
        Box::pin(self.read(move |conn| {
            conn.prepare_cached(
                "SELECT domain, address, reason, created_at FROM suppressions WHERE domain = ?1 AND address = ?2",
            )?
            .query_row([domain, address], row_to_suppression)
            .optional()
        }))
    }

    fn suppressions(
        &self,
        domain: Option<&str>,
        after: Option<(String, String)>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Suppression>> {
        let domain = domain.map(str::to_lowercase);
        let (after_domain, after_address) = after.unwrap_or_default();
        Box::pin(self.read(move |conn| {
            conn.prepare_cached(
                "SELECT domain, address, reason, created_at FROM suppressions
                 WHERE (?1 IS NULL OR domain = ?1) AND (domain, address) > (?2, ?3)
                 ORDER BY domain, address LIMIT ?4",
            )?
            .query_map(
                params![domain, after_domain, after_address, limit as i64],
                row_to_suppression,
            )?
            .collect()
        }))
    }

    fn add_domain(&self, domain: SendingDomain) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| {
            let name = domain.name.to_ascii_lowercase();
            let inserted = conn
                .execute(
                    "INSERT OR IGNORE INTO sending_domains (name, created_at) VALUES (?1, ?2)",
                    params![name, domain.created_at],
                )
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("domain {name:?}")));
            }
            for key in &domain.keys {
                conn.execute(
                    "INSERT INTO dkim_keys (domain, selector, algorithm, private_key, public_key) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![name, key.selector, key.algorithm.as_str(), key.private_key, key.public_key],
                )
                .map_err(backend)?;
            }
            Ok(())
        }))
    }

    fn domains(&self) -> StoreFuture<'_, Vec<SendingDomain>> {
        Box::pin(self.read(|conn| {
            let mut domains: Vec<SendingDomain> = conn
                .prepare_cached("SELECT name, created_at FROM sending_domains ORDER BY name")?
                .query_map([], |row| {
                    Ok(SendingDomain {
                        name: row.get(0)?,
                        created_at: row.get(1)?,
                        keys: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut keys = conn.prepare_cached(
                "SELECT selector, algorithm, private_key, public_key FROM dkim_keys WHERE domain = ?1 ORDER BY algorithm DESC, selector",
            )?;
            for domain in &mut domains {
                domain.keys = keys
                    .query_map([&domain.name], |row| {
                        let algorithm: String = row.get(1)?;
                        Ok(DkimKeyRecord {
                            selector: row.get(0)?,
                            // Only this code writes the column.
                            algorithm: DkimAlgorithm::parse(&algorithm)
                                .unwrap_or(DkimAlgorithm::Rsa),
                            private_key: row.get(2)?,
                            public_key: row.get(3)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
            }
            Ok(domains)
        }))
    }

    fn remove_domain(&self, name: &str) -> StoreFuture<'_, bool> {
        let name = name.to_ascii_lowercase();
        Box::pin(self.write(move |conn| {
            changes_rows(conn, "DELETE FROM sending_domains WHERE name = ?1", [name])
        }))
    }

    fn add_user(&self, user: UserRecord) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| {
            let exists = conn
                .query_row("SELECT 1 FROM users WHERE name = ?1", [&user.name], |_| {
                    Ok(())
                })
                .optional()
                .map_err(backend)?
                .is_some();
            if exists {
                return Err(StoreError::Conflict(format!("user {:?}", user.name)));
            }
            conn.execute(
                "INSERT INTO users (name, password_hash, admin) VALUES (?1, ?2, ?3)",
                params![user.name, user.password_hash, user.admin],
            )
            .map_err(backend)?;
            for domain in &user.domains {
                conn.execute(
                    "INSERT OR IGNORE INTO user_domains (user, domain) VALUES (?1, ?2)",
                    params![user.name, domain.to_ascii_lowercase()],
                )
                .map_err(backend)?;
            }
            Ok(())
        }))
    }

    fn user(&self, name: &str) -> StoreFuture<'_, Option<UserRecord>> {
        let name = name.to_string();
        Box::pin(self.read(move |conn| load_user(conn, &name)))
    }

    fn users(&self) -> StoreFuture<'_, Vec<UserRecord>> {
        Box::pin(self.read(|conn| {
            let names: Vec<String> = conn
                .prepare("SELECT name FROM users ORDER BY name")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            names
                .iter()
                .filter_map(|name| load_user(conn, name).transpose())
                .collect()
        }))
    }

    fn remove_user(&self, name: &str) -> StoreFuture<'_, bool> {
        let name = name.to_string();
        Box::pin(
            self.write(move |conn| changes_rows(conn, "DELETE FROM users WHERE name = ?1", [name])),
        )
    }

    fn set_password(&self, name: &str, password_hash: &str) -> StoreFuture<'_, bool> {
        let (name, hash) = (name.to_string(), password_hash.to_string());
        Box::pin(self.write(move |conn| {
            changes_rows(
                conn,
                "UPDATE users SET password_hash = ?2 WHERE name = ?1",
                [name, hash],
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(rcpts: &[&str]) -> NewMessage {
        NewMessage {
            id: QueueId::generate(),
            mail_from: "a@example.com".into(),
            recipients: rcpts
                .iter()
                .map(|r| NewRecipient {
                    address: r.to_string(),
                    local: false,
                })
                .collect(),
            auth_user: Some("alice".into()),
            smtputf8: false,
            content: Arc::new(b"Subject: t\r\n\r\nbody\r\n".to_vec()),
            received_at: 1,
            first_attempt_at: 1,
        }
    }

    #[tokio::test]
    async fn enqueue_then_read_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let msg = message(&["b@example.net", "c@example.org"]);
        let id = msg.id.clone();
        {
            let store = SqliteStore::open(dir.path(), 16).unwrap();
            store.enqueue(msg.clone()).await.unwrap();
        }
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let summary = store.message(&id).await.unwrap().unwrap();
        assert_eq!(summary.recipients.len(), 2);
        assert_eq!(summary.recipients[1].address, "c@example.org");
        assert_eq!(summary.recipients[0].status, RecipientStatus::Queued);
        assert_eq!(
            store.message_content(&id).await.unwrap().unwrap(),
            *msg.content
        );
        assert_eq!(store.queued_messages(10).await.unwrap().len(), 1);
        assert_eq!(store.pending_recipients().await.unwrap(), 2);
        assert!(store.delete_message(&id).await.unwrap());
        assert_eq!(store.pending_recipients().await.unwrap(), 0);
        assert!(store.message(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn claim_record_finalize_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let msg = message(&["a@x.example", "b@y.example"]);
        let id = msg.id.clone();
        store.enqueue(msg).await.unwrap();
        let claimed = store.claim_due(10, 1000, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].recipients.len(), 2);
        assert!(
            store.claim_due(10, 1000, 10).await.unwrap().is_empty(),
            "claimed twice"
        );
        let update = |idx, status| RecipientUpdate {
            idx,
            status,
            next_attempt: 50,
            reply: "r".into(),
            class: None,
            attempted: true,
        };
        let done = store
            .record_attempt(
                &id,
                vec![
                    update(0, RecipientStatus::Delivered),
                    update(1, RecipientStatus::Deferred),
                ],
            )
            .await
            .unwrap();
        assert!(done.is_none());
        let again = store.claim_due(60, 2000, 10).await.unwrap();
        assert_eq!(again[0].recipients.len(), 1);
        assert_eq!(again[0].recipients[0].attempts, 1);
        let bounced = RecipientUpdate {
            class: Some("bad-mailbox".into()),
            ..update(1, RecipientStatus::Bounced)
        };
        let done = store
            .record_attempt(&id, vec![bounced])
            .await
            .unwrap()
            .expect("complete");
        assert_eq!(done.recipients[1].status, RecipientStatus::Bounced);
        assert_eq!(
            done.recipients[1].last_class.as_deref(),
            Some("bad-mailbox")
        );
        assert_eq!(done.recipients[0].last_class, None);
        assert_eq!(store.unfinalized(10).await.unwrap().len(), 1);
        store.finalize(&id).await.unwrap();
        assert!(store.unfinalized(10).await.unwrap().is_empty());
        assert!(store.message_content(&id).await.unwrap().is_none());
        assert!(store.message(&id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn retry_now_and_release_claims_make_recipients_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let mut msg = message(&["a@x.example"]);
        msg.first_attempt_at = 1_000_000;
        store.enqueue(msg).await.unwrap();
        assert!(store.claim_due(10, 20, 10).await.unwrap().is_empty());
        assert_eq!(store.release_claims(10, 600).await.unwrap(), 1);
        assert_eq!(store.claim_due(10, 5_000, 10).await.unwrap().len(), 1);
        assert_eq!(store.retry_requested_at().await.unwrap(), 0);
        assert_eq!(store.retry_now(None, 11).await.unwrap(), 1);
        assert_eq!(store.retry_requested_at().await.unwrap(), 11);
        assert_eq!(store.claim_due(11, 5_000, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn events_are_logged_for_acceptance_and_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let msg = message(&["a@x.example", "b@y.example"]);
        let id = msg.id.clone();
        store.enqueue(msg).await.unwrap();
        let update = RecipientUpdate {
            idx: 1,
            status: RecipientStatus::Bounced,
            next_attempt: 0,
            reply: "550 5.1.1 unknown".into(),
            class: Some("bad-mailbox".into()),
            attempted: true,
        };
        store.record_attempt(&id, vec![update]).await.unwrap();
        let events = store.events(0, 10).await.unwrap();
        let kinds: Vec<_> = events
            .iter()
            .map(|e| (e.kind, e.recipient.clone().unwrap()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (EventKind::Accepted, "a@x.example".to_string()),
                (EventKind::Accepted, "b@y.example".to_string()),
                (EventKind::Bounced, "b@y.example".to_string()),
            ]
        );
        assert_eq!(events[2].class.as_deref(), Some("bad-mailbox"));
        assert_eq!(events[2].user.as_deref(), Some("alice"));
        let after = store.events(events[1].id, 10).await.unwrap();
        assert_eq!(after.len(), 1);
    }

    #[tokio::test]
    async fn a_database_without_last_class_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let old = SCHEMA.replace("    last_class TEXT,\n", "");
        assert_ne!(old, SCHEMA);
        Connection::open(dir.path().join("outpost.db"))
            .unwrap()
            .execute_batch(&old)
            .unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let msg = message(&["a@x.example"]);
        let id = msg.id.clone();
        store.enqueue(msg).await.unwrap();
        let update = RecipientUpdate {
            idx: 0,
            status: RecipientStatus::Bounced,
            next_attempt: 0,
            reply: "550 5.1.1 unknown".into(),
            class: Some("bad-mailbox".into()),
            attempted: true,
        };
        store.record_attempt(&id, vec![update]).await.unwrap();
        let summary = store.message(&id).await.unwrap().unwrap();
        assert_eq!(
            summary.recipients[0].last_class.as_deref(),
            Some("bad-mailbox")
        );
    }

    #[tokio::test]
    async fn suppressions_per_domain() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let s = |domain: &str, address: &str| Suppression {
            domain: domain.into(),
            address: address.into(),
            reason: "manual".into(),
            created_at: 1,
        };
        assert!(
            store
                .add_suppression(s("A.example", "X@y.example"))
                .await
                .unwrap()
        );
        assert!(
            !store
                .add_suppression(s("a.example", "x@y.example"))
                .await
                .unwrap()
        );
        assert!(
            store
                .add_suppression(s("a.example", "z@y.example"))
                .await
                .unwrap()
        );
        assert!(
            store
                .add_suppression(s("b.example", "x@y.example"))
                .await
                .unwrap()
        );
        assert!(
            store
                .suppression("a.example", "x@Y.example")
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .suppression("c.example", "x@y.example")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store
                .suppressions(Some("a.example"), None, 10)
                .await
                .unwrap()
                .len(),
            2
        );
        let page = store
            .suppressions(None, Some(("a.example".into(), "x@y.example".into())), 10)
            .await
            .unwrap();
        assert_eq!(page.len(), 2);
        assert!(
            store
                .remove_suppression("a.example", "x@y.example")
                .await
                .unwrap()
        );
        assert!(
            !store
                .remove_suppression("a.example", "x@y.example")
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn release_claims_frees_claimed_retries_but_not_distant_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let msg = message(&["a@x.example", "b@y.example"]);
        let id = msg.id.clone();
        store.enqueue(msg).await.unwrap();
        store.claim_due(10, 20, 10).await.unwrap();
        let deferred = |idx, next_attempt| RecipientUpdate {
            idx,
            status: RecipientStatus::Deferred,
            next_attempt,
            reply: "451".into(),
            class: None,
            attempted: true,
        };
        store
            .record_attempt(&id, vec![deferred(0, 30), deferred(1, 1_000_000)])
            .await
            .unwrap();
        // The retry of the first recipient is claimed, then the process dies.
        assert_eq!(store.claim_due(30, 630, 10).await.unwrap().len(), 1);
        assert!(store.claim_due(40, 640, 10).await.unwrap().is_empty());
        // Restart at 40 with a lease of 600: the claim (until 630) is void; the
        // retry due at 1,000,000 keeps its time.
        assert_eq!(store.release_claims(40, 640).await.unwrap(), 1);
        let due = store.claim_due(40, 640, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].recipients.len(), 1);
        assert_eq!(due[0].recipients[0].idx, 0);
    }

    #[tokio::test]
    async fn concurrent_enqueues_share_commits_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 64).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.enqueue(message(&["x@example.net"])).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(store.queued_messages(1000).await.unwrap().len(), 200);
    }

    #[tokio::test]
    async fn a_failing_write_does_not_undo_its_batch_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 64).unwrap();
        let user = |name: &str| UserRecord {
            name: name.into(),
            password_hash: "h".into(),
            admin: false,
            domains: vec!["Example.com".into()],
        };
        let (a, b, c) = tokio::join!(
            store.add_user(user("alice")),
            store.add_user(user("alice")),
            store.add_user(user("bob"))
        );
        assert_eq!([a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(), 1);
        c.unwrap();
        let users = store.users().await.unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].domains, vec!["example.com".to_string()]);
        assert!(store.set_password("bob", "h2").await.unwrap());
        assert!(!store.set_password("carol", "h2").await.unwrap());
        assert!(store.remove_user("bob").await.unwrap());
        assert!(store.user("bob").await.unwrap().is_none());
    }
}
