//! Three `outpost serve` processes on one PostgreSQL store (docs/cluster.md):
//! mail accepted by each is delivered exactly once; a node restarting after a
//! crash leaves the claims of the others alone; a node killed with `kill -9`
//! while it holds deliveries has them taken over by the others once its lease
//! runs out, and not before. Runs when `OUTPOST_TEST_POSTGRES` names a server.

use super::postgres::Schema;
use crate::support::delivery::{
    Process, SENDER, Setup, WAIT, cli_ok, client_of, mail, with_marker, write_config,
};
use crate::support::fakes::dns::FakeDns;
use crate::support::fakes::sink::{Received, SmtpSink};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The claim lease of the nodes: short, so a takeover is quick to see.
const LEASE: Duration = Duration::from_secs(2);
const PER_NODE: usize = 10;

/// How many accepted messages carry each marker.
fn counts(received: &[Received], markers: &[String]) -> Vec<usize> {
    markers
        .iter()
        .map(|m| with_marker(received, m).len())
        .collect()
}

/// Waits until no recipient in the store is pending and `delivered` are delivered.
async fn wait_all_delivered(schema: &Schema, delivered: i64, logs: impl Fn() -> String) {
    let end = Instant::now() + WAIT;
    loop {
        let rows = schema
            .query(
                "SELECT COUNT(*) FILTER (WHERE status IN ('queued', 'deferred')),
                        COUNT(*) FILTER (WHERE status = 'delivered') FROM recipients",
            )
            .await;
        let (pending, done): (i64, i64) = (rows[0].get(0), rows[0].get(1));
        if pending == 0 && done == delivered {
            return;
        }
        assert!(
            Instant::now() < end,
            "{pending} pending, {done} of {delivered} delivered after {WAIT:?}; logs:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_deliver_once_and_take_over_a_killed_nodes_work() {
    let Some(schema) =
        Schema::create("three_nodes_deliver_once_and_take_over_a_killed_nodes_work").await
    else {
        return;
    };
    let sink = SmtpSink::start_default().await;
    // The first transaction it gets is never answered: a delivery in flight.
    let slow = SmtpSink::builder()
        .stall_after_data()
        .faults_only_first(1)
        .start()
        .await;
    let dns = FakeDns::start("pg.test MX 10 mx.pg.test\nmx.pg.test A 127.0.0.1\n").await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<PathBuf> = dirs
        .iter()
        .enumerate()
        .map(|(n, dir)| {
            let setup = Setup::new(&dns, sink.port())
                // One connection to slow.test: the stalled transaction holds the
                // node's other mail for it behind it, claimed.
                .delivery("max_connections_per_domain = 1")
                .delivery("timeout = \"60s\"")
                .toml(&format!(
                    "[server]\nnode_name = \"n{n}\"\n\
                     [store]\nurl = \"{}\"\nlease = \"{}s\"\n\
                     [[routes]]\ndomain = \"slow.test\"\nto = \"127.0.0.1:{}\"\ntls = \"none\"",
                    schema.url(),
                    LEASE.as_secs(),
                    slow.port()
                ));
            write_config(dir.path(), &setup)
        })
        .collect();
    let mut nodes: Vec<Option<Process>> = configs.iter().map(|c| Some(Process::start(c))).collect();
    let logs = |nodes: &[Option<Process>]| {
        nodes
            .iter()
            .flatten()
            .map(Process::log_text)
            .collect::<Vec<_>>()
            .join("\n----\n")
    };

    // Every node accepts mail; each message reaches the sink exactly once.
    let mut markers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let mut client = client_of(node.as_ref().unwrap()).await;
        for i in 0..PER_NODE {
            let marker = format!("cluster-n{n}-{i:03}");
            let rcpt = format!("r{i}@pg.test");
            client
                .deliver(SENDER, &[&rcpt], &mail(SENDER, &rcpt, &marker))
                .await;
            markers.push(marker);
        }
        client.quit().await;
    }
    let total = markers.len();
    wait_all_delivered(&schema, total as i64, || logs(&nodes)).await;
    let once = counts(&sink.messages(), &markers);
    let duplicates: usize = once.iter().map(|c| c.saturating_sub(1)).sum();
    eprintln!(
        "cluster: {total} messages to 3 nodes, {} deliveries, {duplicates} duplicates",
        sink.messages().len()
    );
    assert!(once.iter().all(|&c| c == 1), "{markers:?}\n{once:?}");
    // Each node beats its heartbeat in the shared store.
    let end = Instant::now() + WAIT;
    loop {
        let status = cli_ok(&configs[1], &["cluster", "status"]);
        if (0..3).all(|n| status.contains(&format!("n{n} heartbeat "))) {
            break;
        }
        assert!(Instant::now() < end, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // n0 takes mail for the slow destination: the first transaction stalls,
    // the rest wait behind it, all claimed by n0.
    let mut slow_markers = Vec::new();
    let mut client = client_of(nodes[0].as_ref().unwrap()).await;
    for i in 0..5 {
        let marker = format!("slow-{i:03}");
        let rcpt = format!("s{i}@slow.test");
        client
            .deliver(SENDER, &[&rcpt], &mail(SENDER, &rcpt, &marker))
            .await;
        slow_markers.push(marker);
    }
    client.quit().await;
    let stalled = slow.wait_for_attempts(1, WAIT).await;
    // n1 restarts after a crash: it voids its own old claims, not n0's.
    nodes[1].take().unwrap().kill();
    nodes[1] = Some(Process::start(&configs[1]));
    // While n0 lives it renews its claims: for three leases nobody else tries.
    tokio::time::sleep(3 * LEASE).await;
    assert_eq!(slow.attempts().len(), 1, "{}", logs(&nodes));
    assert!(slow.messages().is_empty());
    let status = cli_ok(&configs[1], &["cluster", "status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("n0 ") && l.contains(" 5 claims")),
        "{status}"
    );

    nodes[0].take().unwrap().kill();
    let killed = Instant::now();
    wait_all_delivered(&schema, (total + slow_markers.len()) as i64, || {
        logs(&nodes)
    })
    .await;
    let takeover = killed.elapsed();
    let delivered = counts(&slow.messages(), &slow_markers);
    let duplicates: usize = delivered.iter().map(|c| c.saturating_sub(1)).sum();
    eprintln!(
        "cluster: n0 killed holding {} messages (1 in flight, unanswered); the survivors \
         delivered them {takeover:?} after the kill (lease {LEASE:?}); {} accepted \
         deliveries, {duplicates} duplicates; {} transaction(s) cut off in flight",
        slow_markers.len(),
        slow.messages().len(),
        stalled.len()
    );
    assert!(delivered.iter().all(|&c| c >= 1), "{delivered:?}");
    // n0 renewed its claims at most a third of a lease before it died: nobody
    // could take them over sooner than the rest of the lease.
    assert!(takeover >= LEASE / 2, "{takeover:?}");
    assert_eq!(duplicates, 0, "{delivered:?}");
    for node in nodes.into_iter().flatten() {
        node.kill();
    }
}
