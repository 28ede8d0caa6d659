//! [`SuppressionStore`] on PostgreSQL. Domains and addresses are kept lower-case.

use super::{PostgresStore, rows};
use crate::store::*;
use tokio_postgres::Row;

const COLUMNS: &str = "domain, address, reason, created_at";

fn suppression(row: &Row) -> Result<Suppression, tokio_postgres::Error> {
    Ok(Suppression {
        domain: row.try_get(0)?,
        address: row.try_get(1)?,
        reason: row.try_get(2)?,
        created_at: row.try_get(3)?,
    })
}

impl SuppressionStore for PostgresStore {
    fn add_suppression(&self, suppression: Suppression) -> StoreFuture<'_, bool> {
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                let added = conn
                    .changes_rows(
                        "INSERT INTO suppressions (domain, address, reason, created_at)
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        &[
                            &suppression.domain.to_lowercase(),
                            &suppression.address.to_lowercase(),
                            &suppression.reason,
                            &suppression.created_at,
                        ],
                    )
                    .await?;
                if added {
                    super::dashboard::record_suppression(conn, &suppression).await?;
                }
                Ok(added)
            })
        }))
    }

    fn remove_suppression(&self, domain: &str, address: &str) -> StoreFuture<'_, bool> {
        let (domain, address) = (domain.to_lowercase(), address.to_lowercase());
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                conn.changes_rows(
                    "DELETE FROM suppressions WHERE domain = $1 AND address = $2",
                    &[&domain, &address],
                )
                .await
            })
        }))
    }

    fn suppression(&self, domain: &str, address: &str) -> StoreFuture<'_, Option<Suppression>> {
        let (domain, address) = (domain.to_lowercase(), address.to_lowercase());
        Box::pin(async move {
            let conn = self.reader().await?;
            let row = conn
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM suppressions WHERE domain = $1 AND address = $2"
                    ),
                    &[&domain, &address],
                )
                .await?;
            Ok(row.as_ref().map(suppression).transpose()?)
        })
    }

    fn suppressions(
        &self,
        domain: Option<&str>,
        after: Option<(String, String)>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<Suppression>> {
        let domain = domain.map(str::to_lowercase);
        let (after_domain, after_address) = after.unwrap_or_default();
        Box::pin(async move {
            let conn = self.reader().await?;
            let found = conn
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM suppressions
                         WHERE ($1::TEXT IS NULL OR domain = $1) AND (domain, address) > ($2, $3)
                         ORDER BY domain, address LIMIT $4"
                    ),
                    &[&domain, &after_domain, &after_address, &(limit as i64)],
                )
                .await?;
            rows(found, suppression)
        })
    }
}
