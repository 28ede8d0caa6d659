//! The schema, as numbered migrations: `schema_version` holds the last one
//! applied; at open, the missing ones run in one transaction under an advisory
//! lock, so nodes started together do not race (the first migrates, the others
//! find it done). A new version of the schema is a new entry at the end of
//! [`MIGRATIONS`]; entries already released never change.
//!
//! Keys that are listed in order (ids, names, addresses) are `COLLATE "C"`: byte
//! order, as in SQLite, whatever the database's locale.
//!
//! Integers are `BIGINT` throughout (times in unix ms, counts, indexes): one Rust
//! type (`i64`) for every column. `user` is reserved in SQL: columns holding a
//! user name are `user_name`.

use super::Conn;
use crate::store::StoreResult;

/// Any constant, the same for every node: the advisory lock that serializes
/// migrations (session-wide keys are per database, so it also serializes stores
/// of different schemas of one database, briefly).
const MIGRATION_LOCK: i64 = 0x6f75_7470_6f73_7401;

const MIGRATIONS: &[&str] = &[
    // 1: everything SQLite had when the PostgreSQL backend was written.
    r#"
CREATE TABLE messages (
    id TEXT COLLATE "C" PRIMARY KEY,
    mail_from TEXT NOT NULL,
    auth_user TEXT,
    smtputf8 BOOLEAN NOT NULL,
    size BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    content BYTEA,
    finished BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE recipients (
    message_id TEXT COLLATE "C" NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx BIGINT NOT NULL,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt BIGINT NOT NULL,
    last_reply TEXT,
    last_class TEXT,
    last_attempt BIGINT,
    PRIMARY KEY (message_id, idx)
);
-- What claim_due scans: pending recipients by due time.
CREATE INDEX recipients_due ON recipients(next_attempt) WHERE status IN ('queued', 'deferred');
CREATE INDEX recipients_status ON recipients(status, message_id);
CREATE INDEX recipients_address ON recipients(address);
CREATE INDEX recipients_domain_pending ON recipients(domain, status);
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    message_id TEXT,
    recipient TEXT,
    user_name TEXT,
    reply TEXT,
    class TEXT,
    asynchronous BOOLEAN NOT NULL DEFAULT FALSE,
    domain TEXT
);
CREATE TABLE suppressions (
    domain TEXT COLLATE "C" NOT NULL,
    address TEXT COLLATE "C" NOT NULL,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (domain, address)
);
CREATE TABLE control (
    key TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
CREATE TABLE sending_domains (
    name TEXT COLLATE "C" PRIMARY KEY,
    created_at BIGINT NOT NULL
);
CREATE TABLE dkim_keys (
    domain TEXT NOT NULL REFERENCES sending_domains(name) ON DELETE CASCADE,
    selector TEXT COLLATE "C" NOT NULL,
    algorithm TEXT NOT NULL,
    private_key BYTEA NOT NULL,
    public_key BYTEA NOT NULL,
    PRIMARY KEY (domain, selector)
);
CREATE TABLE users (
    name TEXT COLLATE "C" PRIMARY KEY,
    password_hash TEXT NOT NULL,
    admin BOOLEAN NOT NULL
);
CREATE TABLE user_domains (
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    domain TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (user_name, domain)
);
CREATE TABLE api_keys (
    id BIGSERIAL PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    name TEXT,
    key_hash BYTEA NOT NULL UNIQUE,
    domains TEXT[] NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX api_keys_user ON api_keys(user_name);
CREATE TABLE domain_pauses (
    domain TEXT COLLATE "C" PRIMARY KEY,
    since BIGINT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE counters (
    hour BIGINT NOT NULL,
    sending_domain TEXT NOT NULL,
    provider TEXT NOT NULL,
    outcome TEXT NOT NULL,
    class TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (hour, sending_domain, provider, outcome, class)
);
CREATE TABLE bounce_examples (
    sending_domain TEXT NOT NULL,
    class TEXT NOT NULL,
    reply TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (sending_domain, class)
);
-- search: the queue id, sender, subject and recipients, lower case, matched
-- with LIKE (see dashboard.rs for why not a tsvector).
CREATE TABLE message_info (
    id TEXT COLLATE "C" PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    sending_domain TEXT NOT NULL,
    subject TEXT NOT NULL,
    protocol TEXT NOT NULL,
    dkim BOOLEAN NOT NULL,
    search TEXT NOT NULL
);
CREATE INDEX message_info_domain ON message_info(sending_domain, id);
CREATE TABLE attempts (
    id BIGSERIAL PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    idx BIGINT NOT NULL,
    at BIGINT NOT NULL,
    status TEXT NOT NULL,
    mx_host TEXT,
    tls TEXT,
    reply TEXT NOT NULL,
    attempted BOOLEAN NOT NULL
);
CREATE INDEX attempts_message ON attempts(message_id);
"#,
    // Claims name their node; nodes note their heartbeats (docs/cluster.md).
    r#"
ALTER TABLE recipients ADD COLUMN claimed_by TEXT COLLATE "C";
CREATE INDEX recipients_claimed ON recipients(claimed_by) WHERE claimed_by IS NOT NULL;
CREATE TABLE nodes (
    name TEXT COLLATE "C" PRIMARY KEY,
    last_seen BIGINT NOT NULL
);
"#,
    // Shaping shared by the nodes (shaping.rs). UNLOGGED: writing them makes no
    // WAL, so a transaction touching only them commits without a flush; a crash
    // of the server (or a failover) empties them, which frees every slot.
    r#"
CREATE UNLOGGED TABLE destination_slots (
    destination TEXT COLLATE "C" NOT NULL,
    slot BIGINT NOT NULL,
    holder TEXT COLLATE "C",
    token BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    PRIMARY KEY (destination, slot)
);
CREATE UNLOGGED TABLE destination_paces (
    destination TEXT COLLATE "C" PRIMARY KEY,
    next_send BIGINT NOT NULL
);
CREATE UNLOGGED TABLE destination_suspensions (
    destination TEXT COLLATE "C" PRIMARY KEY,
    until BIGINT NOT NULL,
    reply TEXT NOT NULL,
    node TEXT NOT NULL
);
"#,
    // Rows every message updates are each writer connection's own (`shard`,
    // its server process id, see dashboard.rs): nodes never wait on each other's
    // counters, so they cannot deadlock on them. Message contents are compressed
    // with lz4 where the server has it (several times less CPU than pglz).
    r#"
ALTER TABLE counters ADD COLUMN shard BIGINT NOT NULL DEFAULT 0;
ALTER TABLE counters DROP CONSTRAINT counters_pkey;
ALTER TABLE counters ADD PRIMARY KEY (hour, sending_domain, provider, outcome, class, shard);
ALTER TABLE bounce_examples ADD COLUMN shard BIGINT NOT NULL DEFAULT 0;
ALTER TABLE bounce_examples DROP CONSTRAINT bounce_examples_pkey;
ALTER TABLE bounce_examples ADD PRIMARY KEY (sending_domain, class, shard);
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
               WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)) THEN
        ALTER TABLE messages ALTER COLUMN content SET COMPRESSION lz4;
    END IF;
END $$;
"#,
    // 5: what nodes share besides mail (store/mod.rs `SharedStore`): generated
    // secrets, and each webhook endpoint's cursor with the lease of the node
    // posting to it. `endpoint` is a hash of the URL, not the URL (which may
    // hold a token).
    r#"
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE webhook_cursors (
    endpoint TEXT PRIMARY KEY,
    acked BIGINT NOT NULL,
    holder TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);
"#,
];

/// Whether Outpost's tables are in the database (in the search path).
pub(super) async fn exists(conn: &Conn) -> StoreResult<bool> {
    conn.value("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await
}

/// Applies the migrations the database lacks, in one transaction.
pub(super) async fn migrate(conn: &Conn) -> StoreResult<()> {
    conn.batch("BEGIN").await?;
    let result = apply(conn).await;
    match &result {
        Ok(()) => conn.batch("COMMIT").await?,
        Err(_) => {
            let _ = conn.batch("ROLLBACK").await;
        }
    }
    result
}

async fn apply(conn: &Conn) -> StoreResult<()> {
    conn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    conn.batch("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        .await?;
    let current: i64 = conn
        .value("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .await?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(crate::store::StoreError::Backend(format!(
            "the database's schema is version {current}, newer than this Outpost knows ({known}): upgrade Outpost"
        )));
    }
    for (version, sql) in (1i64..).zip(MIGRATIONS).skip(current as usize) {
        conn.batch(sql).await?;
        conn.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    Ok(())
}
