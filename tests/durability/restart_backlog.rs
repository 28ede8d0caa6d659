//! Restart with a backlog: the real `outpost serve` accepts a few thousand messages
//! while their destination is down, so every one is deferred; it is then killed and
//! started again on the same data directory with the destination up. Every message
//! must reach the destination exactly once and none may bounce. The restarted
//! server's time to listen and to make its first delivery are printed (not asserted:
//! they depend on the machine), so a start-up that grows with the queue shows.
//!
//! Also: a bounce report the previous run owed (it stopped between recording the
//! bounce and queuing the report) is sent once by the next run, which looks for such
//! messages while it delivers the rest of the queue rather than before.

use crate::support::common;
use crate::support::fakes;
use crate::support::hardening;
use crate::support::server_process;

use common::{CLIENT_SENDER, Client, message};
use fakes::sink::SmtpSink;
use hardening::Routing;
use outpost::smtp::Mailbox;
use outpost::store::{
    NewMessage, NewRecipient, QueueId, QueueStore, RecipientStatus, RecipientUpdate, SqliteStore,
};
use server_process::Process;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages in the backlog.
const BACKLOG: usize = 3000;
/// Concurrent client sessions submitting them.
const SESSIONS: usize = 4;
/// For each phase (submitting, deferring, draining) to finish.
const PHASE: Duration = Duration::from_secs(40);
/// The first attempt finds the destination down and suspends it for the first
/// retry interval; every later message is deferred to the end of that suspension
/// without an attempt. That is under 10 minutes, the lease of claims that name
/// no node, so start-up treats these recipients like claims a crash left behind
/// and makes them due at once.
const DELIVERY: &str = "retry = [\"5m\"]";

fn rcpt(n: usize) -> String {
    format!("backlog-{n}@dest.example")
}

/// Submits messages `first..first + count` on one session; returns their ids.
async fn submit(addr: std::net::SocketAddr, first: usize, count: usize) -> Vec<QueueId> {
    let mut client = Client::connect(addr).await;
    client.expect_greeting().await;
    client.ehlo().await;
    let mut ids = Vec::with_capacity(count);
    for n in first..first + count {
        let to = rcpt(n);
        let content = message(CLIENT_SENDER, &to, &format!("backlog {n}\r\n"));
        ids.push(client.deliver(CLIENT_SENDER, &[&to], &content).await);
    }
    client.quit().await;
    ids
}

/// Polls until `done` holds; panics with `what` after [`PHASE`].
async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let end = Instant::now() + PHASE;
    while !done().await {
        assert!(Instant::now() < end, "{what}: not within {PHASE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_delivers_a_deferred_backlog_exactly_once() {
    let _alone = crate::alone().await;
    // The destination's port; nothing listens there until the restart.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().expect("temporary directory");
    let data_dir = dir.path().join("data");
    let config = dir.path().join("outpost.toml");
    let text = hardening::config_text(
        &data_dir.display().to_string(),
        Routing::Route(port),
        DELIVERY,
    );
    std::fs::write(&config, text).expect("write the config");

    let server = Process::start(&config);
    // The test reads the store as `outpost queue` does, beside the running server.
    let store = SqliteStore::open(&data_dir, 1).expect("open the store");
    let started = Instant::now();
    let mut sessions = tokio::task::JoinSet::new();
    for s in 0..SESSIONS {
        let (first, count) = (s * BACKLOG / SESSIONS, BACKLOG / SESSIONS);
        sessions.spawn(submit(server.addr, first, count));
    }
    let ids: Vec<QueueId> = tokio::time::timeout(PHASE, async {
        let mut ids = Vec::new();
        while let Some(done) = sessions.join_next().await {
            ids.extend(done.expect("a submitting session failed"));
        }
        ids
    })
    .await
    .expect("the backlog was submitted in time");
    let submitted = started.elapsed();
    // Stop only once every message has met the dead destination (and so has a
    // retry time in the future).
    wait_until("every message deferred", || async {
        let queued = store
            .queued_messages(BACKLOG * 2)
            .await
            .expect("list the queue");
        let deferred = queued
            .iter()
            .flat_map(|m| &m.recipients)
            .filter(|r| r.status == RecipientStatus::Deferred)
            .count();
        deferred == BACKLOG
    })
    .await;
    // No graceful stop: what survives SIGKILL is what a restart must work from.
    server.kill();

    let sink = SmtpSink::builder().bind(port).start().await;
    let restarted = Instant::now();
    let server = Process::start(&config);
    let to_listen = restarted.elapsed();
    sink.wait_for_messages(1, PHASE).await;
    let to_first = restarted.elapsed();
    let received = sink.wait_for_messages(BACKLOG, PHASE).await;
    let to_all = restarted.elapsed();
    wait_until("every outcome recorded", || async {
        store.pending_recipients().await.expect("count pending") == 0
    })
    .await;
    for id in &ids {
        let summary = store.message(id).await.expect("read").expect("stored");
        let status = summary.recipients[0].status;
        assert_eq!(status, RecipientStatus::Delivered, "{id}: {summary:?}");
    }

    let mut times: HashMap<String, usize> = HashMap::new();
    for m in &received {
        assert!(
            common::return_path_message(&m.mail_from).is_some(),
            "not a backlog message: {m:?}"
        );
        for r in &m.rcpt_to {
            *times.entry(r.clone()).or_default() += 1;
        }
    }
    let missing: Vec<String> = (0..BACKLOG)
        .map(rcpt)
        .filter(|r| !times.contains_key(r))
        .collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(times.len(), BACKLOG, "unexpected recipients: {times:?}");
    // Nothing more arrives (a late duplicate or a bounce report to the sender).
    let messages = sink.messages().len();
    assert_eq!(messages, BACKLOG, "{messages} messages at the destination");
    drop(server);
    println!(
        "{BACKLOG} deferred messages submitted in {:.1}s; after the restart: listening \
         after {:.3}s, first delivery after {:.3}s, all delivered after {:.1}s",
        submitted.as_secs_f64(),
        to_listen.as_secs_f64(),
        to_first.as_secs_f64(),
        to_all.as_secs_f64(),
    );
}

/// A message from [`CLIENT_SENDER`] to `rcpt`, due at once.
fn stored_message(rcpt: &str) -> NewMessage {
    let now = chrono::Utc::now().timestamp_millis();
    NewMessage {
        id: QueueId::generate(),
        mail_from: Mailbox::parse(CLIENT_SENDER),
        recipients: vec![NewRecipient {
            address: Mailbox::parse(rcpt).unwrap(),
            local: false,
        }],
        auth_user: None,
        smtputf8: false,
        content: Arc::new(message(CLIENT_SENDER, rcpt, "stored\r\n")),
        received_at: now,
        first_attempt_at: now,
        claimed_by: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_report_owed_by_the_previous_run_is_sent_once_beside_the_backlog() {
    let _alone = crate::alone().await;
    const PENDING: usize = 50;
    let sink = SmtpSink::start_default().await;
    let dir = tempfile::tempdir().expect("temporary data directory");
    {
        // What a run that stopped right after recording a bounce leaves: the
        // recipient bounced, the content kept for the report, no report queued.
        let store = SqliteStore::open(dir.path(), 1).expect("open the store");
        let bounced = stored_message("gone@dest.example");
        let id = bounced.id.clone();
        store.enqueue(bounced).await.expect("enqueue");
        let update = RecipientUpdate {
            idx: 0,
            status: RecipientStatus::Bounced,
            next_attempt: 0,
            reply: "550 5.1.1 No such user".into(),
            class: None,
            attempted: true,
            path: Default::default(),
        };
        let summary = store
            .record_attempt(&id, vec![update], chrono::Utc::now().timestamp_millis())
            .await
            .expect("record");
        assert!(summary.is_some_and(|s| s.needs_bounce_report()));
        for n in 0..PENDING {
            store
                .enqueue(stored_message(&rcpt(n)))
                .await
                .expect("enqueue");
        }
    }
    let server = hardening::start_in(dir, Routing::Route(sink.addr()), "retry = [\"1s\"]").await;
    let received = sink.wait_for_messages(PENDING + 1, PHASE).await;
    wait_until("every outcome recorded", || async {
        server
            .running
            .store
            .pending_recipients()
            .await
            .expect("count")
            == 0
    })
    .await;
    let received_now = sink.messages();
    assert_eq!(
        received_now.len(),
        received.len(),
        "more arrived: {received_now:?}"
    );
    let reports: Vec<_> = received.iter().filter(|m| m.mail_from.is_empty()).collect();
    assert_eq!(reports.len(), 1, "bounce reports: {reports:?}");
    assert_eq!(reports[0].rcpt_to, [CLIENT_SENDER]);
    assert!(
        reports[0].text().contains("gone@dest.example"),
        "the report names the bounced recipient: {}",
        reports[0].text()
    );
    let delivered: usize = received.iter().filter(|m| !m.mail_from.is_empty()).count();
    assert_eq!(delivered, PENDING);
}
