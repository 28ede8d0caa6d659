//! One-click unsubscribe over HTTPS and the mailto alternative.

use super::*;

#[tokio::test]
async fn one_click_unsubscribe_suppresses_and_forged_tokens_do_nothing() {
    let server = Server::start(Options::default()).await;
    let ids = server
        .send(
            ALICE,
            json!({"from": "news@alice.example", "to": ["Dan@four.example"], "subject": "s", "text": "t"}),
        )
        .await;
    let id: outpost::store::QueueId = ids[0].parse().unwrap();
    let content = server
        .running
        .store
        .message_content(&id)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(content).unwrap();
    let link = header(&text, "List-Unsubscribe").unwrap();
    let path = link
        .strip_prefix("<https://relay.test")
        .and_then(|l| l.split('>').next())
        .unwrap()
        .to_string();
    let token = path.strip_prefix("/u/").unwrap();

    // Altered payload (another address) and altered signature: 404, nothing stored.
    let (payload, tag) = token.split_once('.').unwrap();
    let mut bytes = payload.as_bytes().to_vec();
    bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
    let forged = [
        format!("/u/{}.{tag}", String::from_utf8(bytes).unwrap()),
        format!("/u/{payload}.{}", tag.chars().rev().collect::<String>()),
        "/u/nonsense".to_string(),
    ];
    for path in &forged {
        for method in [reqwest::Method::POST, reqwest::Method::GET] {
            let (status, _) = server.call(method, path, None, None).await;
            assert_eq!(status, 404, "{path}");
        }
    }
    let (_, list) = server.get("/v1/suppressions", ALICE).await;
    assert_eq!(list["suppressions"].as_array().unwrap().len(), 0, "{list}");

    // Opening the link (GET) shows a form and changes nothing.
    let (status, page) = server.call(reqwest::Method::GET, &path, None, None).await;
    assert_eq!(status, 200);
    assert!(
        page.as_str().unwrap().contains("<form method=\"post\">"),
        "{page}"
    );
    let (_, list) = server.get("/v1/suppressions", ALICE).await;
    assert_eq!(list["suppressions"].as_array().unwrap().len(), 0, "{list}");

    let (status, _) = server.call(reqwest::Method::POST, &path, None, None).await;
    assert_eq!(status, 200);
    let (_, list) = server.get("/v1/suppressions", ALICE).await;
    let list = list["suppressions"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["domain"], "alice.example");
    assert_eq!(list[0]["address"], "dan@four.example");
    assert_eq!(list[0]["reason"], "unsubscribe");
    let unsubscribed = |events: Vec<Value>| {
        events
            .iter()
            .filter(|e| e["event"] == "unsubscribed")
            .count()
    };
    assert_eq!(unsubscribed(server.all_events(ALICE, 100).await), 1);
    assert_eq!(unsubscribed(server.all_events(BOB, 100).await), 0);
    // A second click changes nothing.
    let (status, _) = server.call(reqwest::Method::POST, &path, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(unsubscribed(server.all_events(ALICE, 100).await), 1);
}

/// Reads one SMTP reply (all its lines) and returns its last line.
async fn smtp_reply(reader: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> String {
    use tokio::io::AsyncBufReadExt;
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(DEADLINE, reader.read_line(&mut line))
            .await
            .expect("an SMTP reply within the deadline")
            .unwrap();
        assert!(n > 0, "connection closed");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.trim_end().to_string();
        }
    }
}

#[tokio::test]
async fn mail_to_the_unsubscribe_mailto_suppresses() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(Options::default()).await;
    let ids = server
        .send(
            BOB,
            json!({"from": "news@bob.example", "to": ["erin@eight.example"], "subject": "s", "text": "t"}),
        )
        .await;
    let id: outpost::store::QueueId = ids[0].parse().unwrap();
    let content = server
        .running
        .store
        .message_content(&id)
        .await
        .unwrap()
        .unwrap();
    let link = header(&String::from_utf8(content).unwrap(), "List-Unsubscribe").unwrap();
    let mailto = link
        .split("<mailto:")
        .nth(1)
        .and_then(|m| m.strip_suffix('>'))
        .unwrap()
        .to_string();
    assert!(
        mailto.starts_with("unsubscribe+") && mailto.ends_with("@relay.test"),
        "{mailto}"
    );

    let relay = server
        .running
        .addr(outpost::config::ListenerMode::Relay)
        .unwrap();
    let stream = tokio::net::TcpStream::connect(relay).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    assert!(smtp_reply(&mut read).await.starts_with("220"));
    // A forged token is accepted as local mail but unsubscribes nobody.
    let forged = mailto.replacen("unsubscribe+", "unsubscribe+x", 1);
    for (rcpt, n) in [(forged.as_str(), 0), (mailto.as_str(), 1)] {
        for (command, code) in [
            ("EHLO client.test".to_string(), "250"),
            ("MAIL FROM:<erin@eight.example>".to_string(), "250"),
            (format!("RCPT TO:<{rcpt}>"), "250"),
            ("DATA".to_string(), "354"),
            (
                "From: erin@eight.example\r\nSubject: unsubscribe\r\n\r\n.".to_string(),
                "250",
            ),
        ] {
            write
                .write_all(format!("{command}\r\n").as_bytes())
                .await
                .unwrap();
            let reply = smtp_reply(&mut read).await;
            assert!(reply.starts_with(code), "{command}: {reply}");
        }
        let (_, list) = server.get("/v1/suppressions", BOB).await;
        let list = list["suppressions"].as_array().unwrap().clone();
        assert_eq!(list.len(), n, "{list:?}");
    }
    let (_, list) = server.get("/v1/suppressions", BOB).await;
    assert_eq!(list["suppressions"][0]["address"], "erin@eight.example");
    assert_eq!(list["suppressions"][0]["domain"], "bob.example");
    let events = server.all_events(BOB, 100).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "unsubscribed")
            .count(),
        1
    );
}
