//! Ready queues per destination, with the shaping limits: worker count
//! (connections), suspension after failures, and a messages-per-minute pace.
//!
//! A destination is what a connection goes to: a route's smart host, or the set
//! of best MX hosts. Domains that share MX hosts (say, a provider's many domains)
//! share one queue and its limits, so spreading a send over them does not
//! multiply the connections to the provider.

use super::{Engine, Job};
use crate::outbound::RemoteReply;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A job refused because its destination is suspended, with the reason and end.
pub(crate) struct Suspended {
    pub job: Job,
    pub reply: RemoteReply,
    pub until: Instant,
}

#[derive(Default)]
pub(crate) struct Destinations {
    queues: Mutex<HashMap<String, ReadyQueue>>,
}

#[derive(Default)]
struct ReadyQueue {
    jobs: VecDeque<Job>,
    /// Workers running (each holds at most one connection).
    workers: usize,
    /// Workers waiting for a job with an open connection.
    idle: usize,
    suspended: Option<(Instant, RemoteReply)>,
    notify: Arc<Notify>,
    /// Earliest start of the next message, when a pace is set.
    next_send: Option<Instant>,
}

impl Destinations {
    /// Queues a job and makes sure a worker will take it. When the destination is
    /// suspended the job is handed back with the reply to record.
    pub fn push(&self, engine: &Arc<Engine>, job: Job) -> Result<(), Box<Suspended>> {
        let shaping = engine.config.delivery.shaping_for(&job.domain);
        let destination = job.destination.clone();
        let mut queues = self.queues.lock().expect("ready queues lock");
        let queue = queues.entry(destination.clone()).or_default();
        if let Some((until, reply)) = &queue.suspended {
            if Instant::now() < *until {
                return Err(Box::new(Suspended {
                    job,
                    reply: reply.clone(),
                    until: *until,
                }));
            }
            queue.suspended = None;
        }
        queue.jobs.push_back(job);
        if queue.idle > 0 {
            queue.notify.notify_one();
        } else if queue.workers < shaping.max_connections {
            queue.workers += 1;
            tokio::spawn(super::worker::run(engine.clone(), destination, shaping));
        }
        Ok(())
    }

    /// The next job for a worker of `destination`. A worker holding a connection waits up
    /// to `idle_timeout` for one; otherwise, or after that, `None` retires it.
    pub async fn next_job(
        &self,
        destination: &str,
        holding_connection: bool,
        idle_timeout: Duration,
    ) -> Option<Job> {
        let notify = {
            let mut queues = self.queues.lock().expect("ready queues lock");
            let queue = queues
                .get_mut(destination)
                .expect("a worker's destination has a queue");
            if let Some(job) = queue.jobs.pop_front() {
                return Some(job);
            }
            if !holding_connection {
                Self::retire(&mut queues, destination);
                return None;
            }
            queue.idle += 1;
            queue.notify.clone()
        };
        let _ = tokio::time::timeout(idle_timeout, notify.notified()).await;
        let mut queues = self.queues.lock().expect("ready queues lock");
        let queue = queues
            .get_mut(destination)
            .expect("a worker's destination has a queue");
        queue.idle -= 1;
        match queue.jobs.pop_front() {
            Some(job) => Some(job),
            None => {
                Self::retire(&mut queues, destination);
                None
            }
        }
    }

    fn retire(queues: &mut HashMap<String, ReadyQueue>, destination: &str) {
        let queue = queues
            .get_mut(destination)
            .expect("a worker's destination has a queue");
        queue.workers -= 1;
        let suspended = queue
            .suspended
            .as_ref()
            .is_some_and(|(until, _)| Instant::now() < *until);
        if queue.workers == 0 && queue.jobs.is_empty() && !suspended {
            queues.remove(destination);
        }
    }

    /// Suspends `destination` until `until`; returns the jobs that were waiting,
    /// which the caller defers with `reply`.
    pub fn suspend(&self, destination: &str, until: Instant, reply: RemoteReply) -> Vec<Job> {
        let mut queues = self.queues.lock().expect("ready queues lock");
        let Some(queue) = queues.get_mut(destination) else {
            return Vec::new();
        };
        // Several workers may meet the same failure; say it once.
        if queue
            .suspended
            .as_ref()
            .is_none_or(|(t, _)| Instant::now() >= *t)
        {
            let pause_seconds = until
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                .round();
            tracing::warn!(destination, reply = %reply, pause_seconds, "destination suspended");
        }
        queue.suspended = Some((until, reply));
        queue.jobs.drain(..).collect()
    }

    /// Adopts a suspension node `node` made, unless the one in force here ends
    /// no more than `margin` before it (it is the same, or as good); returns the
    /// jobs that were waiting, which the caller defers with `reply`, or `None`
    /// when it kept its own.
    pub fn adopt(
        &self,
        destination: &str,
        until: Instant,
        margin: Duration,
        reply: RemoteReply,
        node: &str,
    ) -> Option<Vec<Job>> {
        let now = Instant::now();
        let mut queues = self.queues.lock().expect("ready queues lock");
        // Destinations this node only heard of are forgotten once their
        // suspension is over.
        queues.retain(|_, q| {
            q.workers > 0
                || !q.jobs.is_empty()
                || q.suspended.as_ref().is_some_and(|(t, _)| *t > now)
        });
        let queue = queues.entry(destination.to_string()).or_default();
        if queue
            .suspended
            .as_ref()
            .is_some_and(|(t, _)| *t + margin >= until)
        {
            return None;
        }
        let pause_seconds = until.saturating_duration_since(now).as_secs_f64().round();
        tracing::warn!(destination, reply = %reply, node, pause_seconds, "destination suspended by another node");
        queue.suspended = Some((until, reply));
        Some(queue.jobs.drain(..).collect())
    }

    /// The suspension of `destination` in force now, if any: its end and reply.
    pub fn suspension(&self, destination: &str) -> Option<(Instant, RemoteReply)> {
        let queues = self.queues.lock().expect("ready queues lock");
        let (until, reply) = queues.get(destination)?.suspended.as_ref()?;
        (Instant::now() < *until).then(|| (*until, reply.clone()))
    }

    /// Ends every suspension (an operator asked for a retry).
    pub fn lift_suspensions(&self) {
        let mut queues = self.queues.lock().expect("ready queues lock");
        for queue in queues.values_mut() {
            queue.suspended = None;
        }
        queues.retain(|_, q| q.workers > 0 || !q.jobs.is_empty());
    }

    /// Destinations suspended now: name, end (unix ms) and the reply that caused it.
    pub fn suspended(&self) -> Vec<super::SuspendedDestination> {
        let now = Instant::now();
        let mut list: Vec<_> = self
            .queues
            .lock()
            .expect("ready queues lock")
            .iter()
            .filter_map(|(name, q)| {
                let (until, reply) = q.suspended.as_ref().filter(|(until, _)| *until > now)?;
                Some(super::SuspendedDestination {
                    destination: name.clone(),
                    until: super::now_ms() + until.duration_since(now).as_millis() as i64,
                    reply: reply.to_string(),
                })
            })
            .collect();
        list.sort_by(|a, b| a.destination.cmp(&b.destination));
        list
    }

    /// Waits for this destination's turn when `messages_per_minute` is set, as
    /// this node alone sees it (the cluster's turns are `cluster.rs`).
    pub async fn pace(&self, destination: &str, messages_per_minute: Option<u32>) {
        let Some(rate) = messages_per_minute.filter(|r| *r > 0) else {
            return;
        };
        let interval = Duration::from_secs(60) / rate;
        let start = {
            let mut queues = self.queues.lock().expect("ready queues lock");
            let queue = queues
                .get_mut(destination)
                .expect("a worker's destination has a queue");
            let now = Instant::now();
            let start = queue.next_send.map_or(now, |t| t.max(now));
            queue.next_send = Some(start + interval);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}
