//! Every page's status and key content, and what each tenant sees.

use super::*;

#[tokio::test]
async fn overview_messages_and_message_page_show_what_happened() {
    let sink = SmtpSink::builder()
        .rcpt_reply("nobody", "550 5.1.1 <nobody@dest.example>: User unknown")
        .start()
        .await;
    let server = Server::start(&sink, "1s").await;
    let (delivered, id) = alice_sends(&server).await;
    let mut alice = Browser::signed_in(&server, ALICE).await;

    let overview = alice.get("/?period=1h").await;
    assert_eq!(overview.status, 200);
    assert_eq!(overview.stat("accepted"), 2);
    assert_eq!(overview.stat("delivered"), 1);
    assert_eq!(overview.stat("bounced"), 1);
    assert_eq!(overview.stat("deferred"), 0);
    overview
        .assert_contains("<svg")
        .assert_contains("1 delivered, 0 deferred, 1 bounced")
        .assert_contains("127.0.0.1")
        .assert_contains("User unknown")
        .assert_contains("No sending domain yet");

    let found = alice.get("/messages?q=nobody%40dest.example").await;
    assert_eq!(found.status, 200);
    found
        .assert_contains(&format!("/messages/{id}"))
        .assert_contains("Spring newsletter");
    assert!(!found.body.contains(&delivered));
    alice
        .get("/messages?q=carol")
        .await
        .assert_contains(&delivered);
    let none = alice.get("/messages?q=someone-else%40dest.example").await;
    none.assert_contains("No message matches");
    assert!(!none.body.contains(&id));
    let bounced = alice.get("/messages?status=bounced&period=24h").await;
    bounced.assert_contains(&format!("/messages/{id}"));
    let by_id = alice.get(&format!("/messages?q={id}")).await;
    by_id.assert_contains(&format!("/messages/{id}"));

    // The bounce report goes out (and the content is dropped) just after the
    // last outcome is recorded: the page says "being sent" until then.
    let end = tokio::time::Instant::now() + DEADLINE;
    let message = loop {
        let page = alice.get(&format!("/messages/{id}")).await;
        if page.body.contains("bounce report was sent") || tokio::time::Instant::now() > end {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(message.status, 200);
    message
        .assert_contains("Spring newsletter")
        .assert_contains("through HTTP")
        .assert_contains("by <strong>alice</strong>")
        .assert_contains("not signed")
        .assert_contains(r#"data-recipient="nobody@dest.example""#)
        .assert_contains("550 5.1.1 &lt;nobody@dest.example&gt;: User unknown")
        .assert_contains("at <strong>127.0.0.1</strong>")
        .assert_contains("without TLS")
        .assert_contains("bounce report was sent to news@alice.example");
    alice
        .get(&format!("/messages/{delivered}"))
        .await
        .assert_contains(r#"data-recipient="carol@dest.example""#)
        .assert_contains("250");
}

#[tokio::test]
async fn another_tenant_sees_none_of_it() {
    let sink = SmtpSink::builder()
        .rcpt_reply("nobody", "550 5.1.1 User unknown")
        .start()
        .await;
    let server = Server::start(&sink, "1s").await;
    let (_, id) = alice_sends(&server).await;
    let mut bob = Browser::signed_in(&server, BOB).await;

    assert_eq!(bob.get(&format!("/messages/{id}")).await.status, 404);
    let list = bob.get("/messages").await;
    list.assert_contains("No messages yet");
    assert!(!list.body.contains(&id));
    assert!(!bob.get("/messages?q=carol").await.body.contains(&id));
    let overview = bob.get("/").await;
    assert_eq!(overview.stat("accepted"), 0);
    assert!(!overview.body.contains("User unknown"));
    assert_eq!(bob.get("/users").await.status, 404);
    assert_eq!(bob.get("/webhooks").await.status, 404);

    // An admin sees everything.
    let mut root = Browser::signed_in(&server, ROOT).await;
    assert_eq!(root.get(&format!("/messages/{id}")).await.status, 200);
    // Alice's two messages and the bounce report sent to her (from <>).
    assert_eq!(root.get("/").await.stat("accepted"), 3);
    let users = root.get("/users").await;
    assert_eq!(users.status, 200);
    users
        .assert_contains(r#"data-user="alice""#)
        .assert_contains("news.alice.example");
    let hooks = root.get("/webhooks").await;
    assert_eq!(hooks.status, 200);
    hooks.assert_contains("No webhook endpoint");
}

#[tokio::test]
async fn every_page_renders_with_empty_states_and_assets() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(&sink, "1s").await;
    let mut alice = Browser::signed_in(&server, ALICE).await;
    for (path, text) in [
        ("/", "No sending domain yet"),
        ("/?period=7d", "Last 7 days"),
        ("/messages", "No messages yet"),
        ("/queue", "Nothing is waiting"),
        ("/domains", "No sending domain yet"),
        ("/suppressions", "No suppressed address"),
    ] {
        let page = alice.get(path).await;
        assert_eq!(page.status, 200, "{path}");
        page.assert_contains(text)
            .assert_contains(r#"<link rel="stylesheet" href="/assets/style.css">"#);
    }
    assert_eq!(alice.get("/messages/not-an-id").await.status, 404);
    assert_eq!(
        alice.get("/messages/0000000000000000AAAA").await.status,
        404
    );
    let css = alice.get("/assets/style.css").await;
    assert_eq!(css.status, 200);
    css.assert_contains(".stat");
    assert_eq!(alice.get("/assets/app.js").await.status, 200);
    // The API and unsubscribe stay where they were.
    assert_eq!(alice.get("/v1/suppressions").await.status, 401);
}

#[tokio::test]
async fn a_paused_domain_is_announced_to_its_users() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(&sink, "1s").await;
    let pause = outpost::store::DomainPause {
        domain: "alice.example".into(),
        since: 1_700_000_000_000,
        reason: "complaint rate 0.50%".into(),
    };
    assert!(server.running.store.pause_domain(pause).await.unwrap());
    let notice = r#"data-paused="alice.example""#;
    let mut alice = Browser::signed_in(&server, ALICE).await;
    alice
        .get("/")
        .await
        .assert_contains(notice)
        .assert_contains("complaint rate 0.50%")
        .assert_contains("outpost domain resume alice.example");
    let mut bob = Browser::signed_in(&server, BOB).await;
    let page = bob.get("/").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(notice), "another tenant's pause shown");
}
