//! The dashboard's tables in SQLite: hourly counters, bounce examples, per-attempt
//! details, per-message facts (sending domain, subject, protocol, DKIM) and a
//! full-text index for search.
//!
//! The `record_*` functions run inside the writes of `enqueue`, `record_attempt`
//! and `add_suppression` (same transaction), so the counters always agree with the
//! states they count. Counters are upserts on a small table: one row per hour ×
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

/// At enqueue: the message's facts, its search text and the `accepted` counter.
pub(super) fn record_enqueue(conn: &Connection, message: &NewMessage) -> rusqlite::Result<()> {
    let headers = crate::message::header_block(&message.content);
    let sending_domain = message
        .mail_from
        .as_ref()
        .map_or(String::new(), |m| m.domain().as_str().to_ascii_lowercase());
    let sender = message
        .mail_from
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let subject = crate::message::subject(&message.content);
    conn.prepare_cached(
        "INSERT INTO message_info (id, sending_domain, subject, protocol, dkim) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        message.id.as_str(),
        sending_domain,
        subject,
        received_protocol(headers),
        crate::message::has_header(headers, "DKIM-Signature"),
    ])?;
    let text = search_text(message, &sender, &subject);
    conn.prepare_cached(
        "INSERT INTO message_search (rowid, text) SELECT rowid, ?2 FROM messages WHERE id = ?1",
    )?
    .execute(params![message.id.as_str(), text])?;
    let relayed = message.recipients.iter().filter(|r| !r.local).count() as i64;
    if relayed > 0 {
        bump(
            conn,
            message.received_at,
            &sending_domain,
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
/// operators are plain text), all required, the last a prefix.
fn fts_query(text: &str) -> Option<String> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    if words.is_empty() {
        return None;
    }
    Some(format!("{}*", words.join(" ")))
}

fn search(conn: &Connection, q: &MessageQuery) -> rusqlite::Result<Vec<MessageRow>> {
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    // With text, the full-text index drives (its matches are few); without,
    // the primary key is walked newest first and stops at the page's end.
    let mut sql = match q.text.as_deref().and_then(fts_query) {
        Some(text) => {
            args.push(text.into());
            String::from(
                "SELECT m.id, m.mail_from, i.subject, m.received_at FROM message_search
                 JOIN messages m ON m.rowid = message_search.rowid
                 JOIN message_info i ON i.id = m.id WHERE message_search MATCH ?1",
            )
        }
        None => String::from(
            "SELECT m.id, m.mail_from, i.subject, m.received_at FROM messages m
             JOIN message_info i ON i.id = m.id WHERE 1",
        ),
    };
    if let Some(status) = q.status {
        args.push(status.as_str().to_string().into());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.status = ?{})",
            args.len()
        ));
    }
    if let Some(since) = q.since {
        // Queue ids begin with the arrival time in hex milliseconds, so the
        // primary key orders and bounds by time.
        args.push(format!("{:012X}", since.max(0)).into());
        sql.push_str(&format!(" AND m.id >= ?{}", args.len()));
    }
    if let Some(before) = &q.before {
        args.push(before.as_str().to_string().into());
        sql.push_str(&format!(" AND m.id < ?{}", args.len()));
    }
    sql.push_str(&scope_sql("i.sending_domain", &q.domains, &mut args));
    args.push((q.limit as i64).into());
    sql.push_str(&format!(" ORDER BY m.id DESC LIMIT ?{}", args.len()));
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
                    COALESCE(i.dkim, 0), m.content IS NOT NULL
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
            fts_query("bob@example.com").unwrap(),
            "\"bob@example.com\"*"
        );
        assert_eq!(fts_query(" a  \"b ").unwrap(), "\"a\" \"\"\"b\"*");
        assert_eq!(fts_query("  "), None);
    }
}
