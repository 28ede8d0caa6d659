//! [`SharedStore`] on PostgreSQL: generated secrets and webhook cursors with
//! their leases, the same for every node of a cluster. Each change is one
//! statement, so a lease is taken or renewed atomically (the row's lock decides
//! between two nodes asking at once).

use super::PostgresStore;
use crate::store::*;

impl SharedStore for PostgresStore {
    fn shared_secret(&self, name: &str, candidate: Vec<u8>) -> StoreFuture<'_, Vec<u8>> {
        let name = name.to_string();
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                // A node inserting the same name at once makes this wait for its
                // commit, after which the SELECT sees its secret.
                conn.execute(
                    "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&name, &candidate],
                )
                .await?;
                conn.value("SELECT value FROM secrets WHERE name = $1", &[&name])
                    .await
            })
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
            Box::pin(async move {
                let row = conn
                    .query_opt(
                        "INSERT INTO webhook_cursors (endpoint, acked, holder, lease_until)
                         VALUES ($1, 0, $2, $4)
                         ON CONFLICT (endpoint) DO UPDATE
                         SET holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until
                         WHERE webhook_cursors.holder IS NULL OR webhook_cursors.holder = EXCLUDED.holder
                             OR webhook_cursors.lease_until <= $3
                         RETURNING acked",
                        &[&endpoint, &node, &now, &lease_until],
                    )
                    .await?;
                Ok(row.map(|r| r.try_get(0)).transpose()?)
            })
        }))
    }

    fn advance_webhook(&self, endpoint: &str, node: &str, acked: i64) -> StoreFuture<'_, bool> {
        let (endpoint, node) = (endpoint.to_string(), node.to_string());
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                conn.changes_rows(
                    "UPDATE webhook_cursors SET acked = GREATEST(acked, $3)
                     WHERE endpoint = $1 AND holder = $2",
                    &[&endpoint, &node, &acked],
                )
                .await
            })
        }))
    }

    fn import_webhook_cursor(&self, endpoint: &str, acked: i64) -> StoreFuture<'_, ()> {
        let endpoint = endpoint.to_string();
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                conn.execute(
                    "INSERT INTO webhook_cursors (endpoint, acked) VALUES ($1, $2)
                     ON CONFLICT (endpoint) DO UPDATE
                     SET acked = GREATEST(webhook_cursors.acked, EXCLUDED.acked)",
                    &[&endpoint, &acked],
                )
                .await?;
                Ok(())
            })
        }))
    }

    fn webhook_cursor(&self, endpoint: &str) -> StoreFuture<'_, Option<WebhookCursor>> {
        let endpoint = endpoint.to_string();
        Box::pin(async move {
            let conn = self.reader().await?;
            let row = conn
                .query_opt(
                    "SELECT acked, holder, lease_until FROM webhook_cursors WHERE endpoint = $1",
                    &[&endpoint],
                )
                .await?;
            Ok(row
                .map(|r| -> Result<_, tokio_postgres::Error> {
                    Ok(WebhookCursor {
                        acked: r.try_get(0)?,
                        holder: r.try_get(1)?,
                        lease_until: r.try_get(2)?,
                    })
                })
                .transpose()?)
        })
    }
}
