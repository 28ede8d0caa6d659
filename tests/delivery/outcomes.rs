//! Delivery end to end, outcomes (SPEC §4): per-recipient results of one
//! transaction, retries, bounce reports (DSN, RFC 3464) and their absence for the
//! null sender, expiry at `max_age`, and backing a domain off after `421` or a
//! "slow down" reply.

use crate::support::delivery as delivery_support;
use crate::support::fakes;

use delivery_support::{Dsn, Relay, SENDER, Setup, WAIT, mail, with_marker};
use fakes::dns::FakeDns;
use fakes::sink::{SinkBuilder, SmtpSink};
use outpost::store::RecipientStatus::{Bounced, Deferred, Delivered};

/// `domain` has one MX, `mx.<domain>`, at 127.0.0.1.
async fn dns_for(domain: &str) -> FakeDns {
    FakeDns::start(&format!(
        "{domain} MX 10 mx.{domain}\nmx.{domain} A 127.0.0.1\n"
    ))
    .await
}

fn reply_of(summary: &outpost::store::MessageSummary, idx: usize) -> String {
    summary.recipients[idx]
        .last_reply
        .clone()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_transaction_per_domain_with_per_recipient_outcomes() {
    let sink = SmtpSink::builder()
        .rcpt_reply("unknown@", "550 5.1.1 User unknown")
        .rcpt_reply("later@", "451 4.2.0 Mailbox busy")
        .start()
        .await;
    let dns = dns_for("multi.test").await;
    let relay = Setup::new(&dns, sink.port()).start().await;
    let rcpts = ["ok@multi.test", "unknown@multi.test", "later@multi.test"];
    let original = mail(SENDER, rcpts[0], "per-recipient");
    let id = relay.submit(SENDER, &rcpts, &original).await;

    let summary = relay
        .wait_statuses(&id, &[Delivered, Bounced, Deferred])
        .await;
    assert!(reply_of(&summary, 0).starts_with("250"), "{summary:#?}");
    assert!(
        reply_of(&summary, 1).starts_with("550 5.1.1"),
        "{summary:#?}"
    );
    assert!(
        reply_of(&summary, 2).starts_with("451 4.2.0"),
        "{summary:#?}"
    );
    assert!(
        summary.recipients.iter().all(|r| r.attempts == 1),
        "{summary:#?}"
    );

    let rcpt_attempts = sink.rcpt_attempts();
    let addresses: Vec<&str> = rcpt_attempts.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(addresses, rcpts, "every recipient was offered once");
    assert!(
        rcpt_attempts
            .iter()
            .all(|r| r.transaction == rcpt_attempts[0].transaction),
        "the recipients were split over transactions: {rcpt_attempts:#?}"
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(messages[0].rcpt_to, ["ok@multi.test"]);
    assert_eq!(sink.connections(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn deferred_then_retried_and_delivered_once() {
    let sink = SmtpSink::builder()
        .data_replies(["451 4.3.0 Temporary failure"])
        .start()
        .await;
    let dns = dns_for("retry.test").await;
    let relay = Setup::new(&dns, sink.port())
        .delivery("retry = [\"1s\"]")
        .start()
        .await;
    let id = relay
        .submit(
            SENDER,
            &["bob@retry.test"],
            &mail(SENDER, "bob@retry.test", "retry-once"),
        )
        .await;
    let summary = relay.wait_statuses(&id, &[Delivered]).await;
    assert_eq!(summary.recipients[0].attempts, 2, "{summary:#?}");
    relay.wait_queue_empty().await;
    let attempts = sink.attempts();
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert!(attempts[0].reply.starts_with("451"), "{attempts:#?}");
    assert_eq!(with_marker(&sink.messages(), "retry-once").len(), 1);
    assert!(relay.reports().is_empty(), "a DSN for a delivered message");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_failure_sends_one_report_except_for_the_null_sender() {
    let sink = SmtpSink::builder()
        .rcpt_reply("unknown@", "550 5.1.1 User unknown")
        .start()
        .await;
    let dns = dns_for("dsn.test").await;
    let relay = Setup::new(&dns, sink.port()).start().await;
    let original = mail(SENDER, "ok@dsn.test", "bounce-me");
    let id = relay
        .submit(SENDER, &["ok@dsn.test", "unknown@dsn.test"], &original)
        .await;
    // A bounce itself (null sender) that bounces: no report may be sent for it.
    let null_sender = relay
        .submit(
            "",
            &["unknown@dsn.test"],
            &mail("", "unknown@dsn.test", "null-sender"),
        )
        .await;

    relay.wait_statuses(&id, &[Delivered, Bounced]).await;
    relay.wait_statuses(&null_sender, &[Bounced]).await;
    // Both are finished (any report is queued before that), and the queue drained
    // (any report was delivered): now the count is final.
    relay.wait_finished(&id).await;
    relay.wait_finished(&null_sender).await;
    relay.wait_queue_empty().await;
    let reports = relay.reports();
    assert_eq!(reports.len(), 1, "exactly one report: {reports:#?}");

    let report = &reports[0];
    assert_eq!(
        report.mail_from, "",
        "a report is sent from the null sender"
    );
    assert_eq!(report.rcpt_to, [SENDER]);
    let dsn = Dsn::parse(&report.data);
    assert_eq!(dsn.report_type, "delivery-status");
    assert_eq!(dsn.to, SENDER);
    assert!(
        dsn.per_message.contains("Reporting-MTA: dns; relay.test"),
        "{dsn:#?}"
    );
    assert_eq!(
        dsn.recipients.len(),
        1,
        "only the failed recipient: {dsn:#?}"
    );
    let failed = &dsn.recipients[0];
    assert_eq!(failed.final_recipient, "rfc822; unknown@dsn.test");
    assert_eq!(failed.action, "failed");
    assert_eq!(failed.status, "5.1.1");
    assert!(
        failed.diagnostic_code.starts_with("smtp;") && failed.diagnostic_code.contains("550 5.1.1"),
        "{failed:#?}"
    );
    assert!(
        dsn.returned.contains("Subject: bounce-me"),
        "the report returns the original headers: {dsn:#?}"
    );
    assert!(!report.text().contains("null-sender"), "{}", report.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn expires_at_max_age_with_a_report() {
    let sink = SmtpSink::builder()
        .rcpt_reply("", "451 4.3.0 Temporary failure")
        .start()
        .await;
    let dns = dns_for("expire.test").await;
    // The retry schedule keeps its default (5m): the message must still give up at
    // max_age, not at the first retry after it.
    let relay = Setup::new(&dns, sink.port())
        .delivery("max_age = \"2s\"")
        .start()
        .await;
    let id = relay
        .submit(
            SENDER,
            &["bob@expire.test"],
            &mail(SENDER, "bob@expire.test", "expire"),
        )
        .await;
    let summary = relay.wait_statuses(&id, &[Bounced]).await;
    let reply = reply_of(&summary, 0);
    assert!(reply.contains("4.4.7"), "expiry reply: {reply}");
    assert!(summary.recipients[0].attempts >= 2, "{summary:#?}");
    assert!(sink.messages().is_empty());

    let reports = relay.returns.wait_for_messages(1, WAIT).await;
    let dsn = Dsn::parse(&reports[0].data);
    assert_eq!(dsn.recipients.len(), 1, "{dsn:#?}");
    assert_eq!(dsn.recipients[0].final_recipient, "rfc822; bob@expire.test");
    assert_eq!(dsn.recipients[0].action, "failed");
    assert_eq!(dsn.recipients[0].status, "4.4.7");
}

/// The first transaction to `busy.test` gets a slow-down reply from `sink`; the
/// domain must then be left alone for the first retry interval: a second message
/// is deferred with that reply without a new connection, and later both arrive.
async fn assert_backs_off(sink: SinkBuilder, expected_code: &str) {
    let sink = sink.start().await;
    let dns = dns_for("busy.test").await;
    let relay: Relay = Setup::new(&dns, sink.port())
        .delivery("retry = [\"2s\"]")
        .delivery("max_connections_per_domain = 1")
        .start()
        .await;
    let first = relay
        .submit(
            SENDER,
            &["bob@busy.test"],
            &mail(SENDER, "bob@busy.test", "first"),
        )
        .await;
    let summary = relay
        .wait_for(&first, "deferred", |s| s.recipients[0].status == Deferred)
        .await;
    let slow_down = reply_of(&summary, 0);
    assert!(
        slow_down.starts_with(expected_code),
        "the slow-down reply was not recorded: {slow_down}"
    );
    let connections = sink.connections();

    let second = relay
        .submit(
            SENDER,
            &["bob@busy.test"],
            &mail(SENDER, "bob@busy.test", "second"),
        )
        .await;
    let summary = relay
        .wait_for(&second, "deferred or delivered", |s| {
            s.recipients[0].status != outpost::store::RecipientStatus::Queued
        })
        .await;
    assert_eq!(
        (summary.recipients[0].status, reply_of(&summary, 0)),
        (Deferred, slow_down.clone()),
        "a message for a backed-off domain was not deferred with the slow-down reply"
    );
    assert_eq!(
        sink.connections(),
        connections,
        "connected to a backed-off domain"
    );

    relay.wait_statuses(&first, &[Delivered]).await;
    relay.wait_statuses(&second, &[Delivered]).await;
    let messages = sink.messages();
    assert_eq!(with_marker(&messages, "first").len(), 1, "{messages:#?}");
    assert_eq!(with_marker(&messages, "second").len(), 1, "{messages:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn backs_off_after_421_at_end_of_data() {
    assert_backs_off(
        SmtpSink::builder().data_replies(["421 4.7.0 Too many messages"]),
        "421",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backs_off_after_421_at_mail_pipelined() {
    assert_backs_off(
        SmtpSink::builder().mail_replies(["421 4.7.0 Too many connections"]),
        "421",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backs_off_after_421_at_mail_without_pipelining() {
    assert_backs_off(
        SmtpSink::builder()
            .no_pipelining()
            .mail_replies(["421 4.7.0 Too many connections"]),
        "421",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backs_off_after_a_rate_limit_reply() {
    assert_backs_off(
        SmtpSink::builder().rcpt_reply_times("", "450 4.7.1 Rate limit exceeded, slow down", 1),
        "450 4.7.1",
    )
    .await;
}
