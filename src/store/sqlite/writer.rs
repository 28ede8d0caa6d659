//! The group-commit writer: one thread owns the write connection, takes every job
//! waiting in its channel (up to `store.max_batch`), runs each inside its own
//! SAVEPOINT (one failing job does not undo the others), commits once (one WAL
//! fsync), and only then answers every job. Under load, many sessions share one
//! fsync.
//!
//! Large bodies go to the spool (`spool.rs`): the writer writes and fsyncs the
//! batch's bodies into one file before it begins the transaction whose rows name
//! that file, so a committed row never names a body that is not on disk.
//!
//! Each acceptance's time here is reported in three stages ([`CommitStages`]):
//! waiting for its batch to begin, running the batch's writes, and making them
//! durable (the spool file's write and fsync, if any, and the COMMIT: writing
//! the WAL frames and the fsync).

use super::checkpoint::{Commits, note_commit};
use super::dashboard;
use super::spool::{self, Spool, Spooled};
use super::{SqliteStore, backend};
use crate::metrics::CommitStages;
use crate::store::{StoreError, StoreResult};
use rusqlite::Connection;
use std::sync::{Arc, mpsc};
use std::time::Instant;
use tokio::sync::oneshot;

type Completion = Box<dyn FnOnce(StoreResult<()>) + Send>;

/// One write waiting for the next group commit.
pub(super) trait Job: Send {
    /// Runs the write inside the open transaction (`spooled`: where the writer put
    /// the job's body, if it had one for the spool); the completion answers the
    /// caller once the commit's outcome is known.
    fn run(self: Box<Self>, conn: &Connection, spooled: Option<Spooled>) -> Completion;
    /// Answers the caller without running (the transaction could not start).
    fn abort(self: Box<Self>, error: StoreError);
}

struct WriteJob<F, R> {
    write: F,
    reply: oneshot::Sender<StoreResult<R>>,
}

impl<F, R> Job for WriteJob<F, R>
where
    F: FnOnce(&Connection, Option<Spooled>) -> StoreResult<R> + Send + 'static,
    R: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection, spooled: Option<Spooled>) -> Completion {
        let write = self.write;
        let result = in_savepoint(conn, |conn| write(conn, spooled));
        let reply = self.reply;
        Box::new(move |commit: StoreResult<()>| {
            let _ = reply.send(commit.and(result));
        })
    }

    fn abort(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
}

/// A job as it waits in the writer's channel.
pub(super) struct Queued {
    job: Box<dyn Job>,
    since: Instant,
    /// An acceptance (`enqueue`): its stages are measured.
    accept: bool,
    /// A body for the spool: the job is told where it was written.
    body: Option<Arc<Vec<u8>>>,
}

/// The channel into the writer thread.
pub(super) type Jobs = mpsc::Sender<Queued>;

/// Starts the writer thread on `conn`; it stops when every sender is dropped.
pub(super) fn start(
    conn: Connection,
    spool: Option<Spool>,
    max_batch: usize,
    stages: Arc<CommitStages>,
    checkpoints: Commits,
) -> StoreResult<Jobs> {
    let (jobs, rx) = mpsc::channel::<Queued>();
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer_loop(conn, spool, rx, max_batch, &stages, &checkpoints))
        .map_err(|e| StoreError::Backend(format!("cannot start writer thread: {e}")))?;
    Ok(jobs)
}

impl SqliteStore {
    /// Runs `f` in the next group commit; resolves after the commit.
    pub(super) async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        self.submit(false, None, move |conn, _| f(conn)).await
    }

    /// [`SqliteStore::write`] for an acceptance, whose stages are measured. With a
    /// `body`, the writer may spool it and tell `f` where it is; `f` must then not
    /// store the body itself.
    pub(super) async fn write_accept<R: Send + 'static>(
        &self,
        body: Option<Arc<Vec<u8>>>,
        f: impl FnOnce(&Connection, Option<Spooled>) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        self.submit(true, body, f).await
    }

    async fn submit<R: Send + 'static>(
        &self,
        accept: bool,
        body: Option<Arc<Vec<u8>>>,
        f: impl FnOnce(&Connection, Option<Spooled>) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let (reply, rx) = oneshot::channel();
        let queued = Queued {
            job: Box::new(WriteJob { write: f, reply }),
            since: Instant::now(),
            accept,
            body,
        };
        self.jobs
            .send(queued)
            .map_err(|_| StoreError::Backend("store writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("store writer has stopped".into()))?
    }
}

fn writer_loop(
    mut conn: Connection,
    mut spool: Option<Spool>,
    rx: mpsc::Receiver<Queued>,
    max_batch: usize,
    stages: &CommitStages,
    checkpoints: &Commits,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let begun = Instant::now();
        let placed = spool_bodies(spool.as_mut(), &batch);
        // Disk time, reported with the COMMIT's rather than as writing.
        let spooled_in = begun.elapsed();
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let e = backend(e);
                tracing::error!(error = %e, "store cannot begin a transaction");
                batch.into_iter().for_each(|q| q.job.abort(e.clone()));
                continue;
            }
        };
        let writes = batch.len();
        let mut accept_waits = Vec::new();
        let mut completions = Vec::with_capacity(writes);
        for (q, spooled) in batch.into_iter().zip(placed) {
            if q.accept {
                accept_waits.push(begun.saturating_duration_since(q.since));
            }
            completions.push(q.job.run(&tx, spooled));
        }
        let indexed = dashboard::index_batch(&tx).map_err(backend);
        let written = Instant::now();
        // A failed index write or COMMIT rolls the transaction back when `tx` is
        // dropped.
        match indexed.and_then(|()| tx.commit().map_err(backend)) {
            Ok(()) => {
                let write = (written - begun).saturating_sub(spooled_in);
                stages.batch(writes, &accept_waits, write, written.elapsed() + spooled_in);
                completions.into_iter().for_each(|c| c(Ok(())));
                note_commit(checkpoints);
            }
            Err(e) => {
                tracing::error!(error = %e, writes = completions.len(), "store commit failed");
                completions.into_iter().for_each(|c| c(Err(e.clone())));
            }
        }
        match spool.as_mut() {
            Some(spool) => spool.after_commit(&conn),
            None => spool::forget_released(),
        }
    }
}

/// Writes the batch's bodies into one spool file and says where each job's went
/// (nowhere without a spool, or if the file cannot be written: those jobs then
/// store their bodies in the database, which fails too if the disk is full).
fn spool_bodies(spool: Option<&mut Spool>, batch: &[Queued]) -> Vec<Option<Spooled>> {
    let unplaced = || vec![None; batch.len()];
    let Some(spool) = spool.filter(|_| batch.iter().any(|q| q.body.is_some())) else {
        return unplaced();
    };
    let bodies: Vec<&[u8]> = batch
        .iter()
        .filter_map(|q| q.body.as_deref())
        .map(Vec::as_slice)
        .collect();
    match spool.write(&bodies) {
        Ok(places) => {
            let mut places = places.into_iter();
            batch
                .iter()
                .map(|q| q.body.as_ref().and_then(|_| places.next()))
                .collect()
        }
        Err(e) => {
            tracing::warn!(error = %e, "store cannot spool bodies, keeps them in the database");
            unplaced()
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
