//! Per-IP throttling of failed AUTH attempts (SPEC §2: 5 failures → refused for 10
//! minutes by default). Each failure also delays the `535` reply a little more, so a
//! guesser that stays under the limit is still slowed down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries are dropped once their window is over, so the map holds only IPs that
/// failed recently.
pub struct AuthThrottle {
    max_failures: u32,
    lockout: Duration,
    failures: Mutex<HashMap<IpAddr, Failures>>,
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
            tracing::warn!(%ip, failures = entry.count, lockout_seconds = self.lockout.as_secs(), "AUTH failures over the limit; address locked out");
        }
        Duration::from_millis(250 * u64::from(entry.count.saturating_sub(1).min(8)))
    }

    pub fn record_success(&self, ip: IpAddr) {
        let mut map = self.failures.lock().expect("throttle lock");
        if let Some(f) = map.get_mut(&ip) {
            f.count = 0;
            if f.in_flight == 0 {
                map.remove(&ip);
            }
        }
    }

    /// Starts a password check for `ip`, or `None` while `ip` is refused. Checks in
    /// progress count as failures until they end, so the check and the reservation
    /// are one step: N parallel connections get no more than `max_failures` guesses.
    pub fn begin(&self, ip: IpAddr) -> Option<Attempt<'_>> {
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
            if entry.count == 0 && entry.in_flight == 0 {
                map.remove(&ip);
            }
            return None;
        }
        entry.in_flight += 1;
        Some(Attempt {
            throttle: self,
            ip,
            open: true,
        })
    }

    fn end_attempt(&self, ip: IpAddr) {
        let mut map = self.failures.lock().expect("throttle lock");
        if let Some(f) = map.get_mut(&ip) {
            f.in_flight = f.in_flight.saturating_sub(1);
            if f.in_flight == 0 && f.count == 0 {
                map.remove(&ip);
            }
        }
    }
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
        self.throttle.end_attempt(self.ip);
        self.throttle.record_failure(self.ip)
    }

    pub fn succeeded(mut self) {
        self.open = false;
        self.throttle.end_attempt(self.ip);
        self.throttle.record_success(self.ip);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            self.throttle.end_attempt(self.ip);
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

    #[test]
    fn attempts_in_progress_count_against_the_limit() {
        let t = AuthThrottle::new(2, Duration::from_secs(600));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = t.begin(ip).expect("first attempt");
        let b = t.begin(ip).expect("second attempt");
        assert!(t.begin(ip).is_none(), "a third parallel guess");
        drop(a); // cancelled: counts for nothing
        let c = t.begin(ip).expect("slot given back");
        b.failed();
        c.failed();
        assert!(t.is_locked(ip));
        assert!(t.begin(ip).is_none());
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        t.begin(other).expect("other address").succeeded();
        assert!(!t.is_locked(other));
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
