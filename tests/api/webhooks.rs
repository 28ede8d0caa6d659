//! Webhooks: signed batches, retried after a failure.

use super::*;

/// What the test webhook receiver saw: (signature header, body).
type Hits = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[tokio::test]
async fn webhook_batches_are_signed_and_retried_after_a_500() {
    let hits: Hits = Arc::default();
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
                if n == 1 {
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
    let server = Server::start(Options {
        webhook: Some(url),
        ..Options::default()
    })
    .await;
    let ids = server
        .send(
            ALICE,
            json!({"from": "a@alice.example", "to": ["x@five.example"], "subject": "s", "text": "t"}),
        )
        .await;
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let waiting = notify.notified();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        if hits.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::timeout_at(end, waiting)
            .await
            .expect("the webhook was retried within the deadline");
    }
    let hits = hits.lock().unwrap().clone();
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
