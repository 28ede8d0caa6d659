//! Webhooks: signed batches, retried after a failure, resumed after a restart.

use super::*;
use crate::support::fakes::webhook::{Receiver, events_of};

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
    // The cursor is recorded in the store just after the 2xx: wait for it
    // before stopping.
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (cursor, holder) =
            outpost::webhooks::cursor(server.running.store.as_ref(), &receiver.url)
                .await
                .unwrap();
        if cursor == last_id {
            assert!(
                holder.is_some(),
                "the node posting holds the endpoint's lease"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < end, "cursor never saved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !server.dir.path().join("webhooks").exists(),
        "no cursor file: the store keeps it"
    );

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
