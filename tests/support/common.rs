//! Shared harness for the black-box inbound tests: an in-process server on ephemeral
//! 127.0.0.1 ports with its own temporary data directory, and a small raw SMTP client
//! (plaintext, STARTTLS, implicit TLS) for the protocol corners real clients never
//! produce. Every wait has a deadline, so a server that hangs fails the test instead
//! of stalling it.

use outpost::config::{Config, ListenerMode};
use outpost::server::Running;
use outpost::store::{MessageSummary, QueueId, UserRecord};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Starts the server `text` (a whole configuration) describes, with no user.
pub async fn start_config(text: &str) -> Running {
    let config = Config::from_toml(text).expect("test configuration is valid");
    outpost::server::start(Arc::new(config))
        .await
        .expect("server starts")
}

/// The server's `hostname`, and so its local (bounce) domain.
pub const HOSTNAME: &str = "relay.test";
/// The user every server is started with.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct horse battery staple";
/// The only domain `alice` may send as.
pub const USER_DOMAIN: &str = "alice.example";
pub const SENDER: &str = "alice@alice.example";
/// An unauthenticated client's envelope sender (relay port).
pub const CLIENT_SENDER: &str = "sender@client.example";
/// A domain neither the server nor `alice` owns: relaying to it needs permission.
pub const REMOTE_RCPT: &str = "rcpt@remote.example";
/// The longest a test waits for any one reply, connection or close.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// `[limits]` of every test server unless a test adds more.
pub const MAX_MESSAGE_SIZE: usize = 100_000;
pub const MAX_RECIPIENTS: usize = 5;

/// How a test server differs from the default one.
#[derive(Default)]
pub struct Options {
    /// `relay.trusted_networks = ["127.0.0.0/8"]`.
    pub trusted_loopback: bool,
    /// Extra `key = value` lines for the `[limits]` table.
    pub limits: &'static str,
    /// `key = value` lines for the `[auth]` table.
    pub auth: &'static str,
}

impl Options {
    /// Loopback clients may relay on the relay port without AUTH.
    pub fn trusted() -> Options {
        Options {
            trusted_loopback: true,
            ..Options::default()
        }
    }
}

/// A running server with a relay, a submission and a submissions listener, and the
/// user `alice`. Dropping it stops the listeners and deletes the data directory.
pub struct Server {
    pub running: Running,
    pub dir: TempDir,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Server {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let trusted = if options.trusted_loopback {
            "[relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n"
        } else {
            ""
        };
        let text = format!(
            r#"
hostname = "{HOSTNAME}"
data_dir = "{dir}"
[[listeners]]
addr = "127.0.0.1:0"
mode = "relay"
[[listeners]]
addr = "127.0.0.1:0"
mode = "submission"
[[listeners]]
addr = "127.0.0.1:0"
mode = "submissions"
[limits]
max_message_size = {MAX_MESSAGE_SIZE}
max_recipients = {MAX_RECIPIENTS}
{limits}
[auth]
{auth}
{trusted}
# These tests are about acceptance; delivery has its own suites.
[delivery]
paused = true
[http]
addr = "127.0.0.1:0"
"#,
            dir = dir.path().display(),
            limits = options.limits,
            auth = options.auth,
        );
        Server::start_as_configured(&text, dir).await
    }

    /// Starts the server `text` (a whole configuration) describes, with the user
    /// `alice`; `dir` holds its data directory.
    pub async fn start_as_configured(text: &str, dir: TempDir) -> Server {
        let running = start_config(text).await;
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

    pub fn addr(&self, mode: ListenerMode) -> SocketAddr {
        self.running
            .addr(mode)
            .unwrap_or_else(|| panic!("no {mode:?} listener"))
    }

    pub fn port(&self, mode: ListenerMode) -> u16 {
        self.addr(mode).port()
    }

    /// A connection that has read the greeting; TLS first on `submissions`.
    pub async fn connect(&self, mode: ListenerMode) -> Client {
        let mut client = self.connect_raw(mode).await;
        client.expect_greeting().await;
        client
    }

    /// A connection that has not read anything yet (TLS already up on `submissions`).
    pub async fn connect_raw(&self, mode: ListenerMode) -> Client {
        let mut client = Client::connect(self.addr(mode)).await;
        if mode == ListenerMode::Submissions {
            client.start_tls_handshake().await;
        }
        client
    }

    /// A session over TLS (STARTTLS except on `submissions`) that has sent EHLO and
    /// was offered AUTH, but has not authenticated.
    pub async fn tls_session(&self, mode: ListenerMode) -> Client {
        let mut client = self.connect(mode).await;
        if mode != ListenerMode::Submissions {
            client.ehlo().await;
            client.starttls().await;
        }
        let capabilities = client.ehlo().await;
        assert!(
            capabilities.has_line("AUTH PLAIN LOGIN"),
            "AUTH not offered over TLS: {capabilities}"
        );
        client
    }

    /// [`Server::tls_session`], then AUTH PLAIN as `alice`.
    pub async fn authenticated(&self, mode: ListenerMode) -> Client {
        let mut client = self.tls_session(mode).await;
        client
            .expect(&auth_plain_command(USER, PASSWORD), "235 2.7.0")
            .await;
        client
    }

    /// Every message that still has recipients to deliver, oldest first.
    pub async fn queued(&self) -> Vec<MessageSummary> {
        self.running
            .store
            .queued_messages(1000)
            .await
            .expect("list queued messages")
    }

    pub async fn assert_nothing_queued(&self) {
        let queued = self.queued().await;
        assert!(queued.is_empty(), "expected no stored message: {queued:?}");
    }

    pub async fn summary(&self, id: &QueueId) -> MessageSummary {
        self.running
            .store
            .message(id)
            .await
            .expect("read message")
            .unwrap_or_else(|| panic!("message {id} is not in the store"))
    }

    pub async fn content(&self, id: &QueueId) -> Vec<u8> {
        self.running
            .store
            .message_content(id)
            .await
            .expect("read message content")
            .unwrap_or_else(|| panic!("message {id} has no content in the store"))
    }
}

/// `AUTH PLAIN <base64(\0user\0password)>`.
pub fn auth_plain_command(user: &str, password: &str) -> String {
    format!("AUTH PLAIN {}", b64(&format!("\0{user}\0{password}")))
}

pub fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A small RFC 5322 message with `Date:` and `Message-ID:`, so the server adds only
/// `Received:`. `body` lines must end in CRLF.
pub fn message(from: &str, to: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\nTo: <{to}>\r\nSubject: test\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <test.1@{USER_DOMAIN}>\r\n\r\n{body}"
    )
    .into_bytes()
}

/// Asserts that `stored` is trace/submission headers followed by `original` byte for
/// byte, and returns the headers the server added.
pub fn added_headers(stored: &[u8], original: &[u8]) -> String {
    assert!(
        stored.len() >= original.len() && stored.ends_with(original),
        "stored message does not end with the original:\n--- stored\n{}\n--- original\n{}",
        String::from_utf8_lossy(stored),
        String::from_utf8_lossy(original)
    );
    let added = String::from_utf8(stored[..stored.len() - original.len()].to_vec())
        .expect("added headers are UTF-8");
    assert!(
        added.starts_with("Received: from "),
        "the first added header is not Received: {added:?}"
    );
    assert!(
        added.ends_with("\r\n"),
        "added headers end mid-line: {added:?}"
    );
    added
}

/// Names of the header fields in a block of added headers (continuations skipped).
pub fn header_names(headers: &str) -> Vec<String> {
    headers
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t']))
        .map(|l| l.split(':').next().unwrap_or_default().to_string())
        .collect()
}

/// One complete SMTP reply as received.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    /// Every line without its CRLF, code included (`250-PIPELINING`).
    pub lines: Vec<String>,
}

impl Reply {
    pub fn last(&self) -> &str {
        self.lines.last().expect("a reply has at least one line")
    }

    /// True when the final line is `expected` or starts with `expected` and a space:
    /// `"554 5.7.1"` matches `554 5.7.1 Relay access denied` but not `554 5.7.10 ...`.
    pub fn is(&self, expected: &str) -> bool {
        let last = self.last();
        last == expected
            || last
                .strip_prefix(expected)
                .is_some_and(|rest| rest.starts_with(' '))
    }

    #[track_caller]
    pub fn assert(&self, expected: &str) {
        assert!(self.is(expected), "expected `{expected} ...`, got {self}");
    }

    /// True when some line's text (after `NNN-`/`NNN `) is exactly `text`.
    pub fn has_line(&self, text: &str) -> bool {
        self.lines.iter().any(|l| l.get(4..) == Some(text))
    }

    /// The queue id of `250 2.0.0 Ok: queued as <ID>`.
    #[track_caller]
    pub fn queue_id(&self) -> QueueId {
        let id = self
            .last()
            .strip_prefix("250 2.0.0 Ok: queued as ")
            .unwrap_or_else(|| panic!("not a queued reply: {self}"));
        id.parse()
            .unwrap_or_else(|e| panic!("bad queue id in {self}: {e}"))
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.lines)
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A raw SMTP client: writes exactly the bytes a test gives it and parses replies.
pub struct Client {
    stream: Box<dyn Stream>,
    /// Received bytes not yet parsed into a reply.
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect to the server");
        Client::from_stream(stream)
    }

    /// Connects from a given local address (another loopback IP, for per-IP limits).
    pub async fn connect_from(local: SocketAddr, addr: SocketAddr) -> Client {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(local).expect("bind the client address");
        let stream = within("connect", socket.connect(addr))
            .await
            .expect("connect to the server");
        Client::from_stream(stream)
    }

    fn from_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Client {
            stream: Box::new(stream),
            buf: Vec::new(),
        }
    }

    /// Runs the TLS handshake (the server's self-signed certificate is accepted).
    /// Panics if the server sent anything that was not read yet.
    pub async fn start_tls_handshake(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread plaintext before TLS: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let plain = std::mem::replace(&mut self.stream, Box::new(tokio::io::duplex(1).0));
        let connector = tokio_rustls::TlsConnector::from(tls_client_config());
        let name = ServerName::try_from(HOSTNAME).expect("server name");
        let tls = within("TLS handshake", connector.connect(name, plain))
            .await
            .expect("TLS handshake");
        self.stream = Box::new(tls);
    }

    /// Writes bytes exactly as given, in one write.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        within("write", async {
            self.stream.write_all(bytes.as_ref()).await?;
            self.stream.flush().await
        })
        .await
        .expect("write to the server");
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n")).await;
        self.reply().await
    }

    /// Sends one command line and asserts its reply (see [`Reply::is`]).
    #[track_caller]
    pub fn expect<'a>(
        &'a mut self,
        line: &'a str,
        expected: &'a str,
    ) -> impl std::future::Future<Output = Reply> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let reply = self.cmd(line).await;
            assert!(
                reply.is(expected),
                "{caller}: `{line}`: expected `{expected} ...`, got {reply}"
            );
            reply
        }
    }

    /// Reads the next complete reply, failing the test after [`DEADLINE`].
    pub async fn reply(&mut self) -> Reply {
        self.reply_within(DEADLINE).await
    }

    pub async fn reply_within(&mut self, deadline: Duration) -> Reply {
        let mut lines: Vec<String> = Vec::new();
        let end = tokio::time::Instant::now() + deadline;
        loop {
            while let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let line = String::from_utf8(line[..pos].to_vec())
                    .unwrap_or_else(|_| panic!("reply line is not UTF-8: {line:?}"));
                let code: u16 = line
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("malformed reply line {line:?}"));
                let sep = line.as_bytes().get(3).copied();
                assert!(
                    matches!(sep, None | Some(b' ') | Some(b'-')),
                    "malformed reply line {line:?}"
                );
                if let Some(first) = lines.first() {
                    assert!(
                        first.starts_with(&line[..3]),
                        "code changed inside a multi-line reply: {lines:?} then {line:?}"
                    );
                }
                lines.push(line);
                if sep != Some(b'-') {
                    return Reply { code, lines };
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout_at(end, self.stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no complete reply within {deadline:?}; got so far {lines:?} + {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )
                })
                .expect("read from the server");
            assert!(
                n > 0,
                "connection closed before a complete reply; got so far {lines:?} + {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Asserts that the server closes the connection without sending anything more.
    pub async fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unexpected data before close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 1024];
        let read = within("close", self.stream.read(&mut chunk)).await;
        match read {
            Ok(0) => {}
            // A reset after the server closed is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(n) => panic!(
                "expected the connection to close, got {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) => panic!("expected a clean close, got {e}"),
        }
    }

    pub async fn expect_greeting(&mut self) {
        let greeting = self.reply().await;
        assert_eq!(
            greeting.lines,
            [format!("220 {HOSTNAME} ESMTP Outpost")],
            "greeting"
        );
    }

    /// `EHLO client.test`, asserting a 250 reply; returns it (the capabilities).
    pub async fn ehlo(&mut self) -> Reply {
        let reply = self.cmd("EHLO client.test").await;
        assert_eq!(reply.code, 250, "EHLO: {reply}");
        assert!(
            reply.lines[0].starts_with(&format!("250-{HOSTNAME} ")),
            "EHLO first line: {reply}"
        );
        reply
    }

    /// STARTTLS, asserting `220 2.0.0` and that nothing follows it in plaintext, then
    /// the handshake.
    pub async fn starttls(&mut self) {
        self.expect("STARTTLS", "220 2.0.0").await;
        self.start_tls_handshake().await;
    }

    /// MAIL and RCPT for each recipient, each asserted to succeed.
    pub async fn begin(&mut self, from: &str, rcpts: &[&str]) {
        self.expect(&format!("MAIL FROM:<{from}>"), "250 2.1.0")
            .await;
        for rcpt in rcpts {
            self.expect(&format!("RCPT TO:<{rcpt}>"), "250 2.1.5").await;
        }
    }

    /// Sends `BDAT <len> [LAST]` and the chunk in one write (no reply read).
    pub async fn send_bdat(&mut self, chunk: &[u8], last: bool) {
        self.send(bdat_wire(chunk, last)).await;
    }

    /// [`Client::begin`], DATA, then `content` dot-stuffed and terminated. Returns the
    /// reply to the end of data.
    pub async fn send_mail(&mut self, from: &str, rcpts: &[&str], content: &[u8]) -> Reply {
        self.begin(from, rcpts).await;
        self.expect("DATA", "354").await;
        self.send(dot_stuffed(content)).await;
        self.reply().await
    }

    /// Like [`Client::send_mail`], asserting `250 2.0.0 Ok: queued as <ID>`.
    pub async fn deliver(&mut self, from: &str, rcpts: &[&str], content: &[u8]) -> QueueId {
        self.send_mail(from, rcpts, content).await.queue_id()
    }

    /// QUIT, `221`, then the close, with nothing else on the wire.
    pub async fn quit(&mut self) {
        self.expect("QUIT", "221 2.0.0").await;
        self.expect_closed().await;
    }
}

/// The DATA wire form of `content` (which must use CRLF line endings): leading dots
/// doubled, a final CRLF added if missing, then `.<CRLF>`. Written independently of
/// the server's own encoder.
pub fn dot_stuffed(content: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(content.len() + 16);
    let mut at_line_start = true;
    for &b in content {
        if at_line_start && b == b'.' {
            wire.push(b'.');
        }
        wire.push(b);
        at_line_start = b == b'\n';
    }
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b".\r\n");
    wire
}

/// `BDAT <len> [LAST]<CRLF>` followed by the chunk.
pub fn bdat_wire(chunk: &[u8], last: bool) -> Vec<u8> {
    let last = if last { " LAST" } else { "" };
    let mut wire = format!("BDAT {}{last}\r\n", chunk.len()).into_bytes();
    wire.extend_from_slice(chunk);
    wire
}

/// Awaits `future`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {DEADLINE:?}"))
}

fn tls_client_config() -> Arc<rustls::ClientConfig> {
    outpost::outbound::tls::unverified_config()
}
