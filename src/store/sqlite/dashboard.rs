//! The dashboard's tables in SQLite: hourly counters, bounce examples, per-attempt
//! details, per-message facts (sending domain, subject, protocol, DKIM) and a
//! full-text index for search.
//!
//! The `record_*` functions run inside the writes of `enqueue`, `record_attempt`
//! and `add_suppression` (same transaction), so the counters always agree with the
//! states they count; the search index is written at the end of the same
//! transaction ([`index_batch`]). Counters are upserts on a small table: one row per hour ×
//! sending domain × provider × outcome × class.

use super::SqliteStore;
use super::queue::load_summaries;
use crate::store::dashboard::*;
use crate::store::dashboard::{HOUR_MS, domain_of, received_protocol, search_text};
use crate::store::{
    Event, EventKind, NewMessage, QueueId, RecipientStatus, RecipientUpdate, StoreFuture,
    Suppression,
};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS counters (
    hour INTEGER NOT NULL,
    sending_domain TEXT NOT NULL,
    provider TEXT NOT NULL,
    outcome TEXT NOT NULL,
    class TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (hour, sending_domain, provider, outcome, class)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bounce_examples (
    sending_domain TEXT NOT NULL,
    class TEXT NOT NULL,
    reply TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (sending_domain, class)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS message_info (
    id TEXT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    sending_domain TEXT NOT NULL,
    subject TEXT NOT NULL,
    protocol TEXT NOT NULL,
    dkim INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS message_info_domain ON message_info(sending_domain, id);
CREATE TABLE IF NOT EXISTS attempts (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    at INTEGER NOT NULL,
    status TEXT NOT NULL,
    mx_host TEXT,
    tls TEXT,
    reply TEXT NOT NULL,
    attempted INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_message ON attempts(message_id);
CREATE INDEX IF NOT EXISTS recipients_address ON recipients(address);
CREATE INDEX IF NOT EXISTS recipients_domain_pending ON recipients(domain, status);
-- The message list's status filter: a state's messages, newest first. One more
-- index entry per recipient written, on hot pages (new ids sort last).
CREATE INDEX IF NOT EXISTS recipients_status ON recipients(status, message_id);
CREATE VIRTUAL TABLE IF NOT EXISTS message_search USING fts5(text, tokenize = 'unicode61');
CREATE TRIGGER IF NOT EXISTS message_search_delete AFTER DELETE ON messages BEGIN
    DELETE FROM message_search WHERE rowid = old.rowid;
END;
";

fn bump(
    conn: &Connection,
    at: i64,
    sending_domain: &str,
    provider: &str,
    outcome: &str,
    class: &str,
    count: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO counters (hour, sending_domain, provider, outcome, class, count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (hour, sending_domain, provider, outcome, class)
         DO UPDATE SET count = count + excluded.count",
    )?
    .execute(params![
        at.div_euclid(HOUR_MS),
        sending_domain,
        provider,
        outcome,
        class,
        count
    ])?;
    Ok(())
}

thread_local! {
    /// Search texts of the messages the writer's current batch enqueued, indexed
    /// once after its last job ([`index_batch`]). FTS5 writes its pending terms as
    /// a new segment at every savepoint, and every job runs in one: indexing
    /// inside the job made a segment (and its merges) per message, a fifth of the
    /// writer's instructions; now it is one per commit. The index is written in
    /// the same transaction as the messages, so search is never behind.
    static SEARCH: std::cell::RefCell<Vec<(String, String)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Indexes the batch's search texts, inside its transaction, after its jobs.
/// The text of a job that was rolled back finds no message to join and is not
/// indexed.
///
/// In one statement: FTS5 also writes its pending terms out at the start of every
/// statement that writes to it inside a transaction (a statement savepoint), so
/// one INSERT per message would still make a segment per message.
pub(super) fn index_batch(conn: &Connection) -> rusqlite::Result<()> {
    let texts = SEARCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if texts.is_empty() {
        return Ok(());
    }
    let texts = serde_json::to_string(&texts)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    conn.prepare_cached(
        "INSERT INTO message_search (rowid, text)
         SELECT m.rowid, t.value ->> 1 FROM json_each(?1) t JOIN messages m ON m.id = t.value ->> 0",
    )?
    .execute([texts])?;
    Ok(())
}

/// What the dashboard keeps of a message at enqueue, read from it before the
/// write is queued: parsing headers is the caller's CPU time, not the writer's,
/// which every acceptance waits for.
pub(super) struct EnqueueFacts {
    sending_domain: String,
    subject: String,
    protocol: String,
    dkim: bool,
    search: String,
}

impl EnqueueFacts {
    pub(super) fn of(message: &NewMessage) -> EnqueueFacts {
        let headers = crate::message::header_block(&message.content);
        let sender = message
            .mail_from
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let subject = crate::message::subject(&message.content);
        EnqueueFacts {
            sending_domain: message
                .mail_from
                .as_ref()
                .map_or(String::new(), |m| m.domain().as_str().to_ascii_lowercase()),
            search: search_text(message, &sender, &subject),
            subject,
            protocol: received_protocol(headers),
            dkim: crate::message::has_header(headers, "DKIM-Signature"),
        }
    }
}

/// At enqueue: the message's facts, its search text (indexed at the end of the
/// batch) and the `accepted` counter.
pub(super) fn record_enqueue(
    conn: &Connection,
    message: &NewMessage,
    facts: EnqueueFacts,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO message_info (id, sending_domain, subject, protocol, dkim) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        message.id.as_str(),
        facts.sending_domain,
        facts.subject,
        facts.protocol,
        facts.dkim,
    ])?;
    SEARCH.with(|s| s.borrow_mut().push((message.id.to_string(), facts.search)));
    let relayed = message.recipients.iter().filter(|r| !r.local).count() as i64;
    if relayed > 0 {
        bump(
            conn,
            message.received_at,
            &facts.sending_domain,
            "",
            "accepted",
            "",
            relayed,
        )?;
    }
    Ok(())
}

/// The sending domain of a stored message; none if the message is not stored.
fn sending_domain(conn: &Connection, id: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached(
        "SELECT COALESCE(i.sending_domain, '') , m.mail_from FROM messages m
         LEFT JOIN message_info i ON i.id = m.id WHERE m.id = ?1",
    )?
    .query_row([id], |row| {
        let info: String = row.get(0)?;
        let from: String = row.get(1)?;
        Ok(if info.is_empty() {
            domain_of(&from)
        } else {
            info
        })
    })
    .optional()
}

/// At `record_attempt`: one attempt row per update, and the counters of outcomes
/// that were tried (a deferral without trying, for a suspended destination, is
/// not an attempt).
pub(super) fn record_attempts(
    conn: &Connection,
    id: &str,
    updates: &[RecipientUpdate],
    at: i64,
) -> rusqlite::Result<()> {
    let Some(sending_domain) = sending_domain(conn, id)? else {
        return Ok(());
    };
    let mut insert = conn.prepare_cached(
        "INSERT INTO attempts (message_id, idx, at, status, mx_host, tls, reply, attempted)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut address =
        conn.prepare_cached("SELECT address FROM recipients WHERE message_id = ?1 AND idx = ?2")?;
    for u in updates {
        insert.execute(params![
            id,
            u.idx as i64,
            at,
            u.status.as_str(),
            u.path.mx_host,
            u.path.tls,
            u.reply,
            u.attempted
        ])?;
        if !u.attempted {
            continue;
        }
        let provider = match &u.path.mx_host {
            Some(host) => provider_of(host),
            None if u.status == RecipientStatus::Suppressed => String::new(),
            // Not reached (DNS, connection): the recipient's domain stands in.
            None => address
                .query_row(params![id, u.idx as i64], |row| row.get::<_, String>(0))
                .optional()?
                .map(|a| domain_of(&a))
                .unwrap_or_default(),
        };
        let class = u.class.as_deref().unwrap_or("");
        let class = if u.status == RecipientStatus::Bounced {
            class
        } else {
            ""
        };
        bump(
            conn,
            at,
            &sending_domain,
            &provider,
            u.status.as_str(),
            class,
            1,
        )?;
        if u.status == RecipientStatus::Bounced {
            conn.prepare_cached(
                "INSERT INTO bounce_examples (sending_domain, class, reply, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (sending_domain, class) DO UPDATE SET reply = excluded.reply, at = excluded.at",
            )?
            .execute(params![sending_domain, class, u.reply, at])?;
        }
    }
    Ok(())
}

/// At `add_suppression`, when it was added: an unsubscribe is counted.
pub(super) fn record_suppression(conn: &Connection, s: &Suppression) -> rusqlite::Result<()> {
    if s.reason == "unsubscribe" {
        bump(
            conn,
            s.created_at,
            &s.domain.to_lowercase(),
            "",
            "unsubscribed",
            "",
            1,
        )?;
    }
    Ok(())
}

/// At `append_events`: a bounce or complaint that came back after delivery is
/// counted for its message's sending domain, with no provider (it came by mail, not
/// from an MX host's reply). Its recipient was counted `delivered` before.
pub(super) fn record_feedback(conn: &Connection, e: &Event) -> rusqlite::Result<()> {
    let outcome = match e.kind {
        EventKind::Bounced => "bounced",
        EventKind::Complained => "complained",
        _ => return Ok(()),
    };
    let Some(id) = e.message_id.as_ref().filter(|_| e.asynchronous) else {
        return Ok(());
    };
    let Some(sending_domain) = sending_domain(conn, id.as_str())? else {
        return Ok(());
    };
    let class = if outcome == "bounced" {
        e.class.as_deref().unwrap_or("")
    } else {
        ""
    };
    bump(conn, e.at, &sending_domain, "", outcome, class, 1)
}

/// `AND <column> IN (?, ?, ...)` for a scope, with its parameters appended.
fn scope_sql(
    column: &str,
    domains: &DomainScope,
    args: &mut Vec<rusqlite::types::Value>,
) -> String {
    match domains {
        None => String::new(),
        Some(list) => {
            let marks: Vec<String> = list
                .iter()
                .map(|d| {
                    args.push(d.to_ascii_lowercase().into());
                    format!("?{}", args.len())
                })
                .collect();
            // An empty list matches nothing.
            format!(
                " AND {column} IN ({})",
                if marks.is_empty() {
                    "NULL".into()
                } else {
                    marks.join(", ")
                }
            )
        }
    }
}

/// Free text as an FTS5 query: each word a quoted phrase (so `@`, `.` and
/// operators are plain text), all required; with `prefix`, the last word may
/// also be the beginning of a longer one.
fn fts_query(text: &str, prefix: bool) -> Option<String> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    if words.is_empty() {
        return None;
    }
    Some(format!(
        "{}{}",
        words.join(" "),
        if prefix { "*" } else { "" }
    ))
}

/// What a text search's pages are ordered by: the full-text row, which is the
/// message's row, so the order messages were stored in. Queue ids are made as
/// a message is accepted and stored moments later, so that is arrival order
/// (but for messages accepted within the same moments), and FTS5 yields its
/// matches in it: a word most messages hold fills a page without sorting them.
const STORED: &str = "message_search.rowid";

/// ` AND … >= ? AND … < ?` for the period and the page (`order`: what pages are
/// ordered by, an id column or [`STORED`]), parameters appended.
fn bounds_sql(q: &MessageQuery, order: &str, args: &mut Vec<rusqlite::types::Value>) -> String {
    let mut sql = String::new();
    if let Some(since) = q.since {
        // Queue ids begin with the arrival time in hex milliseconds, so the
        // primary key orders and bounds by time.
        args.push(format!("{:012X}", since.max(0)).into());
        let id = if order == STORED { "m.id" } else { order };
        sql.push_str(&format!(" AND {id} >= ?{}", args.len()));
    }
    if let Some(before) = &q.before {
        args.push(before.as_str().to_string().into());
        let n = args.len();
        let cursor = if order == STORED {
            // The cursor's row; if it was deleted since, the row after the
            // newest older message.
            format!(
                "COALESCE((SELECT rowid FROM messages WHERE id = ?{n}),
                          (SELECT rowid + 1 FROM messages WHERE id < ?{n} ORDER BY id DESC LIMIT 1), 0)"
            )
        } else {
            format!("?{n}")
        };
        sql.push_str(&format!(" AND {order} < {cursor}"));
    }
    sql
}

/// The statement of one search (`text` an FTS5 query) and its parameters.
fn search_sql(q: &MessageQuery, text: Option<String>) -> (String, Vec<rusqlite::types::Value>) {
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    // Each way walks in page order and stops at the page's end. With text, the
    // full-text index drives, in the order messages were stored, and a state is
    // checked per match. With a state alone, `recipients_status` (state, message id) lists
    // that state's messages newest first, however rare the state; CROSS JOIN
    // keeps SQLite from starting elsewhere, and DISTINCT shows a message whose
    // recipients share the state once. With neither, the primary key for an
    // admin, and each domain's range of `message_info_domain` for a tenant.
    let (mut sql, id) = match (text, q.status, &q.domains) {
        (Some(text), status, _) => {
            args.push(text.into());
            let mut sql = String::from(
                "SELECT m.id, m.mail_from, i.subject, m.received_at FROM message_search
                 JOIN messages m ON m.rowid = message_search.rowid
                 JOIN message_info i ON i.id = m.id WHERE message_search MATCH ?1",
            );
            if let Some(status) = status {
                args.push(status.as_str().to_string().into());
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM recipients r WHERE r.status = ?{} AND r.message_id = m.id)",
                    args.len()
                ));
            }
            (sql, STORED)
        }
        (None, Some(status), _) => {
            args.push(status.as_str().to_string().into());
            (
                String::from(
                    "SELECT DISTINCT m.id, m.mail_from, i.subject, m.received_at FROM recipients r
                     CROSS JOIN message_info i ON i.id = r.message_id
                     CROSS JOIN messages m ON m.id = r.message_id WHERE r.status = ?1",
                ),
                "r.message_id",
            )
        }
        (None, None, Some(domains)) => return tenant_newest_sql(q, domains),
        (None, None, None) => (
            String::from(
                "SELECT m.id, m.mail_from, i.subject, m.received_at FROM messages m
                 JOIN message_info i ON i.id = m.id WHERE 1",
            ),
            "m.id",
        ),
    };
    sql.push_str(&bounds_sql(q, id, &mut args));
    sql.push_str(&scope_sql("i.sending_domain", &q.domains, &mut args));
    args.push((q.limit as i64).into());
    sql.push_str(&format!(" ORDER BY {id} DESC LIMIT ?{}", args.len()));
    (sql, args)
}

/// A tenant's newest messages (`domains` not empty): a page from each of its domains, newest first
/// along `message_info_domain` (domain, id), merged. Walking every message
/// newest first instead would pass all other tenants' mail first, and one index
/// range for several domains would have to be sorted whole.
fn tenant_newest_sql(
    q: &MessageQuery,
    domains: &[String],
) -> (String, Vec<rusqlite::types::Value>) {
    let mut args: Vec<rusqlite::types::Value> = vec![(q.limit as i64).into()];
    let bounds = bounds_sql(q, "i.id", &mut args);
    let parts: Vec<String> = domains
        .iter()
        .map(|d| {
            args.push(d.to_ascii_lowercase().into());
            format!(
                "SELECT * FROM (SELECT m.id, m.mail_from, i.subject, m.received_at FROM message_info i
                 CROSS JOIN messages m ON m.id = i.id WHERE i.sending_domain = ?{}{bounds}
                 ORDER BY i.id DESC LIMIT ?1)",
                args.len()
            )
        })
        .collect();
    (
        format!("{} ORDER BY 1 DESC LIMIT ?1", parts.join(" UNION ALL ")),
        args,
    )
}

fn search(conn: &Connection, q: &MessageQuery) -> rusqlite::Result<Vec<MessageRow>> {
    // Whole words first: the prefix of a word nearly every message holds (the
    // `example` ending a typed address) makes FTS5 merge that word's postings
    // for the whole store. Only when the words as typed match nothing is the
    // last one taken as the beginning of a word (`bob@exam`).
    if q.domains.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Vec::new());
    }
    let text = q.text.as_deref().unwrap_or("");
    let Some(whole) = fts_query(text, false) else {
        return search_page(conn, q, None);
    };
    let rows = search_page(conn, q, Some(whole))?;
    if !rows.is_empty() {
        return Ok(rows);
    }
    search_page(conn, q, fts_query(text, true))
}

fn search_page(
    conn: &Connection,
    q: &MessageQuery,
    text: Option<String>,
) -> rusqlite::Result<Vec<MessageRow>> {
    let (sql, args) = search_sql(q, text);
    let mut rows: Vec<MessageRow> = conn
        .prepare(&sql)?
        .query_map(params_from_iter(args), |row| {
            Ok(MessageRow {
                id: QueueId(row.get(0)?),
                mail_from: row.get(1)?,
                subject: row.get(2)?,
                received_at: row.get(3)?,
                first_recipient: String::new(),
                recipients: 0,
                statuses: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut rcpts = conn.prepare_cached(
        "SELECT address, status FROM recipients WHERE message_id = ?1 ORDER BY idx",
    )?;
    for row in &mut rows {
        let list: Vec<(String, String)> = rcpts
            .query_map([row.id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        row.recipients = list.len();
        row.first_recipient = list.first().map(|(a, _)| a.clone()).unwrap_or_default();
        for (_, status) in list {
            if !row.statuses.contains(&status) {
                row.statuses.push(status);
            }
        }
    }
    Ok(rows)
}

fn details(conn: &Connection, id: &str) -> rusqlite::Result<Option<MessageDetails>> {
    let Some(summary) = load_summaries(conn, "WHERE id = ?1", &id)?.pop() else {
        return Ok(None);
    };
    let (subject, sending_domain, protocol, dkim_signed, content_kept) = conn
        .prepare_cached(
            "SELECT COALESCE(i.subject, ''), i.sending_domain, COALESCE(i.protocol, 'unknown'),
                    COALESCE(i.dkim, 0), m.content IS NOT NULL OR m.spool IS NOT NULL
             FROM messages m LEFT JOIN message_info i ON i.id = m.id WHERE m.id = ?1",
        )?
        .query_row([id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, bool>(3)?,
                row.get::<_, bool>(4)?,
            ))
        })?;
    let attempts = conn
        .prepare_cached(
            "SELECT idx, at, status, mx_host, tls, reply, attempted FROM attempts
             WHERE message_id = ?1 ORDER BY rowid",
        )?
        .query_map([id], |row| {
            let status: String = row.get(2)?;
            Ok(AttemptRecord {
                idx: row.get::<_, i64>(0)? as usize,
                at: row.get(1)?,
                status: RecipientStatus::parse(&status).unwrap_or(RecipientStatus::Deferred),
                mx_host: row.get(3)?,
                tls: row.get(4)?,
                reply: row.get(5)?,
                attempted: row.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(MessageDetails {
        sending_domain: sending_domain.unwrap_or_else(|| domain_of(&summary.mail_from)),
        summary,
        subject,
        protocol,
        dkim_signed,
        content_kept,
        attempts,
    }))
}

fn pending(
    conn: &Connection,
    domains: &DomainScope,
    limit: Option<usize>,
) -> rusqlite::Result<(Vec<PendingRecipient>, usize)> {
    let mut args = Vec::new();
    let scope = scope_sql("i.sending_domain", domains, &mut args);
    // An admin's view needs no join: every pending recipient counts.
    let from = if domains.is_none() && limit.is_none() {
        "FROM recipients r WHERE r.status IN ('queued', 'deferred')".to_string()
    } else {
        format!(
            "FROM recipients r JOIN message_info i ON i.id = r.message_id
             WHERE r.status IN ('queued', 'deferred'){scope}"
        )
    };
    let Some(limit) = limit else {
        let count: i64 = conn
            .prepare(&format!("SELECT COUNT(*) {from}"))?
            .query_row(params_from_iter(args), |row| row.get(0))?;
        return Ok((Vec::new(), count as usize));
    };
    args.push((limit as i64).into());
    let list = conn
        .prepare(&format!(
            "SELECT r.message_id, r.address, r.domain, r.status, r.attempts, r.next_attempt, r.last_reply
             {from} ORDER BY r.message_id, r.idx LIMIT ?{}",
            args.len()
        ))?
        .query_map(params_from_iter(args), |row| {
            let status: String = row.get(3)?;
            Ok(PendingRecipient {
                message_id: QueueId(row.get(0)?),
                address: row.get(1)?,
                domain: row.get(2)?,
                status: RecipientStatus::parse(&status).unwrap_or(RecipientStatus::Deferred),
                attempts: row.get(4)?,
                next_attempt: row.get(5)?,
                last_reply: row.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let n = list.len();
    Ok((list, n))
}

impl DashboardStore for SqliteStore {
    fn counters(&self, domains: DomainScope, since_hour: i64) -> StoreFuture<'_, Vec<CounterRow>> {
        Box::pin(self.read(move |conn| {
            let mut args: Vec<rusqlite::types::Value> = vec![since_hour.into()];
            let scope = scope_sql("sending_domain", &domains, &mut args);
            conn.prepare(&format!(
                "SELECT hour, sending_domain, provider, outcome, class, count FROM counters
                 WHERE hour >= ?1{scope}"
            ))?
            .query_map(params_from_iter(args), |row| {
                Ok(CounterRow {
                    hour: row.get(0)?,
                    sending_domain: row.get(1)?,
                    provider: row.get(2)?,
                    outcome: row.get(3)?,
                    class: row.get(4)?,
                    count: row.get(5)?,
                })
            })?
            .collect()
        }))
    }

    fn bounce_examples(&self, domains: DomainScope) -> StoreFuture<'_, Vec<BounceExample>> {
        Box::pin(self.read(move |conn| {
            let mut args = Vec::new();
            let scope = scope_sql("sending_domain", &domains, &mut args);
            conn.prepare(&format!(
                "SELECT sending_domain, class, reply, at FROM bounce_examples WHERE 1{scope}"
            ))?
            .query_map(params_from_iter(args), |row| {
                Ok(BounceExample {
                    sending_domain: row.get(0)?,
                    class: row.get(1)?,
                    reply: row.get(2)?,
                    at: row.get(3)?,
                })
            })?
            .collect()
        }))
    }

    fn search_messages(&self, query: MessageQuery) -> StoreFuture<'_, Vec<MessageRow>> {
        Box::pin(self.read(move |conn| search(conn, &query)))
    }

    fn message_details(&self, id: &QueueId) -> StoreFuture<'_, Option<MessageDetails>> {
        let id = id.to_string();
        Box::pin(self.read(move |conn| details(conn, &id)))
    }

    fn pending(
        &self,
        domains: DomainScope,
        limit: usize,
    ) -> StoreFuture<'_, Vec<PendingRecipient>> {
        Box::pin(self.read(move |conn| pending(conn, &domains, Some(limit)).map(|(l, _)| l)))
    }

    fn pending_count(&self, domains: DomainScope) -> StoreFuture<'_, usize> {
        Box::pin(self.read(move |conn| pending(conn, &domains, None).map(|(_, n)| n)))
    }
}

/// Gives messages stored before these tables existed their facts and search
/// text, once (at open).
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "INSERT INTO message_info (id, sending_domain, subject, protocol, dkim)
         SELECT id, lower(substr(mail_from, instr(mail_from, '@') + 1)), '', 'unknown', 0
         FROM messages WHERE instr(mail_from, '@') > 0 AND id NOT IN (SELECT id FROM message_info);
         INSERT INTO message_info (id, sending_domain, subject, protocol, dkim)
         SELECT id, '', '', 'unknown', 0 FROM messages WHERE id NOT IN (SELECT id FROM message_info);",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_becomes_quoted_phrases() {
        assert_eq!(
            fts_query("bob@example.com", true).unwrap(),
            "\"bob@example.com\"*"
        );
        assert_eq!(
            fts_query("bob@example.com", false).unwrap(),
            "\"bob@example.com\""
        );
        assert_eq!(fts_query(" a  \"b ", true).unwrap(), "\"a\" \"\"\"b\"*");
        assert_eq!(fts_query("  ", false), None);
    }

    /// Messages 0-5, two recipients each, from a.example (even) and b.example
    /// (odd); both recipients of 0, 3 and 4 bounce, the others' are delivered.
    async fn six_messages() -> (tempfile::TempDir, std::sync::Arc<SqliteStore>, Vec<QueueId>) {
        use crate::store::QueueStore;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let mut ids = Vec::new();
        for n in 0..6u32 {
            let mut msg = crate::store::contract::message(&["x@dest.example", "y@dest.example"]);
            msg.id = format!("{:012X}{n:08X}", 1_000 + n).parse().unwrap();
            let from = if n % 2 == 0 {
                "s@a.example"
            } else {
                "s@b.example"
            };
            msg.mail_from = crate::smtp::Mailbox::parse(from);
            let id = msg.id.clone();
            store.enqueue(msg).await.unwrap();
            let status = if [0, 3, 4].contains(&n) {
                RecipientStatus::Bounced
            } else {
                RecipientStatus::Delivered
            };
            let updates = (0..2)
                .map(|idx| RecipientUpdate {
                    idx,
                    status,
                    next_attempt: 0,
                    reply: "250 or 550".into(),
                    class: None,
                    attempted: true,
                    path: Default::default(),
                })
                .collect();
            store.record_attempt(&id, updates, 2_000).await.unwrap();
            ids.push(id);
        }
        (dir, store, ids)
    }

    async fn found(store: &SqliteStore, q: MessageQuery) -> Vec<QueueId> {
        let q = MessageQuery { limit: 10, ..q };
        let rows = store.search_messages(q).await.unwrap();
        rows.into_iter().map(|r| r.id).collect()
    }

    #[tokio::test]
    async fn a_state_lists_its_messages_newest_first_once_each() {
        let (_dir, store, ids) = six_messages().await;
        let bounced = || MessageQuery {
            status: Some(RecipientStatus::Bounced),
            ..Default::default()
        };
        let all_bounced = [ids[4].clone(), ids[3].clone(), ids[0].clone()];
        assert_eq!(found(&store, bounced()).await, all_bounced);
        let rows = store
            .search_messages(MessageQuery {
                limit: 2,
                ..bounced()
            })
            .await
            .unwrap();
        assert_eq!((rows.len(), rows[0].recipients), (2, 2));
        assert_eq!(rows[0].statuses, ["bounced"]);
        let older = MessageQuery {
            before: Some(ids[3].clone()),
            ..bounced()
        };
        assert_eq!(found(&store, older).await, [ids[0].clone()]);
        let since = MessageQuery {
            since: Some(1_003),
            ..bounced()
        };
        assert_eq!(found(&store, since).await, [ids[4].clone(), ids[3].clone()]);
        let scoped = MessageQuery {
            domains: Some(vec!["A.example".into()]),
            ..bounced()
        };
        assert_eq!(
            found(&store, scoped).await,
            [ids[4].clone(), ids[0].clone()]
        );
        let queued = MessageQuery {
            status: Some(RecipientStatus::Queued),
            ..Default::default()
        };
        assert!(found(&store, queued).await.is_empty());
        let text = MessageQuery {
            text: Some("y@dest.example".into()),
            ..bounced()
        };
        assert_eq!(found(&store, text).await, all_bounced);
    }

    #[tokio::test]
    async fn a_tenant_lists_its_domains_newest_messages() {
        let (_dir, store, ids) = six_messages().await;
        let of = |domains: &[&str]| MessageQuery {
            domains: Some(domains.iter().map(|d| d.to_string()).collect()),
            ..Default::default()
        };
        let a = [ids[4].clone(), ids[2].clone(), ids[0].clone()];
        assert_eq!(found(&store, of(&["a.example"])).await, a);
        let both: Vec<QueueId> = ids.iter().rev().cloned().collect();
        assert_eq!(found(&store, of(&["b.example", "A.example"])).await, both);
        let rows = store
            .search_messages(MessageQuery {
                limit: 3,
                ..of(&["a.example", "b.example"])
            })
            .await
            .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].id.clone(), rows[0].recipients),
            (ids[5].clone(), 2)
        );
        assert_eq!(rows[0].mail_from, "s@b.example");
        let page = MessageQuery {
            before: Some(ids[4].clone()),
            since: Some(1_001),
            ..of(&["a.example", "b.example"])
        };
        assert_eq!(
            found(&store, page).await,
            ids[1..4].iter().rev().cloned().collect::<Vec<_>>()
        );
        assert!(found(&store, of(&[])).await.is_empty());
        assert!(found(&store, of(&["c.example"])).await.is_empty());
    }

    #[tokio::test]
    async fn whole_words_first_then_the_last_as_a_beginning() {
        let (_dir, store, ids) = six_messages().await;
        let text = |t: &str| MessageQuery {
            text: Some(t.into()),
            ..Default::default()
        };
        let newest_first: Vec<QueueId> = ids.iter().rev().cloned().collect();
        assert_eq!(found(&store, text("x@dest.example")).await, newest_first);
        assert_eq!(found(&store, text("X@Dest.exam")).await, newest_first);
        assert_eq!(found(&store, text("s@b.example")).await.len(), 3);
        assert!(found(&store, text("x@dest.examples")).await.is_empty());
        let page = MessageQuery {
            before: Some(ids[3].clone()),
            since: Some(1_001),
            ..text("x@dest.example")
        };
        assert_eq!(found(&store, page).await, [ids[2].clone(), ids[1].clone()]);
        // A cursor deleted since (or never there) pages from where it was.
        let gone: QueueId = format!("{:012X}{:08X}", 1_003, 9).parse().unwrap();
        let page = MessageQuery {
            before: Some(gone),
            ..text("x@dest.example")
        };
        let older: Vec<QueueId> = ids[..4].iter().rev().cloned().collect();
        assert_eq!(found(&store, page).await, older);
        let page = MessageQuery {
            before: Some(ids[0].clone()),
            ..text("x@dest.example")
        };
        assert!(found(&store, page).await.is_empty());
    }

    #[tokio::test]
    async fn filters_are_served_by_their_indexes() {
        let (_dir, store, _) = six_messages().await;
        // The state filter, with and without text, and a tenant's newest.
        let tests = [
            (None, Some(RecipientStatus::Bounced), "recipients_status"),
            (
                Some("\"x\""),
                Some(RecipientStatus::Bounced),
                "recipients_status",
            ),
            (None, None, "message_info_domain"),
            (Some("\"x\""), None, "message_search"),
        ];
        for (text, status, index) in tests {
            let q = MessageQuery {
                status,
                domains: Some(vec!["a.example".into()]),
                limit: 51,
                ..Default::default()
            };
            let (sql, args) = search_sql(&q, text.map(String::from));
            let plan: Vec<String> = store
                .read(move |conn| {
                    conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?
                        .query_map(params_from_iter(args), |row| row.get(3))?
                        .collect()
                })
                .await
                .unwrap();
            assert!(plan.iter().any(|l| l.contains(index)), "{plan:?}");
            // Matches come in page order: not all sorted first.
            let sorted = plan.iter().any(|l| l.contains("TEMP B-TREE FOR ORDER BY"));
            assert!(text.is_none() || !sorted, "{plan:?}");
            // Neither messages nor recipients are walked whole.
            assert!(
                !plan
                    .iter()
                    .any(|l| ["SCAN m", "SCAN r"].contains(&l.split(" USING").next().unwrap_or(l))),
                "{plan:?}"
            );
        }
    }

    /// Many acceptances committed together, one of them failing (an id already
    /// stored): each stored message is found, once, right after its enqueue
    /// returned; the failed one is not indexed a second time.
    #[tokio::test]
    async fn messages_of_one_batch_are_searchable_once_committed() {
        use crate::store::{DashboardStore, QueueStore};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 256).unwrap();
        let first = crate::store::contract::message(&["dup@x.example"]);
        store.enqueue(first.clone()).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        let mut ids = vec![first.id.clone()];
        for n in 0..40 {
            let msg = crate::store::contract::message(&[&format!("r{n}@x.example")]);
            ids.push(msg.id.clone());
            let store = store.clone();
            tasks.spawn(async move { store.enqueue(msg).await.is_ok() });
        }
        let again = store.clone();
        tasks.spawn(async move { again.enqueue(first).await.is_ok() });
        let stored = tasks.join_all().await;
        assert_eq!(
            stored.iter().filter(|ok| !**ok).count(),
            1,
            "only the duplicate fails"
        );
        for id in &ids {
            let found = store
                .search_messages(MessageQuery {
                    text: Some(id.to_string()),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(found.len(), 1, "{id} found {} times", found.len());
        }
    }
}
