//! The one login gate: every sign-in (SMTP AUTH, HTTP Basic and Bearer, and any
//! later one) asks [`LoginGate::check`] and gets one of four outcomes. Callers only
//! translate the outcome into their protocol's reply.

use super::AuthenticatedUser;
use super::api_key;
use super::cache::VerifiedCache;
use super::password;
use super::throttle::{Lock, LoginThrottle, Refusal};
use crate::config::AuthConfig;
use crate::store::{ApiKeyRecord, Store, UserRecord};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The longest a login waits for its turn (a throttle slot, an argon2 slot) before
/// it is answered "unavailable, try again".
const MAX_WAIT: Duration = Duration::from_secs(30);
/// A key's "last used" is written at most this often: a key used for every message
/// must not cost a store commit per message.
const KEY_USE_RESOLUTION: Duration = Duration::from_secs(60);

/// Who logged in, and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: AuthenticatedUser,
    pub credential: Credential,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Password,
    ApiKey { id: i64 },
}

/// As logs show it: `password`, `api-key:ID`.
impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Password => f.write_str("password"),
            Credential::ApiKey { id } => write!(f, "api-key:{id}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    Ok(Principal),
    /// Wrong user name, password or key (counted; already delayed as the
    /// throttle asks).
    Wrong,
    /// Refused without a check (too many wrong passwords before).
    Locked(Lock),
    /// Could not be checked now (store error, too many logins waiting): the client
    /// should try again; never counted as a failure.
    Unavailable(String),
}

pub struct LoginGate {
    store: Arc<dyn Store>,
    throttle: LoginThrottle,
    verified: VerifiedCache,
    /// argon2id checks running at once: each takes ~19 MiB and a core for tens of
    /// milliseconds, so more than the cores only costs memory. Logins beyond it wait.
    argon2_slots: Arc<Semaphore>,
    /// Verified when a user does not exist, so the time taken does not reveal
    /// which user names are valid.
    dummy_password_hash: String,
    /// When each key's "last used" was last written.
    key_use_written: Mutex<HashMap<i64, Instant>>,
}

impl LoginGate {
    pub fn new(store: Arc<dyn Store>, config: &AuthConfig) -> LoginGate {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        LoginGate {
            store,
            throttle: LoginThrottle::new(
                config.max_failures,
                config.max_account_failures,
                config.lockout.get(),
            ),
            verified: VerifiedCache::new(config.cache_ttl.get()),
            argon2_slots: Arc::new(Semaphore::new(cores)),
            dummy_password_hash: password::hash(&password::generate()),
            key_use_written: Mutex::new(HashMap::new()),
        }
    }

    /// Checks a login from `ip`: `username` and a password or API key, or an API
    /// key alone (`username` `None`, as HTTP Bearer sends it).
    pub async fn check(&self, ip: IpAddr, username: Option<&str>, secret: &str) -> LoginOutcome {
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        match username {
            Some(username) if !api_key::is_key(secret) => {
                self.check_password(ip, username, secret, deadline).await
            }
            _ => self.check_key(ip, username, secret, deadline).await,
        }
    }

    async fn check_password(
        &self,
        ip: IpAddr,
        username: &str,
        secret: &str,
        deadline: tokio::time::Instant,
    ) -> LoginOutcome {
        // The slot is taken before the cache is looked at: a cache lookup is a
        // password check too, and must not give parallel guesses a free oracle.
        let attempt = match self.throttle.admit(ip, Some(username), deadline).await {
            Ok(attempt) => attempt,
            Err(refusal) => return refused(refusal),
        };
        let record = match self.store.user(username).await {
            Ok(record) => record,
            Err(e) => return unavailable(&e),
        };
        if let Some(user) = &record
            && self
                .verified
                .contains(username, &user.password_hash, secret)
        {
            attempt.succeeded(username);
            return password_login(record);
        }
        let hash = record
            .as_ref()
            .map_or(&self.dummy_password_hash, |r| &r.password_hash);
        let Some(matches) = self.argon2_verify(secret, hash, deadline).await else {
            return LoginOutcome::Unavailable("too many logins being checked; try again".into());
        };
        match record.filter(|_| matches) {
            Some(user) => {
                self.verified.insert(username, &user.password_hash, secret);
                attempt.succeeded(username);
                password_login(Some(user))
            }
            None => {
                tokio::time::sleep(attempt.failed(Some(username))).await;
                LoginOutcome::Wrong
            }
        }
    }

    /// `None` when no argon2 slot freed up before `deadline`.
    async fn argon2_verify(
        &self,
        secret: &str,
        hash: &str,
        deadline: tokio::time::Instant,
    ) -> Option<bool> {
        let slot = tokio::time::timeout_at(deadline, self.argon2_slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        let (secret, hash) = (secret.to_string(), hash.to_string());
        // The slot goes with the work: a login abandoned meanwhile (a dropped HTTP
        // request) still holds it until argon2 is done.
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            password::verify(&secret, &hash)
        })
        .await
        .ok()
    }

    async fn check_key(
        &self,
        ip: IpAddr,
        username: Option<&str>,
        secret: &str,
        deadline: tokio::time::Instant,
    ) -> LoginOutcome {
        // No account budget: that protects passwords a person chose, and a secret
        // in key form is never compared with a password, so an account under a
        // password-guessing attack keeps working for its keys from anywhere.
        let attempt = match self.throttle.admit(ip, None, deadline).await {
            Ok(attempt) => attempt,
            Err(refusal) => return refused(refusal),
        };
        let key = match self.store.api_key_by_hash(&api_key::hash(secret)).await {
            Ok(key) => key.filter(|k| username.is_none_or(|u| u == k.user)),
            Err(e) => return unavailable(&e),
        };
        let user = match &key {
            Some(k) => match self.store.user(&k.user).await {
                Ok(user) => user,
                Err(e) => return unavailable(&e),
            },
            None => None,
        };
        match (key, user) {
            (Some(key), Some(user)) => {
                attempt.succeeded(&user.name);
                self.note_key_use(key.id);
                LoginOutcome::Ok(Principal {
                    user: key_user(user, &key),
                    credential: Credential::ApiKey { id: key.id },
                })
            }
            _ => {
                tokio::time::sleep(attempt.failed(None)).await;
                LoginOutcome::Wrong
            }
        }
    }

    fn note_key_use(&self, id: i64) {
        let now = Instant::now();
        {
            let mut written = self.key_use_written.lock().expect("key use lock");
            if written
                .get(&id)
                .is_some_and(|at| now.saturating_duration_since(*at) < KEY_USE_RESOLUTION)
            {
                return;
            }
            written.insert(id, now);
        }
        let store = self.store.clone();
        let at = chrono::Utc::now().timestamp_millis();
        // Not awaited: the login does not wait for a commit of its bookkeeping.
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(id, at).await {
                tracing::warn!(key = id, error = %e, "cannot record the use of an API key");
            }
        });
    }
}

fn password_login(user: Option<UserRecord>) -> LoginOutcome {
    match user {
        Some(user) => LoginOutcome::Ok(Principal {
            user: user.into(),
            credential: Credential::Password,
        }),
        None => LoginOutcome::Wrong,
    }
}

/// The user as a key may act: a key with domains may send only as those (of its
/// user's), and is never an admin.
fn key_user(user: UserRecord, key: &ApiKeyRecord) -> AuthenticatedUser {
    let mut principal = AuthenticatedUser::from(user);
    if !key.domains.is_empty() {
        principal.domains.retain(|d| key.domains.contains(d));
        principal.admin = false;
    }
    principal
}

fn refused(refusal: Refusal) -> LoginOutcome {
    match refusal {
        Refusal::Locked(lock) => LoginOutcome::Locked(lock),
        Refusal::Busy => LoginOutcome::Unavailable("too many logins waiting; try again".into()),
    }
}

fn unavailable(e: &crate::store::StoreError) -> LoginOutcome {
    tracing::error!(error = %e, "cannot check a login: store error");
    LoginOutcome::Unavailable(e.to_string())
}
