//! [`SuppressionStore`] on SQLite. Domains and addresses are kept lower-case.

use super::{SqliteStore, backend, changes_rows};
use crate::store::*;
use rusqlite::{OptionalExtension, params};

fn row_to_suppression(row: &rusqlite::Row<'_>) -> rusqlite::Result<Suppression> {
    Ok(Suppression {
        domain: row.get(0)?,
        address: row.get(1)?,
        reason: row.get(2)?,
        created_at: row.get(3)?,
    })
}

/// Pending recipients (of one message, or all) become due at `now`.
impl SuppressionStore for SqliteStore {
    fn add_suppression(&self, suppression: Suppression) -> StoreFuture<'_, bool> {
        Box::pin(self.write(move |conn| {
            changes_rows(conn,
                "INSERT OR IGNORE INTO suppressions (domain, address, reason, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    suppression.domain.to_lowercase(),
                    suppression.address.to_lowercase(),
                    suppression.reason,
                    suppression.created_at
                ],
            )
            .and_then(|added| {
                if added {
                    super::dashboard::record_suppression(conn, &suppression).map_err(backend)?;
                }
                Ok(added)
            })
        }))
    }

    fn remove_suppression(&self, domain: &str, address: &str) -> StoreFuture<'_, bool> {
        let (domain, address) = (domain.to_lowercase(), address.to_lowercase());
        Box::pin(self.write(move |conn| {
            changes_rows(
                conn,
                "DELETE FROM suppressions WHERE domain = ?1 AND address = ?2",
                [domain, address],
            )
        }))
    }

    fn suppression(&self, domain: &str, address: &str) -> StoreFuture<'_, Option<Suppression>> {
        let (domain, address) = (domain.to_lowercase(), address.to_lowercase());
        Box::pin(self.read(move |conn| {
            conn.prepare_cached(
                "SELECT domain, address, reason, created_at FROM suppressions WHERE domain = ?1 AND address = ?2",
            )?
            .query_row([domain, address], row_to_suppression)
            .optional()
        }))
    }

    fn suppressions(
        &self,
        domain: Option<&str>,
        after: Option<(String, String)>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Suppression>> {
        let domain = domain.map(str::to_lowercase);
        let (after_domain, after_address) = after.unwrap_or_default();
        Box::pin(self.read(move |conn| {
            conn.prepare_cached(
                "SELECT domain, address, reason, created_at FROM suppressions
                 WHERE (?1 IS NULL OR domain = ?1) AND (domain, address) > (?2, ?3)
                 ORDER BY domain, address LIMIT ?4",
            )?
            .query_map(
                params![domain, after_domain, after_address, limit as i64],
                row_to_suppression,
            )?
            .collect()
        }))
    }
}
