//! The body spool: large message bodies in files beside the database instead of
//! in it.
//!
//! Why: a body stored in SQLite is written twice (into the WAL at COMMIT, then
//! into the database file by the checkpoint) and copied through its B-tree pages;
//! at 100 KB a message that is the disk's and the writer's main cost. A spooled
//! body is written once, by one `write` per batch.
//!
//! How: each group commit that holds bodies of at least [`MIN_SIZE`] writes them,
//! one after the other, into one new file `spool/<batch number>`, fsyncs the file
//! and the directory, and only then COMMITs the rows that name it (`messages.spool`
//! and `spool_offset`; the length is `messages.size`). So a committed row never
//! names a file that is not on disk, and `250` still means on disk. A crash
//! between the two leaves a file no row names: an orphan, removed when the store
//! is next opened. A file is deleted once no row names it any more: its messages
//! finished (delivered, bounced, expired) or deleted, or their bodies moved into
//! the database because they were deferred (below). The writer learns which files
//! to look at from the jobs that cleared a row's `spool` ([`released`]); the
//! database stays the only judge of whether a file is still needed.
//!
//! A deferred message may wait for days and would keep its whole batch's file; at
//! its first deferral its body moves into the database ([`relocate`]), so files
//! hold only mail in its first delivery attempt (or queued behind a full delivery
//! window). Mail with a local recipient is never spooled: it is kept after it
//! finishes.
//!
//! One process at a time owns the spool (a lock on `spool/lock`): the server. A
//! store opened beside it (an `outpost` command run while the server is up) reads
//! spooled bodies but stores new ones in the database and never deletes a file, so
//! it cannot take a file the server has written but not yet committed for an
//! orphan.

use super::backend;
use crate::store::{StoreError, StoreResult};
use rusqlite::{Connection, OptionalExtension, params};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bodies this large or larger are spooled. Below it, one more fsync per batch
/// (the file's) costs more than writing the body twice through the WAL saves.
pub(super) const MIN_SIZE: usize = 64 * 1024;

/// How often the writer checks every file, not only those jobs released: catches
/// rows deleted by another process (`outpost queue delete` beside the server).
const FULL_SWEEP: Duration = Duration::from_secs(30);

/// Where a spooled body is: file (batch number) and offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Spooled {
    pub file: i64,
    pub offset: i64,
}

/// The spool directory of the store whose database is `db`.
pub(super) fn dir_of(db: &Path) -> PathBuf {
    db.with_file_name("spool")
}

fn path(dir: &Path, file: i64) -> PathBuf {
    dir.join(format!("{file:016x}"))
}

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> StoreError {
    let text = format!("spool: cannot {what} {}: {e}", path.display());
    if e.kind() == ErrorKind::StorageFull {
        StoreError::Full(text)
    } else {
        StoreError::Backend(text)
    }
}

thread_local! {
    /// Files named by rows that jobs of the current batch un-spooled: the writer
    /// checks them after the COMMIT. Jobs run on the writer thread, so this is
    /// the writer's own list.
    static RELEASED: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
}

/// Notes the file of message `id`, if spooled, as one to check after the commit:
/// called before a write that un-spools or deletes the row.
pub(super) fn released(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    let file: Option<i64> = conn
        .prepare_cached("SELECT spool FROM messages WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?
        .flatten();
    if let Some(file) = file {
        RELEASED.with(|r| r.borrow_mut().push(file));
    }
    Ok(())
}

/// Reads a spooled body of `len` bytes.
pub(super) fn read(dir: &Path, at: Spooled, len: usize) -> std::io::Result<Vec<u8>> {
    let mut file = File::open(path(dir, at.file))?;
    file.seek(SeekFrom::Start(at.offset as u64))?;
    let mut body = vec![0; len];
    file.read_exact(&mut body)?;
    Ok(body)
}

/// Moves the body of message `id`, if spooled, into the database (see the module
/// documentation: a deferred message should not keep its batch's file).
pub(super) fn relocate(conn: &Connection, dir: &Path, id: &str) -> StoreResult<()> {
    let row: Option<(i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT spool, spool_offset, size FROM messages WHERE id = ?1 AND spool IS NOT NULL",
        )
        .and_then(|mut s| {
            s.query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .optional()
        })
        .map_err(backend)?;
    let Some((file, offset, size)) = row else {
        return Ok(());
    };
    let body = read(dir, Spooled { file, offset }, size as usize)
        .map_err(|e| io_error("read", &path(dir, file), &e))?;
    conn.prepare_cached(
        "UPDATE messages SET content = ?2, spool = NULL, spool_offset = NULL WHERE id = ?1",
    )
    .and_then(|mut s| s.execute(params![id, body]))
    .map_err(backend)?;
    RELEASED.with(|r| r.borrow_mut().push(file));
    Ok(())
}

/// The spool as its owner (the writer thread) sees it.
pub(super) struct Spool {
    dir: PathBuf,
    /// Held while the spool is owned; the lock goes with it.
    _lock: File,
    next: i64,
    /// Files on disk that rows may name.
    live: BTreeSet<i64>,
    swept: Instant,
}

impl Spool {
    /// Takes the spool of the store whose database is `db` (open on `conn`), and
    /// removes its orphans; `None` if another store owns it, or if it cannot be
    /// used (say, a directory made by another user): new bodies then stay in the
    /// database, which works, only slower for large mail.
    pub(super) fn open(conn: &Connection, db: &Path) -> Option<Spool> {
        Spool::take(conn, db).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "large bodies are kept in the database");
            None
        })
    }

    fn take(conn: &Connection, db: &Path) -> StoreResult<Option<Spool>> {
        let dir = dir_of(db);
        std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, &e))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(|e| io_error("open", &lock_path, &e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error("lock", &lock_path, &e)),
        }
        let mut live = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_error("list", &dir, &e))? {
            let entry = entry.map_err(|e| io_error("list", &dir, &e))?;
            let name = entry.file_name();
            if let Some(file) = name.to_str().and_then(|n| i64::from_str_radix(n, 16).ok()) {
                live.insert(file);
            }
        }
        let named: i64 = conn
            .query_row("SELECT COALESCE(MAX(spool), 0) FROM messages", [], |row| {
                row.get(0)
            })
            .map_err(backend)?;
        let all: Vec<i64> = live.iter().copied().collect();
        let mut spool = Spool {
            // Past every name in the database and every file found, orphans
            // included: a number is not used twice.
            next: named.max(live.last().copied().unwrap_or(0)) + 1,
            dir,
            _lock: lock,
            live,
            swept: Instant::now(),
        };
        spool.remove_unnamed(conn, all);
        Ok(Some(spool))
    }

    /// Writes `bodies` into a new file and makes it durable (file and directory
    /// fsynced); returns where each one is.
    pub(super) fn write(&mut self, bodies: &[&[u8]]) -> StoreResult<Vec<Spooled>> {
        let file = self.next;
        self.next += 1;
        let path = path(&self.dir, file);
        let result = self.write_file(&path, file, bodies);
        match &result {
            Ok(_) => {
                self.live.insert(file);
            }
            // Nothing names the file yet.
            Err(_) => {
                let _ = std::fs::remove_file(&path);
            }
        }
        result
    }

    fn write_file(&self, path: &Path, file: i64, bodies: &[&[u8]]) -> StoreResult<Vec<Spooled>> {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| io_error("create", path, &e))?;
        let mut offset = 0i64;
        let mut placed = Vec::with_capacity(bodies.len());
        for body in bodies {
            out.write_all(body)
                .map_err(|e| io_error("write", path, &e))?;
            placed.push(Spooled { file, offset });
            offset += body.len() as i64;
        }
        out.sync_all().map_err(|e| io_error("fsync", path, &e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("fsync", &self.dir, &e))?;
        Ok(placed)
    }

    /// After a commit: deletes the files jobs released that no row names any more,
    /// and now and then checks every file.
    pub(super) fn after_commit(&mut self, conn: &Connection) {
        let mut candidates = RELEASED.with(|r| std::mem::take(&mut *r.borrow_mut()));
        if self.swept.elapsed() >= FULL_SWEEP {
            self.swept = Instant::now();
            candidates.extend(self.live.iter().copied());
        }
        if !candidates.is_empty() {
            candidates.sort_unstable();
            candidates.dedup();
            self.remove_unnamed(conn, candidates);
        }
    }

    fn remove_unnamed(&mut self, conn: &Connection, candidates: Vec<i64>) {
        for file in candidates {
            if !self.live.contains(&file) {
                continue;
            }
            let named = conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM messages WHERE spool = ?1)")
                .and_then(|mut s| s.query_row([file], |row| row.get::<_, bool>(0)));
            match named {
                Ok(true) => {}
                Ok(false) => {
                    let path = path(&self.dir, file);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {
                            self.live.remove(&file);
                        }
                        Err(e) if e.kind() == ErrorKind::NotFound => {
                            self.live.remove(&file);
                        }
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "cannot delete a spool file")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot check a spool file's messages"),
            }
        }
    }
}

/// Forgets what jobs released, for a writer without a spool (files are the
/// owner's to delete).
pub(super) fn forget_released() {
    RELEASED.with(|r| r.borrow_mut().clear());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::message;
    use crate::store::*;
    use std::sync::Arc;

    fn large(rcpt: &str) -> NewMessage {
        let mut msg = message(&[rcpt]);
        let mut content = b"Subject: large\r\n\r\n".to_vec();
        content.resize(MIN_SIZE + 1000, b'x');
        msg.content = Arc::new(content);
        msg
    }

    fn files(data: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(data.join("spool"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "lock")
            .collect();
        names.sort();
        names
    }

    /// Waits (with a deadline) until the spool holds no file: deletion follows
    /// the commit that answered the caller.
    async fn until_empty(data: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !files(data).is_empty() {
            assert!(
                Instant::now() < deadline,
                "spool still holds {:?}",
                files(data)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn outcome(status: RecipientStatus) -> RecipientUpdate {
        RecipientUpdate {
            idx: 0,
            status,
            next_attempt: 100,
            reply: "r".into(),
            class: None,
            attempted: true,
            path: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_large_body_is_spooled_until_its_message_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let msg = large("a@x.example");
        let (id, body) = (msg.id.clone(), msg.content.clone());
        store.enqueue(msg).await.unwrap();
        assert_eq!(files(dir.path()).len(), 1);
        let in_db: Option<Vec<u8>> = Connection::open(dir.path().join("outpost.db"))
            .unwrap()
            .query_row("SELECT content FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(in_db, None, "a spooled body is not in the database too");
        assert_eq!(
            store.message_content(&id).await.unwrap().as_ref(),
            Some(&*body)
        );
        let small = message(&["b@x.example"]);
        store.enqueue(small).await.unwrap();
        assert_eq!(
            files(dir.path()).len(),
            1,
            "small bodies stay in the database"
        );

        store
            .record_attempt(&id, vec![outcome(RecipientStatus::Delivered)], 2)
            .await
            .unwrap();
        until_empty(dir.path()).await;
        assert_eq!(store.message_content(&id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_deferred_body_moves_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let msg = large("a@x.example");
        let (id, body) = (msg.id.clone(), msg.content.clone());
        store.enqueue(msg).await.unwrap();
        store
            .record_attempt(&id, vec![outcome(RecipientStatus::Deferred)], 2)
            .await
            .unwrap();
        until_empty(dir.path()).await;
        assert_eq!(
            store.message_content(&id).await.unwrap().as_ref(),
            Some(&*body)
        );
    }

    #[tokio::test]
    async fn a_deleted_message_frees_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let msg = large("a@x.example");
        let id = msg.id.clone();
        store.enqueue(msg).await.unwrap();
        assert!(store.delete_message(&id).await.unwrap());
        until_empty(dir.path()).await;
    }

    #[tokio::test]
    async fn an_orphan_is_removed_when_the_store_opens_and_named_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let msg = large("a@x.example");
        let (id, body) = (msg.id.clone(), msg.content.clone());
        store.enqueue(msg).await.unwrap();
        let named = files(dir.path());
        drop(store);
        // A crash between a file's fsync and its batch's COMMIT leaves one.
        let orphan = dir.path().join("spool").join(format!("{:016x}", 1_000));
        std::fs::write(&orphan, b"no row names this").unwrap();
        // The dropped store's writer lets go of the spool when its thread ends;
        // until then a new store is not the owner and leaves files alone.
        let deadline = Instant::now() + Duration::from_secs(10);
        let store = loop {
            let store = SqliteStore::open(dir.path(), 16).unwrap();
            if !orphan.exists() {
                break store;
            }
            assert!(Instant::now() < deadline, "the orphan was never removed");
            drop(store);
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(files(dir.path()), named);
        assert_eq!(
            store.message_content(&id).await.unwrap().as_ref(),
            Some(&*body)
        );
    }

    #[tokio::test]
    async fn a_store_beside_the_owner_keeps_bodies_in_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let owner = SqliteStore::open(dir.path(), 16).unwrap();
        let beside = SqliteStore::open(dir.path(), 16).unwrap();
        let msg = large("a@x.example");
        let (id, body) = (msg.id.clone(), msg.content.clone());
        beside.enqueue(msg).await.unwrap();
        assert!(files(dir.path()).is_empty());
        assert_eq!(
            owner.message_content(&id).await.unwrap().as_ref(),
            Some(&*body)
        );
    }

    #[tokio::test]
    async fn a_spool_that_cannot_be_used_leaves_bodies_in_the_database() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the directory should be.
        std::fs::write(dir.path().join("spool"), b"not a directory").unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let msg = large("a@x.example");
        let (id, body) = (msg.id.clone(), msg.content.clone());
        store.enqueue(msg).await.unwrap();
        assert_eq!(
            store.message_content(&id).await.unwrap().as_ref(),
            Some(&*body)
        );
    }
}
