//! Black-box tests of the HTTP API (SPEC §5.5, §6, §7 `outpost send`) through the
//! real server: ephemeral loopback ports, delivery to an `SmtpSink` through a
//! `[[routes]] domain = "*"`, requests with reqwest. Waits are for conditions with
//! deadlines, never fixed sleeps.

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod bulk_send;
mod partial_failure;
mod receiver_replies;
mod send_stops;
mod sending;
mod tenants;
mod unsubscribe;
mod webhooks;

use outpost::config::Config;
use outpost::server::Running;
use outpost::store::UserRecord;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::fakes::sink::SmtpSink;
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(20);
const ALICE: (&str, &str) = ("alice", "alice-password-1");
const BOB: (&str, &str) = ("bob", "bob-password-22");
const ROOT: (&str, &str) = ("root", "root-password-333");
const MAX_RECIPIENTS: usize = 5;
const MAX_MESSAGE_SIZE: usize = 100_000;

struct Server {
    running: Running,
    dir: TempDir,
    config: String,
    http: reqwest::Client,
}

#[derive(Default)]
struct Options<'a> {
    sink: Option<&'a SmtpSink>,
    webhook: Option<String>,
    max_recipients: Option<usize>,
}

impl Server {
    async fn start(options: Options<'_>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let delivery = match options.sink {
            Some(sink) => format!(
                "[delivery]\nretry = [\"1s\"]\n[[routes]]\ndomain = \"*\"\nto = \"{}\"\ntls = \"none\"\n",
                sink.addr()
            ),
            None => "[delivery]\npaused = true\n".into(),
        };
        let webhook = options.webhook.map_or(String::new(), |url| {
            format!("[[webhooks]]\nurl = \"{url}\"\nsecret = \"hook-secret\"\n")
        });
        let text = format!(
            r#"
hostname = "relay.test"
data_dir = "{dir}"
[[listeners]]
addr = "127.0.0.1:0"
mode = "relay"
[auth]
max_failures = 3
[limits]
max_recipients = {max_recipients}
max_message_size = {MAX_MESSAGE_SIZE}
[http]
addr = "127.0.0.1:0"
public_url = "https://relay.test"
{delivery}
{webhook}
"#,
            dir = dir.path().display(),
            max_recipients = options.max_recipients.unwrap_or(MAX_RECIPIENTS),
        );
        let server = Server::boot(text, dir).await;
        for ((name, password), domain, admin) in [
            (ALICE, "alice.example", false),
            (BOB, "bob.example", false),
            (ROOT, "root.example", true),
        ] {
            server
                .running
                .store
                .add_user(UserRecord {
                    name: name.into(),
                    password_hash: outpost::auth::password::hash(password),
                    admin,
                    domains: vec![domain.into()],
                })
                .await
                .unwrap();
        }
        server
    }

    async fn boot(config: String, dir: TempDir) -> Server {
        let parsed = Config::from_toml(&config).expect("test configuration is valid");
        let running = outpost::server::start(Arc::new(parsed)).await.unwrap();
        Server {
            running,
            dir,
            config,
            http: reqwest::Client::new(),
        }
    }

    /// Stops the server and starts it again on the same data directory.
    async fn restart(self) -> Server {
        let Server {
            running,
            dir,
            config,
            ..
        } = self;
        drop(running);
        Server::boot(config, dir).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        who: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some((u, p)) = who {
            req = req.basic_auth(u, Some(p));
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = tokio::time::timeout(DEADLINE, req.send())
            .await
            .expect("request within the deadline")
            .expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str, who: (&str, &str)) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(who), None).await
    }

    async fn post(&self, path: &str, who: (&str, &str), body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(who), Some(body))
            .await
    }

    /// Sends and returns the ids, asserting 202.
    async fn send(&self, who: (&str, &str), body: Value) -> Vec<String> {
        let (status, resp) = self.post("/v1/messages", who, body).await;
        assert_eq!(status, 202, "{resp}");
        resp["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every event `who` may see, paging `limit` at a time.
    async fn all_events(&self, who: (&str, &str), limit: usize) -> Vec<Value> {
        let (mut after, mut out) = (0, Vec::new());
        loop {
            let (status, page) = self
                .get(&format!("/v1/events?after={after}&limit={limit}"), who)
                .await;
            assert_eq!(status, 200, "{page}");
            let events = page["events"].as_array().unwrap().clone();
            assert!(events.len() <= limit);
            let next = page["next"].as_i64().unwrap();
            if events.is_empty() && next == after {
                return out;
            }
            after = next;
            out.extend(events);
        }
    }

    /// Polls the message's status until `done` holds for it.
    async fn wait_status(
        &self,
        who: (&str, &str),
        id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (status, view) = self.get(&format!("/v1/messages/{id}"), who).await;
            assert_eq!(status, 200, "{view}");
            if done(&view) {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "status never reached: {view}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The unfolded value of header field `name` (RFC 5322 §2.2.3).
fn header(text: &str, name: &str) -> Option<String> {
    let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", "\t");
    let prefix = format!("{name}: ");
    unfolded
        .split("\r\n")
        .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string))
}
