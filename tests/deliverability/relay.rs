//! Deliverability through the running relay: DKIM signatures on relayed mail verify
//! with mail-auth's verifier (its resolver pointed at a FakeDns serving the records
//! `outpost domain dns` publishes), unregistered domains are not signed, and a
//! `550 5.1.1` suppresses the address so the next message to it is not attempted.

use crate::support::common;
use crate::support::fakes;

use common::{CLIENT_SENDER, Client, DEADLINE, HOSTNAME, start_config, within};
use fakes::dns::FakeDns;
use fakes::sink::SmtpSink;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::common::crypto::Algorithm;
use mail_auth::dkim::Canonicalization;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use outpost::config::ListenerMode;
use outpost::server::Running;
use outpost::store::RecipientStatus;
use std::time::Duration;
use tempfile::TempDir;

/// A relay that delivers everything to `sink` and trusts loopback clients;
/// `relay_keys` go into its `[relay]` table and `more` after the rest.
pub(crate) async fn relay_to(sink: &SmtpSink, relay_keys: &str, more: &str) -> (Running, TempDir) {
    let dir = tempfile::tempdir().expect("data directory");
    let text = format!(
        r#"
hostname = "{HOSTNAME}"
data_dir = "{dir}"
[[listeners]]
addr = "127.0.0.1:0"
mode = "relay"
[relay]
trusted_networks = ["127.0.0.0/8"]
{relay_keys}
[http]
addr = "127.0.0.1:0"
[delivery]
retry = ["1m"]
[[routes]]
domain = "*"
to = "127.0.0.1:{port}"
tls = "none"
{more}
"#,
        dir = dir.path().display(),
        port = sink.port(),
    );
    (start_config(&text).await, dir)
}

pub(crate) async fn send(
    running: &Running,
    from: &str,
    rcpts: &[&str],
    content: &[u8],
) -> outpost::store::QueueId {
    let mut client = Client::connect(running.addr(ListenerMode::Relay).unwrap()).await;
    client.expect_greeting().await;
    client.ehlo().await;
    let id = client.deliver(from, rcpts, content).await;
    client.quit().await;
    id
}

/// A verifier whose DNS is `dns`.
fn verifier(dns: &FakeDns) -> MessageAuthenticator {
    let mut udp = ConnectionConfig::udp();
    udp.port = dns.addr().port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = dns.addr().port();
    let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
        dns.addr().ip(),
        true,
        vec![udp, tcp],
    )]);
    let resolver = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .build()
        .expect("resolver");
    MessageAuthenticator(resolver)
}

/// The zone publishing `domain`'s records as `outpost domain dns` prints them.
fn zone_for(domain: &outpost::store::SendingDomain) -> String {
    outpost::dkim::records::records(domain, HOSTNAME, &[], HOSTNAME)
        .iter()
        .filter(|r| r.rtype == "TXT")
        .map(|r| format!("{} TXT \"{}\"\n", r.name, r.value))
        .collect()
}

const LONG: usize = 990;

fn messages() -> Vec<(&'static str, Vec<u8>)> {
    let long_line = "x".repeat(LONG);
    vec![
        (
            "8-bit with list headers",
            "From: News <news@signed.example>\r\nTo: a@remote.example\r\nCc: b@remote.example\r\nReply-To: help@signed.example\r\nSubject: Gr\u{fc}\u{df}e\r\nDate: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <m1@signed.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\nList-Unsubscribe: <https://signed.example/u/1>, <mailto:u@signed.example>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nGr\u{fc}\u{df}e aus K\u{f6}ln \u{2014} \u{e9}t\u{e9}\r\n  trailing spaces   \r\n\r\n\r\n"
                .as_bytes()
                .to_vec(),
        ),
        (
            "long lines",
            format!("From: news@signed.example\r\nTo: a@remote.example\r\nSubject: long\r\nDate: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <m2@signed.example>\r\n\r\n{long_line}\r\n.leading dot\r\n{long_line}\r\n").into_bytes(),
        ),
        (
            "multipart",
            "From: news@signed.example\r\nTo: a@remote.example\r\nSubject: multipart\r\nDate: Sat, 28 Nov 2026 07:00:00 +0000\r\nMessage-ID: <m3@signed.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain \u{263a}\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html \u{263a}</p>\r\n--b1--\r\n"
                .as_bytes()
                .to_vec(),
        ),
    ]
}

#[tokio::test]
async fn relayed_mail_is_signed_and_verifies_with_rsa_and_ed25519() {
    let sink = SmtpSink::start_default().await;
    let (running, _dir) = relay_to(&sink, "", "").await;
    let domain = outpost::dkim::generate("signed.example", true, chrono::Utc::now()).unwrap();
    running.store.add_domain(domain.clone()).await.unwrap();
    let dns = FakeDns::start(&zone_for(&domain)).await;
    let verifier = verifier(&dns);

    let cases = messages();
    for (_, content) in &cases {
        send(&running, CLIENT_SENDER, &["a@remote.example"], content).await;
    }
    // Unregistered From: domain: relayed, not signed.
    send(
        &running,
        CLIENT_SENDER,
        &["a@remote.example"],
        b"From: x@unregistered.example\r\nTo: a@remote.example\r\nSubject: no\r\n\r\nhi\r\n",
    )
    .await;
    let received = sink.wait_for_messages(cases.len() + 1, DEADLINE).await;
    for (name, content) in &cases {
        let subject_line = content
            .split(|b| *b == b'\n')
            .find(|l| l.starts_with(b"Message-ID"))
            .unwrap();
        let got = received
            .iter()
            .find(|m| {
                m.data
                    .windows(subject_line.len())
                    .any(|w| w == subject_line)
            })
            .unwrap_or_else(|| panic!("{name}: not delivered"));
        let text = got.text();
        assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{name}: {text}");
        let message = AuthenticatedMessage::parse(&got.data).expect("parsable");
        let results = within("DKIM verification", verifier.verify_dkim(&message)).await;
        assert_eq!(results.len(), 2, "{name}");
        let mut algorithms = Vec::new();
        for r in &results {
            assert_eq!(r.result(), &DkimResult::Pass, "{name}: {:?}", r.result());
            let sig = r.signature().unwrap();
            assert_eq!(sig.d, "signed.example");
            assert_eq!(
                (sig.ch, sig.cb),
                (Canonicalization::Relaxed, Canonicalization::Relaxed)
            );
            algorithms.push(sig.a);
            for h in ["from", "to", "subject", "date", "message-id"] {
                assert!(
                    sig.h.iter().any(|s| s.eq_ignore_ascii_case(h)),
                    "{name}: {h} not signed"
                );
            }
            if *name == "8-bit with list headers" {
                for h in [
                    "cc",
                    "reply-to",
                    "list-unsubscribe",
                    "list-unsubscribe-post",
                    "mime-version",
                    "content-type",
                ] {
                    assert!(
                        sig.h.iter().any(|s| s.eq_ignore_ascii_case(h)),
                        "{name}: {h} not signed"
                    );
                }
            }
        }
        assert!(
            algorithms.contains(&Algorithm::RsaSha256)
                && algorithms.contains(&Algorithm::Ed25519Sha256)
        );
    }
    let unsigned = received
        .iter()
        .find(|m| m.text().contains("unregistered.example"))
        .unwrap();
    assert!(
        !unsigned.text().contains("DKIM-Signature"),
        "unregistered domains are not signed"
    );

    // A tampered copy must fail: the verifier is not passing everything.
    let mut tampered = received[0].data.clone();
    let pos = tampered.len() - 3;
    tampered[pos] ^= 0x01;
    let message = AuthenticatedMessage::parse(&tampered).unwrap();
    let results = verifier.verify_dkim(&message).await;
    assert!(
        results.iter().all(|r| r.result() != &DkimResult::Pass),
        "{results:?}"
    );
}

/// Waits (bounded) until `check` returns `Some`.
pub(crate) async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    within(what, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn permanent_bad_mailbox_bounce_suppresses_the_next_message() {
    let sink = SmtpSink::builder()
        .rcpt_reply_exact(
            "gone@remote.example",
            "550 5.1.1 <gone@remote.example>: Recipient address rejected: User unknown",
        )
        .rcpt_reply_exact("full@remote.example", "552 5.2.2 Mailbox full")
        .start()
        .await;
    let (running, _dir) = relay_to(&sink, "", "").await;
    let store = running.store.clone();
    let body = b"From: s@client.example\r\nTo: x@remote.example\r\nSubject: one\r\n\r\nhi\r\n";
    let first = send(
        &running,
        CLIENT_SENDER,
        &[
            "gone@remote.example",
            "full@remote.example",
            "ok@remote.example",
        ],
        body,
    )
    .await;
    sink.wait_for_messages(1, DEADLINE).await;
    let summary = eventually("first message final", || {
        let store = store.clone();
        let first = first.clone();
        async move {
            let s = store.message(&first).await.unwrap()?;
            s.recipients
                .iter()
                .all(|r| r.status.is_final())
                .then_some(s)
        }
    })
    .await;
    let class_of = |addr: &str| {
        summary
            .recipients
            .iter()
            .find(|r| r.address == addr)
            .unwrap()
            .last_class
            .clone()
    };
    assert_eq!(
        class_of("gone@remote.example").as_deref(),
        Some("bad-mailbox")
    );
    assert_eq!(
        class_of("full@remote.example").as_deref(),
        Some("mailbox-full")
    );
    assert_eq!(class_of("ok@remote.example"), None);
    let suppression = eventually("suppression added", || {
        let store = store.clone();
        async move {
            store
                .suppression("client.example", "gone@remote.example")
                .await
                .unwrap()
        }
    })
    .await;
    assert!(
        suppression.reason.contains("5.1.1"),
        "{}",
        suppression.reason
    );
    assert!(
        store
            .suppression("client.example", "full@remote.example")
            .await
            .unwrap()
            .is_none(),
        "a full mailbox is not suppressed"
    );
    // Per sending domain: another sender domain still mails the address.
    assert!(
        store
            .suppression("other.example", "gone@remote.example")
            .await
            .unwrap()
            .is_none()
    );

    let rcpts_before = sink.rcpt_attempts().len();
    let second = send(
        &running,
        CLIENT_SENDER,
        &["gone@remote.example", "ok@remote.example"],
        body,
    )
    .await;
    sink.wait_for_messages(2, DEADLINE).await;
    let summary = eventually("second message final", || {
        let store = store.clone();
        let second = second.clone();
        async move {
            let s = store.message(&second).await.unwrap()?;
            s.recipients
                .iter()
                .all(|r| r.status.is_final())
                .then_some(s)
        }
    })
    .await;
    let gone = &summary.recipients[0];
    assert_eq!(gone.status, RecipientStatus::Suppressed);
    assert!(
        gone.last_reply
            .as_deref()
            .unwrap()
            .contains("suppression list"),
        "{gone:?}"
    );
    assert_eq!(summary.recipients[1].status, RecipientStatus::Delivered);
    let new_rcpts: Vec<String> = sink.rcpt_attempts()[rcpts_before..]
        .iter()
        .map(|r| r.address.clone())
        .collect();
    assert_eq!(
        new_rcpts,
        vec!["ok@remote.example".to_string()],
        "no RCPT for the suppressed address"
    );
    let events = store.events(0, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == outpost::store::EventKind::Suppressed
                && e.recipient.as_deref() == Some("gone@remote.example"))
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == outpost::store::EventKind::Bounced
                && e.class.as_deref() == Some("bad-mailbox"))
    );
}

#[tokio::test]
async fn only_senders_who_may_relay_get_signatures() {
    let server = common::Server::start().await;
    let domain = outpost::dkim::generate(common::USER_DOMAIN, false, chrono::Utc::now()).unwrap();
    server.running.store.add_domain(domain).await.unwrap();
    let content = format!(
        "From: {}\r\nTo: postmaster@{HOSTNAME}\r\nSubject: hi\r\n\r\nhello\r\n",
        common::SENDER
    );
    // A stranger on the relay port, writing to a local address with a forged From:.
    let mut stranger = server.connect(ListenerMode::Relay).await;
    stranger.ehlo().await;
    let forged = stranger
        .deliver(
            "x@stranger.example",
            &[&format!("postmaster@{HOSTNAME}")],
            content.as_bytes(),
        )
        .await;
    let stored = String::from_utf8(server.content(&forged).await).unwrap();
    assert!(!stored.contains("DKIM-Signature"), "{stored}");
    // The domain's own authenticated user.
    let mut user = server.authenticated(ListenerMode::Submission).await;
    let id = user
        .deliver(common::SENDER, &["rcpt@remote.example"], content.as_bytes())
        .await;
    let stored = String::from_utf8(server.content(&id).await).unwrap();
    assert!(stored.starts_with("DKIM-Signature:"), "{stored}");
    assert!(
        stored.contains(&format!("d={}", common::USER_DOMAIN)),
        "{stored}"
    );
}
