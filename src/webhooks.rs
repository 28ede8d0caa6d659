//! Webhooks (`[[webhooks]] url, secret`): one background task per endpoint tails
//! the durable event log and POSTs batches of events (a JSON array of
//! `api::EventView`), signed `X-Outpost-Signature: sha256=<hex HMAC-SHA256(secret,
//! body)>`.
//!
//! Delivery to an endpoint is at least once, in log order: the cursor (the last
//! event id the endpoint answered 2xx for) is kept in the store, advanced only
//! after a 2xx. A failing endpoint is retried with exponential backoff (1 s doubling
//! to 5 min); its events stay in the log meanwhile. Nothing here is on the path of
//! mail acceptance or delivery: a dead endpoint slows down nothing else.
//!
//! Once per cluster: every node runs the task, but only the node holding the
//! endpoint's lease in the store (reckoned on the store's clock) posts to it. The holder renews the lease every
//! third of `[store] lease`, also while a POST or a backoff lasts; the others
//! try to take it as often, and get it once it has run out (its holder died or
//! lost the database). A node that takes over starts from the store's cursor,
//! so a batch its previous holder posted but could not record is posted again
//! (at least once). The endpoint's key in the store is the SHA-256 of its URL,
//! since a URL may hold a token.
//!
//! Versions before the store kept the cursor kept it in
//! `data_dir/webhooks/<sha256(url)>.cursor`: the task imports such a file
//! before its first POST (never moving the store's cursor back) and removes it.

use crate::api::EventView;
use crate::config::WebhookConfig;
use crate::store::{Store, StoreResult};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Most events in one POST.
const BATCH: usize = 100;
/// How often the log is looked at when it has nothing new.
const POLL: Duration = Duration::from_millis(250);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The endpoint's key in the store (and the name of its old cursor file).
fn endpoint_key(url: &str) -> String {
    hex::encode(Sha256::digest(url.as_bytes()))
}

fn cursor_path(data_dir: &Path, url: &str) -> PathBuf {
    data_dir
        .join("webhooks")
        .join(format!("{}.cursor", endpoint_key(url)))
}

/// The id of the last event `url` acknowledged (0 if none yet), and the node
/// holding its lease.
pub async fn cursor(store: &dyn Store, url: &str) -> StoreResult<(i64, Option<String>)> {
    Ok(store
        .webhook_cursor(&endpoint_key(url))
        .await?
        .map_or((0, None), |c| (c.acked, c.holder)))
}

/// Recent POSTs to the endpoints, newest last, for the dashboard.
#[derive(Default)]
pub struct DeliveryLog(Mutex<VecDeque<Delivery>>);

/// How many recent POSTs are kept.
const LOGGED: usize = 50;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Delivery {
    /// Unix ms.
    pub at: i64,
    pub url: String,
    pub events: usize,
    /// `200`, `HTTP 500 Internal Server Error`, or why the POST failed.
    pub status: String,
    pub ok: bool,
}

impl DeliveryLog {
    fn push(&self, url: &str, events: usize, result: &Result<u16, String>) {
        let mut log = self.0.lock().expect("webhook log lock");
        if log.len() == LOGGED {
            log.pop_front();
        }
        log.push_back(Delivery {
            at: chrono::Utc::now().timestamp_millis(),
            url: url.to_string(),
            events,
            status: result.as_ref().map_or_else(Clone::clone, u16::to_string),
            ok: result.is_ok(),
        });
    }

    /// The recent POSTs, newest first.
    pub fn recent(&self) -> Vec<Delivery> {
        self.0
            .lock()
            .expect("webhook log lock")
            .iter()
            .rev()
            .cloned()
            .collect()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("Outpost/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds with static settings")
}

/// POSTs one `test` event to `hook` now, as a batch would be sent; logged.
pub async fn send_test(hook: &WebhookConfig, log: &DeliveryLog) -> Result<u16, String> {
    let now = chrono::Utc::now();
    let body = serde_json::to_vec(&[serde_json::json!({
        "id": 0, "event": "test", "at": now.timestamp_millis(), "time": now.to_rfc3339(),
        "message_id": null, "recipient": null, "user": null, "reply": null,
        "enhanced_code": null, "bounce_class": null,
    })])
    .expect("a literal serializes");
    let result = post(&client(), hook, body).await;
    log.push(&hook.url, 1, &result);
    result
}

/// What a node needs to take part in posting: its name and the lease length.
pub struct Holder {
    pub node: String,
    pub lease: Duration,
}

/// Starts one task per configured webhook in `tasks`.
pub fn start(
    webhooks: &[WebhookConfig],
    data_dir: &Path,
    holder: Holder,
    store: Arc<dyn Store>,
    log: Arc<DeliveryLog>,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let client = client();
    let holder = Arc::new(holder);
    for hook in webhooks {
        let tail = Tail {
            endpoint: endpoint_key(&hook.url),
            hook: hook.clone(),
            old_cursor: cursor_path(data_dir, &hook.url),
            holder: holder.clone(),
            store: store.clone(),
            client: client.clone(),
            log: log.clone(),
        };
        tasks.spawn(tail.run());
    }
}

struct Tail {
    hook: WebhookConfig,
    endpoint: String,
    old_cursor: PathBuf,
    holder: Arc<Holder>,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    log: Arc<DeliveryLog>,
}

impl Tail {
    async fn run(self) {
        self.import_old_cursor().await;
        // While this node holds the endpoint's lease: when to renew it.
        let mut held: Option<Instant> = None;
        let mut acked = 0;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut renew_at = match held {
                Some(at) if Instant::now() < at => at,
                _ => match self.take_lease().await {
                    Some((stored, next)) => {
                        if held.is_none() {
                            tracing::info!(url = %self.hook.url, node = %self.holder.node, cursor = stored, "webhook: this node posts to the endpoint");
                        }
                        // While this node holds the lease only it moves the
                        // cursor, so the store's is behind its own only if
                        // recording failed; taken over, the store's is the one.
                        acked = if held.is_some() {
                            acked.max(stored)
                        } else {
                            stored
                        };
                        next
                    }
                    None => {
                        if held.take().is_some() {
                            tracing::warn!(url = %self.hook.url, "webhook: this node no longer holds the endpoint's lease");
                        }
                        tokio::time::sleep(self.renewal()).await;
                        continue;
                    }
                },
            };
            held = Some(renew_at);
            let events = match self.store.events(acked, BATCH).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::error!(error = %e, "webhook cannot read the event log");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            let Some(last) = events.last().map(|e| e.id) else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            let views: Vec<EventView> = events.into_iter().map(EventView::from).collect();
            let body = serde_json::to_vec(&views).expect("events serialize");
            let posted = self
                .holding(&mut renew_at, post(&self.client, &self.hook, body))
                .await;
            // Lost while posting: the POST was dropped, and the node holding
            // the lease now posts these events.
            let Some(result) = posted else {
                held = None;
                continue;
            };
            held = Some(renew_at);
            self.log.push(&self.hook.url, views.len(), &result);
            match result {
                Ok(_) => {
                    backoff = FIRST_BACKOFF;
                    let recorded = self
                        .store
                        .advance_webhook(&self.endpoint, &self.holder.node, last)
                        .await;
                    match recorded {
                        Ok(true) => acked = last,
                        Ok(false) => {
                            tracing::warn!(url = %self.hook.url, "webhook: another node took the endpoint over before this node recorded its last POST, and posts those events again");
                            held = None;
                        }
                        Err(e) => {
                            // This node goes on from `last`; its next record
                            // covers this one.
                            acked = last;
                            tracing::error!(error = %e, "cannot record the webhook cursor; events may be sent again if another node takes over");
                        }
                    }
                }
                Err(reason) => {
                    tracing::warn!(url = %self.hook.url, reason, retry_in_seconds = backoff.as_secs_f64(), "webhook delivery failed");
                    let waited = self
                        .holding(&mut renew_at, tokio::time::sleep(backoff))
                        .await;
                    held = waited.map(|()| renew_at);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Runs `work` while renewing the lease whenever `renew_at` comes; `None`
    /// (`work` dropped) if the lease is lost meanwhile.
    async fn holding<T>(
        &self,
        renew_at: &mut Instant,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            () = self.keep_lease(renew_at) => None,
        }
    }

    /// How often the lease is renewed (and tried for by the other nodes).
    fn renewal(&self) -> Duration {
        self.holder.lease / 3
    }

    /// Takes or renews the lease: the store's cursor, and when to renew next;
    /// `None` if another node holds it or the store cannot be reached.
    async fn take_lease(&self) -> Option<(i64, Instant)> {
        let started = Instant::now();
        // Reckoned on the store's clock, as claims are (docs/cluster.md,
        // "Leases and clocks"): a node whose clock runs ahead takes no live
        // node's endpoint.
        let leased = async {
            let now = self.store.clock().await?;
            let until = now.saturating_add(self.holder.lease.as_millis() as i64);
            self.store
                .lease_webhook(&self.endpoint, &self.holder.node, now, until)
                .await
        };
        match leased.await {
            Ok(stored) => stored.map(|stored| (stored, started + self.renewal())),
            Err(e) => {
                tracing::error!(error = %e, url = %self.hook.url, "cannot renew the webhook lease; not posting until it is renewed");
                None
            }
        }
    }

    /// Renews the lease whenever `renew_at` comes; returns only once it is lost.
    async fn keep_lease(&self, renew_at: &mut Instant) {
        loop {
            tokio::time::sleep_until(*renew_at).await;
            match self.take_lease().await {
                Some((_, next)) => *renew_at = next,
                None => return,
            }
        }
    }

    /// Moves the cursor file of an older version into the store, retrying until
    /// the store takes it: posting from the store's cursor before would send
    /// everything again.
    async fn import_old_cursor(&self) {
        let text = match std::fs::read_to_string(&self.old_cursor) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(error = %e, path = %self.old_cursor.display(), "cannot read the old webhook cursor; ignored");
                return;
            }
        };
        let Ok(acked) = text.trim().parse::<i64>() else {
            tracing::error!(path = %self.old_cursor.display(), "the old webhook cursor is not a number; ignored");
            return;
        };
        loop {
            match self
                .store
                .import_webhook_cursor(&self.endpoint, acked)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, "cannot import the old webhook cursor into the store; retrying");
                    tokio::time::sleep(FIRST_BACKOFF).await;
                }
            }
        }
        tracing::info!(url = %self.hook.url, cursor = acked, path = %self.old_cursor.display(), "imported the webhook cursor into the store");
        if let Err(e) = std::fs::remove_file(&self.old_cursor) {
            tracing::warn!(error = %e, path = %self.old_cursor.display(), "cannot remove the imported webhook cursor file");
        }
    }
}

/// POSTs a signed batch; the status code of a 2xx answer.
async fn post(
    client: &reqwest::Client,
    hook: &WebhookConfig,
    body: Vec<u8>,
) -> Result<u16, String> {
    let response = client
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("x-outpost-signature", signature(&hook.secret, &body))
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(response.status().as_u16())
    } else {
        Err(format!("HTTP {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn an_old_cursor_file_is_imported_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = crate::store::SqliteStore::open(dir.path(), 16).unwrap();
        let url = "http://127.0.0.1:9/hook";
        let path = cursor_path(dir.path(), url);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "42").unwrap();
        let tail = Tail {
            hook: WebhookConfig {
                url: url.into(),
                secret: "s".into(),
            },
            endpoint: endpoint_key(url),
            old_cursor: path.clone(),
            holder: Arc::new(Holder {
                node: "n".into(),
                lease: Duration::from_secs(3),
            }),
            store: store.clone(),
            client: client(),
            log: Arc::default(),
        };
        tail.import_old_cursor().await;
        assert_eq!(cursor(store.as_ref(), url).await.unwrap(), (42, None));
        assert!(!path.exists());
        // Importing does not move the store's cursor back.
        std::fs::write(&path, "7").unwrap();
        tail.import_old_cursor().await;
        assert_eq!(cursor(store.as_ref(), url).await.unwrap().0, 42);
    }
}
