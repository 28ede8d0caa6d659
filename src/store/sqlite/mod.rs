//! The embedded store: one SQLite database in WAL mode with `synchronous = FULL`.
//!
//! Why SQLite: it gives atomic multi-row commits (message + envelope + recipients in
//! one transaction), crash recovery that has been tested for decades, and indexed
//! queries for the scheduler (`status, next_attempt`) and the CLI, without another
//! server. A file-per-message spool would need fsync + rename + directory fsync per
//! message and hand-written indexes; SQLite's WAL gives one sequential fsync per
//! commit instead.
//!
//! Writes go through one group-commit writer thread (`writer.rs`), and WAL
//! checkpoints run on a thread of their own beside it (`checkpoint.rs`); reads run on a
//! small pool of read-only connections in `spawn_blocking` here; WAL lets them
//! proceed while the writer commits. Each role of the store (see `store/mod.rs`)
//! is implemented in its own file: `queue.rs`, `events.rs`, `suppressions.rs`,
//! `accounts.rs` (domains and users), `api_keys.rs`, `dashboard.rs` (counters,
//! search, attempt details), `shared.rs` (secrets, webhook cursors); `schema.rs`
//! creates and migrates the tables. Large message bodies are kept in files
//! beside the database (`spool.rs`).

mod accounts;
mod api_keys;
mod checkpoint;
mod dashboard;
mod events;
mod queue;
mod schema;
mod shaping;
mod shared;
mod spool;
mod suppressions;
mod writer;

use super::*;
use crate::metrics::CommitStages;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub struct SqliteStore {
    jobs: writer::Jobs,
    path: PathBuf,
    /// Where spooled bodies are (`spool.rs`).
    spool_dir: PathBuf,
    readers: Mutex<Vec<Connection>>,
    /// Bounds the read connections: readers beyond it wait for one instead of
    /// opening (and parsing the schema for) a connection of their own.
    reader_slots: tokio::sync::Semaphore,
}

const MAX_READERS: usize = 16;

/// Prepared statements kept per connection. An acceptance and a delivery's record
/// run about 30 distinct statements; rusqlite's default of 16 made the writer
/// parse and plan most of them again for every message (a quarter of its
/// instructions).
const STATEMENT_CACHE: usize = 128;

impl SqliteStore {
    /// The database file of the store kept in data directory `dir`.
    pub fn database_path(dir: &Path) -> std::path::PathBuf {
        dir.join("outpost.db")
    }

    /// Opens (creating if needed) `dir/outpost.db` and starts the writer thread.
    pub fn open(dir: &Path, max_batch: usize) -> StoreResult<Arc<SqliteStore>> {
        Self::open_measured(dir, max_batch, Arc::default())
    }

    /// [`SqliteStore::open`], reporting the group commit's stages into `stages`.
    pub fn open_measured(
        dir: &Path,
        max_batch: usize,
        stages: Arc<CommitStages>,
    ) -> StoreResult<Arc<SqliteStore>> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = Self::database_path(dir);
        let conn = Connection::open(&path).map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // temp_store: every job runs in a SAVEPOINT, whose sub-journal (the pages
        // it changes, as they were) SQLite otherwise spills into a temporary file
        // beyond 64 KiB: about 50 page writes, each a system call, per message
        // accepted and delivered. In memory, it is dropped at each RELEASE.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA temp_store = MEMORY;",
        )
        .map_err(backend)?;
        conn.execute_batch(schema::SCHEMA).map_err(backend)?;
        conn.execute_batch(dashboard::SCHEMA).map_err(backend)?;
        schema::migrate(&conn).map_err(backend)?;
        dashboard::migrate(&conn).map_err(backend)?;
        let spool = spool::Spool::open(&conn, &path);
        Ok(Arc::new(SqliteStore {
            jobs: writer::start(conn, spool, max_batch, stages, checkpoint::start(&path)?)?,
            spool_dir: spool::dir_of(&path),
            path,
            readers: Mutex::new(Vec::new()),
            reader_slots: tokio::sync::Semaphore::new(MAX_READERS),
        }))
    }

    /// Runs `f` on a read connection of the pool.
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
            .map_err(backend)
            .inspect(|c| c.set_prepared_statement_cache_capacity(STATEMENT_CACHE))?,
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

fn backend(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

/// Runs one statement; true when it changed a row.
fn changes_rows<P: rusqlite::Params>(conn: &Connection, sql: &str, params: P) -> StoreResult<bool> {
    conn.execute(sql, params).map(|n| n > 0).map_err(backend)
}
