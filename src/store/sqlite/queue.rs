//! [`QueueStore`] on SQLite: messages, recipients and their claims.

use super::events::insert_event;
use super::spool::{self, Spooled};
use super::{SqliteStore, backend, changes_rows};
use crate::smtp::Mailbox;
use crate::store::*;
use rusqlite::{Connection, OptionalExtension, params};

/// An address as stored: a `Mailbox` written by [`QueueStore::enqueue`], so
/// one that does not parse is a damaged row.
fn stored_mailbox(text: &str) -> rusqlite::Result<Mailbox> {
    Mailbox::parse(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("stored address {text:?} does not parse").into(),
        )
    })
}

/// The envelope sender as stored: empty for the null sender.
fn stored_sender(text: &str) -> rusqlite::Result<Option<Mailbox>> {
    (!text.is_empty()).then(|| stored_mailbox(text)).transpose()
}

/// Marks a message finished (its bounce report, if any, is queued) and drops its
/// content, except for mail to our own domains, which is kept (local mail).
fn finish(conn: &Connection, id: &str) -> rusqlite::Result<()> {
    spool::released(conn, id)?;
    let dropped = conn
        .prepare_cached(
            "UPDATE messages SET finished = 1, content = NULL, spool = NULL, spool_offset = NULL
             WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM recipients r
                 WHERE r.message_id = messages.id AND r.status = 'local')",
        )?
        .execute([id])?;
    if dropped == 0 {
        conn.prepare_cached("UPDATE messages SET finished = 1 WHERE id = ?1")?
            .execute([id])?;
    }
    Ok(())
}

pub(super) fn load_summaries(
    conn: &Connection,
    where_sql: &str,
    arg: &dyn rusqlite::ToSql,
) -> rusqlite::Result<Vec<MessageSummary>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, mail_from, auth_user, size, received_at, smtputf8 FROM messages {where_sql}"
    ))?;
    let mut messages: Vec<MessageSummary> = stmt
        .query_map([arg], |row| {
            Ok(MessageSummary {
                id: QueueId(row.get(0)?),
                mail_from: row.get(1)?,
                auth_user: row.get(2)?,
                size: row.get::<_, i64>(3)? as usize,
                received_at: row.get(4)?,
                smtputf8: row.get(5)?,
                recipients: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut rcpts = conn.prepare_cached(
        "SELECT address, status, attempts, next_attempt, last_reply, last_class, last_attempt FROM recipients WHERE message_id = ?1 ORDER BY idx",
    )?;
    for message in &mut messages {
        message.recipients = rcpts
            .query_map([message.id.as_str()], |row| {
                let status: String = row.get(1)?;
                Ok(RecipientState {
                    address: row.get(0)?,
                    status: RecipientStatus::parse(&status).unwrap_or(RecipientStatus::Deferred),
                    attempts: row.get(2)?,
                    next_attempt: row.get(3)?,
                    last_reply: row.get(4)?,
                    last_class: row.get(5)?,
                    last_attempt: row.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(messages)
}

fn claim_due(
    conn: &Connection,
    node: &str,
    now: i64,
    lease_until: i64,
    limit: usize,
) -> rusqlite::Result<Vec<DueMessage>> {
    // One range scan per status keeps the (status, next_attempt) index usable.
    let mut rows: Vec<(String, i64, String, u32, i64)> = Vec::new();
    let mut select = conn.prepare_cached(
        "SELECT message_id, idx, address, attempts, next_attempt FROM recipients
         WHERE status = ?1 AND next_attempt <= ?2 ORDER BY next_attempt LIMIT ?3",
    )?;
    for status in ["queued", "deferred"] {
        let found = select.query_map(params![status, now, limit as i64], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?;
        for row in found {
            rows.push(row?);
        }
    }
    rows.sort_by_key(|r| r.4);
    rows.truncate(limit);
    let mut lease = conn.prepare_cached(
        "UPDATE recipients SET next_attempt = ?3, claimed_by = ?4 WHERE message_id = ?1 AND idx = ?2",
    )?;
    let mut envelope = conn.prepare_cached(
        "SELECT mail_from, smtputf8, received_at, size FROM messages WHERE id = ?1",
    )?;
    let mut messages: Vec<DueMessage> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (id, idx, address, attempts, _) in rows {
        lease.execute(params![id, idx, lease_until, node])?;
        let recipient = DueRecipient {
            idx: idx as usize,
            address: stored_mailbox(&address)?,
            attempts,
        };
        if let Some(&i) = index.get(&id) {
            messages[i].recipients.push(recipient);
            continue;
        }
        let (mail_from, smtputf8, received_at, size) = envelope.query_row([&id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?;
        index.insert(id.clone(), messages.len());
        messages.push(DueMessage {
            id: QueueId(id),
            mail_from: stored_sender(&mail_from)?,
            size: size as usize,
            smtputf8,
            received_at,
            recipients: vec![recipient],
        });
    }
    Ok(messages)
}

/// The sender's user and the addresses of the updated recipients, for events.
fn event_context(
    conn: &Connection,
    id: &str,
    updates: &[RecipientUpdate],
) -> rusqlite::Result<Option<(Option<String>, Vec<String>)>> {
    let Some(user) = conn
        .prepare_cached("SELECT auth_user FROM messages WHERE id = ?1")?
        .query_row([id], |row| row.get::<_, Option<String>>(0))
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt =
        conn.prepare_cached("SELECT address FROM recipients WHERE message_id = ?1 AND idx = ?2")?;
    let addresses = updates
        .iter()
        .map(|u| stmt.query_row(params![id, u.idx as i64], |row| row.get(0)))
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Some((user, addresses)))
}

/// Pending recipients (of one message, or all) become due at `now`.
fn make_due(conn: &Connection, id: Option<&str>, now: i64) -> rusqlite::Result<usize> {
    match id {
        Some(id) => conn.execute(
            "UPDATE recipients SET next_attempt = ?2, claimed_by = NULL
             WHERE message_id = ?1 AND status IN ('queued', 'deferred')",
            params![id, now],
        ),
        None => conn.execute(
            "UPDATE recipients SET next_attempt = ?1, claimed_by = NULL
             WHERE status IN ('queued', 'deferred') AND next_attempt > ?1",
            [now],
        ),
    }
}

impl QueueStore for SqliteStore {
    fn enqueue(&self, message: NewMessage) -> StoreFuture<'_, ()> {
        // Kept mail (a local recipient) stays in the database: see spool.rs.
        let body = (message.content.len() >= spool::MIN_SIZE
            && !message.recipients.iter().any(|r| r.local))
        .then(|| message.content.clone());
        let facts = super::dashboard::EnqueueFacts::of(&message);
        Box::pin(self.write_accept(body, move |conn, spooled: Option<Spooled>| {
            conn.prepare_cached(
                "INSERT INTO messages (id, mail_from, auth_user, smtputf8, size, received_at, content, spool, spool_offset)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    message.id.as_str(),
                    message.mail_from.as_ref().map_or(String::new(), Mailbox::to_string),
                    message.auth_user,
                    message.smtputf8,
                    message.content.len() as i64,
                    message.received_at,
                    spooled.is_none().then_some(&message.content[..]),
                    spooled.map(|s| s.file),
                    spooled.map(|s| s.offset),
                ])
            })
            .map_err(backend)?;
            let mut stmt = conn
                .prepare_cached(
                    "INSERT INTO recipients (message_id, idx, address, domain, status, next_attempt, claimed_by)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(backend)?;
            for (idx, rcpt) in message.recipients.iter().enumerate() {
                let status = if rcpt.local {
                    RecipientStatus::Local
                } else {
                    RecipientStatus::Queued
                };
                stmt.execute(params![
                    message.id.as_str(),
                    idx as i64,
                    rcpt.address.to_string(),
                    rcpt.address.domain().as_str(),
                    status.as_str(),
                    message.first_attempt_at,
                    message.claimed_by.as_deref().filter(|_| !rcpt.local),
                ])
                .map_err(backend)?;
            }
            for rcpt in &message.recipients {
                insert_event(
                    conn,
                    &Event {
                        id: 0,
                        at: message.received_at,
                        kind: EventKind::Accepted,
                        message_id: Some(message.id.clone()),
                        recipient: Some(rcpt.address.to_string()),
                        user: message.auth_user.clone(),
                        reply: None,
                        class: None,
                        asynchronous: false,
                        domain: None,
                    },
                )
                .map_err(backend)?;
            }
            super::dashboard::record_enqueue(conn, &message, facts).map_err(backend)?;
            Ok(())
        }))
    }

    fn queued_messages(&self, limit: usize) -> StoreFuture<'_, Vec<MessageSummary>> {
        Box::pin(self.read(move |conn| {
            load_summaries(
                conn,
                "WHERE id IN (SELECT DISTINCT message_id FROM recipients WHERE status IN ('queued', 'deferred'))
                 ORDER BY id LIMIT ?1",
                &(limit as i64),
            )
        }))
    }

    fn pending_recipients(&self) -> StoreFuture<'_, usize> {
        Box::pin(self.read(|conn| {
            // Two range counts on the (status, next_attempt) index.
            conn.prepare_cached(
                "SELECT (SELECT COUNT(*) FROM recipients WHERE status = 'queued')
                      + (SELECT COUNT(*) FROM recipients WHERE status = 'deferred')",
            )?
            .query_row([], |row| row.get::<_, i64>(0))
            .map(|n| n as usize)
        }))
    }

    fn message(&self, id: &QueueId) -> StoreFuture<'_, Option<MessageSummary>> {
        let id = id.to_string();
        Box::pin(self.read(move |conn| Ok(load_summaries(conn, "WHERE id = ?1", &id)?.pop())))
    }

    fn message_content(&self, id: &QueueId) -> StoreFuture<'_, Option<Vec<u8>>> {
        let id = id.to_string();
        let dir = self.spool_dir.clone();
        Box::pin(self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT content, spool, spool_offset, size FROM messages WHERE id = ?1",
            )?;
            // A second look: between reading the row and opening its file, the
            // body may have moved into the database, or the message finished.
            for _ in 0..2 {
                let row = stmt
                    .query_row([&id], |row| {
                        Ok((
                            row.get::<_, Option<Vec<u8>>>(0)?,
                            row.get::<_, Option<i64>>(1)?,
                            row.get::<_, Option<i64>>(2)?,
                            row.get::<_, i64>(3)?,
                        ))
                    })
                    .optional()?;
                let (file, offset, size) = match row {
                    Some((None, Some(file), Some(offset), size)) => (file, offset, size),
                    Some((content, _, _, _)) => return Ok(content),
                    None => return Ok(None),
                };
                match spool::read(&dir, Spooled { file, offset }, size as usize) {
                    Ok(body) => return Ok(Some(body)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(rusqlite::Error::ToSqlConversionFailure(
                            format!("spooled body of {id}: {e}").into(),
                        ));
                    }
                }
            }
            Err(rusqlite::Error::ToSqlConversionFailure(
                format!("the spool file of {id} is missing").into(),
            ))
        }))
    }

    fn delete_message(&self, id: &QueueId) -> StoreFuture<'_, bool> {
        let id = id.to_string();
        Box::pin(self.write(move |conn| {
            spool::released(conn, &id).map_err(backend)?;
            changes_rows(conn, "DELETE FROM messages WHERE id = ?1", [id])
        }))
    }

    fn claim_due(
        &self,
        node: &str,
        now: i64,
        lease_until: i64,
        limit: usize,
    ) -> StoreFuture<'_, Vec<DueMessage>> {
        let node = node.to_string();
        Box::pin(
            self.write(move |conn| {
                claim_due(conn, &node, now, lease_until, limit).map_err(backend)
            }),
        )
    }

    fn record_attempt(
        &self,
        id: &QueueId,
        updates: Vec<RecipientUpdate>,
        now: i64,
    ) -> StoreFuture<'_, Option<MessageSummary>> {
        let id = id.to_string();
        let dir = self.spool_dir.clone();
        Box::pin(self.write(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE recipients SET status = ?3, next_attempt = ?4, last_reply = ?5, last_class = ?6,
                     attempts = attempts + ?7, last_attempt = CASE WHEN ?7 THEN ?8 ELSE last_attempt END,
                     claimed_by = NULL WHERE message_id = ?1 AND idx = ?2",
                )
                .map_err(backend)?;
            for u in &updates {
                stmt.execute(params![
                    id,
                    u.idx as i64,
                    u.status.as_str(),
                    u.next_attempt,
                    u.reply,
                    u.class,
                    i64::from(u.attempted),
                    now
                ])
                    .map_err(backend)?;
            }
            super::dashboard::record_attempts(conn, &id, &updates, now).map_err(backend)?;
            if let Some((user, addresses)) = event_context(conn, &id, &updates).map_err(backend)? {
                for (u, address) in updates.iter().zip(addresses) {
                    let Some(kind) = EventKind::for_status(u.status) else {
                        continue;
                    };
                    let event = Event {
                        id: 0,
                        at: now,
                        kind,
                        message_id: Some(QueueId(id.clone())),
                        recipient: Some(address),
                        user: user.clone(),
                        reply: Some(u.reply.clone()),
                        class: u.class.clone(),
                        asynchronous: false,
                        domain: None,
                    };
                    insert_event(conn, &event).map_err(backend)?;
                }
            }
            let pending: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM recipients WHERE message_id = ?1 AND status IN ('queued', 'deferred')",
                )
                .and_then(|mut stmt| stmt.query_row([&id], |row| row.get(0)))
                .map_err(backend)?;
            if pending > 0 {
                if updates.iter().any(|u| u.status == RecipientStatus::Deferred) {
                    // The body must outlive its spool file, not hold it (spool.rs).
                    // A failure leaves it spooled: the outcome is recorded anyway.
                    if let Err(e) = spool::relocate(conn, &dir, &id) {
                        tracing::warn!(queue_id = %id, error = %e, "cannot move a deferred body into the database");
                    }
                }
                return Ok(None);
            }
            let summary = load_summaries(conn, "WHERE id = ?1", &id).map_err(backend)?.pop();
            if summary.as_ref().is_some_and(|s| !s.needs_bounce_report()) {
                finish(conn, &id).map_err(backend)?;
            }
            Ok(summary)
        }))
    }

    fn finalize(&self, id: &QueueId) -> StoreFuture<'_, ()> {
        let id = id.to_string();
        Box::pin(self.write(move |conn| finish(conn, &id).map_err(backend)))
    }

    fn unfinalized(
        &self,
        after: Option<&QueueId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<MessageSummary>> {
        let after = after.map_or_else(String::new, |id| id.to_string());
        Box::pin(self.read(move |conn| {
            // Mail only for our own domains owes no report and keeps its content.
            load_summaries(
                conn,
                &format!(
                    "WHERE id > ?1 AND finished = 0 AND NOT EXISTS (SELECT 1 FROM recipients r
                         WHERE r.message_id = messages.id AND r.status IN ('queued', 'deferred'))
                     AND EXISTS (SELECT 1 FROM recipients r
                         WHERE r.message_id = messages.id AND r.status != 'local')
                     ORDER BY id LIMIT {limit}"
                ),
                &after,
            )
        }))
    }

    fn retry_now(&self, id: Option<&QueueId>, now: i64) -> StoreFuture<'_, usize> {
        let id = id.map(|id| id.to_string());
        Box::pin(self.write(move |conn| {
            conn.execute(
                "INSERT INTO control (key, value) VALUES ('retry_requested', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [now],
            )
            .map_err(backend)?;
            make_due(conn, id.as_deref(), now).map_err(backend)
        }))
    }

    fn unclaim(&self, id: &QueueId, now: i64) -> StoreFuture<'_, ()> {
        let id = id.to_string();
        Box::pin(
            self.write(move |conn| make_due(conn, Some(&id), now).map(|_| ()).map_err(backend)),
        )
    }

    fn retry_requested_at(&self) -> StoreFuture<'_, i64> {
        Box::pin(self.read(|conn| {
            conn.prepare_cached("SELECT value FROM control WHERE key = 'retry_requested'")?
                .query_row([], |row| row.get(0))
                .optional()
                .map(Option::unwrap_or_default)
        }))
    }

    fn release_claims(&self, _node: &str, now: i64, lease_until: i64) -> StoreFuture<'_, usize> {
        // One node at a time uses a SQLite store: every claim is its previous run's,
        // whatever that run's node name was.
        Box::pin(self.write(move |conn| {
            conn.execute(
                "UPDATE recipients SET next_attempt = ?1, claimed_by = NULL WHERE next_attempt > ?1
                 AND (status = 'queued' OR (status = 'deferred'
                      AND (claimed_by IS NOT NULL OR next_attempt <= ?2)))",
                [now, lease_until],
            )
            .map_err(backend)
        }))
    }

    fn renew_claims(
        &self,
        node: &str,
        held: Vec<QueueId>,
        now: i64,
        lease_until: i64,
    ) -> StoreFuture<'_, usize> {
        let node = node.to_string();
        Box::pin(self.write(move |conn| {
            conn.execute(
                "INSERT INTO nodes (name, last_seen) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen",
                params![node, now],
            )
            .map_err(backend)?;
            let mut renew = conn
                .prepare_cached(
                    "UPDATE recipients SET next_attempt = ?4 WHERE message_id = ?1
                     AND claimed_by = ?2 AND status IN ('queued', 'deferred') AND next_attempt > ?3",
                )
                .map_err(backend)?;
            let mut renewed = 0;
            for id in &held {
                renewed += renew
                    .execute(params![id.as_str(), node, now, lease_until])
                    .map_err(backend)?;
            }
            Ok(renewed)
        }))
    }

    fn clock(&self) -> StoreFuture<'_, i64> {
        Box::pin(async { Ok(chrono::Utc::now().timestamp_millis()) })
    }

    fn cluster_status(&self) -> StoreFuture<'_, ClusterStatus> {
        Box::pin(self.read(|conn| {
            let mut claims: std::collections::BTreeMap<String, (i64, usize)> = conn
                .prepare_cached("SELECT name, last_seen FROM nodes")?
                .query_map([], |row| Ok((row.get(0)?, (row.get(1)?, 0))))?
                .collect::<rusqlite::Result<_>>()?;
            let mut pending = 0;
            let mut counts = conn.prepare_cached(
                "SELECT claimed_by, COUNT(*) FROM recipients
                 WHERE status IN ('queued', 'deferred') GROUP BY claimed_by",
            )?;
            let rows = counts.query_map([], |row| {
                Ok((row.get::<_, Option<String>>(0)?, row.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (holder, n) = row?;
                pending += n as usize;
                if let Some(holder) = holder {
                    claims.entry(holder).or_insert((0, 0)).1 += n as usize;
                }
            }
            Ok(ClusterStatus {
                nodes: claims
                    .into_iter()
                    .map(|(name, (last_seen, claims))| NodeStatus {
                        name,
                        last_seen,
                        claims,
                    })
                    .collect(),
                pending,
            })
        }))
    }
}
