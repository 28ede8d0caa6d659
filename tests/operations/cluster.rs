//! Three `outpost serve` processes on one PostgreSQL store (docs/cluster.md):
//! mail accepted by each is delivered exactly once; a node restarting after a
//! crash leaves the claims of the others alone; a node killed with `kill -9`
//! while it holds deliveries has them taken over by the others once its lease
//! runs out, and not before. The nodes share one event log (paged from any
//! node, no gaps or repeats), post each event to a webhook once between them,
//! and sign unsubscribe links with one key. Runs when `OUTPOST_TEST_POSTGRES`
//! names a server.

use super::postgres::Schema;
use crate::support::delivery::{
    Process, SENDER, Setup, WAIT, cli_ok, client_of, mail, with_marker, write_config,
};
use crate::support::fakes::dns::FakeDns;
use crate::support::fakes::sink::{Received, SmtpSink};
use crate::support::fakes::webhook::{Receiver, events_of};
use std::path::PathBuf;
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
                     [[routes]]\ndomain = \"slow.test\"\nto = \"127.0.0.1:{}\"\ntls = \"none\"\n\
                     [[webhooks]]\nurl = \"{}\"\nsecret = \"hook-secret\"",
                    schema.url(),
                    LEASE.as_secs(),
                    slow.port(),
                    hook.url
                ));
            write_config(dir.path(), &setup)
        })
        .collect();
    // n0 starts first and takes the webhook's lease: its death, below, makes
    // another node take the endpoint over.
    let first = Process::start(&configs[0]);
    first.wait_for_log(POSTS, WAIT);
    let mut nodes: Vec<Option<Process>> = std::iter::once(Some(first))
        .chain(configs[1..].iter().map(|c| Some(Process::start(c))))
        .collect();
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
