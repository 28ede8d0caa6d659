//! Who may send what: no open relay (SPEC §1), trusted networks, Outpost's own
//! domains, and sender authorization for authenticated users (SPEC §2).

use crate::support::common;

use common::*;
use outpost::config::ListenerMode;
use outpost::store::RecipientStatus;

#[tokio::test]
async fn relay_port_refuses_to_relay_for_an_unauthenticated_client() {
    let server = Server::start().await;
    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    client
        .expect(&format!("MAIL FROM:<{CLIENT_SENDER}>"), "250 2.1.0")
        .await;
    client
        .expect(&format!("RCPT TO:<{REMOTE_RCPT}>"), "554 5.7.1")
        .await;
    // The user's sending domain is not one Outpost receives mail for.
    client
        .expect("RCPT TO:<someone@alice.example>", "554 5.7.1")
        .await;
    client.expect("DATA", "554 5.5.1").await;
    // TLS alone grants nothing.
    client.starttls().await;
    client.ehlo().await;
    client
        .expect(&format!("MAIL FROM:<{CLIENT_SENDER}>"), "250 2.1.0")
        .await;
    client
        .expect(&format!("RCPT TO:<{REMOTE_RCPT}>"), "554 5.7.1")
        .await;
    client.quit().await;
    server.assert_nothing_queued().await;
}

#[tokio::test]
async fn relay_port_accepts_mail_for_the_local_domain_without_auth() {
    let server = Server::start().await;
    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    // A bounce arriving for the return-path domain; no Date: nor Message-ID:.
    let original = b"From: <mailer-daemon@remote.example>\r\nSubject: bounce\r\n\r\nreport\r\n";
    let id = client
        .deliver(
            "",
            &["bounce+1@relay.test", "postmaster@RELAY.TEST", "postmaster"],
            original,
        )
        .await;
    // `<postmaster>` is accepted (RFC 5321 §4.5.1), the null path is not a recipient.
    client.expect("MAIL FROM:<>", "250 2.1.0").await;
    client.expect("RCPT TO:<>", "553 5.1.3").await;
    client.expect("RCPT TO:<PostMaster>", "250 2.1.5").await;
    client.expect("RSET", "250 2.0.0").await;
    client.quit().await;

    let summary = server.summary(&id).await;
    assert_eq!(summary.mail_from, "");
    assert_eq!(summary.auth_user, None);
    let recipients: Vec<(&str, RecipientStatus)> = summary
        .recipients
        .iter()
        .map(|r| (r.address.as_str(), r.status))
        .collect();
    assert_eq!(
        recipients,
        [
            ("bounce+1@relay.test", RecipientStatus::Local),
            ("postmaster@relay.test", RecipientStatus::Local),
            ("postmaster@relay.test", RecipientStatus::Local),
        ]
    );
    // Kept for processing, never queued for relaying.
    server.assert_nothing_queued().await;
    // Port 25 adds only the trace header; Date: and Message-ID: are submission's job.
    let added = added_headers(&server.content(&id).await, original);
    assert_eq!(header_names(&added), ["Received"]);
    assert!(
        added.contains(&format!("by {HOSTNAME} (Outpost) with ESMTP id {id}")),
        "{added}"
    );
}

#[tokio::test]
async fn submission_requires_auth_at_mail_even_from_a_trusted_network() {
    let server = Server::start_with(Options::trusted()).await;
    let mut client = server.connect(ListenerMode::Submission).await;
    client.ehlo().await;
    client
        .expect("MAIL FROM:<alice@alice.example>", "530 5.7.0")
        .await;
    client.starttls().await;
    client.ehlo().await;
    client
        .expect("MAIL FROM:<alice@alice.example>", "530 5.7.0")
        .await;
    client.quit().await;

    let mut client = server.tls_session(ListenerMode::Submissions).await;
    client
        .expect("MAIL FROM:<alice@alice.example>", "530 5.7.0")
        .await;
    client
        .expect("RCPT TO:<postmaster@relay.test>", "503 5.5.1")
        .await;
    client.quit().await;
    server.assert_nothing_queued().await;
}

#[tokio::test]
async fn trusted_network_may_relay_on_the_relay_port() {
    let server = Server::start_with(Options::trusted()).await;
    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    let original = message("app@client.example", REMOTE_RCPT, "from the app server\r\n");
    let id = client
        .deliver("app@client.example", &[REMOTE_RCPT], &original)
        .await;
    client.quit().await;

    let queued = server.queued().await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    let summary = &queued[0];
    assert_eq!(summary.id, id);
    assert_eq!(summary.mail_from, "app@client.example");
    assert_eq!(summary.auth_user, None);
    assert_eq!(summary.recipients.len(), 1);
    assert_eq!(summary.recipients[0].address, REMOTE_RCPT);
    assert_eq!(summary.recipients[0].status, RecipientStatus::Queued);
    added_headers(&server.content(&id).await, &original);
}

#[tokio::test]
async fn mail_from_outside_the_users_domains_is_refused() {
    let server = Server::start().await;
    let mut client = server.authenticated(ListenerMode::Submission).await;
    for sender in [
        "mallory@bob.example",
        // Subdomains are not implied.
        "alice@sub.alice.example",
        "alice@alice.example.evil",
        // The null sender has no domain.
        "",
    ] {
        client
            .expect(&format!("MAIL FROM:<{sender}>"), "550 5.7.1")
            .await;
        // No transaction was opened.
        client
            .expect(&format!("RCPT TO:<{REMOTE_RCPT}>"), "503 5.5.1")
            .await;
    }
    // Domains compare case-insensitively; the session is still usable.
    client
        .expect("MAIL FROM:<Alice@ALICE.Example>", "250 2.1.0")
        .await;
    client.expect("RSET", "250 2.0.0").await;
    client.quit().await;
    server.assert_nothing_queued().await;
}

#[tokio::test]
async fn from_header_outside_the_users_domains_is_refused_after_data() {
    let server = Server::start().await;
    let mut client = server.authenticated(ListenerMode::Submission).await;
    for from_header in [
        "Bob <bob@bob.example>",
        "alice@alice.example, bob@bob.example",
        "\"alice@alice.example\" <bob@bob.example>",
    ] {
        let content = format!("From: {from_header}\r\nSubject: spoof\r\n\r\nhi\r\n");
        client
            .send_mail(SENDER, &[REMOTE_RCPT], content.as_bytes())
            .await
            .assert("550 5.7.1");
    }
    server.assert_nothing_queued().await;

    // The same session can still send as itself.
    let original = message(SENDER, REMOTE_RCPT, "genuine\r\n");
    let id = client.deliver(SENDER, &[REMOTE_RCPT], &original).await;
    client.quit().await;
    let queued: Vec<_> = server.queued().await.into_iter().map(|m| m.id).collect();
    assert_eq!(queued, [id]);
}
