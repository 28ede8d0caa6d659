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
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("Outpost/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds with static settings");
    for hook in webhooks {
        let tail = Tail {
            hook: hook.clone(),
            cursor_path: cursor_path(data_dir, &hook.url),
            store: store.clone(),
            client: client.clone(),
        };
        tasks.spawn(tail.run());
    }
}

struct Tail {
    hook: WebhookConfig,
    cursor_path: PathBuf,
    store: Arc<dyn Store>,
    client: reqwest::Client,
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
            match self.post(body).await {
                Ok(()) => {
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

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let response = self
            .client
            .post(&self.hook.url)
            .header("content-type", "application/json")
            .header("x-outpost-signature", signature(&self.hook.secret, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", response.status()))
        }
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
