//! Limits (SPEC §2): message size declared and actual, recipients per message, command
//! line length, connections per client IP, and the command timeout. A client over a
//! limit gets a reply, never a hang.

use crate::support::common;

use common::*;
use outpost::config::ListenerMode;
use std::time::Duration;
use tokio::time::Instant;

/// A message of exactly `size` octets (CRLF line endings, ending in CRLF).
fn message_of_size(size: usize) -> Vec<u8> {
    let mut content = message(SENDER, REMOTE_RCPT, "");
    while size - content.len() >= 82 {
        content.extend_from_slice(&[b'x'; 78]);
        content.extend_from_slice(b"\r\n");
    }
    let rest = size - content.len();
    content.extend(std::iter::repeat_n(b'y', rest - 2));
    content.extend_from_slice(b"\r\n");
    assert_eq!(content.len(), size);
    content
}

#[tokio::test]
async fn declared_size_over_the_limit_is_refused_at_mail() {
    let server = Server::start().await;
    let mut client = server.authenticated(ListenerMode::Submission).await;
    let capabilities = client.ehlo().await;
    assert!(
        capabilities.has_line(&format!("SIZE {MAX_MESSAGE_SIZE}")),
        "{capabilities}"
    );
    client
        .expect(
            &format!("MAIL FROM:<{SENDER}> SIZE={}", MAX_MESSAGE_SIZE + 1),
            "552 5.3.4",
        )
        .await;
    client
        .expect(&format!("RCPT TO:<{REMOTE_RCPT}>"), "503 5.5.1")
        .await;
    client
        .expect(
            &format!("MAIL FROM:<{SENDER}> SIZE={MAX_MESSAGE_SIZE}"),
            "250 2.1.0",
        )
        .await;
    client.expect("RSET", "250 2.0.0").await;
    client.quit().await;
}

#[tokio::test]
async fn actual_size_over_the_limit_is_refused_after_the_data() {
    let server = Server::start().await;
    let mut client = server.authenticated(ListenerMode::Submission).await;

    let too_big = message_of_size(MAX_MESSAGE_SIZE + 1);
    client
        .send_mail(SENDER, &[REMOTE_RCPT], &too_big)
        .await
        .assert("552 5.3.4");
    server.assert_nothing_queued().await;

    // BDAT: one chunk over the limit, and two chunks that are only together.
    client.begin(SENDER, &[REMOTE_RCPT]).await;
    client.send_bdat(&too_big, true).await;
    client.reply().await.assert("552 5.3.4");
    client.begin(SENDER, &[REMOTE_RCPT]).await;
    let (first, second) = too_big.split_at(60_000);
    client.send_bdat(first, false).await;
    client.reply().await.assert("250 2.0.0");
    client.send_bdat(second, true).await;
    client.reply().await.assert("552 5.3.4");
    server.assert_nothing_queued().await;

    // Exactly at the limit is fine, in the same session.
    let at_limit = message_of_size(MAX_MESSAGE_SIZE);
    let id = client.deliver(SENDER, &[REMOTE_RCPT], &at_limit).await;
    client.quit().await;
    added_headers(&server.content(&id).await, &at_limit);
    assert_eq!(server.queued().await.len(), 1);
}

#[tokio::test]
async fn recipients_beyond_the_limit_get_452() {
    let server = Server::start().await;
    let mut client = server.authenticated(ListenerMode::Submission).await;
    client
        .expect(&format!("MAIL FROM:<{SENDER}>"), "250 2.1.0")
        .await;
    let rcpts: Vec<String> = (1..=MAX_RECIPIENTS + 2)
        .map(|i| format!("rcpt{i}@remote.example"))
        .collect();
    for rcpt in &rcpts[..MAX_RECIPIENTS] {
        client
            .expect(&format!("RCPT TO:<{rcpt}>"), "250 2.1.5")
            .await;
    }
    for rcpt in &rcpts[MAX_RECIPIENTS..] {
        client
            .expect(&format!("RCPT TO:<{rcpt}>"), "452 4.5.3")
            .await;
    }
    client.expect("DATA", "354").await;
    let original = message(SENDER, "undisclosed-recipients:;", "to five\r\n");
    client.send(dot_stuffed(&original)).await;
    let id = client.reply().await.queue_id();
    client.quit().await;

    let stored: Vec<String> = server
        .summary(&id)
        .await
        .recipients
        .into_iter()
        .map(|r| r.address)
        .collect();
    assert_eq!(stored, rcpts[..MAX_RECIPIENTS]);
}

#[tokio::test]
async fn overlong_command_line_gets_500_and_the_session_goes_on() {
    let server = Server::start().await;
    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    // 4096 octets including CRLF is the longest line accepted.
    let noop = |len: usize| format!("NOOP {}\r\n", "a".repeat(len - 7));
    client.send(noop(4096)).await;
    client.reply().await.assert("250 2.0.0");
    client.send(noop(4097)).await;
    client.reply().await.assert("500 5.5.2");
    // Longer than the server's read buffer, and sent in two writes.
    let huge = format!("MAIL FROM:<{}@relay.test>\r\n", "b".repeat(200_000));
    let (head, tail) = huge.split_at(70_000);
    client.send(head).await;
    client.send(tail).await;
    client.reply().await.assert("500 5.5.2");
    // Nothing of the long lines was executed; the session works normally.
    client
        .expect("RCPT TO:<postmaster@relay.test>", "503 5.5.1")
        .await;
    client.ehlo().await;
    client
        .deliver(
            CLIENT_SENDER,
            &["postmaster@relay.test"],
            b"Subject: after\r\n\r\nok\r\n",
        )
        .await;
    client.quit().await;
}

#[tokio::test]
async fn connections_beyond_the_per_ip_limit_get_421() {
    let server = Server::start_with(Options {
        limits: "max_connections_per_ip = 2",
        ..Options::default()
    })
    .await;
    let mut first = server.connect(ListenerMode::Relay).await;
    let mut second = server.connect(ListenerMode::Submission).await;
    // The limit counts every listener together.
    for mode in [ListenerMode::Relay, ListenerMode::Submission] {
        let mut third = Client::connect(server.addr(mode)).await;
        third.reply().await.assert("421 4.7.0");
        third.expect_closed().await;
    }
    // The first two are unaffected.
    first.expect("NOOP", "250 2.0.0").await;
    second.expect("NOOP", "250 2.0.0").await;

    // A slot is given back when its connection ends (shortly after the close the
    // client sees, hence the retries).
    first.quit().await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut client = Client::connect(server.addr(ListenerMode::Relay)).await;
        let greeting = client.reply().await;
        if greeting.code == 220 {
            client.ehlo().await;
            break;
        }
        greeting.assert("421 4.7.0");
        assert!(Instant::now() < deadline, "the slot was never released");
    }
}

#[tokio::test]
async fn silent_client_is_disconnected_with_421_after_the_command_timeout() {
    let server = Server::start_with(Options {
        limits: "command_timeout = \"1s\"",
        ..Options::default()
    })
    .await;
    for sent in ["", "EHLO half-a-comm"] {
        let mut client = server.connect(ListenerMode::Relay).await;
        let start = Instant::now();
        client.send(sent).await;
        client
            .reply_within(Duration::from_secs(5))
            .await
            .assert("421 4.4.2");
        assert!(
            start.elapsed() >= Duration::from_millis(900),
            "timed out after only {:?}",
            start.elapsed()
        );
        client.expect_closed().await;
    }
}
