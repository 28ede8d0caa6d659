//! The dashboard's tables in PostgreSQL: hourly counters, bounce examples,
//! per-attempt details and per-message facts, as for SQLite (`sqlite/dashboard.rs`);
//! the `record_*` functions run inside the writes they count (same transaction).
//!
//! Shards: every message updates a counter row (and a bounced one its bounce
//! example), the same row for all mail of an hour and sending domain. A row
//! updated in a transaction stays locked until its COMMIT, so if the nodes'
//! writers shared those rows, each would wait for the others' commits (the
//! nodes serialized), and two writers touching two rows in opposite orders
//! would deadlock. So each writer connection has rows of its own: `shard` is
//! its server process id (`pg_backend_pid()`, unique among live connections),
//! part of the key, and the readers add the shards up (or take the newest
//! example). A writer never waits for another on these rows.
//!
//! Search: `message_info.search` holds the queue id, sender, subject and
//! recipients in lower case, and each word of a query must occur in it
//! (`LIKE '%word%'`). Not a `tsvector`: PostgreSQL's text parser keeps an address
//! (`bob@example.com`) as one lexeme, so a search for `bob` or `example.com`
//! would miss it, while SQLite's FTS5 finds both; a substring match finds what
//! FTS5 finds (and a little more: parts of words). Without the `pg_trgm`
//! extension (not always installable) no index serves it: a search walks the
//! messages newest first until its page is full, which is quick when the words
//! are common and reads the whole table when they match nothing.

use super::queue::load_summaries;
use super::{Conn, PostgresStore, rows};
use crate::store::dashboard::*;
use crate::store::dashboard::{HOUR_MS, domain_of, received_protocol, search_text};
use crate::store::{
    Event, EventKind, NewMessage, QueueId, RecipientStatus, RecipientUpdate, StoreFuture,
    StoreResult, Suppression,
};

/// The end of every statement that adds to a counter: to this writer's shard of it.
macro_rules! add_to_counter {
    () => {
        "ON CONFLICT (hour, sending_domain, provider, outcome, class, shard)
         DO UPDATE SET count = counters.count + excluded.count"
    };
}

async fn bump(
    conn: &Conn,
    at: i64,
    sending_domain: &str,
    provider: &str,
    outcome: &str,
    class: &str,
    count: i64,
) -> StoreResult<()> {
    conn.execute(
        concat!(
            "INSERT INTO counters (hour, sending_domain, provider, outcome, class, count, shard)
             VALUES ($1, $2, $3, $4, $5, $6, pg_backend_pid()) ",
            add_to_counter!()
        ),
        &[
            &at.div_euclid(HOUR_MS),
            &sending_domain,
            &provider,
            &outcome,
            &class,
            &count,
        ],
    )
    .await?;
    Ok(())
}

/// What enqueue records for the dashboard: the message's facts, its search
/// text and the `accepted` counter (`queue.rs` writes them in the statement that
/// stores the message, see [`ENQUEUE_SQL`]).
pub(super) struct EnqueueFacts {
    pub sending_domain: String,
    pub subject: String,
    pub protocol: String,
    pub dkim: bool,
    pub search: String,
    pub hour: i64,
    /// Recipients relayed (not local): the `accepted` count; none, no counter.
    pub relayed: i64,
}

impl EnqueueFacts {
    pub fn of(message: &NewMessage) -> EnqueueFacts {
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
            protocol: received_protocol(headers),
            dkim: crate::message::has_header(headers, "DKIM-Signature"),
            search: search_text(message, &sender, &subject).to_lowercase(),
            subject,
            hour: message.received_at.div_euclid(HOUR_MS),
            relayed: message.recipients.iter().filter(|r| !r.local).count() as i64,
        }
    }
}

/// The dashboard's part of the enqueue statement (`queue.rs`), parameters
/// `$12` on: the message's facts and the `accepted` counter.
pub(super) const ENQUEUE_SQL: &str = concat!(
    "
    info AS (
        INSERT INTO message_info (id, sending_domain, subject, protocol, dkim, search)
        VALUES ($1, $12, $13, $14, $15, $16))
    INSERT INTO counters (hour, sending_domain, provider, outcome, class, count, shard)
    SELECT $17::BIGINT, $12, '', 'accepted', '', $18::BIGINT, pg_backend_pid() WHERE $18::BIGINT > 0
    ",
    add_to_counter!()
);

/// The user (`auth_user`) and sending domain of a stored message, in one round
/// trip; none if the message is not stored.
pub(super) async fn message_facts(
    conn: &Conn,
    id: &str,
) -> StoreResult<Option<(Option<String>, String)>> {
    let row = conn
        .query_opt(
            "SELECT COALESCE(i.sending_domain, ''), m.mail_from, m.auth_user FROM messages m
             LEFT JOIN message_info i ON i.id = m.id WHERE m.id = $1",
            &[&id],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let info: String = row.try_get(0)?;
    let from: String = row.try_get(1)?;
    let domain = if info.is_empty() {
        domain_of(&from)
    } else {
        info
    };
    Ok(Some((row.try_get(2)?, domain)))
}

/// The sending domain of a stored message; none if the message is not stored.
async fn sending_domain(conn: &Conn, id: &str) -> StoreResult<Option<String>> {
    Ok(message_facts(conn, id).await?.map(|(_, domain)| domain))
}

/// At `record_attempt`, for a stored message sent from `sending_domain`: one
/// attempt row per update, and the counters of outcomes that were tried (a
/// deferral without trying, for a suspended destination, is not an attempt),
/// in one statement (one round trip) per update.
pub(super) async fn record_attempts(
    conn: &Conn,
    id: &str,
    sending_domain: &str,
    updates: &[RecipientUpdate],
    at: i64,
) -> StoreResult<()> {
    for u in updates {
        let idx = u.idx as i64;
        let provider = match &u.path.mx_host {
            _ if !u.attempted => String::new(),
            Some(host) => provider_of(host),
            None if u.status == RecipientStatus::Suppressed => String::new(),
            // Not reached (DNS, connection): the recipient's domain stands in.
            None => conn
                .query_opt(
                    "SELECT address FROM recipients WHERE message_id = $1 AND idx = $2",
                    &[&id, &idx],
                )
                .await?
                .map(|row| row.try_get::<_, String>(0))
                .transpose()?
                .map(|a| domain_of(&a))
                .unwrap_or_default(),
        };
        let bounced = u.status == RecipientStatus::Bounced;
        let class = match &u.class {
            Some(class) if bounced => class.as_str(),
            _ => "",
        };
        conn.execute(
            concat!(
                "WITH attempt AS (
                     INSERT INTO attempts (message_id, idx, at, status, mx_host, tls, reply, attempted)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8))
                 INSERT INTO counters (hour, sending_domain, provider, outcome, class, count, shard)
                 SELECT $9, $10, $11, $4, $12, 1, pg_backend_pid() WHERE $8 ",
                add_to_counter!()
            ),
            &[
                &id,
                &idx,
                &at,
                &u.status.as_str(),
                &u.path.mx_host,
                &u.path.tls,
                &u.reply,
                &u.attempted,
                &at.div_euclid(HOUR_MS),
                &sending_domain,
                &provider,
                &class,
            ],
        )
        .await?;
        if bounced && u.attempted {
            conn.execute(
                "INSERT INTO bounce_examples (sending_domain, class, reply, at, shard)
                 VALUES ($1, $2, $3, $4, pg_backend_pid())
                 ON CONFLICT (sending_domain, class, shard) DO UPDATE SET reply = excluded.reply, at = excluded.at",
                &[&sending_domain, &class, &u.reply, &at],
            )
            .await?;
        }
    }
    Ok(())
}

/// At `add_suppression`, when it was added: an unsubscribe is counted.
pub(super) async fn record_suppression(conn: &Conn, s: &Suppression) -> StoreResult<()> {
    if s.reason == "unsubscribe" {
        let domain = s.domain.to_lowercase();
        bump(conn, s.created_at, &domain, "", "unsubscribed", "", 1).await?;
    }
    Ok(())
}

/// At `append_events`: a bounce or complaint that came back after delivery is
/// counted for its message's sending domain, with no provider (it came by mail,
/// not from an MX host's reply).
pub(super) async fn record_feedback(conn: &Conn, e: &Event) -> StoreResult<()> {
    let outcome = match e.kind {
        EventKind::Bounced => "bounced",
        EventKind::Complained => "complained",
        _ => return Ok(()),
    };
    let Some(id) = e.message_id.as_ref().filter(|_| e.asynchronous) else {
        return Ok(());
    };
    let Some(sending_domain) = sending_domain(conn, id.as_str()).await? else {
        return Ok(());
    };
    let class = match &e.class {
        Some(class) if outcome == "bounced" => class.as_str(),
        _ => "",
    };
    bump(conn, e.at, &sending_domain, "", outcome, class, 1).await
}

/// A scope as a parameter: `None` (all) or the lower-case domains, for
/// `($n::TEXT[] IS NULL OR column = ANY($n))`.
fn scope(domains: &DomainScope) -> Option<Vec<String>> {
    domains
        .as_ref()
        .map(|list| list.iter().map(|d| d.to_ascii_lowercase()).collect())
}

/// A word of a search as a `LIKE` pattern matching it anywhere, literally.
fn like_pattern(word: &str) -> String {
    let mut pattern = String::from("%");
    for c in word.to_lowercase().chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

async fn search(conn: &Conn, q: &MessageQuery) -> StoreResult<Vec<MessageRow>> {
    let words: Vec<String> = q
        .text
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(like_pattern)
        .collect();
    let status = q.status.map(RecipientStatus::as_str);
    let since = q.since.map(|since| format!("{:012X}", since.max(0)));
    let before = q.before.as_ref().map(QueueId::as_str);
    let domains = scope(&q.domains);
    let limit = q.limit as i64;
    // One text whatever the filters (a missing one is NULL), so it is prepared
    // once; queue ids begin with the arrival time in hex milliseconds, so the
    // primary key orders and bounds by time.
    let found = conn
        .query(
            "SELECT m.id, m.mail_from, i.subject, m.received_at FROM messages m
             JOIN message_info i ON i.id = m.id
             WHERE i.search LIKE ALL ($1::TEXT[])
             AND ($2::TEXT IS NULL OR EXISTS (
                 SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.status = $2))
             AND ($3::TEXT IS NULL OR m.id >= $3)
             AND ($4::TEXT IS NULL OR m.id < $4)
             AND ($5::TEXT[] IS NULL OR i.sending_domain = ANY($5))
             ORDER BY m.id DESC LIMIT $6",
            &[&words, &status, &since, &before, &domains, &limit],
        )
        .await?;
    let mut list = rows(found, |row| {
        Ok(MessageRow {
            id: QueueId(row.try_get(0)?),
            mail_from: row.try_get(1)?,
            subject: row.try_get(2)?,
            received_at: row.try_get(3)?,
            first_recipient: String::new(),
            recipients: 0,
            statuses: Vec::new(),
        })
    })?;
    let ids: Vec<&str> = list.iter().map(|r| r.id.as_str()).collect();
    let recipients = conn
        .query(
            "SELECT message_id, address, status FROM recipients WHERE message_id = ANY($1)
             ORDER BY message_id, idx",
            &[&ids],
        )
        .await?;
    for r in &recipients {
        let id: String = r.try_get(0)?;
        let Some(row) = list.iter_mut().find(|row| row.id.as_str() == id) else {
            continue;
        };
        if row.recipients == 0 {
            row.first_recipient = r.try_get(1)?;
        }
        row.recipients += 1;
        let status: String = r.try_get(2)?;
        if !row.statuses.contains(&status) {
            row.statuses.push(status);
        }
    }
    Ok(list)
}

async fn details(conn: &Conn, id: &str) -> StoreResult<Option<MessageDetails>> {
    let Some(summary) = load_summaries(conn, "WHERE id = $1", &[&id]).await?.pop() else {
        return Ok(None);
    };
    let Some(row) = conn
        .query_opt(
            "SELECT COALESCE(i.subject, ''), i.sending_domain, COALESCE(i.protocol, 'unknown'),
                    COALESCE(i.dkim, FALSE), m.content IS NOT NULL
             FROM messages m LEFT JOIN message_info i ON i.id = m.id WHERE m.id = $1",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let attempts = conn
        .query(
            "SELECT idx, at, status, mx_host, tls, reply, attempted FROM attempts
             WHERE message_id = $1 ORDER BY id",
            &[&id],
        )
        .await?;
    let attempts = rows(attempts, |row| {
        let status: String = row.try_get(2)?;
        Ok(AttemptRecord {
            idx: row.try_get::<_, i64>(0)? as usize,
            at: row.try_get(1)?,
            status: RecipientStatus::parse(&status).unwrap_or(RecipientStatus::Deferred),
            mx_host: row.try_get(3)?,
            tls: row.try_get(4)?,
            reply: row.try_get(5)?,
            attempted: row.try_get(6)?,
        })
    })?;
    let sending_domain: Option<String> = row.try_get(1)?;
    Ok(Some(MessageDetails {
        sending_domain: sending_domain.unwrap_or_else(|| domain_of(&summary.mail_from)),
        subject: row.try_get(0)?,
        protocol: row.try_get(2)?,
        dkim_signed: row.try_get(3)?,
        content_kept: row.try_get(4)?,
        summary,
        attempts,
    }))
}

/// Pending recipients of the messages of the domains in scope.
const PENDING_IN_SCOPE: &str = "FROM recipients r JOIN message_info i ON i.id = r.message_id
     WHERE r.status IN ('queued', 'deferred')
     AND ($1::TEXT[] IS NULL OR i.sending_domain = ANY($1))";

impl DashboardStore for PostgresStore {
    fn counters(&self, domains: DomainScope, since_hour: i64) -> StoreFuture<'_, Vec<CounterRow>> {
        Box::pin(async move {
            let conn = self.reader().await?;
            let found = conn
                .query(
                    "SELECT hour, sending_domain, provider, outcome, class, SUM(count)::BIGINT
                     FROM counters
                     WHERE hour >= $1 AND ($2::TEXT[] IS NULL OR sending_domain = ANY($2))
                     GROUP BY hour, sending_domain, provider, outcome, class",
                    &[&since_hour, &scope(&domains)],
                )
                .await?;
            rows(found, |row| {
                Ok(CounterRow {
                    hour: row.try_get(0)?,
                    sending_domain: row.try_get(1)?,
                    provider: row.try_get(2)?,
                    outcome: row.try_get(3)?,
                    class: row.try_get(4)?,
                    count: row.try_get(5)?,
                })
            })
        })
    }

    fn bounce_examples(&self, domains: DomainScope) -> StoreFuture<'_, Vec<BounceExample>> {
        Box::pin(async move {
            let conn = self.reader().await?;
            let found = conn
                .query(
                    "SELECT DISTINCT ON (sending_domain, class) sending_domain, class, reply, at
                     FROM bounce_examples
                     WHERE $1::TEXT[] IS NULL OR sending_domain = ANY($1)
                     ORDER BY sending_domain, class, at DESC",
                    &[&scope(&domains)],
                )
                .await?;
            rows(found, |row| {
                Ok(BounceExample {
                    sending_domain: row.try_get(0)?,
                    class: row.try_get(1)?,
                    reply: row.try_get(2)?,
                    at: row.try_get(3)?,
                })
            })
        })
    }

    fn search_messages(&self, query: MessageQuery) -> StoreFuture<'_, Vec<MessageRow>> {
        Box::pin(async move { search(&*self.reader().await?, &query).await })
    }

    fn message_details(&self, id: &QueueId) -> StoreFuture<'_, Option<MessageDetails>> {
        let id = id.to_string();
        Box::pin(async move { details(&*self.reader().await?, &id).await })
    }

    fn pending(
        &self,
        domains: DomainScope,
        limit: usize,
    ) -> StoreFuture<'_, Vec<PendingRecipient>> {
        Box::pin(async move {
            let conn = self.reader().await?;
            let found = conn
                .query(
                    &format!(
                        "SELECT r.message_id, r.address, r.domain, r.status, r.attempts, r.next_attempt,
                             r.last_reply {PENDING_IN_SCOPE} ORDER BY r.message_id, r.idx LIMIT $2"
                    ),
                    &[&scope(&domains), &(limit as i64)],
                )
                .await?;
            rows(found, |row| {
                let status: String = row.try_get(3)?;
                Ok(PendingRecipient {
                    message_id: QueueId(row.try_get(0)?),
                    address: row.try_get(1)?,
                    domain: row.try_get(2)?,
                    status: RecipientStatus::parse(&status).unwrap_or(RecipientStatus::Deferred),
                    attempts: row.try_get::<_, i64>(4)? as u32,
                    next_attempt: row.try_get(5)?,
                    last_reply: row.try_get(6)?,
                })
            })
        })
    }

    fn pending_count(&self, domains: DomainScope) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let conn = self.reader().await?;
            let n: i64 = conn
                .value(
                    &format!("SELECT COUNT(*) {PENDING_IN_SCOPE}"),
                    &[&scope(&domains)],
                )
                .await?;
            Ok(n as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::QueueStore;
    use crate::store::contract::{Backend, TestSchema, connect, message};
    use std::time::Duration;

    /// Another node's writer, in the middle of a transaction that counted mail
    /// of the same hour and domain, holds up neither this node's writes nor,
    /// the other way round, its own (no lock between them, so no deadlock).
    #[tokio::test]
    async fn writers_do_not_wait_on_each_others_counters() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let store = PostgresStore::open(&schema.url, 16).await.unwrap();
        let config = super::super::parse_url(&schema.url).unwrap();
        let other = Conn::connect(&config, Duration::from_secs(30))
            .await
            .unwrap();
        other.batch("BEGIN").await.unwrap();
        let msg = message(&["x@example.net"]);
        bump(
            &other,
            msg.received_at,
            "example.com",
            "",
            "accepted",
            "",
            1,
        )
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), store.enqueue(msg))
            .await
            .expect("the enqueue waited for the other writer's transaction")
            .unwrap();
        other.batch("COMMIT").await.unwrap();
        let accepted = CounterRow {
            hour: 0,
            sending_domain: "example.com".into(),
            provider: String::new(),
            outcome: "accepted".into(),
            class: String::new(),
            count: 2,
        };
        assert_eq!(store.counters(None, 0).await.unwrap(), vec![accepted]);
    }

    #[tokio::test]
    async fn the_newest_bounce_example_of_all_writers_is_shown() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        let store = PostgresStore::open(&schema.url, 16).await.unwrap();
        connect(&schema.url)
            .await
            .batch_execute(
                "INSERT INTO bounce_examples (sending_domain, class, reply, at, shard) VALUES
                 ('example.com', 'mailbox', 'old', 5, 1), ('example.com', 'mailbox', 'new', 7, 2),
                 ('example.com', 'mailbox', 'older', 3, 3)",
            )
            .await
            .unwrap();
        let newest = BounceExample {
            sending_domain: "example.com".into(),
            class: "mailbox".into(),
            reply: "new".into(),
            at: 7,
        };
        assert_eq!(store.bounce_examples(None).await.unwrap(), vec![newest]);
    }

    #[test]
    fn search_words_match_literally() {
        assert_eq!(like_pattern("Bob@X"), "%bob@x%");
        assert_eq!(like_pattern(r"5%_a\b"), r"%5\%\_a\\b%");
    }

    #[tokio::test]
    async fn wildcards_in_a_search_are_plain_text() {
        let Some(backend) = Backend::postgres().await else {
            return;
        };
        let store = backend.open().await;
        let mut msg = message(&["a@x.example"]);
        msg.content = std::sync::Arc::new(b"Subject: 100% off\r\n\r\n".to_vec());
        store.enqueue(msg.clone()).await.unwrap();
        let search = |text: &str| MessageQuery {
            text: Some(text.into()),
            limit: 10,
            ..Default::default()
        };
        let found = store.search_messages(search("0%")).await.unwrap();
        assert_eq!(found.len(), 1);
        assert!(
            store
                .search_messages(search("1_0"))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .search_messages(search("%x%"))
                .await
                .unwrap()
                .is_empty()
        );
    }
}
