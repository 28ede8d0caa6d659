//! Durability (SPEC §3): `kill -9` under load with and without delivery, while
//! deliveries are in flight, a full disk, and a restart with a large backlog. Every
//! acknowledged message must survive.
//!
//! These tests load the machine (thousands of messages, repeated kills); each runs
//! alone ([`alone`]) so that none is judged while another holds the CPUs.

#[path = "../support/mod.rs"]
mod support;

mod crash;
mod crash_delivery;
mod delivery_in_flight;
mod disk_full;
mod restart_backlog;

/// Held for the whole of a test that must not share the machine with another.
pub async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ALONE.lock().await
}
