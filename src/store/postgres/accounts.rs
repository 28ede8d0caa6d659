//! [`DomainStore`] and [`AccountStore`] on PostgreSQL: sending domains with their
//! DKIM keys, and users with the domains they may send as.

use super::{Conn, PostgresStore, rows};
use crate::store::*;

async fn load_users(conn: &Conn, name: Option<&str>) -> StoreResult<Vec<UserRecord>> {
    let found = conn
        .query(
            "SELECT u.name, u.password_hash, u.admin,
                 COALESCE(array_agg(d.domain ORDER BY d.domain) FILTER (WHERE d.domain IS NOT NULL), '{}')
             FROM users u LEFT JOIN user_domains d ON d.user_name = u.name
             WHERE $1::TEXT IS NULL OR u.name = $1
             GROUP BY u.name ORDER BY u.name",
            &[&name],
        )
        .await?;
    rows(found, |row| {
        Ok(UserRecord {
            name: row.try_get(0)?,
            password_hash: row.try_get(1)?,
            admin: row.try_get(2)?,
            domains: row.try_get(3)?,
        })
    })
}

impl DomainStore for PostgresStore {
    fn add_domain(&self, domain: SendingDomain) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                let name = domain.name.to_ascii_lowercase();
                let inserted = conn
                    .changes_rows(
                        "INSERT INTO sending_domains (name, created_at) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                        &[&name, &domain.created_at],
                    )
                    .await?;
                if !inserted {
                    return Err(StoreError::Conflict(format!("domain {name:?}")));
                }
                for key in &domain.keys {
                    conn.execute(
                        "INSERT INTO dkim_keys (domain, selector, algorithm, private_key, public_key)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[
                            &name,
                            &key.selector,
                            &key.algorithm.as_str(),
                            &key.private_key,
                            &key.public_key,
                        ],
                    )
                    .await?;
                }
                Ok(())
            })
        }))
    }

    fn domains(&self) -> StoreFuture<'_, Vec<SendingDomain>> {
        Box::pin(async move {
            let conn = self.reader().await?;
            let found = conn
                .query(
                    "SELECT name, created_at FROM sending_domains ORDER BY name",
                    &[],
                )
                .await?;
            let mut domains = rows(found, |row| {
                Ok(SendingDomain {
                    name: row.try_get(0)?,
                    created_at: row.try_get(1)?,
                    keys: Vec::new(),
                })
            })?;
            let keys = conn
                .query(
                    "SELECT domain, selector, algorithm, private_key, public_key FROM dkim_keys
                     ORDER BY domain, algorithm DESC, selector",
                    &[],
                )
                .await?;
            for row in &keys {
                let domain: String = row.try_get(0)?;
                let algorithm: String = row.try_get(2)?;
                let key = DkimKeyRecord {
                    selector: row.try_get(1)?,
                    // Only this code writes the column.
                    algorithm: DkimAlgorithm::parse(&algorithm).unwrap_or(DkimAlgorithm::Rsa),
                    private_key: row.try_get(3)?,
                    public_key: row.try_get(4)?,
                };
                if let Some(d) = domains.iter_mut().find(|d| d.name == domain) {
                    d.keys.push(key);
                }
            }
            Ok(domains)
        })
    }

    fn remove_domain(&self, name: &str) -> StoreFuture<'_, bool> {
        let name = name.to_ascii_lowercase();
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                conn.changes_rows("DELETE FROM sending_domains WHERE name = $1", &[&name])
                    .await
            })
        }))
    }

    fn pause_domain(&self, pause: DomainPause) -> StoreFuture<'_, bool> {
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                let domain = pause.domain.to_ascii_lowercase();
                let paused = conn
                    .changes_rows(
                        "INSERT INTO domain_pauses (domain, since, reason) VALUES ($1, $2, $3)
                         ON CONFLICT DO NOTHING",
                        &[&domain, &pause.since, &pause.reason],
                    )
                    .await?;
                if paused {
                    let event =
                        domain_event(EventKind::DomainPaused, domain, pause.since, pause.reason);
                    conn.log_event(event);
                }
                Ok(paused)
            })
        }))
    }

    fn resume_domain(&self, domain: &str, now: i64) -> StoreFuture<'_, bool> {
        let domain = domain.to_ascii_lowercase();
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                let resumed = conn
                    .changes_rows("DELETE FROM domain_pauses WHERE domain = $1", &[&domain])
                    .await?;
                if !resumed {
                    return Ok(false);
                }
                // As `retry_now` does for one message: its mail waited only for
                // the pause, so it goes now rather than at its next retry.
                let due = conn
                    .execute(
                        "UPDATE recipients SET next_attempt = $2
                         WHERE status IN ('queued', 'deferred') AND next_attempt > $2
                         AND message_id IN (SELECT id FROM message_info WHERE sending_domain = $1)",
                        &[&domain, &now],
                    )
                    .await?;
                let note = format!("{due} recipient(s) made due");
                conn.log_event(domain_event(EventKind::DomainResumed, domain, now, note));
                Ok(true)
            })
        }))
    }

    fn paused_domains(&self) -> StoreFuture<'_, Vec<DomainPause>> {
        Box::pin(async move {
            let conn = self.reader().await?;
            let found = conn
                .query(
                    "SELECT domain, since, reason FROM domain_pauses ORDER BY domain",
                    &[],
                )
                .await?;
            rows(found, |row| {
                Ok(DomainPause {
                    domain: row.try_get(0)?,
                    since: row.try_get(1)?,
                    reason: row.try_get(2)?,
                })
            })
        })
    }
}

/// An event about a whole sending domain.
fn domain_event(kind: EventKind, domain: String, at: i64, reply: String) -> Event {
    Event {
        id: 0,
        at,
        kind,
        message_id: None,
        recipient: None,
        user: None,
        reply: Some(reply),
        class: None,
        asynchronous: false,
        domain: Some(domain),
    }
}

impl AccountStore for PostgresStore {
    fn add_user(&self, user: UserRecord) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                let inserted = conn
                    .changes_rows(
                        "INSERT INTO users (name, password_hash, admin) VALUES ($1, $2, $3)
                         ON CONFLICT DO NOTHING",
                        &[&user.name, &user.password_hash, &user.admin],
                    )
                    .await?;
                if !inserted {
                    return Err(StoreError::Conflict(format!("user {:?}", user.name)));
                }
                let domains: Vec<String> = user
                    .domains
                    .iter()
                    .map(|d| d.to_ascii_lowercase())
                    .collect();
                conn.execute(
                    "INSERT INTO user_domains (user_name, domain) SELECT $1, unnest($2::TEXT[])
                     ON CONFLICT DO NOTHING",
                    &[&user.name, &domains],
                )
                .await?;
                Ok(())
            })
        }))
    }

    fn user(&self, name: &str) -> StoreFuture<'_, Option<UserRecord>> {
        let name = name.to_string();
        Box::pin(async move {
            let conn = self.reader().await?;
            Ok(load_users(&conn, Some(&name)).await?.pop())
        })
    }

    fn users(&self) -> StoreFuture<'_, Vec<UserRecord>> {
        Box::pin(async move { load_users(&*self.reader().await?, None).await })
    }

    fn remove_user(&self, name: &str) -> StoreFuture<'_, bool> {
        let name = name.to_string();
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                conn.changes_rows("DELETE FROM users WHERE name = $1", &[&name])
                    .await
            })
        }))
    }

    fn set_password(&self, name: &str, password_hash: &str) -> StoreFuture<'_, bool> {
        let (name, hash) = (name.to_string(), password_hash.to_string());
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                conn.changes_rows(
                    "UPDATE users SET password_hash = $2 WHERE name = $1",
                    &[&name, &hash],
                )
                .await
            })
        }))
    }

    fn grant_domain(&self, name: &str, domain: &str) -> StoreFuture<'_, bool> {
        let (name, domain) = (name.to_string(), domain.to_ascii_lowercase());
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                // Granting a domain twice is no change, but the user exists.
                conn.execute(
                    "INSERT INTO user_domains (user_name, domain) SELECT name, $2 FROM users
                     WHERE name = $1 ON CONFLICT DO NOTHING",
                    &[&name, &domain],
                )
                .await?;
                Ok(conn
                    .query_opt("SELECT 1 FROM users WHERE name = $1", &[&name])
                    .await?
                    .is_some())
            })
        }))
    }

    fn revoke_domain(&self, name: &str, domain: &str) -> StoreFuture<'_, bool> {
        let (name, domain) = (name.to_string(), domain.to_ascii_lowercase());
        Box::pin(self.write(move |conn| {
            Box::pin(async move {
                conn.changes_rows(
                    "DELETE FROM user_domains WHERE user_name = $1 AND domain = $2",
                    &[&name, &domain],
                )
                .await
            })
        }))
    }
}
