//! Delivery through the real binary: a `kill -9` while deliveries are in flight
//! loses nothing (SPEC §3, §4), and `outpost queue list | show | retry | delete`
//! (SPEC §7) act on the queue of a running server.

use crate::support::delivery as delivery_support;
use crate::support::fakes;

use delivery_support::{
    Process, SENDER, Setup, WAIT, cli, cli_ok, client_of, deliver_marked, mail, with_marker,
    write_config,
};
use fakes::dns::FakeDns;
use fakes::sink::SmtpSink;
use std::path::Path;
use std::time::{Duration, Instant};

async fn dns_for(domain: &str) -> FakeDns {
    FakeDns::start(&format!(
        "{domain} MX 10 mx.{domain}\nmx.{domain} A 127.0.0.1\n"
    ))
    .await
}

/// `outpost queue show ID` as JSON, or `None` when there is no such message.
fn show(config: &Path, id: &str) -> Option<serde_json::Value> {
    let out = cli(config, &["queue", "show", "--json", id]);
    out.status.success().then(|| {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "queue show printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    })
}

/// The statuses of a message's recipients, per `queue show`.
fn statuses(config: &Path, id: &str) -> Vec<String> {
    let message = show(config, id).unwrap_or_else(|| panic!("queue show {id} failed"));
    message["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .map(|r| r["status"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Polls `queue show` until the message's statuses are `expected`.
async fn wait_statuses(config: &Path, id: &str, expected: &[&str]) -> serde_json::Value {
    let end = Instant::now() + WAIT;
    loop {
        if statuses(config, id) == expected {
            return show(config, id).expect("queue show");
        }
        if Instant::now() > end {
            panic!(
                "waited {WAIT:?} for {id} to be {expected:?}: {:#?}",
                show(config, id)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `queue list` until it says the queue is empty.
async fn wait_queue_empty(config: &Path) {
    let end = Instant::now() + WAIT;
    loop {
        let list = cli_ok(config, &["queue", "list"]);
        if list.lines().last() == Some("-- 0 message(s) in the queue") {
            return;
        }
        assert!(Instant::now() < end, "the queue did not drain:\n{list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_delivery_loses_nothing() {
    let _alone = crate::alone().await;
    const FRESH: usize = 6;
    const RETRIED: usize = 4;
    // The first destination never answers the end of data. Mail to `retry-*` is
    // deferred once first, so it is on its second attempt (a retry) at the kill.
    let stalling = SmtpSink::builder()
        .stall_after_data()
        .rcpt_reply_times("retry-", "451 4.2.0 Mailbox busy", RETRIED)
        .start()
        .await;
    let dns = dns_for("crash.test").await;
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&dns, stalling.port())
        .delivery("retry = [\"1s\"]")
        .delivery("timeout = \"60s\"")
        .delivery("max_connections_per_domain = 20");
    let config = write_config(dir.path(), &setup);
    let server = Process::start(&config);

    let mut client = client_of(&server).await;
    let messages =
        [("fresh", FRESH), ("retry", RETRIED)]
            .into_iter()
            .flat_map(|(prefix, count)| {
                (0..count).map(move |n| {
                    (
                        format!("{prefix}-{n}@crash.test"),
                        format!("crash-{prefix}-{n:02}"),
                    )
                })
            });
    let markers = deliver_marked(&mut client, messages).await;
    client.quit().await;
    // Every message is in the middle of a transaction (data sent, no reply yet).
    let stalled = stalling.wait_for_attempts(FRESH + RETRIED, WAIT).await;
    assert_eq!(
        stalling.rcpt_attempts().len(),
        FRESH + 2 * RETRIED,
        "the retried messages were deferred once first"
    );
    for marker in &markers {
        assert_eq!(
            with_marker(&stalled, marker).len(),
            1,
            "{marker} not in flight"
        );
    }
    server.kill();

    // Restart on the same data, now pointing at a healthy destination.
    let healthy = SmtpSink::start_default().await;
    setup.mx_port = healthy.port();
    write_config(dir.path(), &setup);
    let started = Instant::now();
    let restarted = Process::start(&config);
    let delivered = healthy.wait_for_messages(markers.len(), WAIT).await;
    for marker in &markers {
        assert!(
            !with_marker(&delivered, marker).is_empty(),
            "{marker} was lost; server log:\n{}",
            restarted.log_text()
        );
    }
    eprintln!(
        "all {} messages delivered {:.1}s after the restart",
        markers.len(),
        started.elapsed().as_secs_f64()
    );
    wait_queue_empty(&config).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_commands_act_on_a_running_server() {
    // The first three transactions are deferred; everything after is accepted.
    let sink = SmtpSink::builder()
        .rcpt_reply_first_transactions(3, "451 4.2.0 Mailbox busy")
        .start()
        .await;
    let dns = dns_for("cli.test").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &Setup::new(&dns, sink.port()));
    let server = Process::start(&config);

    let mut client = client_of(&server).await;
    let mut ids = Vec::new();
    for name in ["one", "two", "three"] {
        let rcpt = format!("{name}@cli.test");
        let id = client
            .deliver(
                SENDER,
                &[&rcpt],
                &mail(SENDER, &rcpt, &format!("cli-{name}")),
            )
            .await;
        // One at a time, so the sink's first three transactions are these.
        wait_statuses(&config, id.as_str(), &["deferred"]).await;
        ids.push(id.to_string());
    }
    client.quit().await;
    let [one, two, three] = [&ids[0], &ids[1], &ids[2]];

    let list = cli_ok(&config, &["queue", "list"]);
    // mailq's shape: the message line, then per pending recipient its last reply
    // and next attempt, then the address.
    for (id, rcpt) in ids
        .iter()
        .zip(["one@cli.test", "two@cli.test", "three@cli.test"])
    {
        let lines: Vec<&str> = list.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with(id.as_str()) && l.ends_with(&format!("<{SENDER}>")))
            .unwrap_or_else(|| panic!("queue list lacks {id}:\n{list}"));
        assert!(lines[at + 1].contains(", next attempt in "), "{list}");
        assert_eq!(lines[at + 2].trim(), rcpt, "{list}");
        if rcpt == "one@cli.test" {
            assert!(lines[at + 1].contains("(451 4.2.0"), "{list}");
            assert!(lines[at + 1].contains("; 1 attempt, "), "{list}");
        }
    }
    assert_eq!(
        list.lines().last(),
        Some("-- 3 message(s) in the queue"),
        "{list}"
    );

    let shown = show(&config, one).expect("queue show");
    assert_eq!(shown["id"], one.as_str());
    assert_eq!(shown["mail_from"], SENDER);
    let rcpt = &shown["recipients"][0];
    assert_eq!(rcpt["address"], "one@cli.test");
    assert_eq!(rcpt["status"], "deferred");
    assert_eq!(rcpt["attempts"], 1);
    assert!(
        rcpt["last_reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("451 4.2.0")),
        "{shown:#}"
    );

    // retry ID: delivered now, not after the 5 minute retry interval.
    let out = cli_ok(&config, &["queue", "retry", one]);
    assert!(out.contains("1 recipient(s)"), "{out}");
    let delivered = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(with_marker(&delivered, "cli-one").len(), 1);
    wait_statuses(&config, one, &["delivered"]).await;
    let again = cli(&config, &["queue", "retry", one]);
    assert!(
        !again.status.success(),
        "retry of a delivered message succeeded"
    );

    // delete ID, then retry --all: the deleted message is never sent.
    let out = cli_ok(&config, &["queue", "delete", three]);
    assert!(out.contains(three.as_str()), "{out}");
    assert!(
        show(&config, three).is_none(),
        "a deleted message is still shown"
    );
    let list = cli_ok(&config, &["queue", "list"]);
    assert!(!list.contains(three.as_str()), "{list}");
    cli_ok(&config, &["queue", "retry", "--all"]);
    let delivered = sink.wait_for_messages(2, WAIT).await;
    assert_eq!(with_marker(&delivered, "cli-two").len(), 1);
    wait_statuses(&config, two, &["delivered"]).await;
    wait_queue_empty(&config).await;
    assert!(
        with_marker(&sink.messages(), "cli-three").is_empty(),
        "the deleted message was delivered"
    );
    assert!(
        !cli(&config, &["queue", "delete", three]).status.success(),
        "deleting a missing message succeeded"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_all_lifts_the_suspension_of_a_dead_destination() {
    // Nothing listens on the MX port at first: the destination is suspended.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dns = dns_for("down.test").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &Setup::new(&dns, port));
    let server = Process::start(&config);
    let mut client = client_of(&server).await;
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let rcpt = format!("{name}@down.test");
        let id = client
            .deliver(
                SENDER,
                &[&rcpt],
                &mail(SENDER, &rcpt, &format!("down-{name}")),
            )
            .await;
        wait_statuses(&config, id.as_str(), &["deferred"]).await;
        ids.push(id.to_string());
    }
    client.quit().await;
    // The second message was deferred untried: its attempt count did not grow.
    let second = show(&config, &ids[1]).expect("queue show");
    assert_eq!(second["recipients"][0]["attempts"], 0, "{second:#}");

    // The destination comes back; an operator's retry must not wait out the pause.
    let sink = SmtpSink::builder()
        .bind(format!("127.0.0.1:{port}").parse().unwrap())
        .start()
        .await;
    cli_ok(&config, &["queue", "retry", "--all"]);
    let delivered = sink.wait_for_messages(2, WAIT).await;
    assert_eq!(with_marker(&delivered, "down-first").len(), 1);
    assert_eq!(with_marker(&delivered, "down-second").len(), 1);
    wait_queue_empty(&config).await;
    drop(server);
}
