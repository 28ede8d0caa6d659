//! [`ShapingStore`] on PostgreSQL: the slots, paces and suspensions of each
//! destination, shared by every node of the database.
//!
//! Each operation is one statement on a connection of the read pool, in a
//! transaction of its own, not in the group commit: a worker waiting for a slot
//! should not wait for a batch of acceptances, and none of this needs to
//! survive a crash of the server. The tables are `UNLOGGED` (schema.rs), so
//! these commits write no WAL and wait for no flush: the cost is one round trip
//! to the server. A crash of the server empties them: every slot is free (the
//! renewals of the nodes then find their slots gone and end those connections),
//! every pace starts afresh and every suspension is lifted.

use super::{PostgresStore, rows};
use crate::store::*;

impl ShapingStore for PostgresStore {
    fn shared_shaping(&self) -> Option<&dyn SharedShaping> {
        Some(self)
    }
}

impl SharedShaping for PostgresStore {
    fn take_slot(
        &self,
        destination: &str,
        limit: u32,
        holder: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreFuture<'_, Option<ConnectionSlot>> {
        let (destination, holder) = (destination.to_string(), holder.to_string());
        Box::pin(async move {
            let conn = self.reader().await?;
            let token: i64 = rand::random();
            // A free slot row is taken if there is one (SKIP LOCKED: two nodes
            // taking at once get different rows); otherwise the lowest number
            // that has no row yet is added. Both see the statement's snapshot,
            // so two nodes may try to add the same number: the loser gets
            // nothing (ON CONFLICT DO NOTHING) and asks again.
            let row = conn
                .query_opt(
                    "WITH reused AS (
                         UPDATE destination_slots s SET holder = $3, token = $4, lease_until = $6
                         FROM (SELECT slot FROM destination_slots
                               WHERE destination = $1 AND slot < $2 AND lease_until <= $5
                               ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED) free
                         WHERE s.destination = $1 AND s.slot = free.slot
                         RETURNING s.slot),
                     added AS (
                         INSERT INTO destination_slots (destination, slot, holder, token, lease_until)
                         SELECT $1, n, $3, $4, $6 FROM generate_series(0, $2 - 1) n
                         WHERE NOT EXISTS (SELECT 1 FROM reused)
                             AND NOT EXISTS (SELECT 1 FROM destination_slots
                                             WHERE destination = $1 AND slot = n)
                         ORDER BY n LIMIT 1
                         ON CONFLICT DO NOTHING
                         RETURNING slot)
                     SELECT slot FROM reused UNION ALL SELECT slot FROM added",
                    &[
                        &destination,
                        &i64::from(limit),
                        &holder,
                        &token,
                        &now,
                        &lease_until,
                    ],
                )
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let number: i64 = row.try_get(0)?;
            Ok(Some(ConnectionSlot {
                destination,
                number: number as u32,
                holder,
                token,
            }))
        })
    }

    fn renew_slots(
        &self,
        slots: Vec<ConnectionSlot>,
        lease_until: i64,
    ) -> StoreFuture<'_, Vec<ConnectionSlot>> {
        Box::pin(async move {
            if slots.is_empty() {
                return Ok(slots);
            }
            let conn = self.reader().await?;
            let destinations: Vec<&str> = slots.iter().map(|s| s.destination.as_str()).collect();
            let numbers: Vec<i64> = slots.iter().map(|s| i64::from(s.number)).collect();
            let tokens: Vec<i64> = slots.iter().map(|s| s.token).collect();
            let renewed = conn
                .query(
                    "UPDATE destination_slots s SET lease_until = $4
                     FROM unnest($1::TEXT[], $2::BIGINT[], $3::BIGINT[]) AS h(destination, slot, token)
                     WHERE s.destination = h.destination AND s.slot = h.slot AND s.token = h.token
                     RETURNING s.token",
                    &[&destinations, &numbers, &tokens, &lease_until],
                )
                .await?;
            let renewed = rows(renewed, |row| row.try_get::<_, i64>(0))?;
            Ok(slots
                .into_iter()
                .filter(|s| renewed.contains(&s.token))
                .collect())
        })
    }

    fn release_slot(&self, slot: ConnectionSlot) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let conn = self.reader().await?;
            conn.execute(
                "UPDATE destination_slots SET holder = NULL, lease_until = 0
                 WHERE destination = $1 AND slot = $2 AND token = $3",
                &[&slot.destination, &i64::from(slot.number), &slot.token],
            )
            .await?;
            Ok(())
        })
    }

    fn next_send(&self, destination: &str, interval: i64, now: i64) -> StoreFuture<'_, i64> {
        let destination = destination.to_string();
        Box::pin(async move {
            let conn = self.reader().await?;
            // The row lock makes concurrent turns follow each other.
            conn.value(
                "INSERT INTO destination_paces (destination, next_send) VALUES ($1, $2::BIGINT + $3::BIGINT)
                 ON CONFLICT (destination) DO UPDATE
                     SET next_send = GREATEST(destination_paces.next_send, $2) + $3
                 RETURNING next_send - $3",
                &[&destination, &now, &interval],
            )
            .await
        })
    }

    fn suspend_destination(&self, s: DestinationSuspension) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let conn = self.reader().await?;
            conn.execute(
                "INSERT INTO destination_suspensions (destination, until, reply, node)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (destination) DO UPDATE
                     SET until = excluded.until, reply = excluded.reply, node = excluded.node
                     WHERE destination_suspensions.until < excluded.until",
                &[&s.destination, &s.until, &s.reply, &s.node],
            )
            .await?;
            Ok(())
        })
    }

    fn destination_suspensions(&self, now: i64) -> StoreFuture<'_, Vec<DestinationSuspension>> {
        Box::pin(async move {
            let conn = self.reader().await?;
            let found = conn
                .query(
                    "SELECT destination, until, reply, node FROM destination_suspensions
                     WHERE until > $1 ORDER BY destination",
                    &[&now],
                )
                .await?;
            rows(found, |row| {
                Ok(DestinationSuspension {
                    destination: row.try_get(0)?,
                    until: row.try_get(1)?,
                    reply: row.try_get(2)?,
                    node: row.try_get(3)?,
                })
            })
        })
    }
}
