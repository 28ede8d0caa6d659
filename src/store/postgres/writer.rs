//! The group-commit writer: one task owns the write connection, takes every job
//! waiting in its channel (up to `store.max_batch`), runs each inside its own
//! SAVEPOINT (one failing job does not undo the others), commits once (one WAL
//! flush, `synchronous_commit = on`), and only then answers every job. Round
//! trips to the server are what a batch's time goes to, so the savepoints ride
//! along with other statements and `enqueue` is one statement. Under load,
//! many sessions share one commit, as with SQLite (`sqlite/writer.rs`). The
//! events the batch's writes logged go in last, just before the COMMIT, under
//! the cluster-wide lock that orders event ids (`events.rs`).
//!
//! Stages are reported as for SQLite ([`CommitStages`]): waiting for the batch,
//! running its writes (round trips to the server), and the COMMIT.

use super::{Conn, PostgresStore};
use crate::metrics::CommitStages;
use crate::store::{StoreError, StoreResult};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// A write's work, borrowing the writer's connection.
pub(super) type WriteFuture<'c, R> = Pin<Box<dyn Future<Output = StoreResult<R>> + Send + 'c>>;

type Completion = Box<dyn FnOnce(StoreResult<()>) + Send>;

/// What a job reports once run: how to answer its caller, and whether the
/// transaction is still usable (a failed ROLLBACK TO leaves it aborted).
struct Ran {
    complete: Completion,
    usable: bool,
}

trait Job: Send {
    /// Runs the write; the writer has just set the savepoint `job`, which this
    /// rolls back to if the write fails.
    fn run<'c>(self: Box<Self>, conn: &'c Conn) -> Pin<Box<dyn Future<Output = Ran> + Send + 'c>>;
    /// Answers the caller without running (the transaction could not start).
    fn abort(self: Box<Self>, error: StoreError);
}

struct WriteJob<F, R> {
    write: F,
    reply: oneshot::Sender<StoreResult<R>>,
}

impl<F, R> Job for WriteJob<F, R>
where
    F: for<'c> FnOnce(&'c Conn) -> WriteFuture<'c, R> + Send + 'static,
    R: Send + 'static,
{
    fn run<'c>(self: Box<Self>, conn: &'c Conn) -> Pin<Box<dyn Future<Output = Ran> + Send + 'c>> {
        Box::pin(async move {
            let mark = conn.logged_count();
            let result = (self.write)(conn).await;
            if result.is_err() {
                conn.forget_logged(mark);
            }
            let usable = result.is_ok() || conn.batch("ROLLBACK TO SAVEPOINT job").await.is_ok();
            let reply = self.reply;
            Ran {
                complete: Box::new(move |commit: StoreResult<()>| {
                    let _ = reply.send(commit.and(result));
                }),
                usable,
            }
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
}

/// The channel into the writer task.
pub(super) type Jobs = mpsc::UnboundedSender<Queued>;

/// Starts the writer task on `conn`; it stops when every sender is dropped. A
/// lost connection is replaced (from `config`) at the next batch.
pub(super) fn start(
    config: tokio_postgres::Config,
    timeout: Duration,
    conn: Conn,
    max_batch: usize,
    stages: Arc<CommitStages>,
) -> Jobs {
    let (jobs, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer_loop(config, timeout, conn, rx, max_batch, stages));
    jobs
}

impl PostgresStore {
    /// Runs `f` in the next group commit; resolves after the commit.
    pub(super) async fn write<R: Send + 'static>(
        &self,
        f: impl for<'c> FnOnce(&'c Conn) -> WriteFuture<'c, R> + Send + 'static,
    ) -> StoreResult<R> {
        self.submit(false, f).await
    }

    /// [`PostgresStore::write`] for an acceptance, whose stages are measured.
    pub(super) async fn write_accept<R: Send + 'static>(
        &self,
        f: impl for<'c> FnOnce(&'c Conn) -> WriteFuture<'c, R> + Send + 'static,
    ) -> StoreResult<R> {
        self.submit(true, f).await
    }

    async fn submit<R: Send + 'static>(
        &self,
        accept: bool,
        f: impl for<'c> FnOnce(&'c Conn) -> WriteFuture<'c, R> + Send + 'static,
    ) -> StoreResult<R> {
        let (reply, rx) = oneshot::channel();
        let queued = Queued {
            job: Box::new(WriteJob { write: f, reply }),
            since: Instant::now(),
            accept,
        };
        let stopped = || StoreError::Backend("store writer has stopped".into());
        self.jobs.send(queued).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn writer_loop(
    config: tokio_postgres::Config,
    timeout: Duration,
    conn: Conn,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    max_batch: usize,
    stages: Arc<CommitStages>,
) {
    let mut conn = Some(conn);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let live = match conn.take().filter(Conn::usable) {
            Some(c) => Ok(c),
            None => Conn::connect(&config, timeout).await,
        };
        let c = match live {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "store cannot connect to PostgreSQL");
                batch.into_iter().for_each(|q| q.job.abort(e.clone()));
                continue;
            }
        };
        let begun = Instant::now();
        // Each job runs after a savepoint of its own, set in the same round trip
        // as the previous one's release (or as BEGIN, for the first).
        if let Err(e) = c.batch("BEGIN; SAVEPOINT job").await {
            tracing::error!(error = %e, "store cannot begin a transaction");
            let _ = c.batch("ROLLBACK").await;
            batch.into_iter().for_each(|q| q.job.abort(e.clone()));
            conn = Some(c);
            continue;
        }
        let writes = batch.len();
        let mut accept_waits = Vec::new();
        let mut completions = Vec::with_capacity(writes);
        // Once set, the transaction is aborted: the jobs left are not run.
        let mut broken: Option<StoreError> = None;
        for (i, q) in batch.into_iter().enumerate() {
            if broken.is_none() && i > 0 {
                broken = c.batch("RELEASE SAVEPOINT job; SAVEPOINT job").await.err();
            }
            if let Some(e) = &broken {
                q.job.abort(e.clone());
                continue;
            }
            if q.accept {
                accept_waits.push(begun.saturating_duration_since(q.since));
            }
            let ran = q.job.run(&c).await;
            if !ran.usable {
                broken = Some(StoreError::Backend(
                    "a write left the transaction unusable; batch rolled back".into(),
                ));
            }
            completions.push(ran.complete);
        }
        // The batch's events go in last, each id drawn just before the COMMIT
        // (events.rs: ids visible in order across nodes).
        if broken.is_none() {
            broken = super::events::insert_logged(&c).await.err();
        }
        let written = Instant::now();
        // COMMIT of an aborted transaction "succeeds" as a ROLLBACK, so a batch
        // whose savepoint handling failed is rolled back and reported failed.
        let committed = match broken {
            None => c.batch("COMMIT").await,
            Some(e) => {
                c.take_logged();
                let _ = c.batch("ROLLBACK").await;
                Err(e)
            }
        };
        match committed {
            Ok(()) => {
                stages.batch(writes, &accept_waits, written - begun, written.elapsed());
                completions.into_iter().for_each(|c| c(Ok(())));
            }
            Err(e) => {
                tracing::error!(error = %e, writes = completions.len(), "store commit failed");
                completions.into_iter().for_each(|c| c(Err(e.clone())));
            }
        }
        conn = Some(c);
    }
}
