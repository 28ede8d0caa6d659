//! Inbound TLS and AUTH: STARTTLS and implicit TLS with a real client (lettre), AUTH
//! only over TLS, failed-AUTH throttling, and the STARTTLS injection class
//! (CVE-2011-0411).

use crate::support::common;

use common::*;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::response::Response;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor, address::Envelope};
use outpost::config::ListenerMode;
use outpost::store::{QueueId, RecipientStatus};
use std::net::SocketAddr;

/// Sends `content` as `alice` with lettre over `tls`, authenticating with `mechanism`.
async fn lettre_send(port: u16, tls: Tls, mechanism: Mechanism, content: &[u8]) -> Response {
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(tls)
        .credentials(Credentials::new(USER.into(), PASSWORD.into()))
        .authentication(vec![mechanism])
        .timeout(Some(DEADLINE))
        .build();
    let envelope = Envelope::new(
        Some(SENDER.parse().unwrap()),
        vec![REMOTE_RCPT.parse().unwrap()],
    )
    .unwrap();
    within("lettre send", transport.send_raw(&envelope, content))
        .await
        .expect("lettre delivers the message")
}

fn tls_parameters() -> TlsParameters {
    TlsParameters::builder(HOSTNAME.into())
        .dangerous_accept_invalid_certs(true)
        .build()
        .unwrap()
}

/// The queue id of lettre's view of `250 2.0.0 Ok: queued as <ID>`.
fn lettre_queue_id(response: &Response) -> QueueId {
    assert_eq!(response.code().to_string(), "250", "{response:?}");
    let lines: Vec<&str> = response.message().collect();
    let [line] = lines.as_slice() else {
        panic!("expected a one-line reply: {response:?}")
    };
    line.strip_prefix("2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("not a queued reply: {response:?}"))
        .parse()
        .unwrap()
}

/// Checks what the store holds for a message `alice` submitted over TLS with lettre,
/// which ends the data with `\r\n.\r\n` (so a final CRLF is added to `original`).
async fn assert_submitted(server: &Server, id: &QueueId, original: &[u8]) -> String {
    let summary = server.summary(id).await;
    assert_eq!(summary.mail_from, SENDER);
    assert_eq!(summary.auth_user.as_deref(), Some(USER));
    assert_eq!(summary.recipients.len(), 1);
    assert_eq!(summary.recipients[0].address, REMOTE_RCPT);
    assert_eq!(summary.recipients[0].status, RecipientStatus::Queued);
    let queued: Vec<QueueId> = server.queued().await.into_iter().map(|m| m.id).collect();
    assert_eq!(queued, std::slice::from_ref(id));
    let mut expected = original.to_vec();
    expected.extend_from_slice(b"\r\n");
    let added = added_headers(&server.content(id).await, &expected);
    assert!(
        added.contains(&format!("by {HOSTNAME} (Outpost) with ESMTPSA id {id}")),
        "{added}"
    );
    assert!(added.contains(&format!("for <{REMOTE_RCPT}>")), "{added}");
    added
}

#[tokio::test]
async fn starttls_and_auth_plain_on_submission_store_the_message_intact() {
    let server = Server::start().await;
    // No Date: or Message-ID:, a dot line, 8-bit text, trailing spaces and a tab:
    // everything must arrive byte for byte.
    let original = "From: Alice <alice@alice.example>\r\nTo: <rcpt@remote.example>\r\n\
                    Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMIME-Version: 1.0\r\n\
                    Content-Type: text/plain; charset=utf-8\r\n\r\n\
                    Grüße aus Köln   \r\n.\r\n..\r\n\tindented\r\n\r\nlast line"
        .as_bytes();
    let response = lettre_send(
        server.port(ListenerMode::Submission),
        Tls::Required(tls_parameters()),
        Mechanism::Plain,
        original,
    )
    .await;
    let id = lettre_queue_id(&response);
    let added = assert_submitted(&server, &id, original).await;
    // Submission adds the missing Date: and Message-ID: (RFC 6409 §8).
    assert_eq!(header_names(&added), ["Received", "Date", "Message-ID"]);
    assert!(
        added.contains(&format!("@{HOSTNAME}>\r\n")),
        "Message-ID is not at our host name: {added}"
    );
}

#[tokio::test]
async fn implicit_tls_and_auth_login_on_submissions() {
    let server = Server::start().await;
    let original = message(SENDER, REMOTE_RCPT, "over implicit TLS\r\nbye");
    let response = lettre_send(
        server.port(ListenerMode::Submissions),
        Tls::Wrapper(tls_parameters()),
        Mechanism::Login,
        &original,
    )
    .await;
    let id = lettre_queue_id(&response);
    let added = assert_submitted(&server, &id, &original).await;
    // The message had Date: and Message-ID: already.
    assert_eq!(header_names(&added), ["Received"]);
}

#[tokio::test]
async fn auth_is_neither_offered_nor_accepted_before_tls() {
    let server = Server::start().await;
    for mode in [ListenerMode::Submission, ListenerMode::Relay] {
        let mut client = server.connect(mode).await;
        let capabilities = client.ehlo().await;
        assert!(
            capabilities.has_line("STARTTLS"),
            "{mode:?}: {capabilities}"
        );
        assert!(
            !capabilities
                .lines
                .iter()
                .any(|l| l[4..].starts_with("AUTH")),
            "{mode:?}: AUTH offered in plaintext: {capabilities}"
        );
        // Valid credentials, still refused: no password crosses in the clear.
        client
            .expect(&auth_plain_command(USER, PASSWORD), "538 5.7.11")
            .await;
        client.expect("AUTH PLAIN", "538 5.7.11").await;
        client.expect("AUTH LOGIN", "538 5.7.11").await;

        client.starttls().await;
        let capabilities = client.ehlo().await;
        assert!(capabilities.has_line("AUTH PLAIN LOGIN"), "{capabilities}");
        assert!(!capabilities.has_line("STARTTLS"), "{capabilities}");
        client
            .expect(&auth_plain_command(USER, PASSWORD), "235 2.7.0")
            .await;
        // Once authenticated, AUTH is no longer offered.
        let capabilities = client.ehlo().await;
        assert!(!capabilities.has_line("AUTH PLAIN LOGIN"), "{capabilities}");
        client.quit().await;
    }

    let mut client = server.connect(ListenerMode::Submissions).await;
    let capabilities = client.ehlo().await;
    assert!(capabilities.has_line("AUTH PLAIN LOGIN"), "{capabilities}");
    assert!(!capabilities.has_line("STARTTLS"), "{capabilities}");
    client.expect("STARTTLS", "503 5.5.1").await;
}

#[tokio::test]
async fn wrong_password_gets_535_and_repeated_failures_lock_the_address_out() {
    // The throttle lives in the server: this test has a server of its own.
    let server = Server::start().await;
    let mut client = server.tls_session(ListenerMode::Submission).await;
    // Failures 1-4 with PLAIN: a wrong password, an unknown user, another wrong one.
    for (user, password) in [
        (USER, "wrong"),
        ("nobody", PASSWORD),
        (USER, ""),
        (USER, "Correct horse battery staple"),
    ] {
        client
            .expect(&auth_plain_command(user, password), "535 5.7.8")
            .await;
    }
    // Failure 5 with LOGIN.
    client.expect("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    client.expect(&b64(USER), "334 UGFzc3dvcmQ6").await;
    client.expect(&b64("guess"), "535 5.7.8").await;
    // Now even the right password is refused, and the connection is closed.
    client
        .expect(&auth_plain_command(USER, PASSWORD), "421 4.7.0")
        .await;
    client.expect_closed().await;

    // The lock is on the address, not the connection...
    let mut client = server.tls_session(ListenerMode::Submission).await;
    client
        .expect(&auth_plain_command(USER, PASSWORD), "421 4.7.0")
        .await;
    client.expect_closed().await;

    // ...and only on that address.
    let other_ip: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let mut client = Client::connect_from(other_ip, server.addr(ListenerMode::Submissions)).await;
    client.start_tls_handshake().await;
    client.expect_greeting().await;
    client.ehlo().await;
    client
        .expect(&auth_plain_command(USER, PASSWORD), "235 2.7.0")
        .await;
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    // A trusted client, so an injected MAIL would have been accepted.
    let server = Server::start_with(Options::trusted()).await;
    for injected in [
        "MAIL FROM:<evil@x>\r\n",
        "EHLO evil\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<postmaster@relay.test>\r\n",
    ] {
        let mut client = server.connect(ListenerMode::Relay).await;
        client.ehlo().await;
        client.send(format!("STARTTLS\r\n{injected}")).await;
        client.reply().await.assert("220 2.0.0");
        // Panics if any plaintext reply (to the injected commands) followed the 220.
        client.start_tls_handshake().await;
        // Had the injection run inside TLS, this would read its replies instead, or
        // find a transaction open.
        client
            .expect("RCPT TO:<postmaster@relay.test>", "503 5.5.1")
            .await;
        let ehlo = client.ehlo().await;
        assert!(
            ehlo.lines[0].starts_with(&format!("250-{HOSTNAME} Hello client.test ")),
            "{ehlo}"
        );
        client.expect("NOOP", "250 2.0.0").await;
        client.quit().await;
    }
    server.assert_nothing_queued().await;
}

#[tokio::test]
async fn starttls_resets_the_session() {
    let server = Server::start_with(Options::trusted()).await;
    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    client
        .expect(&format!("MAIL FROM:<{CLIENT_SENDER}>"), "250 2.1.0")
        .await;
    client.starttls().await;
    // The transaction opened before TLS is gone, and EHLO must be sent again.
    client
        .expect(&format!("RCPT TO:<{REMOTE_RCPT}>"), "503 5.5.1")
        .await;
    client
        .expect(&format!("MAIL FROM:<{CLIENT_SENDER}>"), "503 5.5.1")
        .await;
    client.ehlo().await;
    client
        .expect(&format!("MAIL FROM:<{CLIENT_SENDER}>"), "250 2.1.0")
        .await;
    client.quit().await;

    // On submission, AUTH too needs the new EHLO.
    let mut client = server.connect(ListenerMode::Submission).await;
    client.ehlo().await;
    client.starttls().await;
    client
        .expect(&auth_plain_command(USER, PASSWORD), "503 5.5.1")
        .await;
    client.ehlo().await;
    client
        .expect(&auth_plain_command(USER, PASSWORD), "235 2.7.0")
        .await;
}
