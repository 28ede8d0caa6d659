//! The store's contract: what every backend must do, as tests run against each
//! (SQLite always; PostgreSQL when `OUTPOST_TEST_POSTGRES` names a server, e.g.
//! `postgres://postgres@127.0.0.1:5432/test`; `scripts/test.sh` sets it when one
//! answers there). Each test is an `async fn(&Backend)` listed once in
//! [`contract!`], which makes one `#[tokio::test]` per backend of it. A test
//! opens the store through the [`Backend`] (again, to see what survives a
//! reopen); on PostgreSQL each test gets a schema of its own, dropped after it, so
//! the tests run in parallel on one database.

use super::*;
use crate::smtp::Mailbox;
use std::io::Write;
use std::sync::Arc;

/// The environment variable naming the PostgreSQL server of the tests.
pub const POSTGRES_ENV: &str = "OUTPOST_TEST_POSTGRES";

/// A message from alice to `rcpts`, received at 1 and due at 1.
pub fn message(rcpts: &[&str]) -> NewMessage {
    NewMessage {
        id: QueueId::generate(),
        mail_from: Mailbox::parse("a@example.com"),
        recipients: rcpts
            .iter()
            .map(|r| NewRecipient {
                address: Mailbox::parse(r).unwrap(),
                local: false,
            })
            .collect(),
        auth_user: Some("alice".into()),
        smtputf8: false,
        content: Arc::new(b"Subject: t\r\n\r\nbody\r\n".to_vec()),
        received_at: 1,
        first_attempt_at: 1,
        claimed_by: None,
    }
}

/// The outcome of an attempt on recipient `idx`, with reply `r`.
fn update(idx: usize, status: RecipientStatus) -> RecipientUpdate {
    RecipientUpdate {
        idx,
        status,
        next_attempt: 50,
        reply: "r".into(),
        class: None,
        attempted: true,
        path: Default::default(),
    }
}

/// Where a test's store lives.
pub enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(TestSchema),
}

impl Backend {
    pub fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh schema on the server of `OUTPOST_TEST_POSTGRES`; `None` when it
    /// is not set (see [`TestSchema::create`]).
    pub async fn postgres() -> Option<Backend> {
        TestSchema::create().await.map(Backend::Postgres)
    }

    /// Opens the store (again: the same data each time).
    pub async fn open(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(dir) => SqliteStore::open(dir.path(), 64).unwrap(),
            Backend::Postgres(schema) => PostgresStore::open(&schema.url, 64).await.unwrap(),
        }
    }
}

/// A schema of its own on the test server, dropped (with everything in it) when
/// this is dropped, passed or failed.
pub struct TestSchema {
    server: String,
    name: String,
    /// The server's URL with `search_path` set to the schema.
    pub url: String,
}

impl TestSchema {
    /// A fresh schema on the server of `OUTPOST_TEST_POSTGRES`; `None` (said
    /// once on stderr, past the test harness's capture, so a run without the
    /// server does not look like one with it) when the variable is not set.
    pub async fn create() -> Option<TestSchema> {
        let Some(server) = std::env::var(POSTGRES_ENV).ok().filter(|s| !s.is_empty()) else {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: the PostgreSQL store tests ({POSTGRES_ENV} is not set; \
                     scripts/test.sh sets it when a server answers on 127.0.0.1:5432)"
                );
            });
            return None;
        };
        let name = format!("t_{:016x}", rand::random::<u64>());
        let client = connect(&server).await;
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create schema {name} on {server}: {e}"));
        let sep = if server.contains('?') { '&' } else { '?' };
        let url = format!("{server}{sep}options=-csearch_path%3D{name}");
        Some(TestSchema { server, name, url })
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: a
        // runtime of its own on another thread does the dropping.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    connect(&server)
                        .await
                        .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
                        .await
                })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("cannot drop test schema {}: {e}", self.name);
        }
    }
}

/// A plain client of `url` (its connection driven on the current runtime).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={url}: cannot connect: {e}"));
    tokio::spawn(connection);
    client
}

/// One `#[tokio::test]` per backend for each contract test named.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Backend::sqlite()).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(backend) = super::Backend::postgres().await {
                        super::$name(&backend).await;
                    }
                }
            )*
        }
    };
}

contract!(
    enqueue_then_read_back_after_reopen,
    claim_record_finalize_cycle,
    unfinalized_is_paged_and_local_mail_keeps_its_content,
    retry_now_and_release_claims_make_recipients_due,
    release_claims_frees_claimed_retries_but_not_distant_ones,
    release_claims_frees_the_nodes_own_claims_only,
    renewed_claims_are_not_taken_over_until_their_node_stops,
    the_clock_is_the_stores_and_moves_on,
    unclaim_makes_a_claimed_message_due_without_a_retry_request,
    claims_are_oldest_first_limited_and_grouped_by_message,
    concurrent_enqueues_share_commits_and_all_land,
    a_failing_write_does_not_undo_its_batch_neighbours,
    a_failing_statement_does_not_undo_its_batch_neighbours,
    domains_are_granted_and_revoked,
    domains_keep_their_keys_and_conflict,
    pausing_and_resuming_a_domain_is_logged_and_frees_its_mail,
    keys_are_found_by_hash_listed_revoked_and_go_with_their_user,
    events_are_logged_for_acceptance_and_outcomes,
    appended_events_are_paged_in_order,
    suppressions_per_domain,
    suppressions_are_paged_by_domain_and_address,
    bounces_and_complaints_by_email_are_counted_for_the_sending_domain,
    counters_and_bounce_examples_follow_outcomes_within_scope,
    search_finds_by_words_and_filters_newest_first,
    details_show_attempts_and_message_facts,
    pending_lists_and_counts_within_scope,
    connection_slots_are_limited_leased_renewed_and_released,
    connection_slots_taken_at_once_stay_within_the_limit,
    the_pace_gives_each_send_a_turn_of_its_own,
    destination_suspensions_are_shared_until_a_retry,
    secrets_are_stored_once_and_shared,
    webhook_leases_let_one_node_post_at_a_time,
    old_webhook_cursors_are_imported_without_going_back,
);

async fn enqueue_then_read_back_after_reopen(b: &Backend) {
    let msg = message(&["b@example.net", "c@example.org"]);
    let id = msg.id.clone();
    {
        let store = b.open().await;
        store.enqueue(msg.clone()).await.unwrap();
    }
    let store = b.open().await;
    let summary = store.message(&id).await.unwrap().unwrap();
    assert_eq!(summary.recipients.len(), 2);
    assert_eq!(summary.recipients[1].address, "c@example.org");
    assert_eq!(summary.recipients[0].status, RecipientStatus::Queued);
    assert_eq!(
        store.message_content(&id).await.unwrap().unwrap(),
        *msg.content
    );
    assert_eq!(store.queued_messages(10).await.unwrap().len(), 1);
    assert_eq!(store.pending_recipients().await.unwrap(), 2);
    assert!(store.delete_message(&id).await.unwrap());
    assert_eq!(store.pending_recipients().await.unwrap(), 0);
    assert!(store.message(&id).await.unwrap().is_none());
}

async fn claim_record_finalize_cycle(b: &Backend) {
    let store = b.open().await;
    let msg = message(&["a@x.example", "b@y.example"]);
    let id = msg.id.clone();
    store.enqueue(msg).await.unwrap();
    let claimed = store.claim_due("n1", 10, 1000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].recipients.len(), 2);
    assert!(
        store
            .claim_due("n1", 10, 1000, 10)
            .await
            .unwrap()
            .is_empty(),
        "claimed twice"
    );
    let update = |idx, status| RecipientUpdate {
        idx,
        status,
        next_attempt: 50,
        reply: "r".into(),
        class: None,
        attempted: true,
        path: Default::default(),
    };
    let done = store
        .record_attempt(
            &id,
            vec![
                update(0, RecipientStatus::Delivered),
                update(1, RecipientStatus::Deferred),
            ],
            10,
        )
        .await
        .unwrap();
    assert!(done.is_none());
    let again = store.claim_due("n1", 60, 2000, 10).await.unwrap();
    assert_eq!(again[0].recipients.len(), 1);
    assert_eq!(again[0].recipients[0].attempts, 1);
    let bounced = RecipientUpdate {
        class: Some("bad-mailbox".into()),
        ..update(1, RecipientStatus::Bounced)
    };
    let done = store
        .record_attempt(&id, vec![bounced], 60)
        .await
        .unwrap()
        .expect("complete");
    assert_eq!(done.recipients[1].status, RecipientStatus::Bounced);
    assert_eq!(
        done.recipients[1].last_class.as_deref(),
        Some("bad-mailbox")
    );
    assert_eq!(done.recipients[0].last_class, None);
    // Each recipient's own last attempt, for the bounce report.
    assert_eq!(
        (
            done.recipients[0].last_attempt,
            done.recipients[1].last_attempt
        ),
        (Some(10), Some(60))
    );
    assert_eq!(store.unfinalized(None, 10).await.unwrap().len(), 1);
    store.finalize(&id).await.unwrap();
    assert!(store.unfinalized(None, 10).await.unwrap().is_empty());
    assert!(store.message_content(&id).await.unwrap().is_none());
    assert!(store.message(&id).await.unwrap().is_some());
}

async fn unfinalized_is_paged_and_local_mail_keeps_its_content(b: &Backend) {
    let store = b.open().await;
    let local = |mut msg: NewMessage, which: &[bool]| {
        for (r, local) in msg.recipients.iter_mut().zip(which) {
            r.local = *local;
        }
        msg
    };
    let bounced = |idx| RecipientUpdate {
        idx,
        status: RecipientStatus::Bounced,
        next_attempt: 0,
        reply: "550 5.1.1 unknown".into(),
        class: None,
        attempted: true,
        path: Default::default(),
    };
    let local_only = local(message(&["postmaster@relay.test"]), &[true]);
    let local_id = local_only.id.clone();
    store.enqueue(local_only).await.unwrap();
    let mixed = local(
        message(&["postmaster@relay.test", "b@x.example"]),
        &[true, false],
    );
    let mixed_id = mixed.id.clone();
    store.enqueue(mixed).await.unwrap();
    store
        .record_attempt(&mixed_id, vec![bounced(1)], 5)
        .await
        .unwrap()
        .expect("done");
    let mut owing = vec![mixed_id.clone()];
    for _ in 0..3 {
        let msg = message(&["a@x.example"]);
        owing.push(msg.id.clone());
        store.enqueue(msg).await.unwrap();
        store
            .record_attempt(owing.last().unwrap(), vec![bounced(0)], 5)
            .await
            .unwrap();
    }
    owing.sort();

    // Pages of two, in id order, without the mail for our own domain only.
    let first = store.unfinalized(None, 2).await.unwrap();
    let second = store.unfinalized(Some(&first[1].id), 2).await.unwrap();
    let listed: Vec<QueueId> = first.iter().chain(&second).map(|m| m.id.clone()).collect();
    assert_eq!(listed, owing);
    assert!(
        store
            .unfinalized(Some(&second[1].id), 2)
            .await
            .unwrap()
            .is_empty()
    );

    // Finished, the mixed message is listed no more, and keeps its content
    // for its local recipient; so does the local-only one.
    store.finalize(&mixed_id).await.unwrap();
    store.finalize(&local_id).await.unwrap();
    assert!(
        !store
            .unfinalized(None, 10)
            .await
            .unwrap()
            .iter()
            .any(|m| m.id == mixed_id)
    );
    assert!(store.message_content(&mixed_id).await.unwrap().is_some());
    assert!(store.message_content(&local_id).await.unwrap().is_some());
    store.finalize(&owing[3]).await.unwrap();
    assert!(store.message_content(&owing[3]).await.unwrap().is_none());
}

async fn retry_now_and_release_claims_make_recipients_due(b: &Backend) {
    let store = b.open().await;
    let mut msg = message(&["a@x.example"]);
    msg.first_attempt_at = 1_000_000;
    store.enqueue(msg).await.unwrap();
    assert!(store.claim_due("n1", 10, 20, 10).await.unwrap().is_empty());
    assert_eq!(store.release_claims("n1", 10, 600).await.unwrap(), 1);
    assert_eq!(store.claim_due("n1", 10, 5_000, 10).await.unwrap().len(), 1);
    assert_eq!(store.retry_requested_at().await.unwrap(), 0);
    assert_eq!(store.retry_now(None, 11).await.unwrap(), 1);
    assert_eq!(store.retry_requested_at().await.unwrap(), 11);
    assert_eq!(store.claim_due("n1", 11, 5_000, 10).await.unwrap().len(), 1);
}

async fn release_claims_frees_claimed_retries_but_not_distant_ones(b: &Backend) {
    let store = b.open().await;
    let msg = message(&["a@x.example", "b@y.example"]);
    let id = msg.id.clone();
    store.enqueue(msg).await.unwrap();
    store.claim_due("n1", 10, 20, 10).await.unwrap();
    let deferred = |idx, next_attempt| RecipientUpdate {
        idx,
        status: RecipientStatus::Deferred,
        next_attempt,
        reply: "451".into(),
        class: None,
        attempted: true,
        path: Default::default(),
    };
    store
        .record_attempt(&id, vec![deferred(0, 30), deferred(1, 1_000_000)], 10)
        .await
        .unwrap();
    // The retry of the first recipient is claimed, then the process dies.
    assert_eq!(store.claim_due("n1", 30, 630, 10).await.unwrap().len(), 1);
    assert!(store.claim_due("n1", 40, 640, 10).await.unwrap().is_empty());
    // Restart at 40 with a lease of 600: the claim (until 630) is void; the
    // retry due at 1,000,000 keeps its time.
    assert_eq!(store.release_claims("n1", 40, 640).await.unwrap(), 1);
    let due = store.claim_due("n1", 40, 640, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].recipients.len(), 1);
    assert_eq!(due[0].recipients[0].idx, 0);
}

/// A restarting node voids its previous run's claims, not those of other nodes,
/// which may be alive; one node at a time uses SQLite, so there every claim is
/// its own.
async fn release_claims_frees_the_nodes_own_claims_only(b: &Backend) {
    let store = b.open().await;
    let due_at = |at| NewMessage {
        first_attempt_at: at,
        ..message(&["a@x.example"])
    };
    let (mine, theirs) = (due_at(1), due_at(2));
    // Handed by inbound straight to n2's delivery.
    let reserved = NewMessage {
        first_attempt_at: 1_000,
        claimed_by: Some("n2".into()),
        ..message(&["b@y.example"])
    };
    let mine_id = mine.id.clone();
    for m in [mine, theirs, reserved] {
        store.enqueue(m).await.unwrap();
    }
    let claim = |node, now| {
        let store = store.clone();
        async move {
            let due = store.claim_due(node, now, now + 80, 10).await.unwrap();
            due.into_iter().map(|m| m.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        store.claim_due("n1", 10, 90, 1).await.unwrap()[0].id,
        mine_id
    );
    assert_eq!(store.claim_due("n2", 10, 90, 1).await.unwrap().len(), 1);
    assert!(claim("n3", 10).await.is_empty());
    let released = store.release_claims("n1", 20, 100).await.unwrap();
    match b {
        Backend::Sqlite(_) => {
            assert_eq!(released, 3);
            assert_eq!(claim("n3", 20).await.len(), 3);
        }
        Backend::Postgres(_) => {
            assert_eq!(released, 1);
            assert_eq!(claim("n3", 20).await, vec![mine_id]);
            assert_eq!(store.release_claims("n2", 30, 110).await.unwrap(), 2);
            assert_eq!(claim("n3", 30).await.len(), 2);
        }
    }
}

/// A node renews the claims of the messages it still holds, so a slow delivery
/// is not taken over; once it stops, another node takes the work at the lease's
/// end. Renewals are the nodes' heartbeats in the cluster's status.
async fn renewed_claims_are_not_taken_over_until_their_node_stops(b: &Backend) {
    let store = b.open().await;
    let msg = message(&["a@x.example", "b@y.example"]);
    let id = msg.id.clone();
    store.enqueue(msg).await.unwrap();
    assert_eq!(store.claim_due("n1", 10, 100, 10).await.unwrap().len(), 1);
    let renew = |node, held: &[&QueueId], now| {
        let held = held.iter().map(|id| (*id).clone()).collect();
        store.renew_claims(node, held, now, now + 100)
    };
    // Another node's renewal, or one for messages not held, changes nothing.
    assert_eq!(renew("n2", &[&id], 50).await.unwrap(), 0);
    assert_eq!(renew("n1", &[], 50).await.unwrap(), 0);
    // The first recipient's attempt ends its claim: only the second is renewed.
    store
        .record_attempt(&id, vec![update(0, RecipientStatus::Delivered)], 60)
        .await
        .unwrap();
    assert_eq!(renew("n1", &[&id], 70).await.unwrap(), 1);
    assert!(
        store
            .claim_due("n2", 100, 200, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // n1 stopped renewing at 70: at 170 its lease is over and n2 takes over.
    let taken = store.claim_due("n2", 170, 270, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].recipients[0].idx, 1);
    let status = store.cluster_status().await.unwrap();
    assert_eq!(status.pending, 1);
    let node = |name: &str, last_seen, claims| NodeStatus {
        name: name.into(),
        last_seen,
        claims,
    };
    assert_eq!(status.nodes, vec![node("n1", 70, 0), node("n2", 50, 1)]);
}

/// The clock leases are read from: on this machine's test server, within a
/// few seconds of the local clock, and never going back.
async fn the_clock_is_the_stores_and_moves_on(b: &Backend) {
    let store = b.open().await;
    let first = store.clock().await.unwrap();
    let local = chrono::Utc::now().timestamp_millis();
    assert!((first - local).abs() < 5_000, "{first} vs {local}");
    let second = store.clock().await.unwrap();
    assert!(second >= first, "{second} < {first}");
}

async fn concurrent_enqueues_share_commits_and_all_land(b: &Backend) {
    let store = b.open().await;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.enqueue(message(&["x@example.net"])).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(store.queued_messages(1000).await.unwrap().len(), 200);
}

async fn a_failing_write_does_not_undo_its_batch_neighbours(b: &Backend) {
    let store = b.open().await;
    let user = |name: &str| UserRecord {
        name: name.into(),
        password_hash: "h".into(),
        admin: false,
        domains: vec!["Example.com".into()],
    };
    let (a, b, c) = tokio::join!(
        store.add_user(user("alice")),
        store.add_user(user("alice")),
        store.add_user(user("bob"))
    );
    assert_eq!([a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(), 1);
    c.unwrap();
    let users = store.users().await.unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0].domains, vec!["example.com".to_string()]);
    assert!(store.set_password("bob", "h2").await.unwrap());
    assert!(!store.set_password("carol", "h2").await.unwrap());
    assert!(store.remove_user("bob").await.unwrap());
    assert!(store.user("bob").await.unwrap().is_none());
}

async fn domains_are_granted_and_revoked(b: &Backend) {
    let store = b.open().await;
    assert!(!store.grant_domain("alice", "a.example").await.unwrap());
    store
        .add_user(UserRecord {
            name: "alice".into(),
            password_hash: "x".into(),
            admin: false,
            domains: vec!["a.example".into()],
        })
        .await
        .unwrap();
    assert!(store.grant_domain("alice", "B.example").await.unwrap());
    assert!(store.grant_domain("alice", "b.example").await.unwrap());
    let alice = store.user("alice").await.unwrap().unwrap();
    assert_eq!(alice.domains, ["a.example", "b.example"]);
    assert!(store.revoke_domain("alice", "A.example").await.unwrap());
    assert!(!store.revoke_domain("alice", "a.example").await.unwrap());
    assert!(!store.revoke_domain("bob", "b.example").await.unwrap());
    let alice = store.user("alice").await.unwrap().unwrap();
    assert_eq!(alice.domains, ["b.example"]);
}

async fn pausing_and_resuming_a_domain_is_logged_and_frees_its_mail(b: &Backend) {
    let store = b.open().await;
    let mut msg = message(&["a@x.example"]);
    msg.first_attempt_at = 50_000;
    let id = msg.id.clone();
    store.enqueue(msg).await.unwrap();
    let pause = DomainPause {
        domain: "Example.COM".into(),
        since: 10,
        reason: "complaint rate 0.50%".into(),
    };
    assert!(store.pause_domain(pause.clone()).await.unwrap());
    assert!(!store.pause_domain(pause).await.unwrap(), "paused already");
    assert_eq!(
        store.paused_domains().await.unwrap(),
        vec![DomainPause {
            domain: "example.com".into(),
            since: 10,
            reason: "complaint rate 0.50%".into(),
        }]
    );
    assert!(store.claim_due("n1", 20, 30, 10).await.unwrap().is_empty());
    assert!(store.resume_domain("example.com", 20).await.unwrap());
    assert!(!store.resume_domain("example.com", 21).await.unwrap());
    assert!(store.paused_domains().await.unwrap().is_empty());
    let due = store.claim_due("n1", 20, 30, 10).await.unwrap();
    assert_eq!(due.len(), 1, "the domain's mail is due at resume");
    assert_eq!(due[0].id, id);
    let events: Vec<_> = store
        .events(0, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.domain.is_some())
        .map(|e| (e.kind, e.at, e.domain.unwrap(), e.reply.unwrap()))
        .collect();
    assert_eq!(
        events,
        vec![
            (
                EventKind::DomainPaused,
                10,
                "example.com".to_string(),
                "complaint rate 0.50%".to_string()
            ),
            (
                EventKind::DomainResumed,
                20,
                "example.com".to_string(),
                "1 recipient(s) made due".to_string()
            ),
        ]
    );
}

async fn keys_are_found_by_hash_listed_revoked_and_go_with_their_user(b: &Backend) {
    let store = b.open().await;
    let key = |user: &str, hash: &[u8]| NewApiKey {
        user: user.into(),
        name: Some("ci".into()),
        key_hash: hash.to_vec(),
        domains: vec!["A.example".into()],
        created_at: 1,
    };
    assert_eq!(store.add_api_key(key("alice", b"h1")).await.unwrap(), None);
    store
        .add_user(UserRecord {
            name: "alice".into(),
            password_hash: "x".into(),
            admin: false,
            domains: vec!["a.example".into()],
        })
        .await
        .unwrap();
    let id = store
        .add_api_key(key("alice", b"h1"))
        .await
        .unwrap()
        .unwrap();
    let second = store
        .add_api_key(key("alice", b"h2"))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        store.add_api_key(key("alice", b"h2")).await,
        Err(StoreError::Conflict(_))
    ));
    let found = store.api_key_by_hash(b"h1").await.unwrap().unwrap();
    assert_eq!((found.id, found.user.as_str()), (id, "alice"));
    assert_eq!(found.domains, vec!["a.example".to_string()]);
    assert_eq!(found.last_used_at, None);
    store.touch_api_key(id, 42).await.unwrap();
    let listed = store.api_keys(Some("alice")).await.unwrap();
    assert_eq!(
        listed.iter().map(|k| k.id).collect::<Vec<_>>(),
        vec![id, second]
    );
    assert_eq!(listed[0].last_used_at, Some(42));
    assert_eq!(store.api_keys(None).await.unwrap().len(), 2);
    assert!(store.api_keys(Some("bob")).await.unwrap().is_empty());
    assert!(store.revoke_api_key(id).await.unwrap());
    assert!(!store.revoke_api_key(id).await.unwrap());
    assert!(store.api_key_by_hash(b"h1").await.unwrap().is_none());
    assert!(store.remove_user("alice").await.unwrap());
    assert!(store.api_key_by_hash(b"h2").await.unwrap().is_none());
}

async fn events_are_logged_for_acceptance_and_outcomes(b: &Backend) {
    let store = b.open().await;
    let msg = message(&["a@x.example", "b@y.example"]);
    let id = msg.id.clone();
    store.enqueue(msg).await.unwrap();
    let update = RecipientUpdate {
        idx: 1,
        status: RecipientStatus::Bounced,
        next_attempt: 0,
        reply: "550 5.1.1 unknown".into(),
        class: Some("bad-mailbox".into()),
        attempted: true,
        path: Default::default(),
    };
    store.record_attempt(&id, vec![update], 2).await.unwrap();
    let events = store.events(0, 10).await.unwrap();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.recipient.clone().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Accepted, "a@x.example".to_string()),
            (EventKind::Accepted, "b@y.example".to_string()),
            (EventKind::Bounced, "b@y.example".to_string()),
        ]
    );
    assert_eq!(events[2].class.as_deref(), Some("bad-mailbox"));
    assert_eq!(events[2].user.as_deref(), Some("alice"));
    assert_eq!(
        (events[0].at, events[2].at),
        (1, 2),
        "stamped by the caller"
    );
    let after = store.events(events[1].id, 10).await.unwrap();
    assert_eq!(after.len(), 1);
}

async fn suppressions_per_domain(b: &Backend) {
    let store = b.open().await;
    let s = |domain: &str, address: &str| Suppression {
        domain: domain.into(),
        address: address.into(),
        reason: "manual".into(),
        created_at: 1,
    };
    assert!(
        store
            .add_suppression(s("A.example", "X@y.example"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .add_suppression(s("a.example", "x@y.example"))
            .await
            .unwrap()
    );
    assert!(
        store
            .add_suppression(s("a.example", "z@y.example"))
            .await
            .unwrap()
    );
    assert!(
        store
            .add_suppression(s("b.example", "x@y.example"))
            .await
            .unwrap()
    );
    assert!(
        store
            .suppression("a.example", "x@Y.example")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .suppression("c.example", "x@y.example")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .suppressions(Some("a.example"), None, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    let page = store
        .suppressions(None, Some(("a.example".into(), "x@y.example".into())), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    assert!(
        store
            .remove_suppression("a.example", "x@y.example")
            .await
            .unwrap()
    );
    assert!(
        !store
            .remove_suppression("a.example", "x@y.example")
            .await
            .unwrap()
    );
}

async fn bounces_and_complaints_by_email_are_counted_for_the_sending_domain(b: &Backend) {
    let store = b.open().await;
    let msg = message(&["a@x.example", "b@x.example"]);
    let id = msg.id.clone();
    store.enqueue(msg).await.unwrap();
    let event = |kind, asynchronous, class: Option<&str>| Event {
        id: 0,
        at: 7_200_000,
        kind,
        message_id: Some(id.clone()),
        recipient: Some("a@x.example".into()),
        user: None,
        reply: None,
        class: class.map(str::to_string),
        asynchronous,
        domain: None,
    };
    store
        .append_events(vec![
            event(EventKind::Complained, true, None),
            event(EventKind::Bounced, true, Some("bad-mailbox")),
            // Not learnt by email: its counter was written with its attempt.
            event(EventKind::Bounced, false, Some("bad-mailbox")),
        ])
        .await
        .unwrap();
    let mut rows: Vec<_> = store
        .counters(None, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.sending_domain, r.outcome, r.class, r.count))
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (
                "example.com".into(),
                "bounced".into(),
                "bad-mailbox".into(),
                1
            ),
            ("example.com".into(), "complained".into(), String::new(), 1),
        ]
    );
}

/// A message with a chosen id (so its order is known) received at `ms`.
fn message_at(ms: i64, from: &str, rcpts: &[&str], content: &str) -> NewMessage {
    NewMessage {
        id: QueueId(format!("{ms:012X}{:08X}", 0)),
        mail_from: Mailbox::parse(from),
        content: Arc::new(content.as_bytes().to_vec()),
        received_at: ms,
        ..message(rcpts)
    }
}

/// A write whose statement fails in the database (a duplicate key hash), sent
/// together with others so they share a commit.
async fn a_failing_statement_does_not_undo_its_batch_neighbours(b: &Backend) {
    let store = b.open().await;
    store
        .add_user(UserRecord {
            name: "alice".into(),
            password_hash: "h".into(),
            admin: false,
            domains: Vec::new(),
        })
        .await
        .unwrap();
    let key = || NewApiKey {
        user: "alice".into(),
        name: None,
        key_hash: b"same".to_vec(),
        domains: Vec::new(),
        created_at: 1,
    };
    let msg = message(&["a@x.example"]);
    let id = msg.id.clone();
    let suppression = Suppression {
        domain: "example.com".into(),
        address: "s@x.example".into(),
        reason: "manual".into(),
        created_at: 1,
    };
    let (first, second, enqueued, added) = tokio::join!(
        store.add_api_key(key()),
        store.add_api_key(key()),
        store.enqueue(msg),
        store.add_suppression(suppression)
    );
    let conflicts = [&first, &second]
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict(_))))
        .count();
    assert_eq!(conflicts, 1, "{first:?} {second:?}");
    assert!(first.or(second).unwrap().is_some());
    enqueued.unwrap();
    assert!(added.unwrap());
    assert!(store.message(&id).await.unwrap().is_some());
    assert!(
        store
            .suppression("example.com", "s@x.example")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.api_keys(None).await.unwrap().len(), 1);
}

async fn unclaim_makes_a_claimed_message_due_without_a_retry_request(b: &Backend) {
    let store = b.open().await;
    let msg = message(&["a@x.example"]);
    let id = msg.id.clone();
    store.enqueue(msg).await.unwrap();
    assert_eq!(store.claim_due("n1", 10, 1_000, 10).await.unwrap().len(), 1);
    assert!(
        store
            .claim_due("n1", 20, 1_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    store.unclaim(&id, 20).await.unwrap();
    assert_eq!(store.retry_requested_at().await.unwrap(), 0);
    let due = store.claim_due("n1", 20, 1_000, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, id);
    // retry_now of one message: its claimed recipient is due again, and noted.
    assert_eq!(store.retry_now(Some(&id), 30).await.unwrap(), 1);
    assert_eq!(store.retry_requested_at().await.unwrap(), 30);
    assert_eq!(store.claim_due("n1", 30, 1_000, 10).await.unwrap().len(), 1);
}

async fn claims_are_oldest_first_limited_and_grouped_by_message(b: &Backend) {
    let store = b.open().await;
    let due_at = |at: i64, from: &str, rcpts: &[&str]| NewMessage {
        first_attempt_at: at,
        mail_from: Mailbox::parse(from),
        ..message(rcpts)
    };
    let later = due_at(30, "a@example.com", &["a@x.example", "b@x.example"]);
    let first = due_at(10, "", &["c@y.example"]);
    let second = due_at(20, "a@example.com", &["d@z.example"]);
    let not_yet = due_at(100, "a@example.com", &["e@z.example"]);
    for m in [&later, &first, &second, &not_yet] {
        store.enqueue(m.clone()).await.unwrap();
    }
    let claimed = store.claim_due("n1", 50, 500, 3).await.unwrap();
    let ids: Vec<&QueueId> = claimed.iter().map(|m| &m.id).collect();
    assert_eq!(ids, vec![&first.id, &second.id, &later.id]);
    assert_eq!(claimed[0].mail_from, None, "the null sender");
    assert_eq!(claimed[0].size, first.content.len());
    assert_eq!(claimed[0].received_at, 1);
    assert_eq!(claimed[0].recipients[0].address.to_string(), "c@y.example");
    assert_eq!(claimed[0].recipients[0].attempts, 0);
    assert_eq!(claimed[2].recipients.len(), 1, "limited to 3 recipients");
    let rest = store.claim_due("n1", 50, 500, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, later.id);
    assert_ne!(rest[0].recipients[0].idx, claimed[2].recipients[0].idx);
    assert_eq!(
        store.pending_recipients().await.unwrap(),
        5,
        "claims keep recipients pending"
    );
}

async fn domains_keep_their_keys_and_conflict(b: &Backend) {
    let store = b.open().await;
    let key = |selector: &str, algorithm, byte: u8| DkimKeyRecord {
        selector: selector.into(),
        algorithm,
        private_key: vec![byte; 4],
        public_key: vec![byte + 1; 3],
    };
    let domain = SendingDomain {
        name: "Example.COM".into(),
        created_at: 7,
        keys: vec![
            key("s2", DkimAlgorithm::Ed25519, 1),
            key("s1", DkimAlgorithm::Rsa, 3),
        ],
    };
    store.add_domain(domain.clone()).await.unwrap();
    store
        .add_domain(SendingDomain {
            name: "b.example".into(),
            created_at: 8,
            keys: Vec::new(),
        })
        .await
        .unwrap();
    assert!(matches!(
        store.add_domain(domain).await,
        Err(StoreError::Conflict(_))
    ));
    let domains = store.domains().await.unwrap();
    assert_eq!(
        domains.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        vec!["b.example", "example.com"]
    );
    let example = &domains[1];
    assert_eq!(example.created_at, 7);
    // RSA first, then Ed25519.
    assert_eq!(
        example.keys,
        vec![
            key("s1", DkimAlgorithm::Rsa, 3),
            key("s2", DkimAlgorithm::Ed25519, 1)
        ]
    );
    assert!(store.remove_domain("EXAMPLE.com").await.unwrap());
    assert!(!store.remove_domain("example.com").await.unwrap());
    assert_eq!(store.domains().await.unwrap().len(), 1);
}

async fn appended_events_are_paged_in_order(b: &Backend) {
    let store = b.open().await;
    let event = |kind, at, asynchronous, domain: Option<&str>| Event {
        id: 0,
        at,
        kind,
        message_id: Some(QueueId(format!("{:020X}", at))),
        recipient: Some("x@y.example".into()),
        user: Some("alice".into()),
        reply: Some("why".into()),
        class: Some("policy".into()),
        asynchronous,
        domain: domain.map(str::to_string),
    };
    let sent = vec![
        event(EventKind::Unsubscribed, 3, false, None),
        event(EventKind::Complained, 1, true, None),
        event(EventKind::DomainPaused, 2, false, Some("example.com")),
    ];
    store.append_events(sent.clone()).await.unwrap();
    let first = store.events(0, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(first[0].id < first[1].id);
    let rest = store.events(first[1].id, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    let got: Vec<Event> = first
        .into_iter()
        .chain(rest)
        .map(|e| Event { id: 0, ..e })
        .collect();
    assert_eq!(got, sent, "in the order appended, every field kept");
    assert!(store.events(i64::MAX - 1, 10).await.unwrap().is_empty());
}

async fn suppressions_are_paged_by_domain_and_address(b: &Backend) {
    let store = b.open().await;
    let s = |domain: &str, address: &str, at| Suppression {
        domain: domain.into(),
        address: address.into(),
        reason: format!("bounce: {address}"),
        created_at: at,
    };
    for (i, (d, a)) in [
        ("b.example", "z@x.example"),
        ("a.example", "b@x.example"),
        ("a.example", "Z@x.example"),
        ("a.example", "a-b@x.example"),
        ("b.example", "a@x.example"),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(store.add_suppression(s(d, a, i as i64)).await.unwrap());
    }
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store.suppressions(None, after.clone(), 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.domain.clone(), last.address.clone()));
        all.extend(page);
    }
    let keys: Vec<(&str, &str)> = all
        .iter()
        .map(|s| (s.domain.as_str(), s.address.as_str()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("a.example", "a-b@x.example"),
            ("a.example", "b@x.example"),
            ("a.example", "z@x.example"),
            ("b.example", "a@x.example"),
            ("b.example", "z@x.example"),
        ]
    );
    assert_eq!(
        all[2],
        Suppression {
            domain: "a.example".into(),
            address: "z@x.example".into(),
            reason: "bounce: Z@x.example".into(),
            created_at: 2,
        },
        "stored lower case, the reason as given"
    );
    let b_only = store
        .suppressions(
            Some("B.example"),
            Some(("b.example".into(), "a@x.example".into())),
            10,
        )
        .await
        .unwrap();
    assert_eq!(b_only.len(), 1);
    assert_eq!(b_only[0].address, "z@x.example");
}

async fn counters_and_bounce_examples_follow_outcomes_within_scope(b: &Backend) {
    let store = b.open().await;
    let msg = message(&["a@x.example", "b@y.example", "c@z.example"]);
    let id = msg.id.clone();
    store.enqueue(msg).await.unwrap();
    let hour2 = 7_200_000;
    let delivered = RecipientUpdate {
        path: AttemptPath {
            mx_host: Some("mx1.mail.x.example".into()),
            tls: Some("TLSv1.3".into()),
        },
        ..update(0, RecipientStatus::Delivered)
    };
    let bounced = RecipientUpdate {
        class: Some("bad-mailbox".into()),
        reply: "550 5.1.1 no such user".into(),
        ..update(1, RecipientStatus::Bounced)
    };
    let not_tried = RecipientUpdate {
        attempted: false,
        ..update(2, RecipientStatus::Deferred)
    };
    store
        .record_attempt(&id, vec![delivered, bounced, not_tried], hour2)
        .await
        .unwrap();
    let unsubscribe = |address: &str| Suppression {
        domain: "Example.com".into(),
        address: address.into(),
        reason: "unsubscribe".into(),
        created_at: hour2 + 1,
    };
    store
        .add_suppression(unsubscribe("u@v.example"))
        .await
        .unwrap();
    // Already suppressed: not counted twice.
    store
        .add_suppression(unsubscribe("u@v.example"))
        .await
        .unwrap();
    let sorted = |mut rows: Vec<CounterRow>| {
        rows.sort_by(|a, b| (a.hour, &a.outcome).cmp(&(b.hour, &b.outcome)));
        rows.into_iter()
            .map(|r| {
                (
                    r.hour,
                    r.sending_domain,
                    r.provider,
                    r.outcome,
                    r.class,
                    r.count,
                )
            })
            .collect::<Vec<_>>()
    };
    let row = |hour, provider: &str, outcome: &str, class: &str, count| {
        (
            hour,
            "example.com".to_string(),
            provider.to_string(),
            outcome.to_string(),
            class.to_string(),
            count,
        )
    };
    let all = vec![
        row(0, "", "accepted", "", 3),
        row(2, "y.example", "bounced", "bad-mailbox", 1),
        row(2, "x.example", "delivered", "", 1),
        row(2, "", "unsubscribed", "", 1),
    ];
    assert_eq!(sorted(store.counters(None, 0).await.unwrap()), all);
    assert_eq!(sorted(store.counters(None, 1).await.unwrap()), all[1..]);
    let scope = |d: &[&str]| Some(d.iter().map(|d| d.to_string()).collect::<Vec<_>>());
    assert_eq!(
        sorted(store.counters(scope(&["EXAMPLE.com"]), 0).await.unwrap()),
        all
    );
    assert!(
        store
            .counters(scope(&["other.example"]), 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.counters(scope(&[]), 0).await.unwrap().is_empty());
    let example = BounceExample {
        sending_domain: "example.com".into(),
        class: "bad-mailbox".into(),
        reply: "550 5.1.1 no such user".into(),
        at: hour2,
    };
    assert_eq!(
        store.bounce_examples(None).await.unwrap(),
        vec![example.clone()]
    );
    assert_eq!(
        store
            .bounce_examples(scope(&["example.com"]))
            .await
            .unwrap(),
        vec![example]
    );
    assert!(
        store
            .bounce_examples(scope(&["other.example"]))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn search_finds_by_words_and_filters_newest_first(b: &Backend) {
    let store = b.open().await;
    let subject = |s: &str| format!("Subject: {s}\r\n\r\nbody\r\n");
    let m1 = message_at(
        10,
        "a@example.com",
        &["bob@one.example", "dan@one.example"],
        &subject("Invoice March"),
    );
    let m2 = message_at(
        20,
        "a@example.com",
        &["carol@two.example"],
        &subject("Newsletter"),
    );
    let m3 = message_at(
        30,
        "z@other.example",
        &["bob@three.example"],
        &subject("Invoice April"),
    );
    for m in [&m1, &m2, &m3] {
        store.enqueue(m.clone()).await.unwrap();
    }
    store
        .record_attempt(&m1.id, vec![update(0, RecipientStatus::Delivered)], 40)
        .await
        .unwrap();
    let query = MessageQuery {
        limit: 10,
        ..Default::default()
    };
    let found = |q: MessageQuery| {
        let store = store.clone();
        async move {
            store
                .search_messages(q)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    let text = |t: &str| MessageQuery {
        text: Some(t.into()),
        ..query.clone()
    };
    let (id1, id2, id3) = (m1.id.clone(), m2.id.clone(), m3.id.clone());
    assert_eq!(
        found(query.clone()).await,
        vec![id3.clone(), id2.clone(), id1.clone()]
    );
    assert_eq!(found(text("bob")).await, vec![id3.clone(), id1.clone()]);
    assert_eq!(found(text("invoice  one.example")).await, vec![id1.clone()]);
    assert_eq!(found(text("NEWSLETTER")).await, vec![id2.clone()]);
    assert_eq!(found(text("z@other.example")).await, vec![id3.clone()]);
    assert_eq!(found(text(id2.as_str())).await, vec![id2.clone()]);
    assert_eq!(found(text("news")).await, vec![id2.clone()], "a prefix");
    assert!(found(text("invoice newsletter")).await.is_empty());
    assert!(found(text("nothing")).await.is_empty());
    let status = |s| MessageQuery {
        status: Some(s),
        ..query.clone()
    };
    assert_eq!(
        found(status(RecipientStatus::Delivered)).await,
        vec![id1.clone()]
    );
    assert_eq!(
        found(status(RecipientStatus::Queued)).await,
        vec![id3.clone(), id2.clone(), id1.clone()]
    );
    let since = MessageQuery {
        since: Some(20),
        ..query.clone()
    };
    assert_eq!(found(since).await, vec![id3.clone(), id2.clone()]);
    let before = MessageQuery {
        before: Some(id3.clone()),
        limit: 1,
        ..query.clone()
    };
    assert_eq!(found(before).await, vec![id2.clone()]);
    let scoped = |d: &str| MessageQuery {
        domains: Some(vec![d.to_string()]),
        ..text("bob")
    };
    assert_eq!(found(scoped("Other.example")).await, vec![id3.clone()]);
    assert_eq!(found(scoped("example.com")).await, vec![id1.clone()]);
    let rows = store.search_messages(text("march")).await.unwrap();
    assert_eq!(
        rows,
        vec![MessageRow {
            id: id1,
            mail_from: "a@example.com".into(),
            subject: "Invoice March".into(),
            received_at: 10,
            first_recipient: "bob@one.example".into(),
            recipients: 2,
            statuses: vec!["delivered".into(), "queued".into()],
        }]
    );
}

async fn details_show_attempts_and_message_facts(b: &Backend) {
    let store = b.open().await;
    let msg = message_at(
        5,
        "a@Example.com",
        &["a@x.example", "b@y.example"],
        "Received: from x ([1.2.3.4])\r\n\tby relay (Outpost) with ESMTPSA id 1;\r\n\tdate\r\n\
         DKIM-Signature: v=1; a=rsa-sha256\r\nSubject: Hello\r\n\r\nbody\r\n",
    );
    let id = msg.id.clone();
    store.enqueue(msg).await.unwrap();
    let suspended = RecipientUpdate {
        attempted: false,
        reply: "destination suspended".into(),
        ..update(0, RecipientStatus::Deferred)
    };
    store.record_attempt(&id, vec![suspended], 6).await.unwrap();
    let delivered = RecipientUpdate {
        path: AttemptPath {
            mx_host: Some("mx.x.example".into()),
            tls: Some("TLSv1.3".into()),
        },
        ..update(0, RecipientStatus::Delivered)
    };
    let bounced = update(1, RecipientStatus::Bounced);
    let done = store
        .record_attempt(&id, vec![delivered, bounced], 7)
        .await
        .unwrap()
        .expect("every recipient final");
    assert!(done.needs_bounce_report());
    let details = store.message_details(&id).await.unwrap().unwrap();
    assert_eq!(details.summary, done);
    assert_eq!(details.subject, "Hello");
    assert_eq!(details.sending_domain, "example.com");
    assert_eq!(details.protocol, "ESMTPSA");
    assert!(details.dkim_signed);
    assert!(
        details.content_kept,
        "kept until the bounce report is queued"
    );
    let attempt = |idx, at, status, mx: Option<&str>, tls: Option<&str>, reply: &str, attempted| {
        AttemptRecord {
            idx,
            at,
            status,
            mx_host: mx.map(str::to_string),
            tls: tls.map(str::to_string),
            reply: reply.into(),
            attempted,
        }
    };
    assert_eq!(
        details.attempts,
        vec![
            attempt(
                0,
                6,
                RecipientStatus::Deferred,
                None,
                None,
                "destination suspended",
                false
            ),
            attempt(
                0,
                7,
                RecipientStatus::Delivered,
                Some("mx.x.example"),
                Some("TLSv1.3"),
                "r",
                true
            ),
            attempt(1, 7, RecipientStatus::Bounced, None, None, "r", true),
        ]
    );
    assert_eq!(
        details.summary.recipients[0].attempts, 1,
        "not tried: not counted"
    );
    store.finalize(&id).await.unwrap();
    let details = store.message_details(&id).await.unwrap().unwrap();
    assert!(!details.content_kept);
    assert!(
        store
            .message_details(&QueueId(format!("{:020X}", 1)))
            .await
            .unwrap()
            .is_none()
    );
}

async fn pending_lists_and_counts_within_scope(b: &Backend) {
    let store = b.open().await;
    let m1 = message_at(
        10,
        "a@example.com",
        &["a@x.example", "b@Y.example"],
        "Subject: 1\r\n\r\n",
    );
    let m2 = message_at(
        20,
        "s@other.example",
        &["c@z.example"],
        "Subject: 2\r\n\r\n",
    );
    store.enqueue(m1.clone()).await.unwrap();
    store.enqueue(m2.clone()).await.unwrap();
    let deferred = RecipientUpdate {
        next_attempt: 99,
        reply: "451 later".into(),
        ..update(1, RecipientStatus::Deferred)
    };
    store
        .record_attempt(
            &m1.id,
            vec![update(0, RecipientStatus::Delivered), deferred],
            5,
        )
        .await
        .unwrap();
    let all = store.pending(None, 10).await.unwrap();
    assert_eq!(
        all,
        vec![
            PendingRecipient {
                message_id: m1.id.clone(),
                address: "b@y.example".into(),
                domain: "y.example".into(),
                status: RecipientStatus::Deferred,
                attempts: 1,
                next_attempt: 99,
                last_reply: Some("451 later".into()),
            },
            PendingRecipient {
                message_id: m2.id.clone(),
                address: "c@z.example".into(),
                domain: "z.example".into(),
                status: RecipientStatus::Queued,
                attempts: 0,
                next_attempt: 1,
                last_reply: None,
            },
        ]
    );
    assert_eq!(store.pending(None, 1).await.unwrap(), all[..1]);
    let scope = |d: &[&str]| Some(d.iter().map(|d| d.to_string()).collect::<Vec<_>>());
    assert_eq!(
        store.pending(scope(&["other.example"]), 10).await.unwrap(),
        all[1..]
    );
    assert_eq!(store.pending_count(None).await.unwrap(), 2);
    assert_eq!(
        store.pending_count(scope(&["Example.com"])).await.unwrap(),
        1
    );
    assert_eq!(store.pending_count(scope(&[])).await.unwrap(), 0);
    assert_eq!(store.pending_recipients().await.unwrap(), 2);
    assert_eq!(store.queued_messages(10).await.unwrap().len(), 2);
    assert_eq!(store.queued_messages(1).await.unwrap()[0].id, m1.id);
}

/// The shared shaping of `store`; `None` (and nothing to test) on SQLite, which
/// one node uses at a time and which therefore shares none.
fn shared_shaping<'a>(b: &Backend, store: &'a dyn Store) -> Option<&'a dyn SharedShaping> {
    let shared = store.shared_shaping();
    assert_eq!(
        shared.is_some(),
        matches!(b, Backend::Postgres(_)),
        "only PostgreSQL shares shaping"
    );
    shared
}

async fn connection_slots_are_limited_leased_renewed_and_released(b: &Backend) {
    let store = b.open().await;
    let Some(shaping) = shared_shaping(b, store.as_ref()) else {
        return;
    };
    let take = |holder: &'static str, limit, now| {
        shaping.take_slot("mx:a", limit, holder, now, now + 1000)
    };
    let s0 = take("n1", 2, 100).await.unwrap().unwrap();
    let s1 = take("n2", 2, 100).await.unwrap().unwrap();
    assert_eq!((s0.number, s1.number), (0, 1));
    assert_eq!((s0.holder.as_str(), s1.holder.as_str()), ("n1", "n2"));
    assert_eq!(take("n3", 2, 100).await.unwrap(), None, "both held");
    // Each destination has slots of its own.
    let other = shaping.take_slot("mx:b", 2, "n3", 100, 1100).await.unwrap();
    assert_eq!(other.map(|s| s.number), Some(0));
    // n1 renews; n2 does not, and its lease runs out at 1100.
    let renewed = shaping.renew_slots(vec![s0.clone()], 2100).await.unwrap();
    assert_eq!(renewed, vec![s0.clone()]);
    assert_eq!(take("n3", 2, 1099).await.unwrap(), None);
    let s1_again = take("n3", 2, 1100).await.unwrap().unwrap();
    assert_eq!((s1_again.number, s1_again.holder.as_str()), (1, "n3"));
    // n2 comes back: its slot was taken over, so its renewal and its release
    // do nothing to n3's.
    let renewed = shaping
        .renew_slots(vec![s0.clone(), s1.clone()], 3000)
        .await
        .unwrap();
    assert_eq!(renewed, vec![s0.clone()]);
    shaping.release_slot(s1).await.unwrap();
    assert_eq!(take("n2", 2, 1200).await.unwrap(), None);
    // A released slot is free at once, for the lowest limit too.
    shaping.release_slot(s0).await.unwrap();
    assert_eq!(
        take("n2", 1, 1200).await.unwrap().map(|s| s.number),
        Some(0)
    );
    assert_eq!(
        take("n2", 1, 1200).await.unwrap(),
        None,
        "limit 1: slot 1 is out of reach"
    );
    assert_eq!(
        take("n2", 3, 1200).await.unwrap().map(|s| s.number),
        Some(2)
    );
    assert!(
        shaping
            .renew_slots(Vec::new(), 5000)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Nodes asking at the same moment never get more slots than the limit
/// between them, and none twice.
async fn connection_slots_taken_at_once_stay_within_the_limit(b: &Backend) {
    let stores = [b.open().await, b.open().await];
    if shared_shaping(b, stores[0].as_ref()).is_none() {
        return;
    }
    let mut held = Vec::new();
    for round in 0..3 {
        let tasks: Vec<_> = (0..12)
            .map(|i| {
                let store = stores[i % 2].clone();
                tokio::spawn(async move {
                    let shaping = store.shared_shaping().expect("shared");
                    let holder = format!("n{i}");
                    shaping.take_slot("mx:busy", 3, &holder, 10, 1000).await
                })
            })
            .collect();
        for task in tasks {
            held.extend(task.await.unwrap().unwrap());
        }
        assert!(held.len() <= 3, "round {round}: {held:?}");
    }
    // Losers of a race get nothing and ask again: every slot ends up held.
    let shaping = stores[0].shared_shaping().unwrap();
    while held.len() < 3 {
        match shaping
            .take_slot("mx:busy", 3, "n", 10, 1000)
            .await
            .unwrap()
        {
            Some(slot) => held.push(slot),
            None => panic!("a slot is left but was not given: {held:?}"),
        }
    }
    let mut numbers: Vec<u32> = held.iter().map(|s| s.number).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [0, 1, 2]);
    assert_eq!(
        shaping
            .take_slot("mx:busy", 3, "n", 10, 1000)
            .await
            .unwrap(),
        None
    );
}

async fn the_pace_gives_each_send_a_turn_of_its_own(b: &Backend) {
    let store = b.open().await;
    let Some(shaping) = shared_shaping(b, store.as_ref()) else {
        return;
    };
    assert_eq!(shaping.next_send("mx:a", 100, 1000).await.unwrap(), 1000);
    assert_eq!(shaping.next_send("mx:a", 100, 1000).await.unwrap(), 1100);
    assert_eq!(shaping.next_send("mx:a", 100, 1050).await.unwrap(), 1200);
    assert_eq!(shaping.next_send("mx:b", 100, 1050).await.unwrap(), 1050);
    // After a quiet spell the pace starts from now, not from the past.
    assert_eq!(shaping.next_send("mx:a", 100, 5000).await.unwrap(), 5000);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let shaping = store.shared_shaping().expect("shared");
                shaping.next_send("mx:c", 10, 10_000).await
            })
        })
        .collect();
    let mut turns = Vec::new();
    for task in tasks {
        turns.push(task.await.unwrap().unwrap());
    }
    turns.sort_unstable();
    assert_eq!(
        turns,
        (0..20).map(|i| 10_000 + 10 * i).collect::<Vec<i64>>()
    );
}

async fn destination_suspensions_are_shared_until_a_retry(b: &Backend) {
    let store = b.open().await;
    let Some(shaping) = shared_shaping(b, store.as_ref()) else {
        return;
    };
    let suspension = |destination: &str, until, node: &str| DestinationSuspension {
        destination: destination.into(),
        until,
        reply: format!("451 4.7.1 slow down ({node})"),
        node: node.into(),
    };
    shaping
        .suspend_destination(suspension("mx:b", 2000, "n1"))
        .await
        .unwrap();
    shaping
        .suspend_destination(suspension("mx:a", 3000, "n2"))
        .await
        .unwrap();
    // A shorter one does not cut a longer one short; a longer one replaces it.
    shaping
        .suspend_destination(suspension("mx:a", 2500, "n3"))
        .await
        .unwrap();
    shaping
        .suspend_destination(suspension("mx:b", 2200, "n3"))
        .await
        .unwrap();
    assert_eq!(
        shaping.destination_suspensions(1000).await.unwrap(),
        [
            suspension("mx:a", 3000, "n2"),
            suspension("mx:b", 2200, "n3")
        ]
    );
    assert_eq!(
        shaping.destination_suspensions(2200).await.unwrap(),
        [suspension("mx:a", 3000, "n2")]
    );
    // An operator's retry, even of one message, lifts them all.
    store.enqueue(message(&["a@x.example"])).await.unwrap();
    let id = store.queued_messages(1).await.unwrap()[0].id.clone();
    store.retry_now(Some(&id), 1000).await.unwrap();
    assert!(
        shaping
            .destination_suspensions(1000)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn secrets_are_stored_once_and_shared(b: &Backend) {
    let store = b.open().await;
    let (first, second) = tokio::join!(
        store.shared_secret("k", vec![1; 32]),
        store.shared_secret("k", vec![2; 32])
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first, second, "both callers get the one stored");
    assert!(first == vec![1; 32] || first == vec![2; 32]);
    assert_eq!(
        store.shared_secret("other", vec![3]).await.unwrap(),
        vec![3]
    );
    drop(store);
    let store = b.open().await;
    assert_eq!(store.shared_secret("k", vec![4; 32]).await.unwrap(), first);
}

async fn webhook_leases_let_one_node_post_at_a_time(b: &Backend) {
    let store = b.open().await;
    assert_eq!(store.webhook_cursor("e").await.unwrap(), None);
    assert_eq!(
        store.lease_webhook("e", "a", 10, 100).await.unwrap(),
        Some(0)
    );
    // a holds it until 100: b is refused, a renews.
    assert_eq!(store.lease_webhook("e", "b", 50, 140).await.unwrap(), None);
    assert!(store.advance_webhook("e", "a", 5).await.unwrap());
    assert_eq!(
        store.lease_webhook("e", "a", 60, 160).await.unwrap(),
        Some(5)
    );
    assert_eq!(store.lease_webhook("e", "b", 159, 250).await.unwrap(), None);
    // Another endpoint is leased on its own.
    assert_eq!(
        store.lease_webhook("f", "b", 60, 160).await.unwrap(),
        Some(0)
    );
    // a's lease runs out at 160: b takes over from the cursor a recorded.
    assert_eq!(
        store.lease_webhook("e", "b", 160, 250).await.unwrap(),
        Some(5)
    );
    assert_eq!(
        store.webhook_cursor("e").await.unwrap(),
        Some(WebhookCursor {
            acked: 5,
            holder: Some("b".into()),
            lease_until: 250
        })
    );
    // a no longer moves the cursor; b does, never back.
    assert!(!store.advance_webhook("e", "a", 9).await.unwrap());
    assert!(store.advance_webhook("e", "b", 3).await.unwrap());
    assert_eq!(store.webhook_cursor("e").await.unwrap().unwrap().acked, 5);
    assert!(store.advance_webhook("e", "b", 8).await.unwrap());
    // b's lease ran out but nobody took it: b still records what it posted.
    assert!(store.advance_webhook("e", "b", 12).await.unwrap());
    assert_eq!(
        store.lease_webhook("e", "a", 251, 300).await.unwrap(),
        Some(12)
    );
}

async fn old_webhook_cursors_are_imported_without_going_back(b: &Backend) {
    let store = b.open().await;
    store.import_webhook_cursor("e", 7).await.unwrap();
    assert_eq!(
        store.webhook_cursor("e").await.unwrap(),
        Some(WebhookCursor {
            acked: 7,
            holder: None,
            lease_until: 0
        })
    );
    store.import_webhook_cursor("e", 3).await.unwrap();
    assert_eq!(store.lease_webhook("e", "a", 1, 10).await.unwrap(), Some(7));
    store.import_webhook_cursor("e", 9).await.unwrap();
    let cursor = store.webhook_cursor("e").await.unwrap().unwrap();
    assert_eq!((cursor.acked, cursor.holder.as_deref()), (9, Some("a")));
}
