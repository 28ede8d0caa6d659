//! A satellite MTA (Postfix relaying through Outpost with SASL) logs in on many
//! connections from one address at once. More simultaneous logins than
//! `auth.max_failures` with the right password must all succeed: checks in progress
//! hold back a check beyond the limit until one ends instead of refusing it as a
//! lockout.

use crate::support::common;

use common::*;
use outpost::config::ListenerMode;

/// Over `auth.max_failures` (5 by default).
const PARALLEL: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_parallel_logins_than_the_failure_limit_all_succeed() {
    let server = Server::start().await;
    let mut clients = Vec::new();
    for _ in 0..PARALLEL {
        let mut client = Client::connect_from(
            "127.0.0.5:0".parse().unwrap(),
            server.addr(ListenerMode::Submissions),
        )
        .await;
        client.start_tls_handshake().await;
        client.expect_greeting().await;
        client.ehlo().await;
        clients.push(client);
    }
    // Every login is written before any reply is read.
    for client in &mut clients {
        client
            .send(format!("{}\r\n", auth_plain_command(USER, PASSWORD)))
            .await;
    }
    for client in &mut clients {
        client.reply().await.assert("235 2.7.0");
    }
}
