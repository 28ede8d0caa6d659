//! Connection counting: a total cap and a per-client-IP cap (SPEC §2 defaults 10,000
//! and 100). A slot is held by a guard and released when the guard drops, however
//! the session ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct ConnectionLimiter {
    inner: Arc<Limits>,
}

struct Limits {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

pub struct ConnectionGuard {
    inner: Arc<Limits>,
    ip: IpAddr,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> ConnectionLimiter {
        ConnectionLimiter {
            inner: Arc::new(Limits {
                max_total,
                max_per_ip,
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// A slot for `ip`, or `None` when either cap is reached.
    pub fn acquire(&self, ip: IpAddr) -> Option<ConnectionGuard> {
        let mut counts = self.inner.counts.lock().expect("connection counts lock");
        let per_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if counts.total >= self.inner.max_total || per_ip >= self.inner.max_per_ip {
            return None;
        }
        counts.total += 1;
        counts.per_ip.insert(ip, per_ip + 1);
        Some(ConnectionGuard {
            inner: self.inner.clone(),
            ip,
        })
    }

    pub fn active(&self) -> usize {
        self.inner
            .counts
            .lock()
            .expect("connection counts lock")
            .total
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut counts = self.inner.counts.lock().expect("connection counts lock");
        counts.total -= 1;
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_ip_and_total_and_releases_on_drop() {
        let limiter = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let g1 = limiter.acquire(a).unwrap();
        let _g2 = limiter.acquire(a).unwrap();
        assert!(limiter.acquire(a).is_none());
        let _g3 = limiter.acquire(b).unwrap();
        assert!(limiter.acquire(b).is_none(), "total cap");
        drop(g1);
        let _g4 = limiter.acquire(a).unwrap();
        assert_eq!(limiter.active(), 3);
    }
}
