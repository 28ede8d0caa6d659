//! The receiver's reply as it was given: a `250` without an enhanced status code
//! (Exim's `250 OK id=...`) is a success everywhere it is reported: the message
//! status, the event log and the webhook batches.

use super::*;
use crate::support::fakes::webhook::{Receiver, events_of};

#[tokio::test]
async fn a_250_without_enhanced_code_is_reported_as_2_0_0() {
    let sink = SmtpSink::builder()
        .data_reply("250 OK id=1abc")
        .start()
        .await;
    let receiver = Receiver::start(0).await;
    let server = Server::start(Options {
        sink: Some(&sink),
        webhook: Some(receiver.url.clone()),
        ..Options::default()
    })
    .await;
    let ids = server
        .send(
            ALICE,
            json!({"from": "a@alice.example", "to": ["x@exim.example"], "subject": "s", "text": "t"}),
        )
        .await;
    let view = server
        .wait_status(ALICE, &ids[0], |v| {
            v["recipients"][0]["status"] == "delivered"
        })
        .await;
    let recipient = &view["recipients"][0];
    assert_eq!(recipient["last_reply"], "250 OK id=1abc", "{view}");
    assert_eq!(recipient["enhanced_code"], "2.0.0", "{view}");

    let delivered = |events: &[Value]| {
        events
            .iter()
            .find(|e| e["event"] == "delivered" && e["message_id"] == ids[0].as_str())
            .cloned()
    };
    let logged = delivered(&server.all_events(ALICE, 100).await).expect("a delivered event");
    let hits = receiver
        .wait(|hits| delivered(&events_of(hits)).is_some())
        .await;
    let hooked = delivered(&events_of(&hits)).unwrap();
    for event in [logged, hooked] {
        assert_eq!(event["reply"], "250 OK id=1abc", "{event}");
        assert_eq!(event["enhanced_code"], "2.0.0", "{event}");
    }
    // An accepted event has no reply, so no code either.
    let accepted = server.all_events(ALICE, 100).await;
    let accepted = accepted.iter().find(|e| e["event"] == "accepted").unwrap();
    assert!(accepted["enhanced_code"].is_null(), "{accepted}");
}
