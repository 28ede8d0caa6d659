//! Webhooks (`[[webhooks]] url, secret`): one background task per endpoint tails
//! the durable event log and POSTs batches of events (a JSON array of
//! `api::EventView`), signed `X-Outpost-Signature: sha256=<hex HMAC-SHA256(secret,
//! body)>`.
//!
//! Delivery to an endpoint is at least once, in log order: the cursor (the last
//! event id the endpoint answered 2xx for) is kept in
//! `data_dir/webhooks/<sha256(url)>.cursor`, written atomically, and advanced only
//! after a 2xx. A failing endpoint is retried with exponential backoff (1 s doubling
//! to 5 min); its events stay in the log meanwhile. Nothing here is on the path of
//! mail acceptance or delivery: a dead endpoint slows down nothing else.

use crate::api::EventView;
use crate::config::WebhookConfig;
use crate::store::Store;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

fn cursor_path(data_dir: &Path, url: &str) -> PathBuf {
    let name = hex::encode(Sha256::digest(url.as_bytes()));
    data_dir.join("webhooks").join(format!("{name}.cursor"))
}

/// The id of the last event `url` acknowledged (0 if none yet).
pub fn cursor(data_dir: &Path, url: &str) -> i64 {
    load_cursor(&cursor_path(data_dir, url))
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

fn load_cursor(path: &Path) -> i64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes the cursor durably: temporary file, fsync, rename.
fn save_cursor(path: &Path, cursor: i64) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(cursor.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Starts one task per configured webhook in `tasks`.
pub fn start(
    webhooks: &[WebhookConfig],
    data_dir: &Path,
    store: Arc<dyn Store>,
    log: Arc<DeliveryLog>,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let client = client();
    for hook in webhooks {
        let tail = Tail {
            hook: hook.clone(),
            cursor_path: cursor_path(data_dir, &hook.url),
            store: store.clone(),
            client: client.clone(),
            log: log.clone(),
        };
        tasks.spawn(tail.run());
    }
}

struct Tail {
    hook: WebhookConfig,
    cursor_path: PathBuf,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    log: Arc<DeliveryLog>,
}

impl Tail {
    async fn run(self) {
        let mut cursor = load_cursor(&self.cursor_path);
        let mut backoff = FIRST_BACKOFF;
        tracing::info!(url = %self.hook.url, cursor, "webhook started");
        loop {
            let events = match self.store.events(cursor, BATCH).await {
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
            let result = post(&self.client, &self.hook, body).await;
            self.log.push(&self.hook.url, views.len(), &result);
            match result {
                Ok(_) => {
                    cursor = last;
                    backoff = FIRST_BACKOFF;
                    if let Err(e) = save_cursor(&self.cursor_path, cursor) {
                        tracing::error!(error = %e, path = %self.cursor_path.display(), "cannot save the webhook cursor; events may be sent again after a restart");
                    }
                }
                Err(reason) => {
                    tracing::warn!(url = %self.hook.url, reason, retry_in_seconds = backoff.as_secs_f64(), "webhook delivery failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
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

    #[test]
    fn cursor_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = cursor_path(dir.path(), "http://x/");
        assert_eq!(load_cursor(&path), 0);
        save_cursor(&path, 42).unwrap();
        assert_eq!(load_cursor(&path), 42);
    }
}
