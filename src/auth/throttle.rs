//! Throttling of wrong passwords, shared by every sign-in (SMTP AUTH, HTTP):
//!
//! - per address: `max_failures` wrong passwords (default 5) and the address is
//!   refused for `lockout` (10 minutes);
//! - per account: `max_account_failures` wrong passwords from any addresses (a
//!   botnet spreading its guesses) and the account is refused for `lockout` to
//!   addresses that have not logged in to it in the last [`KNOWN_FOR`], so a stranger
//!   cannot lock the real user out.
//!
//! Only wrong passwords count. A check holds a slot of each budget while it runs
//! ([`Attempt`]) and a check that would not fit in the budget waits for a slot
//! instead of being refused: N parallel guesses get no more tries than N
//! sequential ones, and N parallel right passwords all get in, in turn.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long an address that logged in to an account stays exempt from that
/// account's lock.
pub const KNOWN_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// Beyond this many entries in a map, expired ones are dropped.
const PRUNE_ABOVE: usize = 100_000;

/// Why a login is refused before its password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Too many wrong passwords from this address.
    Address,
    /// Too many wrong passwords for this account from addresses it was not seen
    /// logging in from.
    Account,
}

impl Lock {
    /// What is locked, as logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Lock::Address => "address",
            Lock::Account => "account",
        }
    }
}

/// Why [`LoginThrottle::admit`] gave no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Locked(Lock),
    /// No slot freed up before the deadline.
    Busy,
}

pub struct LoginThrottle {
    max_failures: u32,
    max_account_failures: u32,
    lockout: Duration,
    state: Mutex<State>,
    /// Woken whenever a check ends, for the logins waiting for a slot.
    slot_freed: Notify,
}

#[derive(Default)]
struct State {
    addresses: HashMap<IpAddr, Tally>,
    accounts: HashMap<String, Tally>,
    /// When each account last logged in from each address.
    known: HashMap<(String, IpAddr), Instant>,
}

/// Wrong passwords in the current window, and checks running now.
struct Tally {
    failures: u32,
    in_flight: u32,
    /// Start of the window; once it is `lockout` old, its failures are forgotten.
    /// Reaching the limit restarts it, so a lock lasts a full `lockout`.
    since: Instant,
}

impl Tally {
    fn new(now: Instant) -> Tally {
        Tally {
            failures: 0,
            in_flight: 0,
            since: now,
        }
    }

    fn expire(&mut self, now: Instant, lockout: Duration) {
        if now.saturating_duration_since(self.since) >= lockout {
            self.failures = 0;
            self.since = now;
        }
    }

    fn idle(&self) -> bool {
        self.failures == 0 && self.in_flight == 0
    }

    /// Adds a failure; true when it reaches `limit` (the lock starts now).
    fn fail(&mut self, now: Instant, lockout: Duration, limit: u32) -> bool {
        self.expire(now, lockout);
        self.failures += 1;
        let reached = self.failures == limit;
        if self.failures >= limit {
            self.since = now;
        }
        reached
    }
}

/// Where a tally stands for a new check.
enum Standing {
    Locked,
    Full,
    Open,
}

fn standing(tally: Option<&mut Tally>, now: Instant, lockout: Duration, limit: u32) -> Standing {
    let Some(tally) = tally else {
        return Standing::Open;
    };
    tally.expire(now, lockout);
    if tally.failures >= limit {
        Standing::Locked
    } else if tally.failures + tally.in_flight >= limit {
        Standing::Full
    } else {
        Standing::Open
    }
}

fn prune<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>, keep: impl Fn(&V) -> bool) {
    if map.len() > PRUNE_ABOVE {
        map.retain(|_, v| keep(v));
    }
}

impl State {
    /// Whether the account's lock applies to `ip` (it has not logged in from there).
    fn stranger(&self, account: &str, ip: IpAddr, now: Instant) -> bool {
        self.known
            .get(&(account.to_string(), ip))
            .is_none_or(|at| now.saturating_duration_since(*at) >= KNOWN_FOR)
    }

    fn release(&mut self, ip: IpAddr, account: Option<&str>) {
        if let Some(t) = self.addresses.get_mut(&ip) {
            t.in_flight = t.in_flight.saturating_sub(1);
            if t.idle() {
                self.addresses.remove(&ip);
            }
        }
        if let Some(a) = account
            && let Some(t) = self.accounts.get_mut(a)
        {
            t.in_flight = t.in_flight.saturating_sub(1);
            if t.idle() {
                self.accounts.remove(a);
            }
        }
    }
}

impl LoginThrottle {
    pub fn new(max_failures: u32, max_account_failures: u32, lockout: Duration) -> LoginThrottle {
        LoginThrottle {
            max_failures,
            max_account_failures,
            lockout,
            state: Mutex::new(State::default()),
            slot_freed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("throttle lock")
    }

    /// A slot for one check of `account`'s password from `ip`, waiting (until
    /// `deadline`) while the budget is taken by checks in progress. `account` is
    /// `None` for credentials the account budget does not cover (API keys).
    pub async fn admit(
        &self,
        ip: IpAddr,
        account: Option<&str>,
        deadline: tokio::time::Instant,
    ) -> Result<Attempt<'_>, Refusal> {
        loop {
            // Registered before looking, so a slot freed in between still wakes us.
            let freed = self.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.try_admit(ip, account, Instant::now()) {
                Ok(Some(attempt)) => return Ok(attempt),
                Ok(None) => {}
                Err(lock) => return Err(Refusal::Locked(lock)),
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Refusal::Busy);
            }
        }
    }

    /// `Ok(None)`: no slot free now.
    fn try_admit(
        &self,
        ip: IpAddr,
        account: Option<&str>,
        now: Instant,
    ) -> Result<Option<Attempt<'_>>, Lock> {
        let mut guard = self.state();
        let state = &mut *guard;
        let lockout = self.lockout;
        prune(&mut state.addresses, |t| {
            t.in_flight > 0 || now.saturating_duration_since(t.since) < lockout
        });
        prune(&mut state.accounts, |t| {
            t.in_flight > 0 || now.saturating_duration_since(t.since) < lockout
        });
        let account = account.filter(|a| state.stranger(a, ip, now));
        let by_address = standing(
            state.addresses.get_mut(&ip),
            now,
            lockout,
            self.max_failures,
        );
        let by_account = standing(
            account.and_then(|a| state.accounts.get_mut(a)),
            now,
            lockout,
            self.max_account_failures,
        );
        match (by_address, by_account) {
            (Standing::Locked, _) => return Err(Lock::Address),
            (_, Standing::Locked) => return Err(Lock::Account),
            (Standing::Full, _) | (_, Standing::Full) => return Ok(None),
            (Standing::Open, Standing::Open) => {}
        }
        state
            .addresses
            .entry(ip)
            .or_insert_with(|| Tally::new(now))
            .in_flight += 1;
        if let Some(a) = account {
            state
                .accounts
                .entry(a.to_string())
                .or_insert_with(|| Tally::new(now))
                .in_flight += 1;
        }
        Ok(Some(Attempt {
            throttle: self,
            ip,
            reserved_account: account.map(str::to_string),
            open: true,
        }))
    }

    fn end(&self, ip: IpAddr, reserved_account: Option<&str>) {
        self.state().release(ip, reserved_account);
        self.slot_freed.notify_waiters();
    }

    /// Per-address delay before answering the `n`th wrong password in a row: a
    /// guesser that stays under the limit is still slowed down.
    fn delay(failures: u32) -> Duration {
        Duration::from_millis(250 * u64::from(failures.saturating_sub(1).min(8)))
    }
}

/// A password check in progress, holding its slots (see [`LoginThrottle::admit`]).
/// Dropped without an outcome (store error, cancelled), it counts for nothing.
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    ip: IpAddr,
    /// The account whose budget holds a slot for this check.
    reserved_account: Option<String>,
    open: bool,
}

impl Attempt<'_> {
    /// The password for `account` was wrong: a failure for the address and the
    /// account. Returns how long to wait before answering.
    pub fn failed(mut self, account: Option<&str>) -> Duration {
        self.open = false;
        let throttle = self.throttle;
        let (now, lockout) = (Instant::now(), throttle.lockout);
        let failures = {
            let mut state = throttle.state();
            state.release(self.ip, self.reserved_account.as_deref());
            let tally = state
                .addresses
                .entry(self.ip)
                .or_insert_with(|| Tally::new(now));
            if tally.fail(now, lockout, throttle.max_failures) {
                tracing::warn!(ip = %self.ip, failures = tally.failures, ?lockout, "login refused from this address from now on: too many wrong passwords");
            }
            let failures = tally.failures;
            if let Some(account) = account {
                let tally = state
                    .accounts
                    .entry(account.to_string())
                    .or_insert_with(|| Tally::new(now));
                if tally.fail(now, lockout, throttle.max_account_failures) {
                    tracing::warn!(user = %account, failures = tally.failures, ?lockout, "login to this account refused from unfamiliar addresses from now on: too many wrong passwords");
                }
            }
            failures
        };
        throttle.slot_freed.notify_waiters();
        LoginThrottle::delay(failures)
    }

    /// `account`'s credential was right: the address's failures are forgotten and
    /// it is known for the account from now on. The account's failures stay: the
    /// real user logging in does not give a guesser a fresh budget.
    pub fn succeeded(mut self, account: &str) {
        self.open = false;
        let throttle = self.throttle;
        {
            let mut guard = throttle.state();
            let state = &mut *guard;
            state.release(self.ip, self.reserved_account.as_deref());
            if let Some(t) = state.addresses.get_mut(&self.ip) {
                t.failures = 0;
                if t.idle() {
                    state.addresses.remove(&self.ip);
                }
            }
            let now = Instant::now();
            prune(&mut state.known, |at| {
                now.saturating_duration_since(*at) < KNOWN_FOR
            });
            state.known.insert((account.to_string(), self.ip), now);
        }
        throttle.slot_freed.notify_waiters();
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            self.throttle.end(self.ip, self.reserved_account.as_deref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn now_admit<'a>(t: &'a LoginThrottle, ip: IpAddr, account: &str) -> Option<Attempt<'a>> {
        t.try_admit(ip, Some(account), Instant::now())
            .expect("not locked")
    }

    #[test]
    fn wrong_passwords_lock_the_address_and_the_lock_expires() {
        let t = LoginThrottle::new(3, 100, Duration::from_millis(50));
        for _ in 0..3 {
            now_admit(&t, ip(1), "alice").unwrap().failed(Some("alice"));
        }
        assert!(matches!(
            t.try_admit(ip(1), Some("alice"), Instant::now()),
            Err(Lock::Address)
        ));
        assert!(now_admit(&t, ip(2), "alice").is_some(), "another address");
        let deadline = Instant::now() + Duration::from_secs(5);
        while t.try_admit(ip(1), Some("alice"), Instant::now()).is_err() {
            assert!(Instant::now() < deadline, "lock never expired");
            std::thread::yield_now();
        }
    }

    #[test]
    fn checks_in_progress_hold_slots_but_never_count() {
        let t = LoginThrottle::new(2, 100, Duration::from_secs(600));
        let a = now_admit(&t, ip(1), "alice").expect("first");
        let b = now_admit(&t, ip(1), "alice").expect("second");
        assert!(now_admit(&t, ip(1), "alice").is_none(), "a third waits");
        a.succeeded("alice");
        drop(b); // no outcome: counts for nothing
        for _ in 0..10 {
            now_admit(&t, ip(1), "alice").unwrap().succeeded("alice");
        }
        now_admit(&t, ip(1), "alice").unwrap().failed(Some("alice"));
        let c = now_admit(&t, ip(1), "alice").expect("one slot left");
        assert!(now_admit(&t, ip(1), "alice").is_none());
        c.failed(Some("alice"));
        assert!(t.try_admit(ip(1), Some("alice"), Instant::now()).is_err());
    }

    #[test]
    fn an_account_under_attack_is_refused_only_to_strangers() {
        let t = LoginThrottle::new(5, 4, Duration::from_secs(600));
        now_admit(&t, ip(1), "alice").unwrap().succeeded("alice");
        for n in 10..14 {
            now_admit(&t, ip(n), "alice").unwrap().failed(Some("alice"));
        }
        let refused = t.try_admit(ip(20), Some("alice"), Instant::now());
        assert!(matches!(refused, Err(Lock::Account)));
        assert!(now_admit(&t, ip(1), "alice").is_some(), "a known address");
        assert!(now_admit(&t, ip(20), "bob").is_some(), "another account");
        assert!(
            t.try_admit(ip(20), None, Instant::now()).unwrap().is_some(),
            "credentials outside the account budget (API keys)"
        );
    }

    #[tokio::test]
    async fn a_waiting_check_gets_the_slot_a_finished_one_frees() {
        let t = LoginThrottle::new(1, 100, Duration::from_secs(600));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let first = t.admit(ip(1), Some("alice"), deadline).await.unwrap();
        let (second, ()) = tokio::join!(t.admit(ip(1), Some("alice"), deadline), async {
            tokio::task::yield_now().await;
            first.succeeded("alice");
        });
        second
            .expect("admitted once the first ended")
            .succeeded("alice");
        let soon = tokio::time::Instant::now() + Duration::from_millis(20);
        let _held = t.admit(ip(1), Some("alice"), deadline).await.unwrap();
        assert_eq!(
            t.admit(ip(1), Some("alice"), soon).await.err(),
            Some(Refusal::Busy)
        );
    }
}
