//! Three `outpost serve` processes on one PostgreSQL store (docs/cluster.md):
//! mail accepted by each is delivered exactly once; a node restarting after a
//! crash leaves the claims of the others alone; a node killed with `kill -9`
//! while it holds deliveries has them taken over by the others once its lease
//! runs out, and not before. Shaping is the cluster's: the destination never
//! sees more than `max_connections_per_domain` connections from all nodes
//! together, `messages_per_minute` is one pace for all, and a suspension made
//! by one node holds on the others until `outpost queue retry` on any node
//! lifts it. Runs when `OUTPOST_TEST_POSTGRES` names a server.

use super::postgres::Schema;
use crate::support::common::Client;
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

/// `setup` as node `n` of the cluster on `schema`: its name and the shared store.
fn node(setup: Setup, schema: &Schema, n: usize) -> Setup {
    setup.toml(&format!(
        "[server]\nnode_name = \"n{n}\"\n[store]\nurl = \"{}\"\nlease = \"{}s\"",
        schema.url(),
        LEASE.as_secs()
    ))
}

/// Nodes started from their configurations, each in a data directory of its own.
struct Cluster {
    configs: Vec<PathBuf>,
    nodes: Vec<Option<Process>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `count` nodes on `schema`, node `n` configured by `setup(n)`.
    fn start(schema: &Schema, count: usize, setup: impl Fn(usize) -> Setup) -> Cluster {
        let dirs: Vec<tempfile::TempDir> =
            (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
        let configs: Vec<PathBuf> = dirs
            .iter()
            .enumerate()
            .map(|(n, dir)| write_config(dir.path(), &node(setup(n), schema, n)))
            .collect();
        let nodes = configs.iter().map(|c| Some(Process::start(c))).collect();
        Cluster {
            configs,
            nodes,
            _dirs: dirs,
        }
    }

    fn node(&self, n: usize) -> &Process {
        self.nodes[n].as_ref().expect("a running node")
    }

    /// The logs of the running nodes.
    fn logs(&self) -> String {
        logs(&self.nodes)
    }

    /// Submits `count` messages to `rcpt_domain` through each node at once,
    /// one session per node; returns their markers.
    async fn submit_to_all(&self, rcpt_domain: &str, count: usize) -> Vec<String> {
        let sessions: Vec<_> = (0..self.nodes.len())
            .map(|n| {
                let addr = self.node(n).addr;
                let rcpt_domain = rcpt_domain.to_string();
                tokio::spawn(async move {
                    let mut client = Client::connect(addr).await;
                    client.expect_greeting().await;
                    client.ehlo().await;
                    let mut markers = Vec::new();
                    for i in 0..count {
                        let marker = format!("{rcpt_domain}-n{n}-{i:03}");
                        let rcpt = format!("r{i}@{rcpt_domain}");
                        client
                            .deliver(SENDER, &[&rcpt], &mail(SENDER, &rcpt, &marker))
                            .await;
                        markers.push(marker);
                    }
                    client.quit().await;
                    markers
                })
            })
            .collect();
        let mut markers = Vec::new();
        for session in sessions {
            markers.extend(session.await.unwrap());
        }
        markers
    }
}

/// The logs of the running nodes of `nodes`.
fn logs(nodes: &[Option<Process>]) -> String {
    nodes
        .iter()
        .flatten()
        .map(Process::log_text)
        .collect::<Vec<_>>()
        .join("\n----\n")
}

/// How many deliveries each running node logged.
fn deliveries_per_node(cluster: &Cluster) -> Vec<usize> {
    cluster
        .nodes
        .iter()
        .flatten()
        .map(|p| p.log_text().matches("outcome=\"delivered\"").count())
        .collect()
}

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

/// Waits until `n` recipients in the store are deferred.
async fn wait_deferred(schema: &Schema, n: i64) {
    let end = Instant::now() + WAIT;
    loop {
        let rows = schema
            .query("SELECT COUNT(*) FROM recipients WHERE status = 'deferred'")
            .await;
        let deferred: i64 = rows[0].get(0);
        if deferred == n {
            return;
        }
        assert!(
            Instant::now() < end,
            "{deferred} deferred, not {n}, after {WAIT:?}"
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
    let Cluster {
        configs,
        mut nodes,
        _dirs,
    } = Cluster::start(&schema, 3, |_| {
        Setup::new(&dns, sink.port())
            // One connection to slow.test in the whole cluster: the stalled
            // transaction holds n0's other mail for it behind it, claimed.
            .delivery("max_connections_per_domain = 1")
            .delivery("timeout = \"60s\"")
            .toml(&format!(
                "[[routes]]\ndomain = \"slow.test\"\nto = \"127.0.0.1:{}\"\ntls = \"none\"",
                slow.port()
            ))
    });

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

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_keep_to_one_connection_limit_for_the_cluster() {
    let Some(schema) =
        Schema::create("three_nodes_keep_to_one_connection_limit_for_the_cluster").await
    else {
        return;
    };
    // Slow replies keep each connection open a while: the nodes' deliveries
    // overlap, so without a shared limit the sink would see up to 3 × 2.
    let sink = SmtpSink::builder()
        .delay(Duration::from_millis(20))
        .start()
        .await;
    let dns = FakeDns::start("pg.test MX 10 mx.pg.test\nmx.pg.test A 127.0.0.1\n").await;
    let cluster = Cluster::start(&schema, 3, |_| {
        Setup::new(&dns, sink.port())
            .delivery("max_connections_per_domain = 2")
            // Connections end often: slots change hands between nodes.
            .delivery("max_messages_per_connection = 3")
    });
    let markers = cluster.submit_to_all("pg.test", 15).await;
    wait_all_delivered(&schema, markers.len() as i64, || cluster.logs()).await;
    let per_node = deliveries_per_node(&cluster);
    eprintln!(
        "cluster limit: {} messages to 3 nodes over {} connections, at most {} at once \
         (limit 2); deliveries per node {per_node:?}",
        markers.len(),
        sink.connections(),
        sink.max_concurrent()
    );
    assert_eq!(sink.max_concurrent(), 2, "{}", cluster.logs());
    assert!(counts(&sink.messages(), &markers).iter().all(|&c| c == 1));
    assert!(
        per_node.iter().filter(|&&n| n > 0).count() >= 2,
        "the slots went to one node only: {per_node:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_keep_one_pace_for_the_cluster() {
    let Some(schema) = Schema::create("three_nodes_keep_one_pace_for_the_cluster").await else {
        return;
    };
    const PER_MINUTE: u32 = 240;
    let interval = Duration::from_secs(60) / PER_MINUTE;
    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start("pg.test MX 10 mx.pg.test\nmx.pg.test A 127.0.0.1\n").await;
    let cluster = Cluster::start(&schema, 3, |_| {
        Setup::new(&dns, sink.port()).delivery(&format!("messages_per_minute = {PER_MINUTE}"))
    });
    let markers = cluster.submit_to_all("pg.test", 4).await;
    let total = markers.len();
    let mut arrivals = Vec::with_capacity(total);
    for n in 1..=total {
        sink.wait_for_messages(n, WAIT).await;
        arrivals.push(Instant::now());
    }
    let span = arrivals[total - 1] - arrivals[0];
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    let expected = interval * (total as u32 - 1);
    eprintln!(
        "cluster pace: {total} messages from 3 nodes at {PER_MINUTE}/min arrived over {span:?} \
         (one pace: {expected:?}; one per node: about {:?}); shortest gap {:?}",
        expected / 3,
        gaps.iter().min().unwrap()
    );
    // Turns are spaced exactly; arrivals jitter with each transaction's time.
    assert!(
        span >= expected * 9 / 10,
        "{span:?} < {expected:?}\n{}",
        cluster.logs()
    );
    assert!(counts(&sink.messages(), &markers).iter().all(|&c| c == 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suspension_holds_on_every_node_until_a_retry_on_any_node() {
    let Some(schema) =
        Schema::create("a_suspension_holds_on_every_node_until_a_retry_on_any_node").await
    else {
        return;
    };
    // The first transaction is told to slow down; every later one is accepted.
    let sink = SmtpSink::builder()
        .mail_replies(["451 4.7.1 Too many messages, slow down"])
        .start()
        .await;
    let dns = FakeDns::start("pg.test MX 10 mx.pg.test\nmx.pg.test A 127.0.0.1\n").await;
    // A retry an hour away: mail deferred here is freed only by `queue retry`.
    // One connection: n1's mail waits behind the first transaction, and is
    // deferred untried when it meets the "slow down".
    let mut cluster = Cluster::start(&schema, 2, |_| {
        Setup::new(&dns, sink.port())
            .delivery("retry = [\"1h\"]")
            .delivery("max_connections_per_domain = 1")
    });
    let mails = |n: usize| {
        sink.commands()
            .iter()
            .filter(|c| c.line.starts_with("MAIL FROM"))
            .count()
            == n
    };

    // n1 meets the "slow down" and suspends the destination: for n0 too.
    let mut markers = Vec::new();
    let mut client = client_of(cluster.node(1)).await;
    for i in 0..3 {
        let (rcpt, marker) = (format!("b{i}@pg.test"), format!("held-n1-{i}"));
        client
            .deliver(SENDER, &[&rcpt], &mail(SENDER, &rcpt, &marker))
            .await;
        markers.push(marker);
    }
    client.quit().await;
    wait_deferred(&schema, 3).await;
    cluster
        .node(0)
        .wait_for_log("destination suspended by another node", WAIT);
    let mut client = client_of(cluster.node(0)).await;
    let (rcpt, marker) = ("a0@pg.test", "held-n0-0".to_string());
    client
        .deliver(SENDER, &[rcpt], &mail(SENDER, rcpt, &marker))
        .await;
    client.quit().await;
    markers.push(marker);
    wait_deferred(&schema, 4).await;
    assert!(
        mails(1),
        "n0 tried a suspended destination: {:?}",
        sink.commands()
    );

    // n0's serve stops; `outpost queue retry` with n0's configuration frees
    // what both nodes hold, and n1 lifts its suspension and delivers it all.
    cluster.nodes[0].take().unwrap().kill();
    cli_ok(&cluster.configs[0], &["queue", "retry", "--all"]);
    wait_all_delivered(&schema, markers.len() as i64, || cluster.logs()).await;
    assert!(counts(&sink.messages(), &markers).iter().all(|&c| c == 1));
    assert_eq!(deliveries_per_node(&cluster), [markers.len()]);
}
