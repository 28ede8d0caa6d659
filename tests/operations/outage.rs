//! The database going away under load (docs/cluster.md, "When the database
//! goes away"). Two `outpost serve` nodes share one PostgreSQL schema; node A
//! reaches it through a link the test cuts for a few seconds (every connection
//! closed, new ones turned away) while SMTP clients keep submitting to both
//! nodes. The machine's PostgreSQL server itself is never stopped: other tests
//! use it. Runs when `OUTPOST_TEST_POSTGRES` names a server.

use super::postgres::Schema;
use crate::support::common::Client;
use crate::support::delivery::{
    Process, SENDER, Setup, WAIT, client_of, deliveries_by_marker, mail, write_config,
};
use crate::support::fakes::cut::CuttableLink;
use crate::support::fakes::dns::FakeDns;
use crate::support::fakes::sink::SmtpSink;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Long beside the cut: node A's claims outlive it, so nobody takes over what
/// A holds and the outcomes it could not record are recorded once it is back.
const LEASE: Duration = Duration::from_secs(8);
const CUT: Duration = Duration::from_secs(3);
const CLIENTS_PER_NODE: usize = 2;
/// Pause between one client's messages: a steady load, not a flood.
const PACE: Duration = Duration::from_millis(40);
/// Bound of each client's loop, whatever happens.
const MAX_PER_CLIENT: usize = 1000;

/// One submission and its reply.
struct Sent {
    node: usize,
    marker: String,
    at: Instant,
    /// The queue id, when the reply was `250`.
    id: Option<String>,
    reply: String,
}

/// Submits one message after another to `node` (at `addr`) until `stop`.
async fn submit_until(
    addr: SocketAddr,
    node: usize,
    client: usize,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sent>>>,
) {
    let mut session = Client::connect(addr).await;
    session.expect_greeting().await;
    session.ehlo().await;
    for i in 0..MAX_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let marker = format!("outage-n{node}-c{client}-{i:04}");
        let rcpt = format!("r{i}@pg.test");
        let reply = session
            .send_mail(SENDER, &[&rcpt], &mail(SENDER, &rcpt, &marker))
            .await;
        let id = (reply.code == 250).then(|| reply.queue_id().to_string());
        log.lock().unwrap().push(Sent {
            node,
            marker,
            at: Instant::now(),
            id,
            reply: reply.last().to_string(),
        });
        tokio::time::sleep(PACE).await;
    }
    session.quit().await;
}

/// How many messages node `node` acknowledged with `250` after `since`.
fn accepted_since(log: &Mutex<Vec<Sent>>, node: usize, since: Instant) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|s| s.node == node && s.id.is_some() && s.at > since)
        .count()
}

/// Waits until node `node` has acknowledged `n` messages after `since`.
async fn wait_accepted(log: &Mutex<Vec<Sent>>, node: usize, since: Instant, n: usize) {
    let end = Instant::now() + WAIT;
    while accepted_since(log, node, since) < n {
        assert!(
            Instant::now() < end,
            "node {node} acknowledged fewer than {n} messages in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Node `n{n}` in `dir`, on the store at `url` with claims of `lease`,
/// delivering to `sink`, each round trip to the database bounded by `timeout`;
/// `setup` adds to its configuration.
fn start_node(
    dir: &tempfile::TempDir,
    n: usize,
    url: &str,
    (lease, timeout): (Duration, &str),
    (dns, sink): (&FakeDns, &SmtpSink),
    setup: impl FnOnce(Setup) -> Setup,
) -> Process {
    let setup = setup(Setup::new(dns, sink.port())).toml(&format!(
        "[server]\nnode_name = \"n{n}\"\n\
         [store]\nurl = \"{url}\"\nlease = \"{}s\"\ntimeout = \"{timeout}\"\n",
        lease.as_secs()
    ));
    Process::start(&write_config(dir.path(), &setup))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_database_gets_4xx_never_a_false_250_and_the_node_resumes() {
    let Some(schema) =
        Schema::create("a_cut_database_gets_4xx_never_a_false_250_and_the_node_resumes").await
    else {
        return;
    };
    let link = CuttableLink::start(schema.server_addr()).await;
    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start("pg.test MX 10 mx.pg.test\nmx.pg.test A 127.0.0.1\n").await;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // Node 0 reaches the database through the link; node 1 directly.
    let urls = [schema.url_through(link.port()), schema.url()];
    let nodes: Vec<Process> = dirs
        .iter()
        .zip(&urls)
        .enumerate()
        .map(|(n, (dir, url))| start_node(dir, n, url, (LEASE, "5s"), (&dns, &sink), |s| s))
        .collect();
    let logs = || {
        nodes
            .iter()
            .map(Process::log_text)
            .collect::<Vec<_>>()
            .join("\n----\n")
    };

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for (node, process) in nodes.iter().enumerate() {
        for client in 0..CLIENTS_PER_NODE {
            let (stop, sent) = (stop.clone(), sent.clone());
            clients.spawn(submit_until(process.addr, node, client, stop, sent));
        }
    }

    wait_accepted(&sent, 0, started, 20).await;
    link.cut();
    let cut_at = Instant::now();
    // The outage's length, not a synchronization: the clients go on meanwhile.
    tokio::time::sleep(CUT).await;
    link.restore();
    let restored_at = Instant::now();
    // Node 0 accepts again by itself, without a restart.
    wait_accepted(&sent, 0, restored_at, 20).await;
    let resumed_after = restored_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }

    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let acked: Vec<&Sent> = sent.iter().filter(|s| s.id.is_some()).collect();
    let refused: Vec<&Sent> = sent.iter().filter(|s| s.id.is_none()).collect();
    // Every refusal is the temporary reply of a store out of reach.
    for s in &refused {
        assert!(
            s.reply.starts_with("451 4.3.0"),
            "{} got {:?}; logs:\n{}",
            s.marker,
            s.reply,
            logs()
        );
    }
    let refused_by_0 = refused.iter().filter(|s| s.node == 0).count();
    assert!(refused_by_0 > 0, "node 0 refused nothing while cut off");
    // Node 1 never lost the database.
    assert!(refused.iter().all(|s| s.node == 0), "node 1 refused mail");

    // Every 250 was committed: it is in the store...
    let stored: HashSet<String> = schema
        .query("SELECT id FROM messages")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    for s in &acked {
        assert!(
            stored.contains(s.id.as_ref().unwrap()),
            "{} got 250 ({:?}) but is not in the store",
            s.marker,
            s.id
        );
    }
    // ...and delivered, by one node or the other.
    let end = Instant::now() + WAIT;
    let delivered = loop {
        let delivered = deliveries_by_marker(&sink.messages());
        if acked.iter().all(|s| delivered.contains_key(&s.marker)) {
            break delivered;
        }
        let missing = acked
            .iter()
            .filter(|s| !delivered.contains_key(&s.marker))
            .count();
        assert!(
            Instant::now() < end,
            "{missing} acknowledged messages not delivered after {WAIT:?}; logs:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let duplicates: usize = delivered.values().map(|n| n - 1).sum();
    // A refusal whose commit went through all the same (the reply was lost
    // with the connection) is stored, and delivered: allowed, never the reverse.
    let refused_but_stored = refused
        .iter()
        .filter(|s| delivered.contains_key(&s.marker))
        .count();
    let acked_during_cut = acked
        .iter()
        .filter(|s| s.node == 0 && s.at > cut_at && s.at < restored_at)
        .count();
    eprintln!(
        "outage: {} submissions ({} acknowledged, {} refused with 451 4.3.0, all by the cut-off \
         node); the cut ({CUT:?}) refused {refused_by_0} on node 0, which acknowledged {acked_during_cut} \
         during it (each committed) and acknowledged 20 more within {resumed_after:?} of the link's return; \
         {} deliveries, {duplicates} duplicates, {refused_but_stored} refused but stored (and delivered)",
        sent.len(),
        acked.len(),
        refused.len(),
        sink.messages().len(),
    );
    assert_eq!(duplicates, 0, "logs:\n{}", logs());
    // The cut-off node said it stopped delivering, and that it resumed.
    nodes[0].wait_for_log("the store does not answer", WAIT);
    nodes[0].wait_for_log("the store answers again", WAIT);
    for node in nodes {
        node.kill();
    }
}

/// A database that stops answering (the link frozen: connections stay open,
/// nothing goes through, new ones are never answered) holds a session no
/// longer than `[store] timeout` (2 s here): the client gets `451 4.3.0`. Once
/// the link is back, the node accepts again by itself and delivers.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_database_is_given_up_after_the_timeout() {
    let Some(schema) = Schema::create("a_hung_database_is_given_up_after_the_timeout").await else {
        return;
    };
    const TIMEOUT: Duration = Duration::from_secs(2);
    let link = CuttableLink::start(schema.server_addr()).await;
    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start("pg.test MX 10 mx.pg.test\nmx.pg.test A 127.0.0.1\n").await;
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(
        &dir,
        0,
        &schema.url_through(link.port()),
        (LEASE, &format!("{}s", TIMEOUT.as_secs())),
        (&dns, &sink),
        |s| s,
    );
    let mut client = client_of(&node).await;
    let send = |marker: &str| mail(SENDER, "bob@pg.test", marker);
    client
        .send_mail(SENDER, &["bob@pg.test"], &send("hung-before"))
        .await
        .assert("250");

    link.freeze();
    let asked = Instant::now();
    let reply = client
        .send_mail(SENDER, &["bob@pg.test"], &send("hung-during"))
        .await;
    let waited = asked.elapsed();
    reply.assert("451 4.3.0");
    // One timeout, or two when a write already waiting on the hung
    // connection goes first (then the new connection's set-up times out).
    assert!(waited >= TIMEOUT / 2 && waited < 3 * TIMEOUT, "{waited:?}");

    link.restore();
    let end = Instant::now() + WAIT;
    let mut tries = 0;
    loop {
        tries += 1;
        let reply = client
            .send_mail(SENDER, &["bob@pg.test"], &send("hung-after"))
            .await;
        if reply.code == 250 {
            break;
        }
        reply.assert("451 4.3.0");
        assert!(Instant::now() < end, "no 250 after the link came back");
    }
    client.quit().await;
    let delivered = loop {
        let delivered = deliveries_by_marker(&sink.messages());
        if delivered.contains_key("hung-before") && delivered.contains_key("hung-after") {
            break delivered;
        }
        assert!(
            Instant::now() < end,
            "not delivered: {delivered:?}\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "hung database: a submission waited {waited:?} ([store] timeout {TIMEOUT:?}) for 451 \
         4.3.0; {tries} submission(s) after the link's return to get 250; delivered: {delivered:?}"
    );
    node.kill();
}

/// A node cut off from the database for three of its leases while it delivers
/// a backlog, one slow transaction after another: it stops starting them once
/// it cannot renew its claims or record an outcome, and the node that still
/// reaches the database takes the backlog over when the claims run out. Only
/// what was in flight when the link went (at most one transaction, or two if
/// one began before the node noticed) is delivered twice; a node that went on
/// delivering what it could not record would send most of the backlog twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_cut_off_stops_delivering_and_another_takes_its_work_over() {
    let Some(schema) =
        Schema::create("a_node_cut_off_stops_delivering_and_another_takes_its_work_over").await
    else {
        return;
    };
    const SHORT_LEASE: Duration = Duration::from_secs(2);
    const BACKLOG: usize = 8;
    let link = CuttableLink::start(schema.server_addr()).await;
    // About 0.1 s per reply: a transaction takes most of a second.
    let slow = SmtpSink::builder()
        .delay(Duration::from_millis(100))
        .start()
        .await;
    let dns = FakeDns::start("pg.test MX 10 mx.pg.test\nmx.pg.test A 127.0.0.1\n").await;
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let urls = [schema.url_through(link.port()), schema.url()];
    let nodes: Vec<Process> = dirs
        .iter()
        .zip(&urls)
        .enumerate()
        .map(|(n, (dir, url))| {
            start_node(dir, n, url, (SHORT_LEASE, "5s"), (&dns, &slow), |s| {
                s.delivery("max_connections_per_domain = 1")
            })
        })
        .collect();
    let mut client = client_of(&nodes[0]).await;
    let mut markers = Vec::new();
    for i in 0..BACKLOG {
        let marker = format!("backlog-{i:02}");
        let rcpt = format!("b{i}@pg.test");
        client
            .send_mail(SENDER, &[&rcpt], &mail(SENDER, &rcpt, &marker))
            .await
            .assert("250");
        markers.push(marker);
    }
    client.quit().await;
    slow.wait_for_messages(1, WAIT).await;
    link.cut();
    // Three leases: node 0's claims run out while it is cut off.
    tokio::time::sleep(3 * SHORT_LEASE).await;
    let during_cut = slow.messages().len();
    link.restore();

    let end = Instant::now() + WAIT;
    let delivered = loop {
        let delivered = deliveries_by_marker(&slow.messages());
        if markers.iter().all(|m| delivered.contains_key(m)) {
            break delivered;
        }
        assert!(
            Instant::now() < end,
            "backlog not delivered: {delivered:?}\n{}\n----\n{}",
            nodes[0].log_text(),
            nodes[1].log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let duplicates: usize = delivered.values().map(|n| n - 1).sum();
    eprintln!(
        "cut off: node 0 lost the database for {:?} (lease {SHORT_LEASE:?}) with a backlog of \
         {BACKLOG}; {during_cut} delivered by then, all {BACKLOG} in the end, {duplicates} twice",
        3 * SHORT_LEASE
    );
    assert!(duplicates <= 2, "{delivered:?}");
    nodes[0].wait_for_log("the store does not answer", WAIT);
    for node in nodes {
        node.kill();
    }
}
