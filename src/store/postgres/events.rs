//! [`EventStore`] on PostgreSQL: the event log, appended to by message writes too.
//!
//! A reader pages by id (`GET /v1/events?after=`, webhooks), so ids must become
//! visible in increasing order: an event must never commit after an event with a
//! greater id is visible, or a reader that has passed the greater id skips it.
//! A sequence alone does not give that once several nodes write (each takes its
//! ids mid-transaction and commits whenever its batch is done). So the writes of
//! a transaction only note their events ([`Conn::log_event`]), and the writer
//! inserts them all as the last statement before COMMIT ([`insert_logged`]),
//! under a transaction-level advisory lock that the COMMIT releases: the
//! transactions that log events take their ids and commit one after another,
//! cluster-wide. PostgreSQL makes a commit visible before it releases the
//! transaction's locks, so when the next holder draws its ids, everything with
//! smaller ids is visible already.
//!
//! What that costs: the nodes' commits that carry events (nearly all of them:
//! every acceptance logs one) no longer overlap; each waits for the previous
//! holder's WAL flush. Each node's group commit makes its batches larger in
//! turn, so the rate holds up better than the serialization suggests
//! (docs/cluster.md has the numbers). An outbox sequenced by one leader node
//! would avoid the lock but add a leader election and a second hop before an
//! event is visible; the lock keeps every node equal.

use super::{Conn, PostgresStore, rows};
use crate::store::*;

/// The high half of the advisory lock key that orders event ids; the low half
/// is the `events` table's oid, so stores in different schemas of one database
/// (tests) do not wait for each other.
const EVENTS_LOCK: i64 = 0x6576_656e; // "even"

/// Inserts the events the transaction's writes logged, as its last statement:
/// takes the events lock, then the ids. One statement, one round trip; the
/// lock is in a materialized CTE that the insert's rows are joined with, so it
/// is taken before any id is drawn (ids are drawn as rows are inserted, and
/// PostgreSQL evaluates the volatile `nextval` after the sort by `n`, in order).
pub(super) async fn insert_logged(conn: &Conn) -> StoreResult<()> {
    let events = conn.take_logged();
    if events.is_empty() {
        return Ok(());
    }
    let mut c = EventColumns::default();
    for e in &events {
        c.push(e);
    }
    conn.execute(
        "WITH ordered AS MATERIALIZED (
             SELECT pg_advisory_xact_lock(($1::BIGINT << 32) | 'events'::regclass::oid::BIGINT))
         INSERT INTO events (at, kind, message_id, recipient, user_name, reply, class, asynchronous, domain)
         SELECT e.at, e.kind, e.message_id, e.recipient, e.user_name, e.reply, e.class, e.asynchronous, e.domain
         FROM ordered, unnest($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[],
                              $8::TEXT[], $9::BOOLEAN[], $10::TEXT[]) WITH ORDINALITY
             AS e(at, kind, message_id, recipient, user_name, reply, class, asynchronous, domain, n)
         ORDER BY e.n",
        &[
            &EVENTS_LOCK,
            &c.at,
            &c.kind,
            &c.message_id,
            &c.recipient,
            &c.user,
            &c.reply,
            &c.class,
            &c.asynchronous,
            &c.domain,
        ],
    )
    .await?;
    Ok(())
}

/// Events as one array per column (what `unnest` takes).
#[derive(Default)]
struct EventColumns {
    at: Vec<i64>,
    kind: Vec<&'static str>,
    message_id: Vec<Option<String>>,
    recipient: Vec<Option<String>>,
    user: Vec<Option<String>>,
    reply: Vec<Option<String>>,
    class: Vec<Option<String>>,
    asynchronous: Vec<bool>,
    domain: Vec<Option<String>>,
}

impl EventColumns {
    fn push(&mut self, e: &Event) {
        self.at.push(e.at);
        self.kind.push(e.kind.as_str());
        self.message_id
            .push(e.message_id.as_ref().map(|m| m.as_str().to_string()));
        self.recipient.push(e.recipient.clone());
        self.user.push(e.user.clone());
        self.reply.push(e.reply.clone());
        self.class.push(e.class.clone());
        self.asynchronous.push(e.asynchronous);
        self.domain.push(e.domain.clone());
    }
}

impl EventStore for PostgresStore {
    fn events(&self, after: i64, limit: usize) -> StoreFuture<'_, Vec<Event>> {
        Box::pin(async move {
            let conn = self.reader().await?;
            let found = conn
                .query(
                    "SELECT id, at, kind, message_id, recipient, user_name, reply, class, asynchronous, domain
                     FROM events WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&after, &(limit as i64)],
                )
                .await?;
            rows(found, |row| {
                let kind: String = row.try_get(2)?;
                Ok(Event {
                    id: row.try_get(0)?,
                    at: row.try_get(1)?,
                    kind: EventKind::parse(&kind).unwrap_or(EventKind::Deferred),
                    message_id: row.try_get::<_, Option<String>>(3)?.map(QueueId),
                    recipient: row.try_get(4)?,
                    user: row.try_get(5)?,
                    reply: row.try_get(6)?,
                    class: row.try_get(7)?,
                    asynchronous: row.try_get(8)?,
                    domain: row.try_get(9)?,
                })
            })
        })
    }

    fn append_events(&self, events: Vec<Event>) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                for e in events {
                    super::dashboard::record_feedback(conn, &e).await?;
                    conn.log_event(e);
                }
                Ok(())
            })
        }))
    }
}
