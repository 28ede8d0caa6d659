//! [`EventStore`] on PostgreSQL: the event log, appended to by message writes too.
//!
//! Ids come from a sequence; with one writer per database (one node) they are
//! handed out in commit order, so a reader paging by id never skips an event
//! committed later with a smaller id. Several writers will need more (docs/cluster.md).

use super::{Conn, PostgresStore, rows};
use crate::store::*;

pub(super) async fn insert_event(conn: &Conn, e: &Event) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO events (at, kind, message_id, recipient, user_name, reply, class, asynchronous, domain)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &e.at,
            &e.kind.as_str(),
            &e.message_id.as_ref().map(QueueId::as_str),
            &e.recipient,
            &e.user,
            &e.reply,
            &e.class,
            &e.asynchronous,
            &e.domain,
        ],
    )
    .await?;
    Ok(())
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
                for e in &events {
                    insert_event(conn, e).await?;
                    super::dashboard::record_feedback(conn, e).await?;
                }
                Ok(())
            })
        }))
    }
}
