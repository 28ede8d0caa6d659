//! WAL checkpoints off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the COMMIT that crosses
//! `wal_autocheckpoint` pages: that commit copies the whole WAL into the database
//! and fsyncs it before it returns, and every acceptance waiting for the next group
//! commit waits with it (a p99.9 accept latency ten times the p99). The writer's
//! connection therefore never checkpoints (`wal_autocheckpoint = 0`); this thread,
//! on a connection of its own, runs PASSIVE checkpoints, which take the checkpoint
//! lock but not the write lock: the writer keeps committing into the WAL while
//! the pages are copied. Once everything is copied, SQLite rewinds the WAL at the
//! next write, so it stays the size of the writes between two checkpoints.
//!
//! Should the checkpoints fall behind (a reader pinning an old snapshot, a disk
//! slower than the writes), the WAL would grow without end: past
//! [`MAX_WAL_FRAMES`] the thread runs a RESTART checkpoint, which does make the
//! writer wait, once, rather than let the file fill the disk.

use super::backend;
use crate::store::{StoreError, StoreResult};
use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often a checkpoint runs while commits come in: each copies what the
/// commits since the last one wrote (at thousands of messages per second, a few
/// MB), which takes a few milliseconds of disk time.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// WAL frames left uncopied after which the checkpoint waits for the writer.
const MAX_WAL_FRAMES: i64 = 262_144;
/// A checkpoint also runs this long after the last commit, so an idle store's
/// WAL is copied and the next start has little to replay.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(5);

/// What the writer tells the checkpointer after each commit.
pub(super) type Commits = mpsc::SyncSender<()>;

/// Starts the checkpoint thread on a connection of its own to `path`; the writer
/// calls [`note_commit`] after each commit. The thread stops when the writer's
/// sender is dropped.
pub(super) fn start(path: &Path) -> StoreResult<Commits> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(backend)?;
    // One slot is enough: a pending note already says "there were commits".
    let (commits, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || checkpoint_loop(&conn, &rx))
        .map_err(|e| StoreError::Backend(format!("cannot start checkpoint thread: {e}")))?;
    Ok(commits)
}

/// Tells the checkpointer a commit happened; never waits.
pub(super) fn note_commit(commits: &Commits) {
    let _ = commits.try_send(());
}

fn checkpoint_loop(conn: &Connection, commits: &mpsc::Receiver<()>) {
    let mut last = Instant::now();
    loop {
        match commits.recv_timeout(IDLE_CHECKPOINT) {
            Ok(()) if last.elapsed() < CHECKPOINT_INTERVAL => continue,
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                checkpoint(conn, "PASSIVE");
                last = Instant::now();
                // Nothing more to copy until the next commit.
                if commits.recv().is_err() {
                    return;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let left = checkpoint(conn, "PASSIVE");
        last = Instant::now();
        if let Some(left) = left.filter(|left| *left >= MAX_WAL_FRAMES) {
            tracing::warn!(
                frames = left,
                "store WAL checkpoints fall behind; the next one waits for the writer"
            );
            checkpoint(conn, "RESTART");
        }
    }
}

/// Runs a checkpoint of `mode`; returns the frames it could not copy.
fn checkpoint(conn: &Connection, mode: &str) -> Option<i64> {
    match conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    }) {
        Ok((log, copied)) => Some(log.max(0) - copied.max(0)),
        Err(e) => {
            tracing::error!(error = %e, mode, "store WAL checkpoint failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::contract::message;
    use crate::store::{QueueStore, SqliteStore};
    use std::time::{Duration, Instant};

    /// The writer never checkpoints (`wal_autocheckpoint = 0`): the database file
    /// grows only if this thread copies the WAL into it.
    #[tokio::test]
    async fn the_wal_is_copied_into_the_database_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let db = SqliteStore::database_path(dir.path());
        let size = || std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
        let before = size();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut written = 0;
        while size() <= before {
            assert!(
                Instant::now() < deadline,
                "no checkpoint after {written} commits"
            );
            store.enqueue(message(&["x@example.net"])).await.unwrap();
            written += 1;
        }
        assert_eq!(store.queued_messages(100_000).await.unwrap().len(), written);
    }
}
