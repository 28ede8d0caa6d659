//! Bad input: 4xx answers that name the field.

use super::*;

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named() {
    let server = Server::start(Options::default()).await;
    let ok =
        json!({"from": "a@alice.example", "to": ["y@six.example"], "subject": "s", "text": "t"});
    let with = |key: &str, value: Value| {
        let mut v = ok.clone();
        v[key] = value;
        v
    };
    let big = "x".repeat(MAX_MESSAGE_SIZE + 1);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "unknown field",
            with("bcc", json!(["z@x.example"])),
            400,
            "bcc",
        ),
        ("wrong type", with("to", json!(5)), 400, "to"),
        (
            "invalid address",
            with("to", json!(["not-an-address"])),
            422,
            "to[0]",
        ),
        (
            "invalid sender",
            with("from", json!("a@@alice.example")),
            422,
            "from",
        ),
        (
            "address object without email",
            with("to", json!([{"vars": {}}])),
            400,
            "to[0]",
        ),
        (
            "CRLF in a header value",
            with("headers", json!({"X-A": "a\r\nBcc: z@x.example"})),
            422,
            "headers.X-A",
        ),
        (
            "CRLF in a header name",
            with("headers", json!({"X-A\r\nBcc": "z"})),
            422,
            "headers.X-A\r\nBcc",
        ),
        (
            "managed header",
            with("headers", json!({"Content-Type": "text/html"})),
            422,
            "headers.Content-Type",
        ),
        (
            "CR in the subject",
            with("subject", json!("a\rb")),
            422,
            "subject",
        ),
        (
            "undefined template variable",
            {
                let mut v = with("to", json!([{"email": "y@six.example", "vars": {}}]));
                v["subject"] = json!("Hi {{ name }}");
                v
            },
            422,
            "to[0].vars",
        ),
        (
            "template syntax",
            {
                let mut v = with("to", json!([{"email": "y@six.example", "vars": {"a": 1}}]));
                v["text"] = json!("{% for %}");
                v
            },
            422,
            "text",
        ),
        (
            "too many recipients",
            with(
                "to",
                json!(
                    (0..=MAX_RECIPIENTS)
                        .map(|i| format!("r{i}@x.example"))
                        .collect::<Vec<_>>()
                ),
            ),
            422,
            "to",
        ),
        (
            "no body",
            {
                let mut v = ok.clone();
                v.as_object_mut().unwrap().remove("text");
                v
            },
            422,
            "text",
        ),
        ("too large", with("text", json!(big)), 413, ""),
    ];
    for (what, body, status, field) in cases {
        let (got, err) = server.post("/v1/messages", ALICE, body).await;
        assert_eq!(got, status, "{what}: {err}");
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {err}"
        );
        if !field.is_empty() {
            assert_eq!(err["field"].as_str(), Some(field), "{what}: {err}");
        }
    }
    let malformed = server
        .http
        .post(server.url("/v1/messages"))
        .basic_auth(ALICE.0, Some(ALICE.1))
        .header("content-type", "application/json")
        .body("{\"from\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let err: Value = malformed.json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("invalid JSON"),
        "{err}"
    );

    let raw = |message: &str, mail_from: &str, rcpt: Value| json!({"message": message, "mail_from": mail_from, "rcpt_to": rcpt});
    let good = "From: a@alice.example\r\nSubject: s\r\n\r\nbody\r\n";
    let raw_cases = vec![
        (
            "raw: bad recipient",
            raw(good, "a@alice.example", json!(["x"])),
            422,
            "rcpt_to[0]",
        ),
        (
            "raw: no recipient",
            raw(good, "a@alice.example", json!([])),
            422,
            "rcpt_to",
        ),
        (
            "raw: envelope sender not granted",
            raw(good, "a@bob.example", json!(["y@six.example"])),
            403,
            "mail_from",
        ),
        (
            "raw: From: not granted",
            raw(
                "From: a@bob.example\r\n\r\nb\r\n",
                "a@alice.example",
                json!(["y@six.example"]),
            ),
            403,
            "message",
        ),
        (
            // Found by the message_headers fuzz target: authorized on the content
            // alone, this From: continued the added Message-ID: field when sent.
            "raw: From: on a first line that begins with white space",
            raw(
                " From: a@alice.example\r\n\r\nb\r\n",
                "a@alice.example",
                json!(["y@six.example"]),
            ),
            403,
            "message",
        ),
        (
            "raw: bare CR",
            raw(
                "From: a@alice.example\r\n\r\na\rb\r\n",
                "a@alice.example",
                json!(["y@six.example"]),
            ),
            422,
            "message",
        ),
    ];
    for (what, body, status, field) in raw_cases {
        let (got, err) = server.post("/v1/messages/raw", ALICE, body).await;
        assert_eq!(
            (got, err["field"].as_str()),
            (status, Some(field)),
            "{what}: {err}"
        );
    }
    let (status, err) = server.get("/v1/events?limit=0", ALICE).await;
    assert_eq!((status, err["field"].as_str()), (422, Some("limit")));
    let (status, _) = server.get("/v1/events?after=x", ALICE).await;
    assert_eq!(status, 400);
    let (status, _) = server.get("/v1/messages/not-an-id", ALICE).await;
    assert_eq!(status, 404);
    server
        .running
        .store
        .queued_messages(10)
        .await
        .unwrap()
        .is_empty()
        .then_some(())
        .expect("nothing was accepted");
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("outpost_messages_accepted_total{source=\"http\"} 0")
            && metrics.contains("outpost_queue_recipients_pending 0\n"),
        "{metrics}"
    );
}
