//! [`EventStore`] on SQLite: the event log, appended to by message writes too.

use super::{SqliteStore, backend};
use crate::store::*;
use rusqlite::{Connection, params};

pub(super) fn insert_event(conn: &Connection, e: &Event) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO events (at, kind, message_id, recipient, user, reply, class, asynchronous, domain)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        e.at,
        e.kind.as_str(),
        e.message_id.as_ref().map(|m| m.as_str().to_string()),
        e.recipient,
        e.user,
        e.reply,
        e.class,
        e.asynchronous,
        e.domain
    ])?;
    Ok(())
}

impl EventStore for SqliteStore {
    fn events(&self, after: i64, limit: usize) -> StoreFuture<'_, Vec<Event>> {
        Box::pin(self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, at, kind, message_id, recipient, user, reply, class, asynchronous, domain FROM events
                 WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![after, limit as i64], |row| {
                let kind: String = row.get(2)?;
                Ok(Event {
                    id: row.get(0)?,
                    at: row.get(1)?,
                    kind: EventKind::parse(&kind).unwrap_or(EventKind::Deferred),
                    message_id: row.get::<_, Option<String>>(3)?.map(QueueId),
                    recipient: row.get(4)?,
                    user: row.get(5)?,
                    reply: row.get(6)?,
                    class: row.get(7)?,
                    asynchronous: row.get(8)?,
                    domain: row.get(9)?,
                })
            })?
            .collect()
        }))
    }

    fn append_events(&self, events: Vec<Event>) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| {
            events
                .iter()
                .try_for_each(|e| {
                    insert_event(conn, e)?;
                    super::dashboard::record_feedback(conn, e)
                })
                .map_err(backend)
        }))
    }
}
