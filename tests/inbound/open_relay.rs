//! Open-relay matrix: every listener mode × authenticated or not × trusted network
//! or not × envelope sender × recipient form. The expected outcome of every cell is
//! computed by [`expected`] from the relay rules of SPEC §1, written independently of
//! the server's code; the server must agree on every cell, and what it accepts must
//! be stored with the right recipient status (`local` for Outpost's own domains,
//! `queued` for relayed mail).

use crate::support::common;

use common::*;
use outpost::config::ListenerMode;
use outpost::store::RecipientStatus;

/// How the recipient's domain is to be judged.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    /// One of Outpost's local domains: anyone may send there; stored `local`.
    Local,
    /// Anywhere else: relaying, which needs permission.
    Foreign,
}

/// Recipient forms: (RCPT TO argument, where it really goes, stored address domain).
const RECIPIENTS: &[(&str, Target, &str)] = &[
    ("<user@foreign.example>", Target::Foreign, "foreign.example"),
    ("<user@FOREIGN.EXAMPLE>", Target::Foreign, "foreign.example"),
    (
        "<user@foreign.example.>",
        Target::Foreign,
        "foreign.example",
    ),
    ("<user@relay.test>", Target::Local, "relay.test"),
    ("<user@RELAY.Test>", Target::Local, "relay.test"),
    ("<user@relay.test.>", Target::Local, "relay.test"),
    // RFC 5321 §4.1.2: the source route is ignored; the mailbox is foreign.
    (
        "<@a.example:user@foreign.example>",
        Target::Foreign,
        "foreign.example",
    ),
    (
        "<@relay.test:user@foreign.example>",
        Target::Foreign,
        "foreign.example",
    ),
    (
        "<@a.example,@relay.test:user@foreign.example>",
        Target::Foreign,
        "foreign.example",
    ),
    // The percent hack and a quoted local part name a *local* mailbox: stored as
    // `local`, never relayed to foreign.example.
    (
        "<user%foreign.example@relay.test>",
        Target::Local,
        "relay.test",
    ),
    (
        "<\"user@foreign.example\"@relay.test>",
        Target::Local,
        "relay.test",
    ),
    (
        "<\"user%foreign.example\"@relay.test>",
        Target::Local,
        "relay.test",
    ),
    // Address literals are never local.
    ("<user@[192.0.2.1]>", Target::Foreign, "[192.0.2.1]"),
    ("<user@[127.0.0.1]>", Target::Foreign, "[127.0.0.1]"),
    ("<user@[IPv6:::1]>", Target::Foreign, "[IPv6:::1]"),
    // A local domain as a subdomain or prefix is not local.
    (
        "<user@relay.test.foreign.example>",
        Target::Foreign,
        "relay.test.foreign.example",
    ),
    ("<user@sub.relay.test>", Target::Foreign, "sub.relay.test"),
    (
        "<user@relay.test@foreign.example>",
        Target::Foreign,
        "foreign.example",
    ),
];

/// Envelope senders: alice's own domain, a local domain (a spoofing attempt for an
/// unauthenticated client), and a foreign domain.
const SENDERS: &[&str] = &[SENDER, "someone@relay.test", "someone@foreign.example"];

const MODES: &[ListenerMode] = &[
    ListenerMode::Relay,
    ListenerMode::Submission,
    ListenerMode::Submissions,
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// MAIL refused with this reply.
    MailRefused(&'static str),
    /// RCPT refused with this reply.
    RcptRefused(&'static str),
    /// Accepted and stored with this status.
    Stored(RecipientStatus),
    /// The address is malformed for a strict server (`501`/`553`): refused, never
    /// stored. Allowed only for forms a server may reasonably reject outright.
    Malformed,
}

/// The oracle: SPEC §1 relay rules.
fn expected(
    mode: ListenerMode,
    auth: bool,
    trusted: bool,
    sender: &str,
    target: Target,
) -> Outcome {
    if mode != ListenerMode::Relay && !auth {
        return Outcome::MailRefused("530 5.7.0");
    }
    if auth && !sender.ends_with(&format!("@{USER_DOMAIN}")) {
        return Outcome::MailRefused("550 5.7.1");
    }
    match target {
        Target::Local => Outcome::Stored(RecipientStatus::Local),
        Target::Foreign if auth || (mode == ListenerMode::Relay && trusted) => {
            Outcome::Stored(RecipientStatus::Queued)
        }
        Target::Foreign => Outcome::RcptRefused("554 5.7.1"),
    }
}

async fn session(server: &Server, mode: ListenerMode, auth: bool) -> Client {
    if auth {
        server.authenticated(mode).await
    } else {
        // Plaintext (implicit TLS on submissions), as an unauthenticated client or
        // a relaying MTA would connect.
        let mut client = server.connect(mode).await;
        client.ehlo().await;
        client
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cell_of_the_matrix_is_an_open_relay() {
    let mut failures = Vec::new();
    let mut cells = 0;
    for trusted in [false, true] {
        let server = if trusted {
            Server::start_with(Options::trusted()).await
        } else {
            Server::start().await
        };
        for &mode in MODES {
            for auth in [false, true] {
                for &sender in SENDERS {
                    // A session per sender keeps each under `limits.max_errors`.
                    let mut client = session(&server, mode, auth).await;
                    for &(rcpt, target, stored_domain) in RECIPIENTS {
                        cells += 1;
                        let want = expected(mode, auth, trusted, sender, target);
                        let cell = format!(
                            "mode={mode:?} auth={auth} trusted={trusted} from=<{sender}> rcpt={rcpt}"
                        );
                        let got = run_cell(&server, &mut client, sender, rcpt, stored_domain).await;
                        // A strict server may refuse an odd foreign form as malformed.
                        let ok =
                            got == want || (got == Outcome::Malformed && target == Target::Foreign);
                        if !ok {
                            failures.push(format!("{cell}: expected {want:?}, got {got:?}"));
                        }
                    }
                    client.quit().await;
                }
            }
        }
    }
    assert_eq!(cells, 2 * 3 * 2 * SENDERS.len() * RECIPIENTS.len());
    assert!(
        failures.is_empty(),
        "{} of {cells} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// One transaction: MAIL, RCPT, and DATA when the recipient was accepted. Leaves
/// the session ready for the next cell (RSET after a refusal).
async fn run_cell(
    server: &Server,
    client: &mut Client,
    sender: &str,
    rcpt: &str,
    stored_domain: &str,
) -> Outcome {
    let mail = client.cmd(&format!("MAIL FROM:<{sender}>")).await;
    if mail.code != 250 {
        return Outcome::MailRefused(code_of(&mail));
    }
    let reply = client.cmd(&format!("RCPT TO:{rcpt}")).await;
    if reply.code != 250 {
        client.expect("RSET", "250").await;
        return if reply.code == 501 || reply.code == 553 {
            Outcome::Malformed
        } else {
            Outcome::RcptRefused(code_of(&reply))
        };
    }
    client.expect("DATA", "354").await;
    client
        .send(dot_stuffed(&message(sender, "user@example", "hello\r\n")))
        .await;
    let id = client.reply().await.queue_id();
    let summary = server.summary(&id).await;
    assert_eq!(summary.recipients.len(), 1, "{summary:?}");
    let stored = &summary.recipients[0];
    let domain = stored.address.rsplit_once('@').map(|(_, d)| d);
    assert_eq!(
        domain,
        Some(stored_domain),
        "{rcpt} stored as {:?}",
        stored.address
    );
    Outcome::Stored(stored.status)
}

/// The reply code and enhanced code of a refusal, as a static string the oracle
/// can compare with.
fn code_of(reply: &Reply) -> &'static str {
    for known in ["530 5.7.0", "550 5.7.1", "554 5.7.1"] {
        if reply.is(known) {
            return known;
        }
    }
    Box::leak(reply.last().to_string().into_boxed_str())
}

#[test]
fn the_oracle_itself_refuses_unauthenticated_relaying() {
    // Guards the oracle: a typo there would make the matrix pass vacuously.
    for &mode in MODES {
        assert_ne!(
            expected(mode, false, false, "x@foreign.example", Target::Foreign),
            Outcome::Stored(RecipientStatus::Queued)
        );
    }
    assert_eq!(
        expected(
            ListenerMode::Submission,
            false,
            true,
            SENDER,
            Target::Foreign
        ),
        Outcome::MailRefused("530 5.7.0")
    );
    assert_eq!(
        expected(
            ListenerMode::Relay,
            false,
            true,
            "x@y.example",
            Target::Foreign
        ),
        Outcome::Stored(RecipientStatus::Queued)
    );
}
