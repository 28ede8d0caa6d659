//! [`QueueStore`] on PostgreSQL: messages, recipients and their claims.
//!
//! `claim_due` locks the rows it claims with `FOR UPDATE SKIP LOCKED`: nodes
//! claiming at the same time each take different recipients instead of waiting
//! for (or claiming twice) the ones another is taking.

use super::dashboard::{ENQUEUE_SQL, EnqueueFacts};
use super::{Conn, Params, PostgresStore, rows};
use crate::smtp::Mailbox;
use crate::store::*;
use std::collections::HashMap;

/// An address as stored: a `Mailbox` written by [`QueueStore::enqueue`], so
/// one that does not parse is a damaged row.
fn stored_mailbox(text: &str) -> StoreResult<Mailbox> {
    Mailbox::parse(text)
        .ok_or_else(|| StoreError::Backend(format!("stored address {text:?} does not parse")))
}

/// The envelope sender as stored: empty for the null sender.
fn stored_sender(text: &str) -> StoreResult<Option<Mailbox>> {
    (!text.is_empty()).then(|| stored_mailbox(text)).transpose()
}

/// Marks a message finished (its bounce report, if any, is queued) and drops its
/// content, except for mail to our own domains, which is kept (local mail).
const FINISH: &str = "UPDATE messages SET finished = TRUE, content = CASE WHEN EXISTS (
        SELECT 1 FROM recipients r WHERE r.message_id = messages.id AND r.status = 'local')
    THEN content END WHERE id = $1";

const PENDING: &str = "('queued', 'deferred')";

/// The summaries of the messages `filter` selects (a `WHERE ... ORDER BY ...`
/// clause over `messages`), with their recipients.
pub(super) async fn load_summaries(
    conn: &Conn,
    filter: &str,
    params: &Params<'_>,
) -> StoreResult<Vec<MessageSummary>> {
    let found = conn
        .query(
            &format!(
                "SELECT id, mail_from, auth_user, size, received_at, smtputf8 FROM messages {filter}"
            ),
            params,
        )
        .await?;
    let mut messages = rows(found, |row| {
        Ok(MessageSummary {
            id: QueueId(row.try_get(0)?),
            mail_from: row.try_get(1)?,
            auth_user: row.try_get(2)?,
            size: row.try_get::<_, i64>(3)? as usize,
            received_at: row.try_get(4)?,
            smtputf8: row.try_get(5)?,
            recipients: Vec::new(),
        })
    })?;
    if messages.is_empty() {
        return Ok(messages);
    }
    const COLUMNS: &str = "SELECT message_id, address, status, attempts, next_attempt, last_reply, last_class, last_attempt
         FROM recipients";
    // One message (every recorded delivery asks for one) by equality, whose
    // plan is the primary key whatever the table's statistics: with `= ANY`, a
    // plan cached while the table was small (a new store, not analyzed yet)
    // stays a full scan as it grows, one per delivery.
    let found = match &messages[..] {
        [one] => {
            conn.query(
                &format!("{COLUMNS} WHERE message_id = $1 ORDER BY idx"),
                &[&one.id.as_str()],
            )
            .await?
        }
        _ => {
            let ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
            conn.query(
                &format!("{COLUMNS} WHERE message_id = ANY($1) ORDER BY message_id, idx"),
                &[&ids],
            )
            .await?
        }
    };
    let mut by_id: HashMap<String, Vec<RecipientState>> = HashMap::new();
    for row in &found {
        let status: String = row.try_get(2)?;
        by_id
            .entry(row.try_get(0)?)
            .or_default()
            .push(RecipientState {
                address: row.try_get(1)?,
                status: RecipientStatus::parse(&status).unwrap_or(RecipientStatus::Deferred),
                attempts: row.try_get::<_, i64>(3)? as u32,
                next_attempt: row.try_get(4)?,
                last_reply: row.try_get(5)?,
                last_class: row.try_get(6)?,
                last_attempt: row.try_get(7)?,
            });
    }
    for m in &mut messages {
        m.recipients = by_id.remove(m.id.as_str()).unwrap_or_default();
    }
    Ok(messages)
}

async fn summary(conn: &Conn, id: &str) -> StoreResult<Option<MessageSummary>> {
    Ok(load_summaries(conn, "WHERE id = $1", &[&id]).await?.pop())
}

async fn claim_due(
    conn: &Conn,
    node: &str,
    now: i64,
    lease_until: i64,
    limit: usize,
) -> StoreResult<Vec<DueMessage>> {
    let claimed = conn
        .query(
            &format!(
                "WITH due AS (
                     SELECT message_id, idx, next_attempt FROM recipients
                     WHERE status IN {PENDING} AND next_attempt <= $1
                     ORDER BY next_attempt LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 UPDATE recipients r SET next_attempt = $2, claimed_by = $4 FROM due
                 WHERE r.message_id = due.message_id AND r.idx = due.idx
                 RETURNING r.message_id, r.idx, r.address, r.attempts, due.next_attempt"
            ),
            &[&now, &lease_until, &(limit as i64), &node],
        )
        .await?;
    let mut claimed = rows(claimed, |row| {
        Ok((
            row.try_get::<_, String>(0)?,
            row.try_get::<_, i64>(1)?,
            row.try_get::<_, String>(2)?,
            row.try_get::<_, i64>(3)?,
            row.try_get::<_, i64>(4)?,
        ))
    })?;
    // Oldest first, as they were due; recipients in envelope order.
    claimed.sort_by(|a, b| (a.4, &a.0, a.1).cmp(&(b.4, &b.0, b.1)));
    let ids: Vec<&str> = claimed.iter().map(|c| c.0.as_str()).collect();
    let envelopes = conn
        .query(
            "SELECT id, mail_from, smtputf8, received_at, size FROM messages WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut envelopes: HashMap<String, DueMessage> = envelopes
        .iter()
        .map(|row| {
            let id: String = row.try_get(0)?;
            let mail_from: String = row.try_get(1)?;
            Ok((
                id.clone(),
                DueMessage {
                    id: QueueId(id),
                    mail_from: stored_sender(&mail_from)?,
                    smtputf8: row.try_get(2)?,
                    received_at: row.try_get(3)?,
                    size: row.try_get::<_, i64>(4)? as usize,
                    recipients: Vec::new(),
                },
            ))
        })
        .collect::<StoreResult<_>>()?;
    let mut order: Vec<String> = Vec::new();
    for (id, idx, address, attempts, _) in &claimed {
        let Some(message) = envelopes.get_mut(id) else {
            continue;
        };
        if message.recipients.is_empty() {
            order.push(id.clone());
        }
        message.recipients.push(DueRecipient {
            idx: *idx as usize,
            address: stored_mailbox(address)?,
            attempts: *attempts as u32,
        });
    }
    Ok(order.iter().filter_map(|id| envelopes.remove(id)).collect())
}

/// Pending recipients (of one message, or all) become due at `now`.
async fn make_due(conn: &Conn, id: Option<&str>, now: i64) -> StoreResult<usize> {
    let changed = match id {
        Some(id) => {
            conn.execute(
                &format!("UPDATE recipients SET next_attempt = $2, claimed_by = NULL WHERE message_id = $1 AND status IN {PENDING}"),
                &[&id, &now],
            )
            .await?
        }
        None => {
            conn.execute(
                &format!("UPDATE recipients SET next_attempt = $1, claimed_by = NULL WHERE status IN {PENDING} AND next_attempt > $1"),
                &[&now],
            )
            .await?
        }
    };
    Ok(changed as usize)
}

impl QueueStore for PostgresStore {
    fn enqueue(&self, message: NewMessage) -> StoreFuture<'_, ()> {
        Box::pin(self.write_accept(move |conn| {
            Box::pin(async move {
                let mail_from = message
                    .mail_from
                    .as_ref()
                    .map_or(String::new(), Mailbox::to_string);
                let mut addresses = Vec::with_capacity(message.recipients.len());
                let mut domains = Vec::with_capacity(message.recipients.len());
                let mut statuses = Vec::with_capacity(message.recipients.len());
                for rcpt in &message.recipients {
                    addresses.push(rcpt.address.to_string());
                    domains.push(rcpt.address.domain().as_str().to_string());
                    statuses.push(if rcpt.local {
                        RecipientStatus::Local.as_str()
                    } else {
                        RecipientStatus::Queued.as_str()
                    });
                }
                let facts = EnqueueFacts::of(&message);
                // One statement (one round trip inside the group commit): the
                // message, its recipients (arrays, unnested) and the dashboard's
                // rows. Foreign keys are checked at the statement's end, when
                // the message row is there. The recipients' `accepted` events
                // are logged, to go in with the batch's others (events.rs).
                conn.execute(
                    &format!(
                        "WITH message AS (
                             INSERT INTO messages (id, mail_from, auth_user, smtputf8, size, received_at, content)
                             VALUES ($1, $2, $3, $4, $5, $6, $7)),
                         rcpts AS (
                             INSERT INTO recipients (message_id, idx, address, domain, status, next_attempt, claimed_by)
                             SELECT $1, r.n - 1, r.address, r.domain, r.status, $8,
                                 CASE WHEN r.status = 'queued' THEN $19::TEXT END
                             FROM unnest($9::TEXT[], $10::TEXT[], $11::TEXT[]) WITH ORDINALITY
                                 AS r(address, domain, status, n)),
                         {ENQUEUE_SQL}"
                    ),
                    &[
                        &message.id.as_str(),
                        &mail_from,
                        &message.auth_user,
                        &message.smtputf8,
                        &(message.content.len() as i64),
                        &message.received_at,
                        &&message.content[..],
                        &message.first_attempt_at,
                        &addresses,
                        &domains,
                        &statuses,
                        &facts.sending_domain,
                        &facts.subject,
                        &facts.protocol,
                        &facts.dkim,
                        &facts.search,
                        &facts.hour,
                        &facts.relayed,
                        &message.claimed_by,
                    ],
                )
                .await?;
                for address in addresses {
                    conn.log_event(Event {
                        id: 0,
                        at: message.received_at,
                        kind: EventKind::Accepted,
                        message_id: Some(message.id.clone()),
                        recipient: Some(address),
                        user: message.auth_user.clone(),
                        reply: None,
                        class: None,
                        asynchronous: false,
                        domain: None,
                    });
                }
                Ok(())
            })
        }))
    }

    fn queued_messages(&self, limit: usize) -> StoreFuture<'_, Vec<MessageSummary>> {
        Box::pin(async move {
            let conn = self.reader().await?;
            load_summaries(
                &conn,
                &format!(
                    "WHERE id IN (SELECT message_id FROM recipients WHERE status IN {PENDING})
                     ORDER BY id LIMIT $1"
                ),
                &[&(limit as i64)],
            )
            .await
        })
    }

    fn pending_recipients(&self) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let conn = self.reader().await?;
            let n: i64 = conn
                .value(
                    &format!("SELECT COUNT(*) FROM recipients WHERE status IN {PENDING}"),
                    &[],
                )
                .await?;
            Ok(n as usize)
        })
    }

    fn message(&self, id: &QueueId) -> StoreFuture<'_, Option<MessageSummary>> {
        let id = id.to_string();
        Box::pin(async move { summary(&*self.reader().await?, &id).await })
    }

    fn message_content(&self, id: &QueueId) -> StoreFuture<'_, Option<Vec<u8>>> {
        let id = id.to_string();
        Box::pin(async move {
            let conn = self.reader().await?;
            let row = conn
                .query_opt("SELECT content FROM messages WHERE id = $1", &[&id])
                .await?;
            Ok(match row {
                Some(row) => row.try_get::<_, Option<Vec<u8>>>(0)?,
                None => None,
            })
        })
    }

    fn delete_message(&self, id: &QueueId) -> StoreFuture<'_, bool> {
        let id = id.to_string();
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                conn.changes_rows("DELETE FROM messages WHERE id = $1", &[&id])
                    .await
            })
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
        Box::pin(self.write(move |conn| {
            Box::pin(async move { claim_due(conn, &node, now, lease_until, limit).await })
        }))
    }

    fn record_attempt(
        &self,
        id: &QueueId,
        updates: Vec<RecipientUpdate>,
        now: i64,
    ) -> StoreFuture<'_, Option<MessageSummary>> {
        let id = id.to_string();
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                let facts = super::dashboard::message_facts(conn, &id).await?;
                for u in &updates {
                    let address: Option<String> = conn
                        .query_opt(
                            "UPDATE recipients SET status = $3, next_attempt = $4, last_reply = $5,
                                 last_class = $6, attempts = attempts + $7,
                                 last_attempt = CASE WHEN $7 > 0 THEN $8 ELSE last_attempt END,
                                 claimed_by = NULL
                             WHERE message_id = $1 AND idx = $2 RETURNING address",
                            &[
                                &id,
                                &(u.idx as i64),
                                &u.status.as_str(),
                                &u.next_attempt,
                                &u.reply,
                                &u.class,
                                &i64::from(u.attempted),
                                &now,
                            ],
                        )
                        .await?
                        .map(|row| row.try_get(0))
                        .transpose()?;
                    let (Some((user, _)), Some(address), Some(kind)) =
                        (&facts, address, EventKind::for_status(u.status))
                    else {
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
                    conn.log_event(event);
                }
                if let Some((_, sending_domain)) = &facts {
                    super::dashboard::record_attempts(conn, &id, sending_domain, &updates, now)
                        .await?;
                }
                let pending: i64 = conn
                    .value(
                        &format!(
                            "SELECT COUNT(*) FROM recipients WHERE message_id = $1 AND status IN {PENDING}"
                        ),
                        &[&id],
                    )
                    .await?;
                if pending > 0 {
                    return Ok(None);
                }
                let summary = summary(conn, &id).await?;
                if summary.as_ref().is_some_and(|s| !s.needs_bounce_report()) {
                    conn.execute(FINISH, &[&id]).await?;
                }
                Ok(summary)
            })
        }))
    }

    fn finalize(&self, id: &QueueId) -> StoreFuture<'_, ()> {
        let id = id.to_string();
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                conn.execute(FINISH, &[&id]).await?;
                Ok(())
            })
        }))
    }

    fn unfinalized(
        &self,
        after: Option<&QueueId>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<MessageSummary>> {
        let after = after.map_or_else(String::new, |id| id.to_string());
        Box::pin(async move {
            let conn = self.reader().await?;
            // Mail only for our own domains owes no report and keeps its content.
            load_summaries(
                &conn,
                &format!(
                    "WHERE id > $1 AND NOT finished AND NOT EXISTS (SELECT 1 FROM recipients r
                         WHERE r.message_id = messages.id AND r.status IN {PENDING})
                     AND EXISTS (SELECT 1 FROM recipients r
                         WHERE r.message_id = messages.id AND r.status != 'local')
                     ORDER BY id LIMIT $2"
                ),
                &[&after, &(limit as i64)],
            )
            .await
        })
    }

    fn retry_now(&self, id: Option<&QueueId>, now: i64) -> StoreFuture<'_, usize> {
        let id = id.map(|id| id.to_string());
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                conn.execute(
                    "INSERT INTO control (key, value) VALUES ('retry_requested', $1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&now],
                )
                .await?;
                // In the same commit as the request, so a node that sees the
                // suspensions still there has yet to see the request (and will
                // lift what it adopted when it does).
                conn.execute("DELETE FROM destination_suspensions", &[])
                    .await?;
                make_due(conn, id.as_deref(), now).await
            })
        }))
    }

    fn unclaim(&self, id: &QueueId, now: i64) -> StoreFuture<'_, ()> {
        let id = id.to_string();
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                make_due(conn, Some(&id), now).await?;
                Ok(())
            })
        }))
    }

    fn retry_requested_at(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            let conn = self.reader().await?;
            let row = conn
                .query_opt(
                    "SELECT value FROM control WHERE key = 'retry_requested'",
                    &[],
                )
                .await?;
            Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or_default())
        })
    }

    fn release_claims(&self, node: &str, now: i64, lease_until: i64) -> StoreFuture<'_, usize> {
        let node = node.to_string();
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                let n = conn
                    .execute(
                        &format!(
                            "UPDATE recipients SET next_attempt = $1, claimed_by = NULL
                             WHERE status IN {PENDING} AND next_attempt > $1 AND (claimed_by = $3
                                 OR (claimed_by IS NULL
                                     AND (status = 'queued' OR next_attempt <= $2)))"
                        ),
                        &[&now, &lease_until, &node],
                    )
                    .await?;
                Ok(n as usize)
            })
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
            Box::pin(async move {
                conn.execute(
                    "INSERT INTO nodes (name, last_seen) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen",
                    &[&node, &now],
                )
                .await?;
                let held: Vec<&str> = held.iter().map(QueueId::as_str).collect();
                let n = conn
                    .execute(
                        &format!(
                            "UPDATE recipients SET next_attempt = $4 WHERE message_id = ANY($2)
                             AND claimed_by = $1 AND status IN {PENDING} AND next_attempt > $3"
                        ),
                        &[&node, &held, &now, &lease_until],
                    )
                    .await?;
                Ok(n as usize)
            })
        }))
    }

    fn clock(&self) -> StoreFuture<'_, i64> {
        Box::pin(async move {
            let conn = self.reader().await?;
            // clock_timestamp(), not now(): the time of this statement, not of a
            // transaction's start.
            conn.value(
                "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
                &[],
            )
            .await
        })
    }

    fn cluster_status(&self) -> StoreFuture<'_, ClusterStatus> {
        Box::pin(async move {
            let conn = self.reader().await?;
            let nodes = conn
                .query(
                    &format!(
                        "WITH claims AS (
                             SELECT claimed_by AS name, COUNT(*) AS n FROM recipients
                             WHERE status IN {PENDING} AND claimed_by IS NOT NULL
                             GROUP BY claimed_by)
                         SELECT COALESCE(nodes.name, claims.name), COALESCE(nodes.last_seen, 0),
                             COALESCE(claims.n, 0)
                         FROM nodes FULL JOIN claims ON claims.name = nodes.name
                         ORDER BY 1"
                    ),
                    &[],
                )
                .await?;
            let nodes = rows(nodes, |row| {
                Ok(NodeStatus {
                    name: row.try_get(0)?,
                    last_seen: row.try_get(1)?,
                    claims: row.try_get::<_, i64>(2)? as usize,
                })
            })?;
            let pending: i64 = conn
                .value(
                    &format!("SELECT COUNT(*) FROM recipients WHERE status IN {PENDING}"),
                    &[],
                )
                .await?;
            Ok(ClusterStatus {
                nodes,
                pending: pending as usize,
            })
        })
    }
}
