//! Delivery end to end, routing (SPEC §4): MX lookup through a real DNS server on
//! loopback, implicit MX, null MX, NXDOMAIN and SERVFAIL, falling back to the next
//! MX, the outbound TLS policies, and `[[routes]]` (plain and smart host with AUTH).
//! Mail is submitted to the real server and read back from scriptable SMTP sinks.

use crate::support::common;
use crate::support::delivery as delivery_support;
use crate::support::fakes;

use delivery_support::{Relay, SENDER, Setup, WAIT, assert_intact, listening, mail, with_marker};
use fakes::dns::FakeDns;
use fakes::sink::{SmtpSink, Tls};
use outpost::store::RecipientStatus::{Bounced, Deferred, Delivered};
use std::net::SocketAddr;

/// `domain` has one MX, `mx.<domain>`, at 127.0.0.1.
fn mx_zone(domain: &str) -> String {
    format!("{domain} MX 10 mx.{domain}\nmx.{domain} A 127.0.0.1\n")
}

async fn relay(dns: &FakeDns, sink: &SmtpSink) -> Relay {
    Setup::new(dns, sink.port()).start().await
}

#[tokio::test(flavor = "multi_thread")]
async fn delivered_byte_exact_through_mx() {
    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start(&mx_zone("dest.test")).await;
    let relay = relay(&dns, &sink).await;
    let original = mail(SENDER, "bob@dest.test", "mx-intact");
    let id = relay.submit(SENDER, &["bob@dest.test"], &original).await;

    let received = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(received.len(), 1, "{received:#?}");
    let got = &received[0];
    assert_eq!(
        common::return_path_message(&got.mail_from),
        Some(id.to_string())
    );
    assert_eq!(got.rcpt_to, ["bob@dest.test"]);
    assert_eq!(
        got.helo,
        common::HOSTNAME,
        "EHLO names the relay's hostname"
    );
    assert_intact(got, &original);
    let summary = relay.wait_statuses(&id, &[Delivered]).await;
    assert!(
        summary.recipients[0]
            .last_reply
            .as_deref()
            .is_some_and(|r| r.starts_with("250")),
        "{summary:#?}"
    );
    let log = dns.query_log();
    assert!(log.contains(&"MX dest.test".to_string()), "{log:?}");
    assert!(
        log.iter().any(|q| q.ends_with(" mx.dest.test")),
        "the exchange's address was looked up: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn implicit_mx_uses_the_domains_address() {
    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start("nomx.test A 127.0.0.1\n").await;
    let relay = relay(&dns, &sink).await;
    let original = mail(SENDER, "bob@nomx.test", "implicit-mx");
    let id = relay.submit(SENDER, &["bob@nomx.test"], &original).await;
    let received = sink.wait_for_messages(1, WAIT).await;
    assert_intact(&received[0], &original);
    relay.wait_statuses(&id, &[Delivered]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn null_mx_bounces_without_connecting() {
    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start("nullmx.test MX 0 .\nnullmx.test A 127.0.0.1\n").await;
    let relay = relay(&dns, &sink).await;
    let id = relay
        .submit(
            SENDER,
            &["bob@nullmx.test"],
            &mail(SENDER, "bob@nullmx.test", "null-mx"),
        )
        .await;
    let summary = relay.wait_statuses(&id, &[Bounced]).await;
    let reply = summary.recipients[0].last_reply.clone().unwrap_or_default();
    assert!(reply.contains("5.1.10"), "null MX reply: {reply}");
    // The bounce report reaches the sender; the null-MX domain is never contacted.
    relay.returns.wait_for_messages(1, WAIT).await;
    assert_eq!(sink.connections(), 0, "connected despite the null MX");
    let log = dns.query_log();
    assert!(
        !log.iter()
            .any(|q| q.starts_with("A nullmx.test") || q.starts_with("AAAA nullmx.test")),
        "looked up an address of a null-MX domain: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nxdomain_bounces_and_servfail_defers() {
    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start("broken.test SERVFAIL\n").await;
    let relay = relay(&dns, &sink).await;
    let nx = relay
        .submit(
            SENDER,
            &["bob@nx.test"],
            &mail(SENDER, "bob@nx.test", "nxdomain"),
        )
        .await;
    let servfail = relay
        .submit(
            SENDER,
            &["bob@broken.test"],
            &mail(SENDER, "bob@broken.test", "servfail"),
        )
        .await;

    let summary = relay.wait_statuses(&nx, &[Bounced]).await;
    let reply = summary.recipients[0].last_reply.clone().unwrap_or_default();
    assert!(reply.starts_with("5"), "NXDOMAIN reply: {reply}");
    assert!(
        reply.contains("nx.test"),
        "the reply names the domain: {reply}"
    );

    let summary = relay.wait_statuses(&servfail, &[Deferred]).await;
    let rcpt = &summary.recipients[0];
    let reply = rcpt.last_reply.clone().unwrap_or_default();
    assert!(reply.starts_with("4"), "SERVFAIL reply: {reply}");
    assert!(
        rcpt.next_attempt > chrono::Utc::now().timestamp_millis() + 60_000,
        "a SERVFAIL is retried on the schedule (5m), not at once: {rcpt:?}"
    );
    assert_eq!(sink.connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn falls_back_to_the_next_mx() {
    let sink = SmtpSink::start_default().await;
    // The preferred MX is 127.0.0.2 on the same port, where nothing listens.
    let dead: SocketAddr = ([127, 0, 0, 2], sink.port()).into();
    assert!(!listening(dead).await, "something listens on {dead}");
    let dns = FakeDns::start(
        "fallback.test MX 10 mx1.fallback.test\n\
         fallback.test MX 20 mx2.fallback.test\n\
         mx1.fallback.test A 127.0.0.2\n\
         mx2.fallback.test A 127.0.0.1\n",
    )
    .await;
    let relay = relay(&dns, &sink).await;
    let original = mail(SENDER, "bob@fallback.test", "mx-fallback");
    let id = relay
        .submit(SENDER, &["bob@fallback.test"], &original)
        .await;
    let received = sink.wait_for_messages(1, WAIT).await;
    assert_intact(&received[0], &original);
    relay.wait_statuses(&id, &[Delivered]).await;
    let log = dns.query_log();
    let first = log.iter().position(|q| q.ends_with(" mx1.fallback.test"));
    let second = log.iter().position(|q| q.ends_with(" mx2.fallback.test"));
    assert!(
        matches!((first, second), (Some(a), Some(b)) if a < b),
        "the lower preference was tried first: {log:?}"
    );
}

/// Delivers one message to `tls.test` under `delivery.tls = policy`; returns the
/// relay and the message's id.
async fn deliver_with_tls(
    policy: &str,
    sink: &SmtpSink,
    dns: &FakeDns,
) -> (Relay, outpost::store::QueueId) {
    let relay = Setup::new(dns, sink.port())
        .delivery(&format!("tls = \"{policy}\""))
        .start()
        .await;
    let id = relay
        .submit(
            SENDER,
            &["bob@tls.test"],
            &mail(SENDER, "bob@tls.test", policy),
        )
        .await;
    (relay, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_required_without_starttls_defers() {
    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start(&mx_zone("tls.test")).await;
    let (relay, id) = deliver_with_tls("required", &sink, &dns).await;
    let summary = relay.wait_statuses(&id, &[Deferred]).await;
    let reply = summary.recipients[0].last_reply.clone().unwrap_or_default();
    assert!(reply.starts_with("4"), "{reply}");
    assert!(reply.contains("TLS"), "the reason names TLS: {reply}");
    assert!(
        sink.attempts().is_empty(),
        "sent in plaintext: {:#?}",
        sink.attempts()
    );
    assert!(
        !sink.commands().iter().any(|c| c.line.starts_with("MAIL")),
        "started a transaction in plaintext"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_opportunistic_uses_starttls_when_offered() {
    let sink = SmtpSink::builder().starttls(Tls::SelfSigned).start().await;
    let dns = FakeDns::start(&mx_zone("tls.test")).await;
    let (relay, id) = deliver_with_tls("opportunistic", &sink, &dns).await;
    let received = sink.wait_for_messages(1, WAIT).await;
    assert!(received[0].tls, "delivered without TLS: {:#?}", received[0]);
    relay.wait_statuses(&id, &[Delivered]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_verify_rejects_a_self_signed_certificate() {
    let sink = SmtpSink::builder().starttls(Tls::SelfSigned).start().await;
    let dns = FakeDns::start(&mx_zone("tls.test")).await;
    let (relay, id) = deliver_with_tls("verify", &sink, &dns).await;
    let summary = relay.wait_statuses(&id, &[Deferred]).await;
    let reply = summary.recipients[0].last_reply.clone().unwrap_or_default();
    assert!(reply.starts_with("4") && reply.contains("TLS"), "{reply}");
    assert!(
        sink.attempts().is_empty(),
        "delivered to an unverified server"
    );
    assert!(
        sink.commands().iter().any(|c| c.line == "STARTTLS"),
        "never tried STARTTLS"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn route_bypasses_dns() {
    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start("").await;
    // mx_port points nowhere useful: only the route can reach the sink.
    let relay = Setup::new(&dns, 9)
        .toml(&format!(
            "[[routes]]\ndomain = \"routed.test\"\nto = \"127.0.0.1:{}\"\ntls = \"none\"\n",
            sink.port()
        ))
        .start()
        .await;
    let original = mail(SENDER, "bob@routed.test", "routed");
    let id = relay.submit(SENDER, &["bob@routed.test"], &original).await;
    let received = sink.wait_for_messages(1, WAIT).await;
    assert_intact(&received[0], &original);
    relay.wait_statuses(&id, &[Delivered]).await;
    let log = dns.query_log();
    assert!(
        !log.iter().any(|q| q.contains("routed.test")),
        "a routed domain was looked up in DNS: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn smart_host_with_auth_over_starttls() {
    let sink = SmtpSink::builder()
        .starttls(Tls::SelfSigned)
        .require_auth("relay-user", "relay secret")
        .start()
        .await;
    let dns = FakeDns::start("").await;
    let relay = Setup::new(&dns, 9)
        .toml(&format!(
            "[[routes]]\ndomain = \"smart.test\"\nto = \"127.0.0.1:{}\"\n\
             username = \"relay-user\"\npassword = \"relay secret\"\n",
            sink.port()
        ))
        .start()
        .await;
    let original = mail(SENDER, "bob@smart.test", "smart-host");
    let id = relay.submit(SENDER, &["bob@smart.test"], &original).await;
    let received = sink.wait_for_messages(1, WAIT).await;
    let got = &received[0];
    assert_eq!(got.auth_user.as_deref(), Some("relay-user"));
    assert!(got.tls, "credentials or mail went without TLS");
    assert_intact(got, &original);
    assert!(
        sink.commands()
            .iter()
            .filter(|c| c.line.starts_with("AUTH"))
            .all(|c| c.tls),
        "AUTH was sent in plaintext: {:#?}",
        sink.commands()
    );
    relay.wait_statuses(&id, &[Delivered]).await;
    assert_eq!(with_marker(&sink.messages(), "smart-host").len(), 1);
}

/// An MX lookup that is never answered costs the resolver's timeouts (5 s, two
/// attempts) before it fails. Retries for other domains must not queue up behind
/// those lookups: here three messages for a domain whose DNS has gone silent are due
/// before one for a healthy domain, and the healthy one is still delivered at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_domain_whose_dns_never_answers_does_not_hold_up_other_domains() {
    // The MX hosts' port; nothing listens there at first, so everything is deferred
    // and later comes back through the queue's scanner, not straight from inbound.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dns = FakeDns::start(&format!("{}{}", mx_zone("slow.test"), mx_zone("fast.test"))).await;
    let relay = Setup::new(&dns, port.port())
        .delivery("retry = [\"1s\"]")
        .start()
        .await;
    let mut slow = Vec::new();
    for n in 0..3 {
        let rcpt = format!("bob{n}@slow.test");
        slow.push(
            relay
                .submit(SENDER, &[&rcpt], &mail(SENDER, &rcpt, "slow"))
                .await,
        );
    }
    let fast = relay
        .submit(
            SENDER,
            &["bob@fast.test"],
            &mail(SENDER, "bob@fast.test", "fast"),
        )
        .await;
    for id in slow.iter().chain([&fast]) {
        relay.wait_statuses(id, &[Deferred]).await;
    }

    dns.set_zone(&format!("slow.test TIMEOUT\n{}", mx_zone("fast.test")));
    let sink = SmtpSink::builder().bind(port).start().await;
    let start = std::time::Instant::now();
    relay.wait_statuses(&fast, &[Delivered]).await;
    let took = start.elapsed();
    println!("fast.test delivered {took:?} after its destination came up");
    // Well under one unanswered lookup (10 s): it did not wait for any of them.
    assert!(
        took < std::time::Duration::from_secs(6),
        "fast.test waited {took:?}, behind slow.test's DNS timeouts"
    );
    assert!(with_marker(&sink.messages(), "slow").is_empty());
    for id in &slow {
        assert_eq!(relay.summary(id).await.recipients[0].status, Deferred);
    }
}
