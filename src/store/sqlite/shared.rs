//! [`SharedStore`] on SQLite: generated secrets and webhook cursors. One node
//! uses a SQLite store, so the webhook leases it keeps are always its own; they
//! are kept all the same, so the webhook task is the same on both backends.

use super::{SqliteStore, backend, changes_rows};
use crate::store::*;
use rusqlite::{OptionalExtension, params};

impl SharedStore for SqliteStore {
    fn shared_secret(&self, name: &str, candidate: Vec<u8>) -> StoreFuture<'_, Vec<u8>> {
        let name = name.to_string();
        Box::pin(self.write(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
                params![name, candidate],
            )
            .and_then(|_| {
                conn.query_row("SELECT value FROM secrets WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
            })
            .map_err(backend)
        }))
    }

    fn lease_webhook(
        &self,
        endpoint: &str,
        node: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreFuture<'_, Option<i64>> {
        let (endpoint, node) = (endpoint.to_string(), node.to_string());
        Box::pin(self.write(move |conn| {
            conn.query_row(
                "INSERT INTO webhook_cursors (endpoint, acked, holder, lease_until)
                 VALUES (?1, 0, ?2, ?4)
                 ON CONFLICT (endpoint) DO UPDATE
                 SET holder = excluded.holder, lease_until = excluded.lease_until
                 WHERE webhook_cursors.holder IS NULL OR webhook_cursors.holder = excluded.holder
                     OR webhook_cursors.lease_until <= ?3
                 RETURNING acked",
                params![endpoint, node, now, lease_until],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
        }))
    }

    fn advance_webhook(&self, endpoint: &str, node: &str, acked: i64) -> StoreFuture<'_, bool> {
        let (endpoint, node) = (endpoint.to_string(), node.to_string());
        Box::pin(self.write(move |conn| {
            changes_rows(
                conn,
                "UPDATE webhook_cursors SET acked = MAX(acked, ?3) WHERE endpoint = ?1 AND holder = ?2",
                params![endpoint, node, acked],
            )
        }))
    }

    fn import_webhook_cursor(&self, endpoint: &str, acked: i64) -> StoreFuture<'_, ()> {
        let endpoint = endpoint.to_string();
        Box::pin(self.write(move |conn| {
            conn.execute(
                "INSERT INTO webhook_cursors (endpoint, acked) VALUES (?1, ?2)
                 ON CONFLICT (endpoint) DO UPDATE SET acked = MAX(acked, excluded.acked)",
                params![endpoint, acked],
            )
            .map(drop)
            .map_err(backend)
        }))
    }

    fn webhook_cursor(&self, endpoint: &str) -> StoreFuture<'_, Option<WebhookCursor>> {
        let endpoint = endpoint.to_string();
        Box::pin(self.read(move |conn| {
            conn.query_row(
                "SELECT acked, holder, lease_until FROM webhook_cursors WHERE endpoint = ?1",
                [endpoint],
                |r| {
                    Ok(WebhookCursor {
                        acked: r.get(0)?,
                        holder: r.get(1)?,
                        lease_until: r.get(2)?,
                    })
                },
            )
            .optional()
        }))
    }
}
