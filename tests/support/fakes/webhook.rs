//! A webhook endpoint on loopback (`[[webhooks]] url`): records every POST it
//! gets, signature header and body, and fails the first few on request.

use super::super::delivery::WAIT;
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// One POST as received: the signature header and the body.
pub type Hit = (String, Vec<u8>);

/// A webhook endpoint on loopback that records every POST (signature header and
/// body) and answers 500 to the first `failures` of them, 200 after.
pub struct Receiver {
    pub url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Receiver {
    pub async fn start(failures: usize) -> Receiver {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let notify = Arc::new(tokio::sync::Notify::new());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post({
                let (hits, notify) = (hits.clone(), notify.clone());
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                    let signature = headers
                        .get("x-outpost-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let n = {
                        let mut hits = hits.lock().unwrap();
                        hits.push((signature, body.to_vec()));
                        hits.len()
                    };
                    notify.notify_waiters();
                    if n <= failures {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, hits, notify }
    }

    /// Waits until a POST has been received for which `done` holds; returns all.
    pub async fn wait(&self, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let end = tokio::time::Instant::now() + WAIT;
        loop {
            let waiting = self.notify.notified();
            tokio::pin!(waiting);
            waiting.as_mut().enable();
            {
                let hits = self.hits.lock().unwrap();
                if done(&hits) {
                    return hits.clone();
                }
            }
            tokio::time::timeout_at(end, waiting)
                .await
                .expect("the webhook was called within the deadline");
        }
    }
}

/// Every event in every POST received, in order.
pub fn events_of(hits: &[Hit]) -> Vec<Value> {
    hits.iter()
        .flat_map(|(_, body)| serde_json::from_slice::<Vec<Value>>(body).unwrap())
        .collect()
}
