//! [`ApiKeyStore`] on PostgreSQL: the `api_keys` table; a key's domains are an array.

use super::{PostgresStore, is_unique_violation, rows};
use crate::store::{ApiKeyRecord, ApiKeyStore, NewApiKey, StoreError, StoreFuture};
use tokio_postgres::Row;

const COLUMNS: &str = "id, user_name, name, domains, created_at, last_used_at";

fn key(row: &Row) -> Result<ApiKeyRecord, tokio_postgres::Error> {
    Ok(ApiKeyRecord {
        id: row.try_get(0)?,
        user: row.try_get(1)?,
        name: row.try_get(2)?,
        domains: row.try_get(3)?,
        created_at: row.try_get(4)?,
        last_used_at: row.try_get(5)?,
    })
}

/// A unique violation of the key hash, as the conflict it is.
fn key_conflict(e: tokio_postgres::Error) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict("an API key with this hash".into())
    } else {
        e.into()
    }
}

impl ApiKeyStore for PostgresStore {
    fn add_api_key(&self, new: NewApiKey) -> StoreFuture<'_, Option<i64>> {
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                let domains: Vec<String> =
                    new.domains.iter().map(|d| d.to_ascii_lowercase()).collect();
                // A key of no user inserts nothing (and returns no id).
                let statement = conn
                    .statement(
                        "INSERT INTO api_keys (user_name, name, key_hash, domains, created_at)
                         SELECT name, $2, $3, $4, $5 FROM users WHERE name = $1 RETURNING id",
                    )
                    .await?;
                let row = conn
                    .client
                    .query_opt(
                        &statement,
                        &[
                            &new.user,
                            &new.name,
                            &new.key_hash,
                            &domains,
                            &new.created_at,
                        ],
                    )
                    .await
                    .map_err(key_conflict)?;
                Ok(row.map(|r| r.try_get(0)).transpose()?)
            })
        }))
    }

    fn api_key_by_hash(&self, key_hash: &[u8]) -> StoreFuture<'_, Option<ApiKeyRecord>> {
        let key_hash = key_hash.to_vec();
        Box::pin(async move {
            let conn = self.reader().await?;
            let row = conn
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM api_keys WHERE key_hash = $1"),
                    &[&key_hash],
                )
                .await?;
            Ok(row.as_ref().map(key).transpose()?)
        })
    }

    fn api_keys(&self, user: Option<&str>) -> StoreFuture<'_, Vec<ApiKeyRecord>> {
        let user = user.map(str::to_string);
        Box::pin(async move {
            let conn = self.reader().await?;
            let found = conn
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM api_keys WHERE $1::TEXT IS NULL OR user_name = $1 ORDER BY id"
                    ),
                    &[&user],
                )
                .await?;
            rows(found, key)
        })
    }

    fn revoke_api_key(&self, id: i64) -> StoreFuture<'_, bool> {
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                conn.changes_rows("DELETE FROM api_keys WHERE id = $1", &[&id])
                    .await
            })
        }))
    }

    fn touch_api_key(&self, id: i64, at: i64) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                conn.execute(
                    "UPDATE api_keys SET last_used_at = $2 WHERE id = $1",
                    &[&id, &at],
                )
                .await?;
                Ok::<(), StoreError>(())
            })
        }))
    }
}
