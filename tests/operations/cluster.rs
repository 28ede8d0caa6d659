//! `outpost serve` processes on one PostgreSQL store (docs/cluster.md): mail
//! accepted by each of three is delivered exactly once; a node restarting after
//! a crash leaves the claims of the others alone; a node killed with `kill -9`
//! while it holds deliveries has them taken over by the others once its lease
//! runs out, and not before; ten such kills under load lose nothing; a node
//! whose clock runs 30 s ahead takes no live node's claims. Shaping is the
//! cluster's: the destination never sees more than `max_connections_per_domain`
//! connections from all nodes together, `messages_per_minute` is one pace for
//! all, and a suspension made by one node holds on the others until `outpost
//! queue retry` on any node lifts it. The nodes share one event log (paged
//! from any node, no gaps or repeats), post each event to a webhook once
//! between them (another node taking over when the poster dies), and sign
//! unsubscribe links with one key. Runs when `OUTPOST_TEST_POSTGRES` names a
//! server.

use super::postgres::Schema;
use crate::support::common::Client;
use crate::support::delivery::{
    Process, SENDER, Setup, WAIT, cli_ok, client_of, deliver_marked, deliveries_by_marker, mail,
    with_marker, write_config,
};
use crate::support::fakes::dns::FakeDns;
use crate::support::fakes::sink::{Received, SmtpSink};
use crate::support::fakes::webhook::{Receiver, events_of};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The claim lease of the nodes: short, so a takeover is quick to see.
const LEASE: Duration = Duration::from_secs(2);
const PER_NODE: usize = 10;
/// What the node that posts to a webhook endpoint logs when it starts to.
const POSTS: &str = "this node posts to the endpoint";

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
        node_logs(&self.nodes)
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
                    let markers = deliver_marked(
                        &mut client,
                        (0..count).map(|i| {
                            (
                                format!("r{i}@{rcpt_domain}"),
                                format!("{rcpt_domain}-n{n}-{i:03}"),
                            )
                        }),
                    )
                    .await;
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
fn node_logs(nodes: &[Option<Process>]) -> String {
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

/// The configuration of node `n{i}` for each of `dirs`: sharing `schema`, with
/// a short lease, mail for `pg.test` going to `sink_port` and for `slow.test` to
/// `slow_port`, over one connection for the whole cluster: a stalled
/// transaction there holds the node's other mail for it behind it, claimed.
fn node_configs(
    dirs: &[tempfile::TempDir],
    schema: &Schema,
    dns: &FakeDns,
    sink_port: u16,
    slow_port: u16,
) -> Vec<PathBuf> {
    dirs.iter()
        .enumerate()
        .map(|(n, dir)| {
            let setup = Setup::new(dns, sink_port)
                .delivery("max_connections_per_domain = 1")
                .delivery("timeout = \"60s\"")
                .toml(&format!(
                    "[[routes]]\ndomain = \"slow.test\"\nto = \"127.0.0.1:{slow_port}\"\ntls = \"none\""
                ));
            write_config(dir.path(), &node(setup, schema, n))
        })
        .collect()
}

/// Submits `n` messages for slow.test to `node`, marked `{prefix}-{i}`.
async fn submit_slow(node: &Process, prefix: &str, n: usize) -> Vec<String> {
    let mut client = client_of(node).await;
    let markers = deliver_marked(
        &mut client,
        (0..n).map(|i| (format!("s{i}@slow.test"), format!("{prefix}-{i:03}"))),
    )
    .await;
    client.quit().await;
    markers
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
    let hook = Receiver::start(0).await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs = node_configs(&dirs, &schema, &dns, sink.port(), slow.port());
    for config in &configs {
        let mut text = std::fs::read_to_string(config).unwrap();
        text.push_str(&format!(
            "\n[[webhooks]]\nurl = \"{}\"\nsecret = \"hook-secret\"\n",
            hook.url
        ));
        std::fs::write(config, text).unwrap();
    }
    // n0 starts first and takes the webhook's lease: its death, below, makes
    // another node take the endpoint over.
    let first = Process::start(&configs[0]);
    first.wait_for_log(POSTS, WAIT);
    let mut nodes: Vec<Option<Process>> = std::iter::once(Some(first))
        .chain(configs[1..].iter().map(|c| Some(Process::start(c))))
        .collect();
    let logs = node_logs;

    // Every node accepts mail; each message reaches the sink exactly once.
    let mut markers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let mut client = client_of(node.as_ref().unwrap()).await;
        markers.extend(
            deliver_marked(
                &mut client,
                (0..PER_NODE).map(|i| (format!("r{i}@pg.test"), format!("cluster-n{n}-{i:03}"))),
            )
            .await,
        );
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
    let slow_markers = submit_slow(nodes[0].as_ref().unwrap(), "slow", 5).await;
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

    // A survivor took the webhook over: every event reaches the endpoint, at
    // least once (a batch n0 had posted without recording it comes again).
    let logged = logged_ids(&schema).await;
    let hits = hook
        .wait(|hits| {
            let posted: std::collections::HashSet<i64> = events_of(hits)
                .iter()
                .map(|e| e["id"].as_i64().unwrap())
                .collect();
            logged.iter().all(|id| posted.contains(id))
        })
        .await;
    let posts = events_of(&hits).len();
    eprintln!(
        "cluster: webhook: {} events in the log, {posts} posted ({} again after the takeover)",
        logged.len(),
        posts - logged.len()
    );
    assert!(
        nodes
            .iter()
            .flatten()
            .any(|node| node.log_text().contains(POSTS)),
        "{}",
        logs(&nodes)
    );
    for node in nodes.into_iter().flatten() {
        node.kill();
    }
}

/// libfaketime (Debian's `faketime`): preloaded, it sets one process's clock
/// off (`FAKETIME="+30s"`) without touching the machine's.
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
const SKEW: &str = "+30s";

/// Leases end on the database's clock: a node whose own clock runs 30 s ahead
/// (fifteen leases of the test's 2 s; with node clocks, it would take every
/// claim at once) leaves a live node's claims alone, and takes them over once
/// that node is dead. The short lease makes the point stronger than the
/// default one would: the skew is many leases, not half of one.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_clock_is_30s_ahead_takes_no_live_claims() {
    let Some(schema) = Schema::create("a_node_whose_clock_is_30s_ahead_takes_no_live_claims").await
    else {
        return;
    };
    assert!(
        std::path::Path::new(FAKETIME_LIB).exists(),
        "{FAKETIME_LIB} is missing: install Debian's faketime (scripts/install-test-deps.sh does)"
    );
    let sink = SmtpSink::start_default().await;
    let slow = SmtpSink::builder()
        .stall_after_data()
        .faults_only_first(1)
        .start()
        .await;
    let dns = FakeDns::start("pg.test MX 10 mx.pg.test\nmx.pg.test A 127.0.0.1\n").await;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs = node_configs(&dirs, &schema, &dns, sink.port(), slow.port());
    let live = Process::start(&configs[0]);
    let ahead = Process::start_with_env(
        &configs[1],
        &[("LD_PRELOAD", FAKETIME_LIB), ("FAKETIME", SKEW)],
    );
    // Its clock is off: the time stamps of its log say so.
    let logged = ahead.wait_for_log("listening", WAIT);
    let stamp = logged.split_whitespace().next().unwrap_or_default();
    let skew = chrono::DateTime::parse_from_rfc3339(stamp)
        .unwrap_or_else(|e| panic!("no time stamp in {logged:?}: {e}"))
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!((25..=35).contains(&skew), "the clock is {skew}s off");

    // The live node takes mail for the slow destination: one transaction
    // stalls, the rest wait behind it, claimed by it.
    let markers = submit_slow(&live, "skew", 5).await;
    slow.wait_for_attempts(1, WAIT).await;
    tokio::time::sleep(3 * LEASE).await;
    assert_eq!(
        slow.attempts().len(),
        1,
        "the node ahead took live claims:\n{}\n----\n{}",
        live.log_text(),
        ahead.log_text()
    );
    let status = cli_ok(&configs[0], &["cluster", "status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("n0 ") && l.contains(" 5 claims")),
        "{status}"
    );
    assert!(status.contains("n1 heartbeat "), "{status}");

    live.kill();
    let killed = Instant::now();
    wait_all_delivered(&schema, markers.len() as i64, || ahead.log_text()).await;
    let takeover = killed.elapsed();
    let delivered = counts(&slow.messages(), &markers);
    eprintln!(
        "clock skew: a node {SKEW} ahead left the live node's 5 claims alone for {:?}, and \
         delivered them {takeover:?} after that node's death (lease {LEASE:?}): {delivered:?}",
        3 * LEASE
    );
    assert!(delivered.iter().all(|&c| c == 1), "{delivered:?}");
    assert!(takeover >= LEASE / 2, "{takeover:?}");
    ahead.kill();
}

/// Rounds of [`kill_9_rounds_under_load_lose_nothing`]; each kills one node.
const ROUNDS: usize = 10;
/// Messages acknowledged by the cluster between two kills.
const PER_ROUND: usize = 30;

/// The address each node listens on now (`None` while it is down).
type Addresses = Arc<Mutex<Vec<Option<SocketAddr>>>>;

/// One client submitting to node `node` whenever it is up, until `stop`: a
/// fresh session per message (lettre), so a session cut by a kill costs one
/// message, unacknowledged. Returns the markers acknowledged with `250`.
async fn submit_to_node(
    addresses: Addresses,
    node: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut mine = Vec::new();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Some(addr) = addresses.lock().unwrap()[node] else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let marker = format!("rounds-n{node}-{i:05}");
        let rcpt = format!("r{i}@pg.test");
        let envelope = lettre::address::Envelope::new(
            Some(SENDER.parse().unwrap()),
            vec![rcpt.parse().unwrap()],
        )
        .unwrap();
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(addr.port())
            .timeout(Some(WAIT))
            .build();
        if transport
            .send_raw(&envelope, &mail(SENDER, &rcpt, &marker))
            .await
            .is_ok_and(|reply| reply.is_positive())
        {
            mine.push(marker);
            acked.fetch_add(1, Ordering::Relaxed);
        }
    }
    mine
}

/// `kill -9` of one node after another while clients submit to all three: every
/// message any node acknowledged is delivered by the others, or by the killed
/// node once restarted (each round restarts the node the round before killed,
/// so one node is down at a time and its claims are either taken over at the
/// lease's end or voided by its restart). Duplicates (transactions cut off in
/// flight) are counted and reported.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_rounds_under_load_lose_nothing() {
    let Some(schema) = Schema::create("kill_9_rounds_under_load_lose_nothing").await else {
        return;
    };
    let started = Instant::now();
    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start("pg.test MX 10 mx.pg.test\nmx.pg.test A 127.0.0.1\n").await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs = Arc::new(node_configs(&dirs, &schema, &dns, sink.port(), sink.port()));
    let mut nodes: Vec<Option<Process>> = configs.iter().map(|c| Some(Process::start(c))).collect();
    let addresses: Addresses = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.as_ref().map(|p| p.addr)).collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..3)
        .map(|n| {
            tokio::spawn(submit_to_node(
                addresses.clone(),
                n,
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();

    let mut down: Option<usize> = None;
    for round in 0..ROUNDS {
        let before = acked.load(Ordering::Relaxed);
        let end = Instant::now() + WAIT;
        while acked.load(Ordering::Relaxed) < before + PER_ROUND {
            assert!(
                Instant::now() < end,
                "round {round}: the cluster stopped acknowledging"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let victim = round % 3;
        addresses.lock().unwrap()[victim] = None;
        nodes[victim].take().unwrap().kill();
        if let Some(back) = down.replace(victim) {
            let config = configs[back].clone();
            let process = tokio::task::spawn_blocking(move || Process::start(&config))
                .await
                .unwrap();
            addresses.lock().unwrap()[back] = Some(process.addr);
            nodes[back] = Some(process);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut markers = Vec::new();
    for client in clients {
        markers.extend(client.await.unwrap());
    }
    let logs = || node_logs(&nodes);
    let end = Instant::now() + WAIT;
    let delivered = loop {
        let delivered = deliveries_by_marker(&sink.messages());
        let missing: Vec<&String> = markers
            .iter()
            .filter(|m| !delivered.contains_key(*m))
            .collect();
        if missing.is_empty() {
            break delivered;
        }
        assert!(
            Instant::now() < end,
            "{} of {} acknowledged messages not delivered after {WAIT:?} (first: {}); logs:\n{}",
            missing.len(),
            markers.len(),
            missing[0],
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let duplicates: usize = markers.iter().map(|m| delivered[m] - 1).sum();
    eprintln!(
        "kill -9 rounds: {ROUNDS} kills under load; {} messages acknowledged, all delivered; \
         {duplicates} delivered twice or more (sessions or transactions cut off in flight); \
         {:?} in all",
        markers.len(),
        started.elapsed()
    );
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
    let mut client = client_of(cluster.node(1)).await;
    let mut markers = deliver_marked(
        &mut client,
        (0..3).map(|i| (format!("b{i}@pg.test"), format!("held-n1-{i}"))),
    )
    .await;
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

/// An admin's view of `GET /v1/events` on one node, paged `limit` at a time.
struct EventPager {
    http: reqwest::Client,
    base: String,
    password: String,
    after: i64,
}

impl EventPager {
    fn new(node: &Process, password: &str) -> EventPager {
        EventPager {
            http: reqwest::Client::new(),
            base: format!("http://{}", node.http_addr()),
            password: password.to_string(),
            after: 0,
        }
    }

    /// The ids of the next page (empty at the end of the log for now).
    async fn page(&mut self, limit: usize) -> Vec<i64> {
        let page: serde_json::Value = self
            .http
            .get(format!(
                "{}/v1/events?after={}&limit={limit}",
                self.base, self.after
            ))
            .basic_auth("root", Some(&self.password))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        self.after = page["next"].as_i64().unwrap();
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect()
    }

    /// Every id from where it is to the end of the log.
    async fn rest(&mut self) -> Vec<i64> {
        let mut ids = Vec::new();
        loop {
            let page = self.page(7).await;
            if page.is_empty() {
                return ids;
            }
            ids.extend(page);
        }
    }
}

/// The ids in the events table, in order: what every reader must see.
async fn logged_ids(schema: &Schema) -> Vec<i64> {
    schema
        .query("SELECT id FROM events ORDER BY id")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_share_one_event_stream_one_webhook_poster_and_one_link_key() {
    let Some(schema) = Schema::create("three_nodes_share_events_webhooks_and_the_link_key").await
    else {
        return;
    };
    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start("pg.test MX 10 mx.pg.test\nmx.pg.test A 127.0.0.1\n").await;
    let hook = Receiver::start(0).await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<PathBuf> = dirs
        .iter()
        .enumerate()
        .map(|(n, dir)| {
            // A lease long enough that a node slowed down by a busy machine
            // keeps the webhook: this test wants each event posted once.
            let setup = Setup::new(&dns, sink.port()).toml(&format!(
                "[server]\nnode_name = \"e{n}\"\n[store]\nurl = \"{}\"\nlease = \"10s\"\n\
                 [[webhooks]]\nurl = \"{}\"\nsecret = \"hook-secret\"",
                schema.url(),
                hook.url
            ));
            write_config(dir.path(), &setup)
        })
        .collect();
    let added = cli_ok(
        &configs[0],
        &["user", "add", "root", "--domain", "news.test", "--admin"],
    );
    let password = added
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("a generated password")
        .to_string();
    let nodes: Vec<Process> = configs.iter().map(|c| Process::start(c)).collect();
    let logs = || {
        nodes
            .iter()
            .map(Process::log_text)
            .collect::<Vec<_>>()
            .join("\n----\n")
    };

    // One reader pages node 0's log all along while the three nodes accept
    // and deliver: a write committed late must not fall behind its cursor.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pager = EventPager::new(&nodes[0], &password);
    let paging = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut seen = Vec::new();
            loop {
                let last_word = stop.load(std::sync::atomic::Ordering::SeqCst);
                let page = pager.page(7).await;
                if page.is_empty() && last_word {
                    return seen;
                }
                seen.extend(page);
            }
        }
    });
    let sessions: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let addr = node.addr;
            tokio::spawn(async move {
                let mut client = crate::support::common::Client::connect(addr).await;
                client.expect_greeting().await;
                client.ehlo().await;
                // A 452 is a refusal to try again, as any client does: PostgreSQL
                // may end one of two nodes' transactions that wait for each
                // other's rows (the dashboard's counters) as a deadlock.
                let mut refused = 0;
                for i in 0..PER_NODE {
                    let rcpt = format!("r{i}@pg.test");
                    let marker = format!("events-e{n}-{i:03}");
                    let content = mail(SENDER, &rcpt, &marker);
                    loop {
                        let reply = client.send_mail(SENDER, &[&rcpt], &content).await;
                        if reply.code != 452 || refused == 10 {
                            reply.queue_id();
                            break;
                        }
                        refused += 1;
                    }
                }
                client.quit().await;
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for session in sessions {
        refused += session.await.unwrap();
    }

    // A message sent through node 0's API carries a List-Unsubscribe link
    // signed by node 0; node 1 takes it.
    let sent = reqwest::Client::new()
        .post(format!("http://{}/v1/messages", nodes[0].http_addr()))
        .basic_auth("root", Some(&password))
        .json(&serde_json::json!({
            "from": "letters@news.test", "to": ["reader@pg.test"],
            "subject": "news", "text": "hello"
        }))
        .send()
        .await
        .unwrap();
    assert!(sent.status().is_success(), "{}", sent.status());
    let total = 3 * PER_NODE + 1;
    wait_all_delivered(&schema, total as i64, logs).await;
    let letter = sink
        .messages()
        .into_iter()
        .find(|m| m.rcpt_to == ["reader@pg.test"])
        .expect("the letter was delivered");
    let text = String::from_utf8_lossy(&letter.data).into_owned();
    let token = text[text.find("/u/").expect("an unsubscribe link") + 3..]
        .split('>')
        .next()
        .unwrap()
        .to_string();
    let unsubscribed = reqwest::Client::new()
        .post(format!("http://{}/u/{token}", nodes[1].http_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(unsubscribed.status(), 200, "node 1 verifies node 0's link");
    let suppressed = schema
        .query("SELECT reason FROM suppressions WHERE address = 'reader@pg.test'")
        .await;
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0].get::<_, String>(0), "unsubscribe");

    // Everything is written: the log as it stands is what every reader sees.
    let logged = logged_ids(&schema).await;
    // accepted and delivered per message, and the unsubscribe.
    assert!(logged.len() > 2 * total, "{logged:?}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = paging.await.unwrap();
    assert_eq!(seen, logged, "node 0's reader, paging while nodes wrote");
    for node in &nodes[1..] {
        assert_eq!(EventPager::new(node, &password).rest().await, logged);
    }

    // The webhook got each event once: one node posted, the others waited.
    let hits = hook
        .wait(|hits| {
            let posted: std::collections::HashSet<i64> = events_of(hits)
                .iter()
                .map(|e| e["id"].as_i64().unwrap())
                .collect();
            logged.iter().all(|id| posted.contains(id))
        })
        .await;
    let mut posted: Vec<i64> = events_of(&hits)
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    let posts = posted.len();
    posted.sort_unstable();
    posted.dedup();
    eprintln!(
        "cluster events: {} events, each seen once by readers of 3 nodes; webhook: {posts} \
         events posted in {} batches, {} distinct; {refused} acceptance(s) refused with 452 \
         and sent again",
        logged.len(),
        hits.len(),
        posted.len()
    );
    assert_eq!(posted, logged);
    assert_eq!(posts, logged.len(), "each event posted once");
    let posters: Vec<&str> = nodes
        .iter()
        .zip(["e0", "e1", "e2"])
        .filter(|(node, _)| node.log_text().contains(POSTS))
        .map(|(_, name)| name)
        .collect();
    assert_eq!(posters.len(), 1, "{posters:?}\n{}", logs());
}
