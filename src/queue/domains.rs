//! Ready queues per destination domain, with the shaping limits: worker count
//! (connections), suspension after failures, and a messages-per-minute pace.

use super::{Engine, Job};
use crate::outbound::RemoteReply;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Domains {
    queues: Mutex<HashMap<String, DomainQueue>>,
}

#[derive(Default)]
struct DomainQueue {
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

impl Domains {
    /// Queues a job and makes sure a worker will take it. When the domain is
    /// suspended the job is handed back with the reply to record.
    pub fn push(&self, engine: &Arc<Engine>, job: Job) -> Result<(), (Job, RemoteReply)> {
        let max_connections = engine
            .config
            .delivery
            .shaping_for(&job.domain)
            .max_connections;
        let domain = job.domain.clone();
        let mut queues = self.queues.lock().expect("domain queues lock");
        let queue = queues.entry(domain.clone()).or_default();
        if let Some((until, reply)) = &queue.suspended {
            if Instant::now() < *until {
                return Err((job, reply.clone()));
            }
            queue.suspended = None;
        }
        queue.jobs.push_back(job);
        if queue.idle > 0 {
            queue.notify.notify_one();
        } else if queue.workers < max_connections {
            queue.workers += 1;
            tokio::spawn(super::worker::run(engine.clone(), domain));
        }
        Ok(())
    }

    /// The next job for a worker of `domain`. A worker holding a connection waits up
    /// to `idle_timeout` for one; otherwise, or after that, `None` retires it.
    pub async fn next_job(
        &self,
        domain: &str,
        holding_connection: bool,
        idle_timeout: Duration,
    ) -> Option<Job> {
        let notify = {
            let mut queues = self.queues.lock().expect("domain queues lock");
            let queue = queues
                .get_mut(domain)
                .expect("a worker's domain has a queue");
            if let Some(job) = queue.jobs.pop_front() {
                return Some(job);
            }
            if !holding_connection {
                Self::retire(&mut queues, domain);
                return None;
            }
            queue.idle += 1;
            queue.notify.clone()
        };
        let _ = tokio::time::timeout(idle_timeout, notify.notified()).await;
        let mut queues = self.queues.lock().expect("domain queues lock");
        let queue = queues
            .get_mut(domain)
            .expect("a worker's domain has a queue");
        queue.idle -= 1;
        match queue.jobs.pop_front() {
            Some(job) => Some(job),
            None => {
                Self::retire(&mut queues, domain);
                None
            }
        }
    }

    fn retire(queues: &mut HashMap<String, DomainQueue>, domain: &str) {
        let queue = queues
            .get_mut(domain)
            .expect("a worker's domain has a queue");
        queue.workers -= 1;
        let suspended = queue
            .suspended
            .as_ref()
            .is_some_and(|(until, _)| Instant::now() < *until);
        if queue.workers == 0 && queue.jobs.is_empty() && !suspended {
            queues.remove(domain);
        }
    }

    /// Suspends `domain` until `until`; returns the jobs that were waiting, which
    /// the caller defers with `reply`.
    pub fn suspend(&self, domain: &str, until: Instant, reply: RemoteReply) -> Vec<Job> {
        let mut queues = self.queues.lock().expect("domain queues lock");
        let Some(queue) = queues.get_mut(domain) else {
            return Vec::new();
        };
        tracing::warn!(domain, reply = %reply, until = ?until.saturating_duration_since(Instant::now()), "destination suspended");
        queue.suspended = Some((until, reply));
        queue.jobs.drain(..).collect()
    }

    /// Waits for this domain's turn when `messages_per_minute` is set.
    pub async fn pace(&self, domain: &str, messages_per_minute: Option<u32>) {
        let Some(rate) = messages_per_minute.filter(|r| *r > 0) else {
            return;
        };
        let interval = Duration::from_secs(60) / rate;
        let start = {
            let mut queues = self.queues.lock().expect("domain queues lock");
            let queue = queues
                .get_mut(domain)
                .expect("a worker's domain has a queue");
            let now = Instant::now();
            let start = queue.next_send.map_or(now, |t| t.max(now));
            queue.next_send = Some(start + interval);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}
