//! `outpost store migrate --from sqlite:PATH --to postgres://...`: copies a
//! single node's SQLite store, everything in it, into an empty PostgreSQL
//! store, in one transaction (a copy that fails leaves the target as empty as
//! it was).
//!
//! Each table is one entry of [`TABLES`]: the SELECT that reads it from SQLite
//! and the PostgreSQL columns its values go to, with how each converts
//! (SQLite's integers become PostgreSQL's booleans where the schema says so, a
//! key's space-separated domains become an array). A table added to both
//! schemas is copied once it has its entry; `every_table_is_copied` fails until
//! it does.
//!
//! What is not copied: the SQLite node's heartbeat (`nodes`: the new nodes beat
//! their own), and its claims: a claimed recipient becomes due at once, since
//! the node that claimed it has stopped. The shaping the nodes share (slots,
//! paces, suspensions of destinations) has no SQLite table: a single node keeps
//! it in memory.

use super::StoreError;
use super::StoreResult;
use rusqlite::types::Value;
use std::path::Path;
use tokio_postgres::types::ToSql;

/// How a SQLite value becomes a PostgreSQL one.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int,
    /// SQLite keeps booleans as 0 and 1.
    Bool,
    Bytes,
    /// Space-separated words, a `TEXT[]` on PostgreSQL.
    Words,
}

/// One table to copy.
struct Table {
    /// The PostgreSQL table.
    name: &'static str,
    /// Reads the SQLite rows, their columns in the order of `columns`, in an
    /// order that keeps foreign keys satisfied and serial ids ascending.
    select: &'static str,
    /// The PostgreSQL columns written, and what each holds.
    columns: &'static [(&'static str, Kind)],
}

use Kind::*;

/// In an order where every row's foreign keys are copied before it.
const TABLES: &[Table] = &[
    Table {
        name: "messages",
        select: "SELECT id, mail_from, auth_user, smtputf8, size, received_at, content, finished
                 FROM messages ORDER BY rowid",
        columns: &[
            ("id", Text),
            ("mail_from", Text),
            ("auth_user", Text),
            ("smtputf8", Bool),
            ("size", Int),
            ("received_at", Int),
            ("content", Bytes),
            ("finished", Bool),
        ],
    },
    Table {
        name: "recipients",
        select: "SELECT message_id, idx, address, domain, status, attempts, next_attempt,
                     last_reply, last_class, last_attempt, claimed_by
                 FROM recipients ORDER BY message_id, idx",
        columns: &[
            ("message_id", Text),
            ("idx", Int),
            ("address", Text),
            ("domain", Text),
            ("status", Text),
            ("attempts", Int),
            ("next_attempt", Int),
            ("last_reply", Text),
            ("last_class", Text),
            ("last_attempt", Int),
            ("claimed_by", Text),
        ],
    },
    Table {
        name: "events",
        select:
            "SELECT id, at, kind, message_id, recipient, user, reply, class, asynchronous, domain
                 FROM events ORDER BY id",
        columns: &[
            ("id", Int),
            ("at", Int),
            ("kind", Text),
            ("message_id", Text),
            ("recipient", Text),
            ("user_name", Text),
            ("reply", Text),
            ("class", Text),
            ("asynchronous", Bool),
            ("domain", Text),
        ],
    },
    Table {
        name: "suppressions",
        select: "SELECT domain, address, reason, created_at FROM suppressions",
        columns: &[
            ("domain", Text),
            ("address", Text),
            ("reason", Text),
            ("created_at", Int),
        ],
    },
    Table {
        name: "control",
        select: "SELECT key, value FROM control",
        columns: &[("key", Text), ("value", Int)],
    },
    Table {
        name: "sending_domains",
        select: "SELECT name, created_at FROM sending_domains",
        columns: &[("name", Text), ("created_at", Int)],
    },
    Table {
        name: "dkim_keys",
        select: "SELECT domain, selector, algorithm, private_key, public_key FROM dkim_keys",
        columns: &[
            ("domain", Text),
            ("selector", Text),
            ("algorithm", Text),
            ("private_key", Bytes),
            ("public_key", Bytes),
        ],
    },
    Table {
        name: "users",
        select: "SELECT name, password_hash, admin FROM users",
        columns: &[("name", Text), ("password_hash", Text), ("admin", Bool)],
    },
    Table {
        name: "user_domains",
        select: "SELECT user, domain FROM user_domains",
        columns: &[("user_name", Text), ("domain", Text)],
    },
    Table {
        name: "api_keys",
        select: "SELECT id, user, name, key_hash, domains, created_at, last_used_at
                 FROM api_keys ORDER BY id",
        columns: &[
            ("id", Int),
            ("user_name", Text),
            ("name", Text),
            ("key_hash", Bytes),
            ("domains", Words),
            ("created_at", Int),
            ("last_used_at", Int),
        ],
    },
    Table {
        name: "domain_pauses",
        select: "SELECT domain, since, reason FROM domain_pauses",
        columns: &[("domain", Text), ("since", Int), ("reason", Text)],
    },
    Table {
        name: "counters",
        select: "SELECT hour, sending_domain, provider, outcome, class, count FROM counters",
        columns: &[
            ("hour", Int),
            ("sending_domain", Text),
            ("provider", Text),
            ("outcome", Text),
            ("class", Text),
            ("count", Int),
        ],
    },
    Table {
        name: "bounce_examples",
        select: "SELECT sending_domain, class, reply, at FROM bounce_examples",
        columns: &[
            ("sending_domain", Text),
            ("class", Text),
            ("reply", Text),
            ("at", Int),
        ],
    },
    Table {
        // The search text is SQLite's full-text row of the message (lower case
        // on PostgreSQL, see postgres/dashboard.rs); a message that has none
        // (stored before search existed) is found by id, sender and subject.
        name: "message_info",
        select: "SELECT i.id, i.sending_domain, i.subject, i.protocol, i.dkim,
                     lower(COALESCE(s.text, i.id || ' ' || m.mail_from || ' ' || i.subject))
                 FROM message_info i JOIN messages m ON m.id = i.id
                 LEFT JOIN message_search s ON s.rowid = m.rowid",
        columns: &[
            ("id", Text),
            ("sending_domain", Text),
            ("subject", Text),
            ("protocol", Text),
            ("dkim", Bool),
            ("search", Text),
        ],
    },
    Table {
        // No id on SQLite: PostgreSQL numbers them, in the same order.
        name: "attempts",
        select: "SELECT message_id, idx, at, status, mx_host, tls, reply, attempted
                 FROM attempts ORDER BY rowid",
        columns: &[
            ("message_id", Text),
            ("idx", Int),
            ("at", Int),
            ("status", Text),
            ("mx_host", Text),
            ("tls", Text),
            ("reply", Text),
            ("attempted", Bool),
        ],
    },
    Table {
        // The unsubscribe link key: links the node sent keep working.
        name: "secrets",
        select: "SELECT name, value FROM secrets",
        columns: &[("name", Text), ("value", Bytes)],
    },
    Table {
        // Positions only: the lease was the single node's, and any node of the
        // cluster may take it up.
        name: "webhook_cursors",
        select: "SELECT endpoint, acked FROM webhook_cursors",
        columns: &[("endpoint", Text), ("acked", Int)],
    },
];

/// Tables a target must have no rows in, besides those copied: a node's
/// heartbeat means a node already runs on it.
const MUST_BE_EMPTY: &[&str] = &["nodes"];

/// Rows copied, per table.
pub type Copied = Vec<(&'static str, u64)>;

/// Copies the SQLite store in `sqlite_dir` (its `outpost.db`) into the
/// PostgreSQL store at `url`, which must hold no data (its tables are created
/// if missing). Nothing is written unless everything is.
/// A node that beat its heartbeat on the SQLite store less than `quiet` ago may
/// still run: refused (what it does after the copy would be lost).
pub async fn sqlite_to_postgres(
    sqlite_dir: &Path,
    url: &str,
    quiet: std::time::Duration,
) -> StoreResult<Copied> {
    let database = super::SqliteStore::database_path(sqlite_dir);
    if !database.exists() {
        return Err(StoreError::Backend(format!(
            "no SQLite store at {} (looked for {})",
            sqlite_dir.display(),
            database.display()
        )));
    }
    // Opening brings a store of an older version up to the current schema;
    // dropped again at once, the writer thread ends.
    drop(super::SqliteStore::open(sqlite_dir, 1)?);
    let sqlite = rusqlite::Connection::open_with_flags(
        &database,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .map_err(sqlite_error)?;
    let last_seen: Option<i64> = sqlite
        .query_row("SELECT MAX(last_seen) FROM nodes", [], |row| row.get(0))
        .map_err(sqlite_error)?;
    let ago = chrono::Utc::now().timestamp_millis() - last_seen.unwrap_or(0);
    if ago < quiet.as_millis() as i64 {
        return Err(StoreError::Backend(format!(
            "a node ran on this store {}s ago: stop it (and wait [store] lease) first",
            ago.max(0) / 1000
        )));
    }
    // The same: the tables, by the numbered migrations.
    drop(super::PostgresStore::open(url, 1).await?);
    let config = super::parse_postgres_url(url).map_err(StoreError::Backend)?;
    let (mut client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let copied = copy(&sqlite, &mut client).await;
    drop(client);
    let _ = driver.await;
    copied
}

async fn copy(
    sqlite: &rusqlite::Connection,
    client: &mut tokio_postgres::Client,
) -> StoreResult<Copied> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL synchronous_commit = on")
        .await?;
    for table in TABLES
        .iter()
        .map(|t| t.name)
        .chain(MUST_BE_EMPTY.iter().copied())
    {
        let used: bool = tx
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
            .await?
            .get(0);
        if used {
            return Err(StoreError::Backend(format!(
                "the target store is not empty (table {table} has rows): migrate only into a \
                 new, empty store"
            )));
        }
    }
    let mut copied = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
        let placeholders: Vec<String> = (1..=names.len()).map(|n| format!("${n}")).collect();
        let insert = tx
            .prepare(&format!(
                "INSERT INTO {} ({}) VALUES ({})",
                table.name,
                names.join(", "),
                placeholders.join(", ")
            ))
            .await?;
        let mut select = sqlite.prepare(table.select).map_err(sqlite_error)?;
        let mut rows = select.query([]).map_err(sqlite_error)?;
        let mut n = 0;
        // One row at a time: a queue's contents need not fit in memory.
        while let Some(row) = rows.next().map_err(sqlite_error)? {
            let values = table
                .columns
                .iter()
                .enumerate()
                .map(|(i, (column, kind))| {
                    let value = row.get::<_, Value>(i).map_err(sqlite_error)?;
                    convert(value, *kind)
                        .map_err(|e| StoreError::Backend(format!("{}.{column}: {e}", table.name)))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            let params: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                .collect();
            tx.execute(&insert, &params).await?;
            n += 1;
        }
        copied.push((table.name, n));
    }
    // Ids given explicitly: the sequences go on after them.
    for table in ["events", "api_keys"] {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), MAX(id)) FROM {table}
                 HAVING MAX(id) IS NOT NULL"
            ),
            &[],
        )
        .await?;
    }
    // The SQLite node has stopped: what it had claimed is due now.
    tx.execute(
        "UPDATE recipients SET claimed_by = NULL,
             next_attempt = LEAST(next_attempt, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT)
         WHERE claimed_by IS NOT NULL",
        &[],
    )
    .await?;
    tx.commit().await?;
    Ok(copied)
}

type Param = Box<dyn ToSql + Sync + Send>;

fn convert(value: Value, kind: Kind) -> Result<Param, String> {
    Ok(match (kind, value) {
        (Text, Value::Null) => Box::new(None::<String>),
        (Int, Value::Null) => Box::new(None::<i64>),
        (Bool, Value::Null) => Box::new(None::<bool>),
        (Bytes, Value::Null) => Box::new(None::<Vec<u8>>),
        (Words, Value::Null) => Box::new(None::<Vec<String>>),
        (Text, Value::Text(t)) => Box::new(t),
        (Int, Value::Integer(i)) => Box::new(i),
        (Bool, Value::Integer(i)) => Box::new(i != 0),
        (Bytes, Value::Blob(b)) => Box::new(b),
        (Words, Value::Text(t)) => Box::new(
            t.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<String>>(),
        ),
        (_, other) => return Err(format!("unexpected value {other:?}")),
    })
}

fn sqlite_error(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("reading the SQLite store: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::TestSchema;

    /// Tables not copied, on purpose (see the module's comment).
    const NOT_COPIED: &[&str] = &[
        "destination_paces",
        "destination_slots",
        "destination_suspensions",
        "nodes",
        "schema_version",
    ];

    /// Every table of the PostgreSQL schema is copied or left out on purpose:
    /// a table added to the schema without an entry here fails this.
    #[tokio::test]
    async fn every_table_is_copied() {
        let Some(schema) = TestSchema::create().await else {
            return;
        };
        drop(
            crate::store::PostgresStore::open(&schema.url, 1)
                .await
                .unwrap(),
        );
        let client = crate::store::contract::connect(&schema.url).await;
        let mut tables: Vec<String> = client
            .query(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        tables.retain(|t| !NOT_COPIED.contains(&t.as_str()));
        let mut listed: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        listed.sort_unstable();
        assert_eq!(tables, listed);
    }
}
