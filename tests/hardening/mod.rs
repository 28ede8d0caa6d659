//! Shared by the hardening suites: an in-process server like `common::Server`, but
//! with delivery on and every domain routed to one loopback destination.
//!
//! Include after `mod common;` with `mod hardening;`.

#![allow(dead_code)]

use super::common::{HOSTNAME, PASSWORD, Server, USER, USER_DOMAIN};
use outpost::config::Config;
use outpost::store::{RecipientStatus, UserRecord};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A server (relay, submission and submissions listeners on loopback, trusted
/// loopback, user `alice`) that delivers everything to `to` in plaintext.
/// `delivery` holds extra `[delivery]` lines (e.g. `retry = ["1s"]`).
pub async fn delivering_server(to: SocketAddr, delivery: &str) -> Server {
    let dir = tempfile::tempdir().expect("temporary data directory");
    start_in(dir, to, delivery).await
}

pub async fn start_in(dir: tempfile::TempDir, to: SocketAddr, delivery: &str) -> Server {
    let text = config_text(&dir.path().display().to_string(), to, delivery);
    let config = Config::from_toml(&text).expect("test configuration is valid");
    let running = outpost::server::start(Arc::new(config))
        .await
        .expect("server starts");
    running
        .store
        .add_user(UserRecord {
            name: USER.into(),
            password_hash: outpost::auth::password::hash(PASSWORD),
            admin: false,
            domains: vec![USER_DOMAIN.into()],
        })
        .await
        .expect("add user");
    Server { running, dir }
}

pub fn config_text(data_dir: &str, to: SocketAddr, delivery: &str) -> String {
    format!(
        r#"
hostname = "{HOSTNAME}"
data_dir = "{data_dir}"
[http]
addr = "127.0.0.1:0"
[[listeners]]
addr = "127.0.0.1:0"
mode = "relay"
[[listeners]]
addr = "127.0.0.1:0"
mode = "submission"
[[listeners]]
addr = "127.0.0.1:0"
mode = "submissions"
[relay]
trusted_networks = ["127.0.0.0/8"]
[delivery]
tls = "none"
{delivery}
[[routes]]
domain = "*"
to = "{to}"
tls = "none"
[dns]
nameservers = ["127.0.0.1:9"]
"#
    )
}

/// Waits until no stored recipient is still waiting for delivery (every one
/// delivered, bounced or local). Returns how long it took.
pub async fn wait_until_settled(server: &Server, deadline: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let queued = server.queued().await;
        let pending = queued
            .iter()
            .flat_map(|m| &m.recipients)
            .filter(|r| {
                matches!(
                    r.status,
                    RecipientStatus::Queued | RecipientStatus::Deferred
                )
            })
            .count();
        if pending == 0 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "{pending} recipient(s) still pending after {deadline:?}: {queued:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server like `common::Server::start_with(Options::trusted())` (delivery
/// paused) whose data directory is `data_dir` (e.g. on a small filesystem).
pub async fn paused_server_at(data_dir: &std::path::Path) -> Server {
    let text = format!(
        r#"
hostname = "{HOSTNAME}"
data_dir = "{data_dir}"
[[listeners]]
addr = "127.0.0.1:0"
mode = "relay"
[relay]
trusted_networks = ["127.0.0.0/8"]
[http]
addr = "127.0.0.1:0"
[delivery]
paused = true
"#,
        data_dir = data_dir.display()
    );
    let config = Config::from_toml(&text).expect("test configuration is valid");
    let running = outpost::server::start(Arc::new(config))
        .await
        .expect("server starts");
    // `dir` is only for `Server`'s shape; the data lives in `data_dir`.
    let dir = tempfile::tempdir().expect("temporary directory");
    Server { running, dir }
}
