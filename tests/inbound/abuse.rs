//! Abuse from one address must not deny service to another: an AUTH brute force from
//! 127.0.0.3 gets locked out (sequentially and in a parallel burst) while a
//! legitimate user on 127.0.0.2 still authenticates and sends; a connection flood
//! from one address beyond `max_connections_per_ip` gets `421` while another address
//! is served, and afterwards every slot is released.

use crate::support::common;

use common::*;
use outpost::config::ListenerMode;
use std::net::SocketAddr;
use tokio::time::Instant;

const ATTACKER: &str = "127.0.0.3:0";
const BURST_ATTACKER: &str = "127.0.0.4:0";
const LEGITIMATE: &str = "127.0.0.2:0";
/// `auth.max_failures` default.
const MAX_FAILURES: usize = 5;

fn local(addr: &str) -> SocketAddr {
    addr.parse().unwrap()
}

/// A TLS session from `from` on the submissions port that has sent EHLO.
async fn session_from(server: &Server, from: &str) -> Client {
    let mut client =
        Client::connect_from(local(from), server.addr(ListenerMode::Submissions)).await;
    client.start_tls_handshake().await;
    client.expect_greeting().await;
    client.ehlo().await;
    client
}

/// Waits (polling a condition, with a deadline) until the server holds no
/// connection slot.
async fn wait_for_no_connections(server: &Server) {
    let deadline = Instant::now() + DEADLINE;
    while server.running.active_connections() != 0 {
        assert!(
            Instant::now() < deadline,
            "{} connection slot(s) still held after every client left",
            server.running.active_connections()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn legitimate_user_sends(server: &Server) {
    let mut client = session_from(server, LEGITIMATE).await;
    client
        .expect(&auth_plain_command(USER, PASSWORD), "235 2.7.0")
        .await;
    let id = client
        .deliver(
            SENDER,
            &[REMOTE_RCPT],
            &message(SENDER, REMOTE_RCPT, "hi\r\n"),
        )
        .await;
    client.quit().await;
    assert_eq!(server.summary(&id).await.recipients.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_is_locked_out_while_another_address_authenticates() {
    let server = Server::start().await;
    let mut attacker = session_from(&server, ATTACKER).await;
    let mut failures = 0;
    let mut locked = false;
    for guess in 0..MAX_FAILURES + 3 {
        let reply = attacker
            .cmd(&auth_plain_command(USER, &format!("guess-{guess}")))
            .await;
        if reply.is("535 5.7.8") {
            failures += 1;
            continue;
        }
        reply.assert("421 4.7.0");
        locked = true;
        break;
    }
    assert!(locked, "never locked out after {failures} failures");
    assert_eq!(
        failures, MAX_FAILURES,
        "failures allowed before the lockout"
    );
    attacker.expect_closed().await;

    // The right password from the locked address is refused too.
    let mut again = session_from(&server, ATTACKER).await;
    again
        .expect(&auth_plain_command(USER, PASSWORD), "421 4.7.0")
        .await;

    legitimate_user_sends(&server).await;
    drop(again);
    drop(attacker);
    wait_for_no_connections(&server).await;
}

/// Many connections from one address guessing at the same moment must not get more
/// guesses than `max_failures` between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_do_not_exceed_the_failure_limit() {
    const PARALLEL: usize = 20;
    let server = Server::start().await;
    let mut clients = Vec::new();
    for _ in 0..PARALLEL {
        clients.push(session_from(&server, BURST_ATTACKER).await);
    }
    // Every guess is written before any reply is read.
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .send(format!(
                "{}\r\n",
                auth_plain_command(USER, &format!("p-{i}"))
            ))
            .await;
    }
    let mut refused_as_wrong = 0;
    for client in &mut clients {
        let reply = client.reply().await;
        if reply.is("535 5.7.8") {
            refused_as_wrong += 1;
        } else {
            reply.assert("421 4.7.0");
        }
    }
    assert!(
        refused_as_wrong <= MAX_FAILURES,
        "{refused_as_wrong} passwords were checked for one address in a burst; \
         the limit is {MAX_FAILURES}"
    );
    drop(clients);
    legitimate_user_sends(&server).await;
    wait_for_no_connections(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_gets_421_and_other_addresses_are_served() {
    const PER_IP: usize = 10;
    let server = Server::start_with(Options {
        limits: "max_connections_per_ip = 10",
        ..Options::default()
    })
    .await;
    let relay = server.addr(ListenerMode::Relay);
    let mut flood = Vec::new();
    for _ in 0..PER_IP {
        let mut c = Client::connect_from(local(ATTACKER), relay).await;
        c.expect_greeting().await;
        flood.push(c);
    }
    assert_eq!(server.running.active_connections(), PER_IP);
    // Beyond the limit, on every listener: 421 and a close.
    for _ in 0..3 * PER_IP {
        let mut c = Client::connect_from(local(ATTACKER), relay).await;
        c.reply().await.assert("421 4.7.0");
        c.expect_closed().await;
    }
    // Another address is served meanwhile, AUTH and all.
    legitimate_user_sends(&server).await;
    let mut other = Client::connect_from(local(LEGITIMATE), relay).await;
    other.expect_greeting().await;
    other.ehlo().await;
    other.quit().await;

    // The flood ends: every slot comes back.
    drop(flood);
    wait_for_no_connections(&server).await;
    let mut after = Client::connect_from(local(ATTACKER), relay).await;
    after.expect_greeting().await;
    after.quit().await;
    wait_for_no_connections(&server).await;
}
