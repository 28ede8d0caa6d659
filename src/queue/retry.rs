//! When to try again: `delivery.retry` intervals (the last repeating) with ±10%
//! jitter, so that mail deferred together is not retried in lockstep, until
//! `delivery.max_age`.

use crate::config::Duration;
use rand::Rng;

/// Unix ms of the next attempt after `attempts` attempts (1 = the first failed).
pub fn next_attempt(retry: &[Duration], attempts: u32, now: i64) -> i64 {
    let index = (attempts.max(1) as usize - 1).min(retry.len() - 1);
    let base = retry[index].get().as_millis() as i64;
    let jitter = base / 10;
    let offset = if jitter > 0 {
        rand::rng().random_range(-jitter..=jitter)
    } else {
        0
    };
    now + (base + offset).max(1)
}

/// True once a message received at `received_at` is too old to retry.
pub fn expired(received_at: i64, max_age: Duration, now: i64) -> bool {
    now.saturating_sub(received_at) >= max_age.get().as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_schedule_and_repeats_the_last_interval() {
        let retry: Vec<Duration> = ["10s", "100s"].iter().map(|s| s.parse().unwrap()).collect();
        for (attempts, base) in [(1, 10_000), (2, 100_000), (7, 100_000)] {
            let at = next_attempt(&retry, attempts, 0);
            assert!(
                (base * 9 / 10..=base * 11 / 10).contains(&at),
                "attempt {attempts}: {at}"
            );
        }
    }

    #[test]
    fn expiry() {
        let day: Duration = "1d".parse().unwrap();
        assert!(!expired(0, day, 86_399_999));
        assert!(expired(0, day, 86_400_000));
    }
}
