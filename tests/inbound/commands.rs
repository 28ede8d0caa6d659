//! The small commands (SPEC §2): VRFY and EXPN never reveal users, NOOP, RSET, HELP,
//! unknown commands, and the order EHLO → MAIL → RCPT → DATA.

use crate::support::common;

use common::*;
use outpost::config::ListenerMode;

#[tokio::test]
async fn informational_commands_reply_without_revealing_anything() {
    let server = Server::start().await;
    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    // The same answer for an existing user, an address and nonsense.
    let vrfy = client.expect("VRFY alice", "252 2.5.2").await;
    for other in ["VRFY alice@alice.example", "VRFY nobody-here"] {
        assert_eq!(client.cmd(other).await.lines, vrfy.lines, "{other}");
    }
    client.expect("EXPN staff", "502 5.5.1").await;
    client.expect("NOOP", "250 2.0.0").await;
    client.expect("NOOP anything at all", "250 2.0.0").await;
    client.expect("RSET", "250 2.0.0").await;
    client.expect("HELP", "214 2.0.0").await;
    client.expect("HELP MAIL", "214 2.0.0").await;
    client.expect("FROB", "500 5.5.1").await;
    client.expect("MAILFROM:<a@b.example>", "500 5.5.1").await;
    client.quit().await;
}

#[tokio::test]
async fn commands_out_of_order_get_503_and_rset_discards_the_transaction() {
    let server = Server::start().await;
    let mut client = server.connect(ListenerMode::Relay).await;
    client
        .expect(&format!("MAIL FROM:<{CLIENT_SENDER}>"), "503 5.5.1")
        .await;
    client.expect("HELO client.test", "250").await;
    client.expect("DATA", "503 5.5.1").await;
    client
        .expect("RCPT TO:<postmaster@relay.test>", "503 5.5.1")
        .await;
    client
        .expect(&format!("MAIL FROM:<{CLIENT_SENDER}>"), "250 2.1.0")
        .await;
    client
        .expect(&format!("MAIL FROM:<{CLIENT_SENDER}>"), "503 5.5.1")
        .await;
    client.expect("DATA", "554 5.5.1").await;
    client
        .expect("RCPT TO:<postmaster@relay.test>", "250 2.1.5")
        .await;
    client.expect("RSET", "250 2.0.0").await;
    client
        .expect("RCPT TO:<postmaster@relay.test>", "503 5.5.1")
        .await;
    client.expect("DATA", "503 5.5.1").await;
    client.quit().await;
    server.assert_nothing_queued().await;
}
