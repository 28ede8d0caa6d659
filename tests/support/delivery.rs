//! Harness for the delivery black-box tests (`tests/delivery_*.rs`): the real server
//! with delivery running, its `[dns] nameservers` pointed at a `FakeDns` and its
//! `[delivery] mx_port` at an `SmtpSink`, all on loopback.
//!
//! Every relay started here has
//! - one `relay` listener on `127.0.0.1:0` that trusts loopback, so tests submit
//!   without AUTH (with the inbound harness's raw client, `common::Client`);
//! - `hostname = "relay.test"` (so the `Received:` header says `by relay.test`);
//! - a `[[routes]]` entry sending mail for [`SENDER_DOMAIN`] to a sink of its own,
//!   the "returns" sink, where bounce reports (DSNs) to [`SENDER`] arrive without
//!   touching the test's destination sink or DNS;
//! - `delivery.timeout = "10s"` unless the test sets its own.
//!
//! The same configuration text serves the in-process server ([`Relay`]) and the
//! real binary ([`Process`]). Waits poll the store or the sinks against a deadline;
//! nothing sleeps to synchronise.

use super::common::{Client, HOSTNAME};
use super::fakes::dns::FakeDns;
use super::fakes::sink::{Received, SmtpSink};
use outpost::config::{Config, ListenerMode};
use outpost::server::Running;
use outpost::store::{MessageSummary, QueueId, RecipientStatus};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The envelope sender of test mail; its domain is routed to the returns sink.
pub const SENDER: &str = "alice@sender.test";
pub const SENDER_DOMAIN: &str = "sender.test";
/// The longest a test waits for one expected outcome.
pub const WAIT: Duration = Duration::from_secs(20);
/// How often the store is polled while waiting.
const POLL: Duration = Duration::from_millis(25);

/// What a relay's configuration holds besides the fixed parts above.
#[derive(Clone, Debug)]
pub struct Setup {
    pub dns: SocketAddr,
    pub mx_port: u16,
    /// `key = value` lines for `[delivery]`.
    pub delivery: Vec<String>,
    /// TOML appended at the end (e.g. `[[routes]]` tables).
    pub extra: String,
    /// Port of the sink that receives mail for [`SENDER_DOMAIN`], if any.
    pub returns_port: Option<u16>,
}

impl Setup {
    pub fn new(dns: &FakeDns, mx_port: u16) -> Setup {
        Setup {
            dns: dns.addr(),
            mx_port,
            delivery: Vec::new(),
            extra: String::new(),
            returns_port: None,
        }
    }

    /// Adds a `key = value` line to `[delivery]`.
    pub fn delivery(mut self, line: &str) -> Setup {
        self.delivery.push(line.to_string());
        self
    }

    /// Appends TOML after the fixed tables.
    pub fn toml(mut self, text: &str) -> Setup {
        self.extra.push_str(text);
        self.extra.push('\n');
        self
    }

    /// The configuration file text for a server whose data lives in `data_dir`.
    pub fn config_text(&self, data_dir: &Path) -> String {
        let mut delivery = format!("mx_port = {}\n", self.mx_port);
        if !self
            .delivery
            .iter()
            .any(|l| l.trim_start().starts_with("timeout"))
        {
            delivery.push_str("timeout = \"10s\"\n");
        }
        for line in &self.delivery {
            delivery.push_str(line);
            delivery.push('\n');
        }
        let returns = self.returns_port.map_or(String::new(), |port| {
            format!(
                "[[routes]]\ndomain = \"{SENDER_DOMAIN}\"\nto = \"127.0.0.1:{port}\"\ntls = \"none\"\n"
            )
        });
        format!(
            "hostname = \"{HOSTNAME}\"\n\
             data_dir = \"{data_dir}\"\n\
             [[listeners]]\naddr = \"127.0.0.1:0\"\nmode = \"relay\"\n\
             [relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\
             [http]\naddr = \"127.0.0.1:0\"\n\
             [delivery]\n{delivery}\
             [dns]\nnameservers = [\"{dns}\"]\n\
             {returns}{extra}",
            data_dir = data_dir.display(),
            dns = self.dns,
            extra = self.extra,
        )
    }

    /// Starts the in-process server with a fresh returns sink.
    pub async fn start(mut self) -> Relay {
        let returns = SmtpSink::start_default().await;
        self.returns_port = Some(returns.port());
        let dir = tempfile::tempdir().expect("temporary data directory");
        let text = self.config_text(&dir.path().join("data"));
        let config = Config::from_toml(&text)
            .unwrap_or_else(|e| panic!("test configuration is invalid: {e}\n{text}"));
        assert!(!config.delivery.paused);
        let running = outpost::server::start(Arc::new(config))
            .await
            .expect("server starts");
        Relay {
            running,
            returns,
            _dir: dir,
        }
    }
}

/// The in-process server with delivery running. Dropping it stops its listeners
/// and removes its data.
pub struct Relay {
    pub running: Running,
    /// Receives the mail for [`SENDER_DOMAIN`]: the bounce reports.
    pub returns: SmtpSink,
    _dir: TempDir,
}

impl Relay {
    pub fn addr(&self) -> SocketAddr {
        self.running
            .addr(ListenerMode::Relay)
            .expect("a relay listener")
    }

    /// A session that has read the greeting and said EHLO.
    pub async fn client(&self) -> Client {
        let mut client = Client::connect(self.addr()).await;
        client.expect_greeting().await;
        client.ehlo().await;
        client
    }

    /// Submits one message on a new connection; returns its queue id.
    pub async fn submit(&self, from: &str, rcpts: &[&str], content: &[u8]) -> QueueId {
        let mut client = self.client().await;
        let id = client.deliver(from, rcpts, content).await;
        client.quit().await;
        id
    }

    pub async fn summary(&self, id: &QueueId) -> MessageSummary {
        self.running
            .store
            .message(id)
            .await
            .expect("read the store")
            .unwrap_or_else(|| panic!("message {id} is not in the store"))
    }

    /// Polls the store until `check` accepts the message's summary; panics with the
    /// last summary after [`WAIT`].
    pub async fn wait_for(
        &self,
        id: &QueueId,
        what: &str,
        check: impl Fn(&MessageSummary) -> bool,
    ) -> MessageSummary {
        let end = Instant::now() + WAIT;
        loop {
            let summary = self.summary(id).await;
            if check(&summary) {
                return summary;
            }
            if Instant::now() > end {
                panic!("waited {WAIT:?} for message {id} to be {what}; it is {summary:#?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the recipients' statuses are exactly `expected`, in envelope order.
    pub async fn wait_statuses(
        &self,
        id: &QueueId,
        expected: &[RecipientStatus],
    ) -> MessageSummary {
        self.wait_for(id, &format!("{expected:?}"), |s| {
            s.recipients.iter().map(|r| r.status).collect::<Vec<_>>() == expected
        })
        .await
    }

    /// Waits until every recipient is final and the message was finalized (its
    /// content dropped, which happens after any bounce report was queued).
    pub async fn wait_finished(&self, id: &QueueId) -> MessageSummary {
        let end = Instant::now() + WAIT;
        loop {
            let summary = self.summary(id).await;
            let content = self
                .running
                .store
                .message_content(id)
                .await
                .expect("read content");
            if summary.recipients.iter().all(|r| r.status.is_final()) && content.is_none() {
                return summary;
            }
            if Instant::now() > end {
                panic!("waited {WAIT:?} for message {id} to be finished; it is {summary:#?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until no message in the store has a recipient left to deliver.
    pub async fn wait_queue_empty(&self) {
        let end = Instant::now() + WAIT;
        loop {
            let queued = self
                .running
                .store
                .queued_messages(100)
                .await
                .expect("list the queue");
            if queued.is_empty() {
                return;
            }
            if Instant::now() > end {
                panic!("waited {WAIT:?} for an empty queue; still queued: {queued:#?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The bounce reports that reached the returns sink.
    pub fn reports(&self) -> Vec<Received> {
        self.returns.messages()
    }
}

/// A message whose `Subject:` and body carry `marker`, with lines that need
/// dot-stuffing and one that is only a dot, so a byte-exact comparison at the sink
/// proves the transfer encoding is undone exactly.
pub fn mail(from: &str, to: &str, marker: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {marker}\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{marker}@sender.test>\r\n\r\n\
         marker {marker}\r\n.starts with a dot\r\n..two dots\r\n.\r\ntrailing spaces  \r\nend\r\n"
    )
    .into_bytes()
}

/// The messages whose data contains `marker`.
pub fn with_marker(messages: &[Received], marker: &str) -> Vec<Received> {
    messages
        .iter()
        .filter(|m| m.text().contains(marker))
        .cloned()
        .collect()
}

/// How many times each marker of [`mail`] (its `Subject:`) was received: for
/// counting deliveries of many messages at once.
pub fn deliveries_by_marker(messages: &[Received]) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for m in messages {
        let text = m.text();
        if let Some(marker) = text.lines().find_map(|l| l.strip_prefix("Subject: ")) {
            *counts.entry(marker.trim_end().to_string()).or_default() += 1;
        }
    }
    counts
}

/// Asserts that `received` is `original` byte for byte under exactly one header,
/// Outpost's `Received:` (relay mode adds nothing else).
#[track_caller]
pub fn assert_intact(received: &Received, original: &[u8]) {
    let data = &received.data;
    assert!(
        data.len() > original.len() && data.ends_with(original),
        "the delivered message does not end with the submitted one:\n--- delivered\n{}\n--- submitted\n{}",
        received.text(),
        String::from_utf8_lossy(original)
    );
    let added = String::from_utf8_lossy(&data[..data.len() - original.len()]).into_owned();
    assert!(
        added.starts_with("Received: from ") && added.contains(&format!("by {HOSTNAME} (Outpost)")),
        "the added header is not Outpost's Received: {added:?}"
    );
    let fields = added
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t']))
        .count();
    assert_eq!(
        fields, 1,
        "more than the Received: header was added: {added:?}"
    );
}

/// One recipient block of a delivery status report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsnRecipient {
    pub final_recipient: String,
    pub action: String,
    pub status: String,
    pub diagnostic_code: String,
}

/// A bounce report as read by an independent MIME parser (mail-parser).
#[derive(Debug, Clone)]
pub struct Dsn {
    pub to: String,
    pub report_type: String,
    /// The per-message fields of the `message/delivery-status` part.
    pub per_message: String,
    pub recipients: Vec<DsnRecipient>,
    /// The third part (the returned headers), as text.
    pub returned: String,
}

impl Dsn {
    /// Parses a DSN (RFC 3464 / RFC 6522); panics, showing the text, when it is not one.
    pub fn parse(data: &[u8]) -> Dsn {
        use mail_parser::{MessageParser, MimeHeaders};
        let text = String::from_utf8_lossy(data).into_owned();
        let message = MessageParser::new()
            .parse(data)
            .unwrap_or_else(|| panic!("the report does not parse:\n{text}"));
        let content_type = message
            .content_type()
            .unwrap_or_else(|| panic!("the report has no Content-Type:\n{text}"));
        assert_eq!(
            (content_type.ctype(), content_type.subtype()),
            ("multipart", Some("report")),
            "report content type:\n{text}"
        );
        let report_type = content_type
            .attribute("report-type")
            .unwrap_or_default()
            .to_string();
        let to = message
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap_or_default()
            .to_string();
        let raw = message.raw_message();
        let body_of = |wanted: (&str, &str)| {
            message
                .parts
                .iter()
                .find(|p| {
                    p.content_type().is_some_and(|c| {
                        c.ctype().eq_ignore_ascii_case(wanted.0)
                            && c.subtype()
                                .is_some_and(|s| s.eq_ignore_ascii_case(wanted.1))
                    })
                })
                .map(|p| {
                    String::from_utf8_lossy(
                        &raw[p.raw_body_offset() as usize..p.raw_end_offset() as usize],
                    )
                    .into_owned()
                })
                .unwrap_or_else(|| {
                    panic!("no {}/{} part in the report:\n{text}", wanted.0, wanted.1)
                })
        };
        let status = body_of(("message", "delivery-status"));
        let returned = body_of(("text", "rfc822-headers"));
        // Field groups are separated by blank lines; the first is per-message.
        let normalized = status.replace("\r\n", "\n");
        let mut groups = normalized
            .split("\n\n")
            .map(str::trim)
            .filter(|g| !g.is_empty());
        let per_message = groups.next().unwrap_or_default().to_string();
        let recipients = groups
            .map(|group| {
                let mut r = DsnRecipient::default();
                for line in group.lines() {
                    let Some((name, value)) = line.split_once(':') else {
                        continue;
                    };
                    let value = value.trim().to_string();
                    match name.trim().to_ascii_lowercase().as_str() {
                        "final-recipient" => r.final_recipient = value,
                        "action" => r.action = value,
                        "status" => r.status = value,
                        "diagnostic-code" => r.diagnostic_code = value,
                        _ => {}
                    }
                }
                r
            })
            .collect();
        Dsn {
            to,
            report_type,
            per_message,
            recipients,
            returned,
        }
    }
}

/// Polls `check` until it returns `Some`, panicking with `what` after `deadline`.
pub async fn eventually<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(found) = check() {
            return found;
        }
        if Instant::now() > end {
            panic!("waited {deadline:?} for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether something accepts TCP connections at `addr`.
pub async fn listening(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

// ------------------------------------------------------------- the real binary

use super::server_process;
pub use server_process::Process;

/// A session with a [`Process`] that has read the greeting and said EHLO.
pub async fn client_of(process: &Process) -> Client {
    let mut client = Client::connect(process.addr).await;
    client.expect_greeting().await;
    client.ehlo().await;
    client
}

/// Delivers one message from [`SENDER`] per `(recipient, marker)` on `client`, each
/// of which must be queued, and returns the markers in order.
pub async fn deliver_marked(
    client: &mut Client,
    messages: impl IntoIterator<Item = (String, String)>,
) -> Vec<String> {
    let mut markers = Vec::new();
    for (rcpt, marker) in messages {
        client
            .deliver(SENDER, &[&rcpt], &mail(SENDER, &rcpt, &marker))
            .await;
        markers.push(marker);
    }
    markers
}

/// Writes `setup`'s configuration to `dir/outpost.toml` (data in `dir/data`).
pub fn write_config(dir: &Path, setup: &Setup) -> PathBuf {
    let path = dir.join("outpost.toml");
    std::fs::write(&path, setup.config_text(&dir.join("data"))).expect("write the config");
    path
}

/// Runs `outpost --config CONFIG ARGS...` to completion.
pub fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("OUTPOST_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run the outpost command")
}

/// [`cli`], asserting success; returns standard output.
#[track_caller]
pub fn cli_ok(config: &Path, args: &[&str]) -> String {
    let out = cli(config, args);
    assert!(
        out.status.success(),
        "outpost {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}
