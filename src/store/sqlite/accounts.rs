//! [`DomainStore`] and [`AccountStore`] on SQLite: sending domains with their DKIM
//! keys, and users with the domains they may send as.

use super::events::insert_event;
use super::{SqliteStore, backend, changes_rows};
use crate::store::*;
use rusqlite::{Connection, OptionalExtension, params};

fn load_user(conn: &Connection, name: &str) -> rusqlite::Result<Option<UserRecord>> {
    let Some((password_hash, admin)) = conn
        .query_row(
            "SELECT password_hash, admin FROM users WHERE name = ?1",
            [name],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?)),
        )
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt =
        conn.prepare_cached("SELECT domain FROM user_domains WHERE user = ?1 ORDER BY domain")?;
    let domains = stmt
        .query_map([name], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(UserRecord {
        name: name.to_string(),
        password_hash,
        admin,
        domains,
    }))
}

impl DomainStore for SqliteStore {
    fn add_domain(&self, domain: SendingDomain) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| {
            let name = domain.name.to_ascii_lowercase();
            let inserted = conn
                .execute(
                    "INSERT OR IGNORE INTO sending_domains (name, created_at) VALUES (?1, ?2)",
                    params![name, domain.created_at],
                )
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("domain {name:?}")));
            }
            for key in &domain.keys {
                conn.execute(
                    "INSERT INTO dkim_keys (domain, selector, algorithm, private_key, public_key) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![name, key.selector, key.algorithm.as_str(), key.private_key, key.public_key],
                )
                .map_err(backend)?;
            }
            Ok(())
        }))
    }

    fn domains(&self) -> StoreFuture<'_, Vec<SendingDomain>> {
        Box::pin(self.read(|conn| {
            let mut domains: Vec<SendingDomain> = conn
                .prepare_cached("SELECT name, created_at FROM sending_domains ORDER BY name")?
                .query_map([], |row| {
                    Ok(SendingDomain {
                        name: row.get(0)?,
                        created_at: row.get(1)?,
                        keys: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut keys = conn.prepare_cached(
                "SELECT selector, algorithm, private_key, public_key FROM dkim_keys WHERE domain = ?1 ORDER BY algorithm DESC, selector",
            )?;
            for domain in &mut domains {
                domain.keys = keys
                    .query_map([&domain.name], |row| {
                        let algorithm: String = row.get(1)?;
                        Ok(DkimKeyRecord {
                            selector: row.get(0)?,
                            // Only this code writes the column.
                            algorithm: DkimAlgorithm::parse(&algorithm)
                                .unwrap_or(DkimAlgorithm::Rsa),
                            private_key: row.get(2)?,
                            public_key: row.get(3)?,
                        })
                    })?
                    .collect::<rusqlite::Result<_>>()?;
            }
            Ok(domains)
        }))
    }

    fn remove_domain(&self, name: &str) -> StoreFuture<'_, bool> {
        let name = name.to_ascii_lowercase();
        Box::pin(self.write(move |conn| {
            changes_rows(conn, "DELETE FROM sending_domains WHERE name = ?1", [name])
        }))
    }

    fn pause_domain(&self, pause: DomainPause) -> StoreFuture<'_, bool> {
        Box::pin(self.write(move |conn| {
            let domain = pause.domain.to_ascii_lowercase();
            let paused = changes_rows(
                conn,
                "INSERT OR IGNORE INTO domain_pauses (domain, since, reason) VALUES (?1, ?2, ?3)",
                params![domain, pause.since, pause.reason],
            )?;
            if paused {
                insert_event(
                    conn,
                    &domain_event(EventKind::DomainPaused, domain, pause.since, pause.reason),
                )
                .map_err(backend)?;
            }
            Ok(paused)
        }))
    }

    fn resume_domain(&self, domain: &str, now: i64) -> StoreFuture<'_, bool> {
        let domain = domain.to_ascii_lowercase();
        Box::pin(self.write(move |conn| {
            let resumed = changes_rows(
                conn,
                "DELETE FROM domain_pauses WHERE domain = ?1",
                [&domain],
            )?;
            if !resumed {
                return Ok(false);
            }
            // As `retry_now` does for one message: its mail waited only for the
            // pause, so it goes now rather than at its next retry.
            let due = conn
                .execute(
                    "UPDATE recipients SET next_attempt = ?2
                     WHERE status IN ('queued', 'deferred') AND next_attempt > ?2
                     AND message_id IN (SELECT id FROM message_info WHERE sending_domain = ?1)",
                    params![domain, now],
                )
                .map_err(backend)?;
            let note = format!("{due} recipient(s) made due");
            insert_event(
                conn,
                &domain_event(EventKind::DomainResumed, domain, now, note),
            )
            .map_err(backend)?;
            Ok(true)
        }))
    }

    fn paused_domains(&self) -> StoreFuture<'_, Vec<DomainPause>> {
        Box::pin(self.read(|conn| {
            conn.prepare_cached("SELECT domain, since, reason FROM domain_pauses ORDER BY domain")?
                .query_map([], |row| {
                    Ok(DomainPause {
                        domain: row.get(0)?,
                        since: row.get(1)?,
                        reason: row.get(2)?,
                    })
                })?
                .collect()
        }))
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

impl AccountStore for SqliteStore {
    fn add_user(&self, user: UserRecord) -> StoreFuture<'_, ()> {
        Box::pin(self.write(move |conn| {
            let exists = conn
                .query_row("SELECT 1 FROM users WHERE name = ?1", [&user.name], |_| {
                    Ok(())
                })
                .optional()
                .map_err(backend)?
                .is_some();
            if exists {
                return Err(StoreError::Conflict(format!("user {:?}", user.name)));
            }
            conn.execute(
                "INSERT INTO users (name, password_hash, admin) VALUES (?1, ?2, ?3)",
                params![user.name, user.password_hash, user.admin],
            )
            .map_err(backend)?;
            for domain in &user.domains {
                conn.execute(
                    "INSERT OR IGNORE INTO user_domains (user, domain) VALUES (?1, ?2)",
                    params![user.name, domain.to_ascii_lowercase()],
                )
                .map_err(backend)?;
            }
            Ok(())
        }))
    }

    fn user(&self, name: &str) -> StoreFuture<'_, Option<UserRecord>> {
        let name = name.to_string();
        Box::pin(self.read(move |conn| load_user(conn, &name)))
    }

    fn users(&self) -> StoreFuture<'_, Vec<UserRecord>> {
        Box::pin(self.read(|conn| {
            let names: Vec<String> = conn
                .prepare("SELECT name FROM users ORDER BY name")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            names
                .iter()
                .filter_map(|name| load_user(conn, name).transpose())
                .collect()
        }))
    }

    fn remove_user(&self, name: &str) -> StoreFuture<'_, bool> {
        let name = name.to_string();
        Box::pin(
            self.write(move |conn| changes_rows(conn, "DELETE FROM users WHERE name = ?1", [name])),
        )
    }

    fn set_password(&self, name: &str, password_hash: &str) -> StoreFuture<'_, bool> {
        let (name, hash) = (name.to_string(), password_hash.to_string());
        Box::pin(self.write(move |conn| {
            changes_rows(
                conn,
                "UPDATE users SET password_hash = ?2 WHERE name = ?1",
                [name, hash],
            )
        }))
    }

    fn grant_domain(&self, name: &str, domain: &str) -> StoreFuture<'_, bool> {
        let (name, domain) = (name.to_string(), domain.to_ascii_lowercase());
        Box::pin(self.write(move |conn| {
            // Granting a domain twice is no change, but the user exists.
            conn.execute(
                "INSERT OR IGNORE INTO user_domains (user, domain) SELECT name, ?2 FROM users WHERE name = ?1",
                [&name, &domain],
            )
            .map_err(backend)?;
            conn.query_row("SELECT 1 FROM users WHERE name = ?1", [&name], |_| Ok(()))
                .optional()
                .map(|found| found.is_some())
                .map_err(backend)
        }))
    }

    fn revoke_domain(&self, name: &str, domain: &str) -> StoreFuture<'_, bool> {
        let (name, domain) = (name.to_string(), domain.to_ascii_lowercase());
        Box::pin(self.write(move |conn| {
            changes_rows(
                conn,
                "DELETE FROM user_domains WHERE user = ?1 AND domain = ?2",
                [name, domain],
            )
        }))
    }
}
