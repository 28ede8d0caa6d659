//! Delivery end to end, traffic shaping (SPEC §4): connections are reused for
//! several messages up to `max_messages_per_connection`, and no destination gets
//! more than its `max_connections` at once (globally and per `[[delivery.domains]]`).

use crate::support::delivery as delivery_support;
use crate::support::fakes;

use delivery_support::{SENDER, Setup, WAIT, mail, with_marker};
use fakes::dns::FakeDns;
use fakes::sink::SmtpSink;
use outpost::store::RecipientStatus::Delivered;
use std::time::Duration;

async fn dns_for(domain: &str) -> FakeDns {
    FakeDns::start(&format!(
        "{domain} MX 10 mx.{domain}\nmx.{domain} A 127.0.0.1\n"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn one_connection_carries_successive_messages() {
    let sink = SmtpSink::start_default().await;
    let dns = dns_for("reuse.test").await;
    let relay = Setup::new(&dns, sink.port())
        .delivery("max_connections_per_domain = 1")
        .delivery("idle_timeout = \"10s\"")
        .start()
        .await;
    let mut client = relay.client().await;
    for n in 0..5 {
        let marker = format!("reuse-{n}");
        let id = client
            .deliver(
                SENDER,
                &["bob@reuse.test"],
                &mail(SENDER, "bob@reuse.test", &marker),
            )
            .await;
        relay.wait_statuses(&id, &[Delivered]).await;
    }
    client.quit().await;
    assert_eq!(sink.messages().len(), 5);
    assert_eq!(
        sink.messages_per_connection(),
        [5],
        "each message waited for the previous one, over the same connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_is_closed_after_max_messages_per_connection() {
    let sink = SmtpSink::start_default().await;
    let dns = dns_for("limit.test").await;
    let relay = Setup::new(&dns, sink.port())
        .delivery("max_connections_per_domain = 1")
        .delivery("max_messages_per_connection = 2")
        .start()
        .await;
    let mut client = relay.client().await;
    for n in 0..5 {
        let marker = format!("limit-{n}");
        client
            .deliver(
                SENDER,
                &["bob@limit.test"],
                &mail(SENDER, "bob@limit.test", &marker),
            )
            .await;
    }
    client.quit().await;
    sink.wait_for_messages(5, WAIT).await;
    assert_eq!(sink.messages_per_connection(), [2, 2, 1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_421_on_a_reused_connection_is_retried_on_a_fresh_one() {
    // The second MAIL (on the reused connection) hits the server's per-connection
    // limit: that is no reason to defer the message or to back the domain off.
    let sink = SmtpSink::builder()
        .mail_replies([
            "250 2.1.0 Sender OK",
            "421 4.7.0 Too many messages on this connection",
        ])
        .start()
        .await;
    let dns = dns_for("perconn.test").await;
    let relay = Setup::new(&dns, sink.port())
        .delivery("max_connections_per_domain = 1")
        .delivery("idle_timeout = \"10s\"")
        .start()
        .await;
    let mut client = relay.client().await;
    for n in 0..3 {
        let marker = format!("perconn-{n}");
        let id = client
            .deliver(
                SENDER,
                &["bob@perconn.test"],
                &mail(SENDER, "bob@perconn.test", &marker),
            )
            .await;
        let summary = relay.wait_statuses(&id, &[Delivered]).await;
        assert_eq!(summary.recipients[0].attempts, 1, "{summary:#?}");
    }
    client.quit().await;
    assert_eq!(sink.messages_per_connection(), [1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_connections_stay_within_the_limits() {
    const MESSAGES: usize = 16;
    // Slow destinations, so messages pile up and workers run in parallel.
    let sink = SmtpSink::builder()
        .delay(Duration::from_millis(20))
        .start()
        .await;
    let single = SmtpSink::builder()
        .delay(Duration::from_millis(20))
        .start()
        .await;
    let dns = dns_for("wide.test").await;
    let relay = Setup::new(&dns, sink.port())
        .delivery("max_connections_per_domain = 2")
        .toml("[[delivery.domains]]\ndomain = \"single.test\"\nmax_connections = 1\n")
        .toml(&format!(
            "[[routes]]\ndomain = \"single.test\"\nto = \"127.0.0.1:{}\"\n",
            single.port()
        ))
        .start()
        .await;
    let mut client = relay.client().await;
    for n in 0..MESSAGES {
        for domain in ["wide.test", "single.test"] {
            let rcpt = format!("bob@{domain}");
            let marker = format!("{domain}-{n:03}");
            client
                .deliver(SENDER, &[&rcpt], &mail(SENDER, &rcpt, &marker))
                .await;
        }
    }
    client.quit().await;
    let wide = sink.wait_for_messages(MESSAGES, WAIT).await;
    single.wait_for_messages(MESSAGES, WAIT).await;
    for n in 0..MESSAGES {
        assert_eq!(with_marker(&wide, &format!("wide.test-{n:03}")).len(), 1);
    }
    assert_eq!(sink.max_concurrent(), 2, "max_connections_per_domain = 2");
    assert_eq!(
        single.max_concurrent(),
        1,
        "[[delivery.domains]] max_connections = 1"
    );
    assert!(
        sink.connections() < MESSAGES,
        "{MESSAGES} messages took {} connections",
        sink.connections()
    );
}
