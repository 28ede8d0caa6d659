//! Sending through the API: delivery to the sink, personalization, status, event
//! paging, stats, metrics; a bounce in the status and the log.

use super::*;

#[tokio::test]
async fn send_personalized_then_follow_status_events_and_metrics() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(Options {
        sink: Some(&sink),
        ..Options::default()
    })
    .await;
    let ids = server
        .send(
            ALICE,
            json!({
                "from": "Alice <news@alice.example>",
                "to": [
                    {"email": "ann@one.example", "vars": {"name": "Ann"}},
                    {"email": "ben@two.example", "vars": {"name": "<Ben>"}},
                ],
                "subject": "Hello {{ name }}",
                "text": "Hi {{ name }},\nsee you.",
                "html": "<p>Hi {{ name }}</p>",
                "headers": {"X-Campaign": "spring"},
                "reply_to": "help@alice.example",
            }),
        )
        .await;
    assert_eq!(ids.len(), 2);
    let received = sink.wait_for_messages(2, DEADLINE).await;
    for (rcpt, name, html) in [
        ("ann@one.example", "Ann", "<p>Hi Ann</p>"),
        ("ben@two.example", "<Ben>", "<p>Hi &lt;Ben&gt;</p>"),
    ] {
        let m = received.iter().find(|m| m.rcpt_to == [rcpt]).unwrap();
        assert!(
            support::common::return_path_message(&m.mail_from).is_some(),
            "{}",
            m.mail_from
        );
        let parsed = mail_parser::MessageParser::new().parse(&m.data).unwrap();
        assert_eq!(parsed.subject(), Some(format!("Hello {name}").as_str()));
        assert!(
            parsed
                .body_text(0)
                .unwrap()
                .contains(&format!("Hi {name},"))
        );
        assert!(parsed.body_html(0).unwrap().contains(html), "{}", m.text());
        let text = m.text();
        assert!(text.contains("multipart/alternative"), "{text}");
        assert_eq!(header(&text, "X-Campaign").as_deref(), Some("spring"));
        assert!(header(&text, "Received").is_some_and(|r| r.starts_with("from api ([127.0.0.1])")));
        let unsubscribe = header(&text, "List-Unsubscribe").unwrap();
        assert!(
            unsubscribe.starts_with("<https://relay.test/u/"),
            "{unsubscribe}"
        );
        assert!(
            unsubscribe.contains(">, <mailto:unsubscribe+"),
            "{unsubscribe}"
        );
        assert_eq!(
            header(&text, "List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        assert!(header(&text, "Date").is_some());
        let id = ids
            .iter()
            .find(|id| parsed.message_id().unwrap().starts_with(id.as_str()))
            .expect("Message-ID carries the queue id");
        let view = server
            .wait_status(ALICE, id, |v| v["recipients"][0]["status"] == "delivered")
            .await;
        assert_eq!(view["recipients"][0]["address"], rcpt);
        assert_eq!(view["recipients"][0]["attempts"], 1);
        assert_eq!(view["recipients"][0]["enhanced_code"], "2.0.0");
        assert!(
            view["recipients"][0]["last_reply"]
                .as_str()
                .unwrap()
                .starts_with("250")
        );
    }

    // Raw messages go through as they are.
    let raw = "From: <raw@alice.example>\nTo: <carl@three.example>\nSubject: raw\n\nraw body\n";
    let (status, resp) = server
        .post(
            "/v1/messages/raw",
            ALICE,
            json!({"message": raw, "mail_from": "raw@alice.example", "rcpt_to": ["carl@three.example"]}),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    let received = sink.wait_for_messages(3, DEADLINE).await;
    let m = received
        .iter()
        .find(|m| m.rcpt_to == ["carl@three.example"])
        .unwrap();
    assert!(
        m.text().ends_with("Subject: raw\r\n\r\nraw body\r\n"),
        "{}",
        m.text()
    );
    let raw_id = resp["messages"][0]["id"].as_str().unwrap().to_string();
    server
        .wait_status(ALICE, &raw_id, |v| {
            v["recipients"][0]["status"] == "delivered"
        })
        .await;

    // The event log, paged one by one, holds every acceptance and delivery.
    let events = server.all_events(ALICE, 1).await;
    let kinds = |kind: &str| events.iter().filter(|e| e["event"] == kind).count();
    assert_eq!(
        (kinds("accepted"), kinds("delivered")),
        (3, 3),
        "{events:?}"
    );
    let ids_seen: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        ids_seen.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {ids_seen:?}"
    );
    let delivered = events.iter().find(|e| e["event"] == "delivered").unwrap();
    assert_eq!(delivered["enhanced_code"], "2.0.0");
    assert_eq!(delivered["user"], "alice");
    assert!(delivered["time"].as_str().unwrap().contains('T'));
    assert_eq!(server.all_events(ALICE, 1000).await.len(), events.len());

    let (status, stats) = server.get("/v1/stats?windows=1h", ALICE).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["windows"][0]["counts"]["delivered"], 3, "{stats}");
    assert_eq!(
        stats["windows"][0]["by_domain"]["one.example"]["delivered"],
        1
    );

    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "outpost_messages_accepted_total{source=\"http\"} 3",
        "outpost_deliveries_total{result=\"delivered\",domain=\"one.example\"} 1",
        "outpost_delivery_latency_seconds_count 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    let (status, health) = server
        .call(reqwest::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, doc) = server
        .call(reqwest::Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/messages"]["post"].is_object(), "{doc}");
}

#[tokio::test]
async fn a_bounce_shows_in_status_and_events() {
    let sink = SmtpSink::builder()
        .rcpt_reply("nobody", "550 5.1.1 User unknown")
        .start()
        .await;
    let server = Server::start(Options {
        sink: Some(&sink),
        ..Options::default()
    })
    .await;
    let ids = server
        .send(
            ALICE,
            json!({"from": "a@alice.example", "to": ["nobody@seven.example"], "subject": "s", "text": "t"}),
        )
        .await;
    let view = server
        .wait_status(ALICE, &ids[0], |v| {
            v["recipients"][0]["status"] == "bounced"
        })
        .await;
    let rcpt = &view["recipients"][0];
    assert_eq!(rcpt["enhanced_code"], "5.1.1", "{view}");
    assert!(
        rcpt["last_reply"]
            .as_str()
            .unwrap()
            .contains("User unknown")
    );
    assert_eq!(rcpt["next_attempt"], Value::Null);
    let events = server.all_events(ALICE, 10).await;
    let bounced = events
        .iter()
        .find(|e| e["event"] == "bounced")
        .expect("a bounced event");
    assert_eq!(bounced["message_id"], ids[0].as_str());
    assert_eq!(bounced["enhanced_code"], "5.1.1");
}
