//! Shared by the hardening suites: an in-process server like `common::Server`, but
//! with delivery on and every domain routed to one loopback destination.

use super::common::{HOSTNAME, Server, start_config};
use outpost::store::RecipientStatus;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// Where a delivering server sends mail.
#[derive(Clone, Copy, Debug)]
pub enum Routing {
    /// Everything to one host (a `*` route), no DNS involved.
    Route(SocketAddr),
    /// By MX, looked up at `nameserver`; every MX host is reached on `mx_port`.
    Mx {
        nameserver: SocketAddr,
        mx_port: u16,
    },
}

/// A server (relay, submission and submissions listeners on loopback, trusted
/// loopback, user `alice`) that delivers everything to `to` in plaintext.
/// `delivery` holds extra `[delivery]` lines (e.g. `retry = ["1s"]`).
pub async fn delivering_server(to: SocketAddr, delivery: &str) -> Server {
    routed_server(Routing::Route(to), delivery).await
}

/// Like [`delivering_server`], routed as `routing` says.
pub async fn routed_server(routing: Routing, delivery: &str) -> Server {
    start_in(
        tempfile::tempdir().expect("temporary data directory"),
        routing,
        delivery,
    )
    .await
}

/// Like [`routed_server`], on the data already in `dir` (e.g. a store prepared by
/// the test).
pub async fn start_in(dir: tempfile::TempDir, routing: Routing, delivery: &str) -> Server {
    let text = config_text(&dir.path().display().to_string(), routing, delivery);
    Server::start_as_configured(&text, dir).await
}

pub fn config_text(data_dir: &str, routing: Routing, delivery: &str) -> String {
    // Port 9 (discard) answers no DNS: a route never needs it.
    let (route, mx_port, nameserver) = match routing {
        Routing::Route(to) => (
            format!("[[routes]]\ndomain = \"*\"\nto = \"{to}\"\ntls = \"none\""),
            25,
            "127.0.0.1:9".parse().expect("literal address"),
        ),
        Routing::Mx {
            nameserver,
            mx_port,
        } => (String::new(), mx_port, nameserver),
    };
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
mx_port = {mx_port}
{delivery}
{route}
[dns]
nameservers = ["{nameserver}"]
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
    let running = start_config(&text).await;
    // `dir` is only for `Server`'s shape; the data lives in `data_dir`.
    let dir = tempfile::tempdir().expect("temporary directory");
    Server { running, dir }
}

/// What the test process holds, to compare before and after a scenario: open file
/// descriptors and resident memory of the whole process, and live tasks of the
/// current tokio runtime (the server's, when it runs in-process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holdings {
    pub fds: usize,
    pub tasks: usize,
    pub rss_kib: u64,
}

impl Holdings {
    pub fn now() -> Holdings {
        Holdings {
            fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            rss_kib: vm_rss_kib(),
        }
    }

    /// True when nothing exceeds `base` by more than `slack`.
    pub fn within(&self, base: &Holdings, slack: &Holdings) -> bool {
        self.fds <= base.fds + slack.fds
            && self.tasks <= base.tasks + slack.tasks
            && self.rss_kib <= base.rss_kib + slack.rss_kib
    }
}

/// `VmRSS` of this process in KiB (0 where /proc does not say).
fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until the process holds at most `before` plus `slack`, and returns what it
/// holds then; panics with both counts after `deadline`. Waiting lets what is about
/// to end (a worker past its idle timeout, an outcome being committed) end; a leaked
/// task, socket or buffer never does, so it still fails.
pub async fn assert_released(
    what: &str,
    before: Holdings,
    slack: Holdings,
    deadline: Duration,
) -> Holdings {
    let start = Instant::now();
    loop {
        let now = Holdings::now();
        if now.within(&before, &slack) {
            return now;
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: the process still holds more than before (allowed extra {slack:?}) \
             after {deadline:?}: before {before:?}, now {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
