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
            Some(f) if f.since.elapsed() >= self.lockout => {
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
            since: Instant::now(),
        });
        if entry.since.elapsed() >= self.lockout {
            *entry = Failures {
                count: 0,
                since: Instant::now(),
            };
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
        self.failures.lock().expect("throttle lock").remove(&ip);
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
    fn success_clears_failures() {
        let t = AuthThrottle::new(2, Duration::from_secs(600));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        t.record_failure(ip);
        t.record_success(ip);
        t.record_failure(ip);
        assert!(!t.is_locked(ip));
    }
}
