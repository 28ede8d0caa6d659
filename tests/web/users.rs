//! The Users page's per-user forms: granting and revoking sending domains, and
//! making and revoking API keys, each checked where it matters (SMTP, the API,
//! the dashboard of the user concerned).

use super::*;
use outpost::config::ListenerMode;
use support::common::{Client, auth_plain_command, message};

/// A new SMTP session of `who` over STARTTLS on the relay port, signed in.
async fn smtp_as(server: &Server, who: (&str, &str)) -> Client {
    let addr = server
        .running
        .addr(ListenerMode::Relay)
        .expect("a relay listener");
    let mut client = Client::connect(addr).await;
    client.expect_greeting().await;
    client.ehlo().await;
    client.starttls().await;
    client.ehlo().await;
    client
        .expect(&auth_plain_command(who.0, who.1), "235 2.7.0")
        .await;
    client
}

/// The `<code class="secret">` of a page (a password or key shown once).
fn secret(page: &Page) -> String {
    let marker = r#"<code class="secret">"#;
    let at = page.body.find(marker).expect("a secret on the page") + marker.len();
    page.body[at..at + page.body[at..].find('<').unwrap()].to_string()
}

#[tokio::test]
async fn a_granted_domain_is_usable_until_it_is_revoked() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(&sink, "1s").await;
    let mut root = Browser::signed_in(&server, ROOT).await;
    root.get("/users")
        .await
        .assert_contains(r#"href="/users/edit?name=bob""#);
    let page = root
        .submit(
            "/users/edit?name=bob",
            "/users/domains/grant",
            &[("name", "bob"), ("domain", "Shop.Example")],
        )
        .await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/users/edit?name=bob"))
    );
    root.get("/users/edit?name=bob")
        .await
        .assert_contains("bob may now send as shop.example")
        .assert_contains(r#"data-granted="shop.example""#)
        .assert_contains(r#"data-granted="bob.example""#);

    let mut smtp = smtp_as(&server, BOB).await;
    let sender = "news@shop.example";
    let id = smtp
        .deliver(
            sender,
            &["carol@dest.example"],
            &message(sender, "carol@dest.example", "granted\r\n"),
        )
        .await
        .to_string();
    server.wait_states(BOB, &id, &["delivered"]).await;
    let mut bob = Browser::signed_in(&server, BOB).await;
    bob.get(&format!("/messages/{id}"))
        .await
        .assert_contains(sender);
    assert!(bob.get("/messages").await.body.contains(&id));

    let page = root
        .submit(
            "/users/edit?name=bob",
            "/users/domains/revoke",
            &[("name", "bob"), ("domain", "shop.example")],
        )
        .await;
    assert_eq!(page.status, 303);
    let edit = root.get("/users/edit?name=bob").await;
    edit.assert_contains("bob may no longer send as shop.example");
    assert!(!edit.body.contains(r#"data-granted="shop.example""#));
    // A new SMTP session is refused the domain; the dashboard hides its mail.
    let mut smtp = smtp_as(&server, BOB).await;
    smtp.expect(&format!("MAIL FROM:<{sender}>"), "550 5.7.1")
        .await;
    assert_eq!(bob.get(&format!("/messages/{id}")).await.status, 404);
    assert!(!bob.get("/messages").await.body.contains(&id));
    // bob.example stays granted.
    smtp.expect("MAIL FROM:<news@bob.example>", "250 2.1.0")
        .await;

    // Not granted, not a domain, no such user: refused.
    let page = root
        .submit(
            "/users/edit?name=bob",
            "/users/domains/revoke",
            &[("name", "bob"), ("domain", "shop.example")],
        )
        .await;
    assert_eq!(page.status, 404);
    let page = root
        .submit(
            "/users/edit?name=bob",
            "/users/domains/grant",
            &[("name", "bob"), ("domain", "not a domain")],
        )
        .await;
    assert_eq!(page.status, 400);
    let page = root
        .submit(
            "/users",
            "/users/domains/grant",
            &[("name", "nobody"), ("domain", "x.example")],
        )
        .await;
    assert_eq!(page.status, 404);
    assert_eq!(root.get("/users/edit?name=nobody").await.status, 404);
}

#[tokio::test]
async fn an_api_key_made_on_the_page_is_shown_once_and_works_until_revoked() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(&sink, "1s").await;
    let mut root = Browser::signed_in(&server, ROOT).await;
    root.get("/users/edit?name=alice")
        .await
        .assert_contains("No API key.");
    let page = root
        .submit(
            "/users/edit?name=alice",
            "/users/keys",
            &[
                ("name", "alice"),
                ("key_name", "newsletter app"),
                ("key_domains", ""),
            ],
        )
        .await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/users/edit?name=alice"))
    );
    let shown = root.get("/users/edit?name=alice").await;
    shown.assert_contains("made for alice. The key, shown only this once:");
    let key = secret(&shown);
    assert!(key.starts_with("opk_"), "{key}");
    let listed = root.get("/users/edit?name=alice").await;
    listed
        .assert_contains("newsletter app")
        .assert_contains("every granted domain");
    assert!(!listed.body.contains(&key), "shown only once");

    let send = |key: String, from: &'static str| {
        let url = server.url("/v1/messages");
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(key)
                .json(&json!({"from": from, "to": ["carol@dest.example"], "subject": "s", "text": "t"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(send(key.clone(), "a@news.alice.example").await, 202);
    let stats = |key: &str| {
        reqwest::Client::new()
            .get(server.url("/v1/stats"))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(stats(&key).await.unwrap().status(), 200);
    // Its use is noted on the page.
    let end = tokio::time::Instant::now() + DEADLINE;
    while root
        .get("/users/edit?name=alice")
        .await
        .body
        .contains(">never<")
    {
        assert!(tokio::time::Instant::now() < end, "last use never shown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A key for one granted domain sends as that one only; others are refused.
    let page = root
        .submit(
            "/users/edit?name=alice",
            "/users/keys",
            &[
                ("name", "alice"),
                ("key_name", ""),
                ("key_domains", "Alice.example"),
            ],
        )
        .await;
    assert_eq!(page.status, 303);
    let narrow = secret(&root.get("/users/edit?name=alice").await);
    assert_eq!(send(narrow.clone(), "a@alice.example").await, 202);
    assert_eq!(send(narrow, "a@news.alice.example").await, 403);
    let page = root
        .submit(
            "/users/edit?name=alice",
            "/users/keys",
            &[("name", "alice"), ("key_domains", "bob.example")],
        )
        .await;
    assert_eq!(page.status, 400);
    page.assert_contains("is not a domain of alice");

    // Revoked: refused at once. Only the page's own user's keys are revoked.
    let keys = server.running.store.api_keys(Some("alice")).await.unwrap();
    let first = keys[0].id.to_string();
    assert_eq!(keys[0].name.as_deref(), Some("newsletter app"));
    let page = root
        .submit(
            "/users/edit?name=bob",
            "/users/keys/revoke",
            &[("name", "bob"), ("id", &first)],
        )
        .await;
    assert_eq!(page.status, 404);
    assert_eq!(stats(&key).await.unwrap().status(), 200);
    let page = root
        .submit(
            "/users/edit?name=alice",
            "/users/keys/revoke",
            &[("name", "alice"), ("id", &first)],
        )
        .await;
    assert_eq!(page.status, 303);
    root.get("/users/edit?name=alice")
        .await
        .assert_contains(&format!("Key {first} of alice revoked."));
    assert_eq!(stats(&key).await.unwrap().status(), 401);
    assert_eq!(send(key, "a@alice.example").await, 401);
}

#[tokio::test]
async fn the_per_user_forms_need_the_csrf_token_and_an_admin() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(&sink, "1s").await;
    let mut root = Browser::signed_in(&server, ROOT).await;
    let forms: [(&str, &[(&str, &str)]); 4] = [
        (
            "/users/domains/grant",
            &[("name", "bob"), ("domain", "shop.example")],
        ),
        (
            "/users/domains/revoke",
            &[("name", "bob"), ("domain", "bob.example")],
        ),
        ("/users/keys", &[("name", "bob"), ("key_name", "x")]),
        ("/users/keys/revoke", &[("name", "bob"), ("id", "1")]),
    ];
    for (action, fields) in forms {
        let page = root.post(action, fields).await;
        assert_eq!(page.status, 403, "{action} without a token");
        let mut forged = vec![("csrf", "0000")];
        forged.extend_from_slice(fields);
        assert_eq!(root.post(action, &forged).await.status, 403, "{action}");
    }
    // A user, even with its own valid token, is no admin.
    let mut alice = Browser::signed_in(&server, ALICE).await;
    for (action, fields) in forms {
        let page = alice.submit("/", action, fields).await;
        assert_eq!(page.status, 404, "{action} by a user");
    }
    assert_eq!(alice.get("/users/edit?name=bob").await.status, 404);
    // Nothing changed.
    let bob = server.running.store.user("bob").await.unwrap().unwrap();
    assert_eq!(bob.domains, ["bob.example"]);
    assert!(
        server
            .running
            .store
            .api_keys(Some("bob"))
            .await
            .unwrap()
            .is_empty()
    );
}
