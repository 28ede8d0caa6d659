//! The database schema and the migrations of databases made by older versions.

use rusqlite::Connection;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    mail_from TEXT NOT NULL,
    auth_user TEXT,
    smtputf8 INTEGER NOT NULL,
    size INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    content BLOB,
    finished INTEGER NOT NULL DEFAULT 0,
    -- A body in the spool (spool.rs) instead of `content`: file and offset.
    spool INTEGER,
    spool_offset INTEGER
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    last_reply TEXT,
    last_class TEXT,
    last_attempt INTEGER,
    claimed_by TEXT,
    PRIMARY KEY (message_id, idx)
);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients(status, next_attempt);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    message_id TEXT,
    recipient TEXT,
    user TEXT,
    reply TEXT,
    class TEXT,
    asynchronous INTEGER NOT NULL DEFAULT 0,
    domain TEXT
);
CREATE TABLE IF NOT EXISTS suppressions (
    domain TEXT NOT NULL,
    address TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (domain, address)
);
CREATE TABLE IF NOT EXISTS control (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sending_domains (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dkim_keys (
    domain TEXT NOT NULL REFERENCES sending_domains(name) ON DELETE CASCADE,
    selector TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    private_key BLOB NOT NULL,
    public_key BLOB NOT NULL,
    PRIMARY KEY (domain, selector)
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    admin INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS user_domains (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    domain TEXT NOT NULL,
    PRIMARY KEY (user, domain)
);
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name TEXT,
    key_hash BLOB NOT NULL UNIQUE,
    domains TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_user ON api_keys(user);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    last_seen INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS domain_pauses (
    domain TEXT PRIMARY KEY,
    since INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_cursors (
    endpoint TEXT PRIMARY KEY,
    acked INTEGER NOT NULL,
    holder TEXT,
    lease_until INTEGER NOT NULL DEFAULT 0
);
";

/// Brings a database made by an older version up to the current schema.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has = |table: &str, column: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |row| row.get(0),
        )
    };
    if !has("recipients", "last_class")? {
        conn.execute_batch("ALTER TABLE recipients ADD COLUMN last_class TEXT")?;
    }
    if !has("events", "asynchronous")? {
        conn.execute_batch(
            "ALTER TABLE events ADD COLUMN asynchronous INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    if !has("events", "domain")? {
        conn.execute_batch("ALTER TABLE events ADD COLUMN domain TEXT")?;
    }
    if !has("recipients", "last_attempt")? {
        conn.execute_batch("ALTER TABLE recipients ADD COLUMN last_attempt INTEGER")?;
    }
    if !has("recipients", "claimed_by")? {
        conn.execute_batch("ALTER TABLE recipients ADD COLUMN claimed_by TEXT")?;
    }
    if !has("messages", "finished")? {
        // Before the column, a finished message was one without content.
        conn.execute_batch(
            "ALTER TABLE messages ADD COLUMN finished INTEGER NOT NULL DEFAULT 0;
             UPDATE messages SET finished = 1 WHERE content IS NULL;",
        )?;
    }
    if !has("messages", "spool")? {
        conn.execute_batch(
            "ALTER TABLE messages ADD COLUMN spool INTEGER;
             ALTER TABLE messages ADD COLUMN spool_offset INTEGER;",
        )?;
    }
    // Which files rows still name: a handful of entries (mail in its first
    // attempt), not one per message.
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS messages_spool ON messages(spool) WHERE spool IS NOT NULL",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::contract::message;
    use crate::store::*;

    #[tokio::test]
    async fn a_database_without_last_class_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let old = SCHEMA
            .replace("    last_class TEXT,\n", "")
            .replace("    last_attempt INTEGER,\n", "")
            .replace("    claimed_by TEXT,\n", "")
            .replace(",\n    finished INTEGER NOT NULL DEFAULT 0", "")
            .replace(
                ",\n    -- A body in the spool (spool.rs) instead of `content`: file and offset.\n    spool INTEGER,\n    spool_offset INTEGER",
                "",
            )
            .replace(",\n    domain TEXT\n", "\n");
        assert_ne!(old, SCHEMA);
        Connection::open(dir.path().join("outpost.db"))
            .unwrap()
            .execute_batch(&old)
            .unwrap();
        let store = SqliteStore::open(dir.path(), 16).unwrap();
        let msg = message(&["a@x.example"]);
        let id = msg.id.clone();
        store.enqueue(msg).await.unwrap();
        let update = RecipientUpdate {
            idx: 0,
            status: RecipientStatus::Bounced,
            next_attempt: 0,
            reply: "550 5.1.1 unknown".into(),
            class: Some("bad-mailbox".into()),
            attempted: true,
            path: Default::default(),
        };
        store.record_attempt(&id, vec![update], 2).await.unwrap();
        let summary = store.message(&id).await.unwrap().unwrap();
        assert_eq!(
            summary.recipients[0].last_class.as_deref(),
            Some("bad-mailbox")
        );
    }
}
