//! Per-IP throttling of failed AUTH attempts (SPEC §2: 5 failures → refused for 10
//! minutes by default). Each failure also delays the `535` reply a little more, so a
//! guesser that stays under the limit is still slowed down.
//!
//! Password checks in progress count against the limit too, so parallel connections
//! get no more guesses in; a check that would exceed it waits for one of them to end
//! instead of being refused, since a satellite MTA logs in on many connections at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long an AUTH waits for a check from the same address to end when
/// `max_failures` of them are in progress; then it is refused for now.
const SLOT_WAIT: Duration = Duration::from_secs(10);

/// Entries are dropped once their window is over, so the map holds only IPs that
/// failed recently.
pub struct AuthThrottle {
    max_failures: u32,
    lockout: Duration,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// Signalled whenever a check ends, for those waiting in [`AuthThrottle::begin`].
    check_ended: Notify,
    slot_wait: Duration,
}

/// Why [`AuthThrottle::begin`] gave no attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `max_failures` failures within the lockout window.
    LockedOut,
    /// `max_failures` checks from this address were still in progress after
    /// [`SLOT_WAIT`].
    Busy,
}

struct Failures {
    count: u32,
    /// Attempts from this IP whose password is being checked right now. They count
    /// against the limit, so parallel connections cannot get more guesses in.
    in_flight: u32,
    /// Failures older than the lockout window are forgotten; a lock lasts until then.
    since: Instant,
}

impl AuthThrottle {
    pub fn new(max_failures: u32, lockout: Duration) -> AuthThrottle {
        AuthThrottle {
            max_failures,
            lockout,
            failures: Mutex::new(HashMap::new()),
            check_ended: Notify::new(),
            slot_wait: SLOT_WAIT,
        }
    }

    /// True while `ip` is refused.
    pub fn is_locked(&self, ip: IpAddr) -> bool {
        let mut map = self.failures.lock().expect("throttle lock");
        match map.get(&ip) {
            Some(f) if f.since.elapsed() >= self.lockout && f.in_flight == 0 => {
                map.remove(&ip);
                false
            }
            Some(f) => f.count >= self.max_failures,
            None => false,
        }
    }

    /// Records a failure; returns how long to wait before replying.
    pub fn record_failure(&self, ip: IpAddr) -> Duration {
        let mut map = self.failures.lock().expect("throttle lock");
        self.count_failure(&mut map, ip)
    }

    fn count_failure(&self, map: &mut HashMap<IpAddr, Failures>, ip: IpAddr) -> Duration {
        if map.len() > 100_000 {
            let lockout = self.lockout;
            map.retain(|_, f| f.since.elapsed() < lockout);
        }
        let entry = map.entry(ip).or_insert(Failures {
            count: 0,
            in_flight: 0,
            since: Instant::now(),
        });
        if entry.since.elapsed() >= self.lockout {
            entry.count = 0;
            entry.since = Instant::now();
        }
        entry.count += 1;
        if entry.count >= self.max_failures {
            // The lock lasts a full window from the failure that triggered it.
            entry.since = Instant::now();
            tracing::warn!(%ip, failures = entry.count, lockout = ?self.lockout, "AUTH failures over the limit; address locked out");
        }
        Duration::from_millis(250 * u64::from(entry.count.saturating_sub(1).min(8)))
    }

    pub fn record_success(&self, ip: IpAddr) {
        let mut map = self.failures.lock().expect("throttle lock");
        Self::clear_failures(&mut map, ip);
    }

    fn clear_failures(map: &mut HashMap<IpAddr, Failures>, ip: IpAddr) {
        if let Some(f) = map.get_mut(&ip) {
            f.count = 0;
            if f.in_flight == 0 {
                map.remove(&ip);
            }
        }
    }

    /// Starts a password check for `ip`. While checks in progress and failures
    /// together reach the limit it waits (at most [`SLOT_WAIT`]) for a check to end:
    /// the check and the reservation are one step, so N parallel connections get no
    /// more than `max_failures` guesses.
    pub async fn begin(&self, ip: IpAddr) -> Result<Attempt<'_>, Refused> {
        let deadline = tokio::time::Instant::now() + self.slot_wait;
        loop {
            // Registered before the check, so an end between the two is not missed.
            let ended = self.check_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            match self.try_begin(ip) {
                Err(Refused::Busy) => {}
                outcome => return outcome,
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return Err(Refused::Busy);
            }
        }
    }

    fn try_begin(&self, ip: IpAddr) -> Result<Attempt<'_>, Refused> {
        let mut map = self.failures.lock().expect("throttle lock");
        let entry = map.entry(ip).or_insert(Failures {
            count: 0,
            in_flight: 0,
            since: Instant::now(),
        });
        if entry.since.elapsed() >= self.lockout {
            entry.count = 0;
            entry.since = Instant::now();
        }
        if entry.count.saturating_add(entry.in_flight) >= self.max_failures {
            let refused = if entry.count >= self.max_failures {
                Refused::LockedOut
            } else {
                Refused::Busy
            };
            if entry.count == 0 && entry.in_flight == 0 {
                map.remove(&ip);
            }
            return Err(refused);
        }
        entry.in_flight += 1;
        Ok(Attempt {
            throttle: self,
            ip,
            open: true,
        })
    }

    /// Ends a check and records its outcome in one step, so that no check waiting
    /// in `begin` sees the slot free before the failure is counted.
    fn end_attempt(&self, ip: IpAddr, outcome: Outcome) -> Duration {
        let mut map = self.failures.lock().expect("throttle lock");
        if let Some(f) = map.get_mut(&ip) {
            f.in_flight = f.in_flight.saturating_sub(1);
        }
        let delay = match outcome {
            Outcome::Failed => self.count_failure(&mut map, ip),
            Outcome::Succeeded => {
                Self::clear_failures(&mut map, ip);
                Duration::ZERO
            }
            Outcome::Abandoned => Duration::ZERO,
        };
        if map
            .get(&ip)
            .is_some_and(|f| f.in_flight == 0 && f.count == 0)
        {
            map.remove(&ip);
        }
        drop(map);
        self.check_ended.notify_waiters();
        delay
    }
}

enum Outcome {
    Failed,
    Succeeded,
    /// Cancelled, malformed or cut off: counts for nothing.
    Abandoned,
}

/// A password check in progress (see [`AuthThrottle::begin`]). Dropped without an
/// outcome (cancelled, malformed, connection lost), it counts for nothing.
pub struct Attempt<'a> {
    throttle: &'a AuthThrottle,
    ip: IpAddr,
    open: bool,
}

impl Attempt<'_> {
    /// The password was wrong: a failure; returns how long to wait before replying.
    pub fn failed(mut self) -> Duration {
        self.open = false;
        self.throttle.end_attempt(self.ip, Outcome::Failed)
    }

    pub fn succeeded(mut self) {
        self.open = false;
        self.throttle.end_attempt(self.ip, Outcome::Succeeded);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            self.throttle.end_attempt(self.ip, Outcome::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_failures_and_expires() {
        let t = AuthThrottle::new(3, Duration::from_millis(50));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(t.record_failure(ip), Duration::ZERO);
        assert!(t.record_failure(ip) > Duration::ZERO);
        assert!(!t.is_locked(ip));
        t.record_failure(ip);
        assert!(t.is_locked(ip));
        assert!(!t.is_locked(other));
        let deadline = Instant::now() + Duration::from_secs(5);
        while t.is_locked(ip) {
            assert!(Instant::now() < deadline, "lock never expired");
            std::thread::yield_now();
        }
    }

    #[tokio::test]
    async fn attempts_in_progress_count_against_the_limit() {
        let mut t = AuthThrottle::new(2, Duration::from_secs(600));
        t.slot_wait = Duration::from_millis(50);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = t.begin(ip).await.expect("first attempt");
        let b = t.begin(ip).await.expect("second attempt");
        assert_eq!(
            t.begin(ip).await.err(),
            Some(Refused::Busy),
            "a third parallel guess"
        );
        drop(a); // cancelled: counts for nothing
        let c = t.begin(ip).await.expect("slot given back");
        b.failed();
        c.failed();
        assert!(t.is_locked(ip));
        assert_eq!(t.begin(ip).await.err(), Some(Refused::LockedOut));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        t.begin(other).await.expect("other address").succeeded();
        assert!(!t.is_locked(other));
    }

    #[tokio::test]
    async fn a_check_over_the_limit_waits_for_one_in_progress() {
        let t = std::sync::Arc::new(AuthThrottle::new(2, Duration::from_secs(600)));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = t.begin(ip).await.expect("first attempt");
        let _b = t.begin(ip).await.expect("second attempt");
        let waiting = tokio::spawn({
            let t = t.clone();
            async move { t.begin(ip).await.map(Attempt::succeeded) }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a third check started beside two in progress"
        );
        a.succeeded();
        assert_eq!(waiting.await.expect("task"), Ok(()));
    }

    #[test]
    fn success_clears_failures() {
        let t = AuthThrottle::new(2, Duration::from_secs(600));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        t.record_failure(ip);
        t.record_success(ip);
        t.record_failure(ip);
        assert!(!t.is_locked(ip));
    }
}
