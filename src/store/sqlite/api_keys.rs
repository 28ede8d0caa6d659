//! [`ApiKeyStore`] on SQLite: the `api_keys` table. A key's domains are one space-separated column: a short
//! list only ever read and written with its key.

use super::{SqliteStore, backend, changes_rows};
use crate::store::{ApiKeyRecord, ApiKeyStore, NewApiKey, StoreError, StoreFuture};
use rusqlite::{Connection, OptionalExtension, params};

const COLUMNS: &str = "id, user, name, domains, created_at, last_used_at";

fn row_to_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    let domains: String = row.get(3)?;
    Ok(ApiKeyRecord {
        id: row.get(0)?,
        user: row.get(1)?,
        name: row.get(2)?,
        domains: domains.split_whitespace().map(str::to_string).collect(),
        created_at: row.get(4)?,
        last_used_at: row.get(5)?,
    })
}

fn user_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM users WHERE name = ?1")?
        .query_row([name], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

impl ApiKeyStore for SqliteStore {
    fn add_api_key(&self, key: NewApiKey) -> StoreFuture<'_, Option<i64>> {
        Box::pin(self.write(move |conn| {
            if !user_exists(conn, &key.user).map_err(backend)? {
                return Ok(None);
            }
            let domains: Vec<String> = key.domains.iter().map(|d| d.to_ascii_lowercase()).collect();
            conn.execute(
                "INSERT INTO api_keys (user, name, key_hash, domains, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.user, key.name, key.key_hash, domains.join(" "), key.created_at],
            )
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    StoreError::Conflict("an API key with this hash".into())
                }
                _ => backend(e),
            })?;
            Ok(Some(conn.last_insert_rowid()))
        }))
    }

    fn api_key_by_hash(&self, key_hash: &[u8]) -> StoreFuture<'_, Option<ApiKeyRecord>> {
        let key_hash = key_hash.to_vec();
        Box::pin(self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM api_keys WHERE key_hash = ?1"
            ))?
            .query_row([key_hash], row_to_key)
            .optional()
        }))
    }

    fn api_keys(&self, user: Option<&str>) -> StoreFuture<'_, Vec<ApiKeyRecord>> {
        let user = user.map(str::to_string);
        Box::pin(self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM api_keys WHERE ?1 IS NULL OR user = ?1 ORDER BY id"
            ))?
            .query_map([user], row_to_key)?
            .collect()
        }))
    }

    fn revoke_api_key(&self, id: i64) -> StoreFuture<'_, bool> {
        Box::pin(
            self.write(move |conn| changes_rows(conn, "DELETE FROM api_keys WHERE id = ?1", [id])),
        )
    }

    fn touch_api_key(&self, id: i64, at: i64) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| {
            conn.execute(
                "UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1",
                params![id, at],
            )
            .map(drop)
            .map_err(backend)
        }))
    }
}
