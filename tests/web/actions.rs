//! The dashboard's forms: CSRF, suppressions, domains, the queue, users.

use super::*;

#[tokio::test]
async fn forms_without_the_csrf_token_are_refused() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(&sink, "1s").await;
    let mut alice = Browser::signed_in(&server, ALICE).await;
    let fields = [("domain", "alice.example"), ("address", "x@dest.example")];
    let page = alice.post("/suppressions", &fields).await;
    assert_eq!(page.status, 403);
    let page = alice
        .post("/suppressions", &[("csrf", "0000"), fields[0], fields[1]])
        .await;
    assert_eq!(page.status, 403);
    // A cross-site form arrives without the SameSite=Strict cookie: not signed in.
    let mut stranger = Browser::new(&server);
    let page = stranger.post("/suppressions", &fields).await;
    assert_eq!(page.status, 303);
    let listed: Value = reqwest::Client::new()
        .get(server.url("/v1/suppressions"))
        .basic_auth(ALICE.0, Some(ALICE.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["suppressions"], json!([]));
}

#[tokio::test]
async fn suppressions_are_added_searched_exported_imported_and_removed() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(&sink, "1s").await;
    let mut alice = Browser::signed_in(&server, ALICE).await;
    let page = alice
        .submit(
            "/suppressions",
            "/suppressions",
            &[
                ("domain", "alice.example"),
                ("address", "Gone@Dest.example"),
            ],
        )
        .await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/suppressions"))
    );
    alice
        .get("/suppressions")
        .await
        .assert_contains("gone@dest.example will no longer be mailed from alice.example");
    let api: Value = reqwest::Client::new()
        .get(server.url("/v1/suppressions"))
        .basic_auth(ALICE.0, Some(ALICE.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["suppressions"][0]["address"], "gone@dest.example");
    assert_eq!(api["suppressions"][0]["reason"], "manual");

    // Another tenant's list is not this user's to change.
    let page = alice
        .submit(
            "/suppressions",
            "/suppressions",
            &[("domain", "bob.example"), ("address", "a@b.example")],
        )
        .await;
    assert_eq!(page.status, 403);

    let csv = "domain,address,reason\nnews.alice.example,one@dest.example,imported\nalice.example,not-an-address,x\nbob.example,two@dest.example,\n";
    let page = alice
        .submit("/suppressions", "/suppressions/import", &[("csv", csv)])
        .await;
    assert_eq!(page.status, 303);
    let list = alice.get("/suppressions").await;
    list.assert_contains("1 address(es) added")
        .assert_contains("2 line(s) refused")
        .assert_contains("one@dest.example");
    let found = alice.get("/suppressions?q=gone").await;
    found.assert_contains("gone@dest.example");
    assert!(!found.body.contains(">one@dest.example"));
    let export = alice.get("/suppressions.csv").await;
    assert_eq!(export.status, 200);
    export
        .assert_contains("domain,address,reason,created_at")
        .assert_contains("alice.example,gone@dest.example,manual,")
        .assert_contains("news.alice.example,one@dest.example,imported,");

    let page = alice
        .submit(
            "/suppressions",
            "/suppressions/remove",
            &[
                ("domain", "alice.example"),
                ("address", "gone@dest.example"),
            ],
        )
        .await;
    assert_eq!(page.status, 303);
    assert!(
        !alice
            .get("/suppressions")
            .await
            .body
            .contains("gone@dest.example</td>")
    );
}

#[tokio::test]
async fn a_user_adds_a_granted_domain_and_sees_its_dkim_record() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(&sink, "1s").await;
    let mut alice = Browser::signed_in(&server, ALICE).await;
    alice
        .get("/domains")
        .await
        .assert_contains("<option>news.alice.example</option>");
    let page = alice
        .submit("/domains", "/domains", &[("domain", "news.alice.example")])
        .await;
    assert_eq!(page.status, 303);
    let domains = alice.get("/domains").await;
    domains
        .assert_contains("news.alice.example added with a new DKIM key")
        .assert_contains("._domainkey.news.alice.example")
        .assert_contains("v=DKIM1; k=rsa; p=")
        .assert_contains("_dmarc.news.alice.example")
        .assert_contains("data-copy=");
    // Not granted: refused. Bob does not see alice's domain.
    let page = alice
        .submit("/domains", "/domains", &[("domain", "bob.example")])
        .await;
    assert_eq!(page.status, 403);
    let mut bob = Browser::signed_in(&server, BOB).await;
    assert!(
        !bob.get("/domains")
            .await
            .body
            .contains("news.alice.example")
    );
    let page = bob
        .submit(
            "/domains",
            "/domains/remove",
            &[("domain", "news.alice.example")],
        )
        .await;
    assert_eq!(page.status, 404);
    // Mail from it is now signed, and the message page says so.
    let ids = server
        .send(ALICE, json!({"from": "a@news.alice.example", "to": ["x@dest.example"], "subject": "s", "text": "t"}))
        .await;
    server.wait_states(ALICE, &ids[0], &["delivered"]).await;
    alice
        .get(&format!("/messages/{}", ids[0]))
        .await
        .assert_contains(r#"<span class="badge ok">signed</span>"#);
    let page = alice
        .submit(
            "/domains",
            "/domains/remove",
            &[("domain", "news.alice.example")],
        )
        .await;
    assert_eq!(page.status, 303);
    alice
        .get("/domains")
        .await
        .assert_contains("news.alice.example removed");
}

#[tokio::test]
async fn a_deferred_message_is_retried_from_the_queue_page_and_delivered() {
    let sink = SmtpSink::builder()
        .rcpt_reply_times("later", "451 4.2.0 Mailbox busy, try later", 1)
        .start()
        .await;
    // A retry an hour away: only the button brings it forward.
    let server = Server::start(&sink, "1h").await;
    let ids = server
        .send(ALICE, json!({"from": "a@alice.example", "to": ["later@dest.example"], "subject": "s", "text": "t"}))
        .await;
    server.wait_states(ALICE, &ids[0], &["deferred"]).await;
    let mut alice = Browser::signed_in(&server, ALICE).await;
    let queue = alice.get("/queue").await;
    queue
        .assert_contains(r#"data-destination="dest.example""#)
        .assert_contains("later@dest.example")
        .assert_contains("451 4.2.0 Mailbox busy, try later");
    let overview = alice.get("/").await;
    assert_eq!(overview.stat("deferred"), 1);
    overview.assert_contains(r#"<strong data-stat="queue">1</strong>"#);
    // Bob cannot touch it.
    let mut bob = Browser::signed_in(&server, BOB).await;
    assert!(!bob.get("/queue").await.body.contains("later@dest.example"));
    let action = format!("retry-one:{}", ids[0]);
    let page = bob
        .submit("/queue", "/queue/action", &[("action", &action)])
        .await;
    assert_eq!(page.status, 404);

    let page = alice
        .submit("/queue", "/queue/action", &[("action", &action)])
        .await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/queue"))
    );
    alice
        .get("/queue")
        .await
        .assert_contains("will be tried again now");
    server.wait_states(ALICE, &ids[0], &["delivered"]).await;
    alice
        .get("/queue")
        .await
        .assert_contains("Nothing is waiting");
}

#[tokio::test]
async fn deleting_selected_messages_from_the_queue() {
    let sink = SmtpSink::builder()
        .rcpt_reply("later", "451 4.2.0 try later")
        .start()
        .await;
    let server = Server::start(&sink, "1h").await;
    let mut ids = Vec::new();
    for to in ["later1@dest.example", "later2@dest.example"] {
        let id = server
            .send(
                ALICE,
                json!({"from": "a@alice.example", "to": [to], "subject": "s", "text": "t"}),
            )
            .await;
        server.wait_states(ALICE, &id[0], &["deferred"]).await;
        ids.extend(id);
    }
    let mut alice = Browser::signed_in(&server, ALICE).await;
    let page = alice
        .submit(
            "/queue",
            "/queue/action",
            &[
                ("action", "delete-selected"),
                ("id", &ids[0]),
                ("id", &ids[1]),
            ],
        )
        .await;
    assert_eq!(page.status, 303);
    alice
        .get("/queue")
        .await
        .assert_contains("2 message(s) deleted");
    assert_eq!(
        alice.get(&format!("/messages/{}", ids[0])).await.status,
        404
    );
}

#[tokio::test]
async fn an_admin_adds_a_user_whose_password_is_shown_once() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(&sink, "1s").await;
    let mut root = Browser::signed_in(&server, ROOT).await;
    let page = root
        .submit(
            "/users",
            "/users",
            &[
                ("name", "dave"),
                ("domains", "dave.example, news.dave.example"),
            ],
        )
        .await;
    assert_eq!(page.status, 303);
    let users = root.get("/users").await;
    users.assert_contains("User dave added");
    let at =
        users.body.find(r#"<code class="secret">"#).unwrap() + r#"<code class="secret">"#.len();
    let password = users.body[at..at + users.body[at..].find('<').unwrap()].to_string();
    assert!(
        !root.get("/users").await.body.contains(&password),
        "shown only once"
    );
    let mut dave = Browser::new(&server);
    let page = dave.sign_in(("dave", &password)).await;
    assert_eq!(page.status, 303);
    dave.get("/domains")
        .await
        .assert_contains("dave.example, news.dave.example");

    // A reset ends dave's sessions; removal too.
    let page = root
        .submit("/users", "/users/password", &[("name", "dave")])
        .await;
    assert_eq!(page.status, 303);
    assert_eq!(dave.get("/").await.status, 303);
    let page = root
        .submit("/users", "/users/remove", &[("name", "dave")])
        .await;
    assert_eq!(page.status, 303);
    assert!(
        !root
            .get("/users")
            .await
            .body
            .contains(r#"data-user="dave""#)
    );
    // Users are not a user's business.
    let mut alice = Browser::signed_in(&server, ALICE).await;
    let page = alice
        .submit(
            "/",
            "/users",
            &[("name", "eve"), ("domains", "eve.example")],
        )
        .await;
    assert_eq!(page.status, 404);
}
