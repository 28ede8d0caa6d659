//! Webhooks: signed batches, retried after a failure, resumed after a restart.

use super::*;

/// One POST as received: the signature header and the body.
pub(super) type Hit = (String, Vec<u8>);

/// A webhook endpoint on loopback that records every POST (signature header and
/// body) and answers 500 to the first `failures` of them, 200 after.
pub(super) struct Receiver {
    pub(super) url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Receiver {
    pub(super) async fn start(failures: usize) -> Receiver {
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
    pub(super) async fn wait(&self, done: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let end = tokio::time::Instant::now() + DEADLINE;
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
pub(super) fn events_of(hits: &[Hit]) -> Vec<Value> {
    hits.iter()
        .flat_map(|(_, body)| serde_json::from_slice::<Vec<Value>>(body).unwrap())
        .collect()
}

fn send_one(to: &str) -> Value {
    json!({"from": "a@alice.example", "to": [to], "subject": "s", "text": "t"})
}

#[tokio::test]
async fn webhook_batches_are_signed_and_retried_after_a_500() {
    let receiver = Receiver::start(1).await;
    let server = Server::start(Options {
        webhook: Some(receiver.url.clone()),
        ..Options::default()
    })
    .await;
    let ids = server.send(ALICE, send_one("x@five.example")).await;
    let hits = receiver.wait(|hits| hits.len() >= 2).await;
    assert_eq!(
        hits[0].1, hits[1].1,
        "the failed batch is sent again, unchanged"
    );
    for (signature, body) in &hits {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").unwrap();
        mac.update(body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(signature, &expected);
    }
    let events: Vec<Value> = serde_json::from_slice(&hits[1].1).unwrap();
    assert_eq!(events[0]["event"], "accepted");
    assert_eq!(events[0]["message_id"], ids[0].as_str());
    assert_eq!(events[0]["recipient"], "x@five.example");
}

#[tokio::test]
async fn webhook_delivery_resumes_after_a_restart_without_repeats() {
    let receiver = Receiver::start(0).await;
    let server = Server::start(Options {
        webhook: Some(receiver.url.clone()),
        ..Options::default()
    })
    .await;
    let first = server.send(ALICE, send_one("one@nine.example")).await;
    let hits = receiver
        .wait(|hits| {
            events_of(hits)
                .iter()
                .any(|e| e["message_id"] == first[0].as_str())
        })
        .await;
    let last_id = events_of(&hits).last().unwrap()["id"].as_i64().unwrap();
    // The cursor is saved just after the 2xx: wait for it before stopping.
    use sha2::Digest;
    let cursor = server.dir.path().join("webhooks").join(format!(
        "{}.cursor",
        hex::encode(sha2::Sha256::digest(receiver.url.as_bytes()))
    ));
    let end = tokio::time::Instant::now() + DEADLINE;
    while std::fs::read_to_string(&cursor).ok().as_deref() != Some(last_id.to_string().as_str()) {
        assert!(tokio::time::Instant::now() < end, "cursor never saved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let server = server.restart().await;
    let second = server.send(ALICE, send_one("two@nine.example")).await;
    let hits = receiver
        .wait(|hits| {
            events_of(hits)
                .iter()
                .any(|e| e["message_id"] == second[0].as_str())
        })
        .await;
    let events = events_of(&hits);
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "each event once, in order: {ids:?}"
    );
    assert_eq!(events.len(), 2, "{events:?}");
}
