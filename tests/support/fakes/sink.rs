//! `SmtpSink`: a scriptable SMTP server on loopback that plays the destination
//! MX or a smart host, and records what it received.
//!
//! Built with [`SmtpSink::builder`], configured with chained calls, started
//! with [`SinkBuilder::start`]. Stops (listener and every connection) when
//! dropped.
//!
//! Replies are given as text such as `"550 5.1.1 User unknown"`. A reply with
//! several lines separated by `\n` (each starting with the code) is sent as a
//! multi-line reply. After any reply with code 421 the sink closes the
//! connection (RFC 5321 §3.8).
//!
//! What the sink checks, like a strict server: commands in order (503
//! otherwise), `BODY=8BITMIME`/`SMTPUTF8` only when advertised (555
//! otherwise), `SIZE=` within the limit (552), authentication before MAIL when
//! AUTH is required (530). The end of data is exactly `CRLF.CRLF`; a line that
//! starts with a dot has that dot removed (RFC 5321 §4.5.2) and nothing else
//! is changed: [`Received::data`] holds the message as the client meant it,
//! including the CRLF before the final dot. BDAT/CHUNKING is not offered.

mod certs;
mod session;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// PEM of the CA that issues [`Tls::CaSigned`] and [`Tls::BadCert`]
/// certificates (the same for every sink in the test process): give it to a
/// client as its only trust anchor to test certificate verification.
pub fn test_ca_pem() -> String {
    certs::test_ca_pem()
}

/// What the sink offers for STARTTLS.
#[derive(Clone, Debug, Default)]
pub enum Tls {
    /// STARTTLS is not advertised.
    #[default]
    None,
    /// A self-signed certificate for `localhost`, the sink's hostname and its
    /// IP address: fine for a client that does not verify, rejected by one
    /// that does.
    SelfSigned,
    /// A certificate any verifying client must reject, even one that trusts
    /// [`test_ca_pem`]: issued by that CA, but for `wrong-host.invalid` only,
    /// and expired in 2001.
    BadCert,
    /// A valid certificate issued by the test CA ([`test_ca_pem`]) for the
    /// given DNS names plus `localhost`, the sink's hostname and its IP
    /// address. A client that trusts the test CA accepts it.
    CaSigned(Vec<String>),
}

/// One transaction that reached the end of DATA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// 0-based number of the connection it came in on.
    pub connection: usize,
    /// The EHLO/HELO argument.
    pub helo: String,
    /// The reverse path without angle brackets (`""` for the null sender).
    pub mail_from: String,
    /// MAIL FROM parameters as sent, e.g. `["BODY=8BITMIME", "SIZE=1234"]`.
    pub mail_params: Vec<String>,
    /// The recipients the sink accepted (2xx) in this transaction, in order.
    pub rcpt_to: Vec<String>,
    /// The message, dot-unstuffed, without the terminating `.CRLF`.
    pub data: Vec<u8>,
    /// Whether the transaction ran inside STARTTLS.
    pub tls: bool,
    /// The authenticated user, if the client authenticated.
    pub auth_user: Option<String>,
    /// The reply the sink gave at the end of data (`""` if it stalled or
    /// disconnected instead).
    pub reply: String,
}

impl Received {
    /// The data as text (lossy), for assertions on headers and bodies.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// One RCPT command and the sink's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptAttempt {
    pub connection: usize,
    /// 0-based number of the transaction (accepted MAIL FROM), sink-wide.
    pub transaction: usize,
    pub address: String,
    pub reply: String,
}

/// One command line as received (without CRLF; data lines are not logged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub connection: usize,
    /// Whether it came inside STARTTLS.
    pub tls: bool,
    pub line: String,
}

#[derive(Clone, Debug)]
enum Match {
    Substring(String),
    Exact(String),
}

#[derive(Clone, Debug)]
struct RcptRule {
    matcher: Match,
    reply: String,
    /// How many more times this rule applies; `None` for always.
    remaining: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum AfterData {
    Reply,
    Stall,
    Disconnect,
    /// Closes in the middle of the data (see [`SinkBuilder::reset_during_data`]).
    ResetDuringData,
}

/// Configuration of an [`SmtpSink`]; every setting has a default that makes a
/// well-behaved server accepting everything.
#[derive(Clone, Debug)]
pub struct SinkBuilder {
    bind: SocketAddr,
    hostname: String,
    greeting: Option<String>,
    tls: Tls,
    delay: Duration,
    after_data: AfterData,
    fault_limit: Option<usize>,
    pipelining: bool,
    eightbitmime: bool,
    smtputf8: bool,
    size: usize,
    auth: Option<(String, String)>,
    rcpt_rules: Vec<RcptRule>,
    rcpt_first_transactions: Option<(usize, String)>,
    mail_replies: VecDeque<String>,
    mail_default: String,
    data_replies: VecDeque<String>,
    data_default: String,
}

impl Default for SinkBuilder {
    fn default() -> Self {
        SinkBuilder {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            hostname: "sink.localhost".into(),
            greeting: None,
            tls: Tls::None,
            delay: Duration::ZERO,
            after_data: AfterData::Reply,
            fault_limit: None,
            pipelining: true,
            eightbitmime: true,
            smtputf8: true,
            size: 10 * 1024 * 1024,
            auth: None,
            rcpt_rules: Vec::new(),
            rcpt_first_transactions: None,
            mail_replies: VecDeque::new(),
            mail_default: "250 2.1.0 Sender OK".into(),
            data_replies: VecDeque::new(),
            data_default: "250 2.0.0 Message accepted".into(),
        }
    }
}

impl SinkBuilder {
    /// Listen on this loopback address instead of `127.0.0.1:0` (e.g.
    /// `127.0.0.2:0`, or a fixed port shared by several sinks on different
    /// loopback addresses). Panics for a non-loopback address.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        assert!(addr.ip().is_loopback(), "SmtpSink binds loopback only");
        self.bind = addr;
        self
    }

    /// The name in the greeting and the EHLO reply (default `sink.localhost`).
    pub fn hostname(mut self, name: &str) -> Self {
        self.hostname = name.into();
        self
    }

    /// Replaces the `220` greeting. A greeting that is not 2xx (e.g. `"421
    /// 4.7.0 Too busy"` or `"554 5.7.1 Go away"`) is sent and the connection
    /// is closed.
    pub fn greeting(mut self, reply: &str) -> Self {
        self.greeting = Some(reply.into());
        self
    }

    pub fn starttls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// Waits this long before every reply, the greeting included.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Never answers the end of data: the transaction is recorded in
    /// [`SmtpSink::attempts`] (reply `""`), and the connection is held open
    /// until the client closes it.
    pub fn stall_after_data(mut self) -> Self {
        self.after_data = AfterData::Stall;
        self
    }

    /// Closes the connection instead of answering the end of data (recorded
    /// in [`SmtpSink::attempts`] with reply `""`).
    pub fn disconnect_after_data(mut self) -> Self {
        self.after_data = AfterData::Disconnect;
        self
    }

    /// Closes the connection in the middle of the message data: after the `354`
    /// it reads one data line and closes with the rest unread, so the client
    /// sees a reset while it is still writing. Nothing is recorded as received.
    pub fn reset_during_data(mut self) -> Self {
        self.after_data = AfterData::ResetDuringData;
        self
    }

    /// Applies [`Self::stall_after_data`], [`Self::disconnect_after_data`] or
    /// [`Self::reset_during_data`] to the first `n` transactions only
    /// (sink-wide); later ones get the normal data reply. Models a destination
    /// that recovers.
    pub fn faults_only_first(mut self, n: usize) -> Self {
        self.fault_limit = Some(n);
        self
    }

    pub fn no_pipelining(mut self) -> Self {
        self.pipelining = false;
        self
    }

    /// Does not advertise 8BITMIME, and rejects `BODY=8BITMIME` with 555.
    pub fn no_8bitmime(mut self) -> Self {
        self.eightbitmime = false;
        self
    }

    /// Does not advertise SMTPUTF8, and rejects the `SMTPUTF8` parameter
    /// with 555.
    pub fn no_smtputf8(mut self) -> Self {
        self.smtputf8 = false;
        self
    }

    /// The advertised SIZE limit (default 10 MiB); `SIZE=` above it gets 552.
    pub fn size(mut self, limit: usize) -> Self {
        self.size = limit;
        self
    }

    /// Advertises `AUTH PLAIN LOGIN` (before and after STARTTLS) and requires
    /// a successful AUTH with these credentials before MAIL (530 otherwise).
    pub fn require_auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.into(), password.into()));
        self
    }

    /// RCPT rule: a recipient whose address contains `pattern` (ASCII
    /// case-insensitive) gets `reply`. Rules are tried in the order added;
    /// the first that matches wins; no match means `250 2.1.5 OK`.
    pub fn rcpt_reply(self, pattern: &str, reply: &str) -> Self {
        self.rule(Match::Substring(pattern.into()), reply, None)
    }

    /// Like [`Self::rcpt_reply`], but the whole address must equal `address`
    /// (ASCII case-insensitive).
    pub fn rcpt_reply_exact(self, address: &str, reply: &str) -> Self {
        self.rule(Match::Exact(address.into()), reply, None)
    }

    /// Like [`Self::rcpt_reply`], but the rule applies only to the first
    /// `times` RCPTs it matches, then steps aside (e.g. `451` twice, then the
    /// next rule or the default 250).
    pub fn rcpt_reply_times(self, pattern: &str, reply: &str, times: usize) -> Self {
        self.rule(Match::Substring(pattern.into()), reply, Some(times))
    }

    /// Every RCPT in the first `n` transactions (accepted MAIL FROMs, counted
    /// over all connections) gets `reply`; later ones go through the rules.
    /// Checked before the rules.
    pub fn rcpt_reply_first_transactions(mut self, n: usize, reply: &str) -> Self {
        self.rcpt_first_transactions = Some((n, reply.into()));
        self
    }

    /// Reply to every MAIL FROM (default `250 2.1.0 Sender OK`).
    pub fn mail_reply(mut self, reply: &str) -> Self {
        self.mail_default = reply.into();
        self
    }

    /// Replies to the next MAIL FROMs, one each, in order, sink-wide; after
    /// them the [`Self::mail_reply`] default.
    pub fn mail_replies<'a>(mut self, replies: impl IntoIterator<Item = &'a str>) -> Self {
        self.mail_replies = replies.into_iter().map(String::from).collect();
        self
    }

    /// Reply to every end of data (default `250 2.0.0 Message accepted`).
    pub fn data_reply(mut self, reply: &str) -> Self {
        self.data_default = reply.into();
        self
    }

    /// Replies to the next ends of data, one each, in order, sink-wide; after
    /// them the [`Self::data_reply`] default. E.g. `["451 4.7.1 slow down"]`
    /// makes the first attempt fail and the retry succeed.
    pub fn data_replies<'a>(mut self, replies: impl IntoIterator<Item = &'a str>) -> Self {
        self.data_replies = replies.into_iter().map(String::from).collect();
        self
    }

    fn rule(mut self, matcher: Match, reply: &str, remaining: Option<usize>) -> Self {
        self.rcpt_rules.push(RcptRule {
            matcher,
            reply: reply.into(),
            remaining,
        });
        self
    }

    /// Binds and starts accepting connections.
    pub async fn start(self) -> SmtpSink {
        let listener = TcpListener::bind(self.bind)
            .await
            .unwrap_or_else(|e| panic!("SmtpSink: bind {}: {e}", self.bind));
        let addr = listener.local_addr().expect("sink local addr");
        let acceptor = certs::tls_acceptor(&self.tls, &self.hostname, addr);
        let config = Arc::new(Config {
            hostname: self.hostname,
            greeting: self.greeting,
            acceptor,
            delay: self.delay,
            after_data: self.after_data,
            fault_limit: self.fault_limit,
            pipelining: self.pipelining,
            eightbitmime: self.eightbitmime,
            smtputf8: self.smtputf8,
            size: self.size,
            auth: self.auth,
            rcpt_first_transactions: self.rcpt_first_transactions,
            mail_default: self.mail_default,
            data_default: self.data_default,
        });
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rcpt_rules: self.rcpt_rules,
                mail_replies: self.mail_replies,
                data_replies: self.data_replies,
                ..State::default()
            }),
            notify: Notify::new(),
        });
        let task = tokio::spawn(session::accept_loop(listener, config, shared.clone()));
        SmtpSink { addr, shared, task }
    }
}

/// A running sink. See the module docs.
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    pub fn builder() -> SinkBuilder {
        SinkBuilder::default()
    }

    /// A sink with all defaults: accepts everything, no TLS.
    pub async fn start_default() -> SmtpSink {
        SinkBuilder::default().start().await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Messages accepted (2xx at the end of data), in order of acceptance.
    pub fn messages(&self) -> Vec<Received> {
        self.state().messages.clone()
    }

    /// Every transaction that reached the end of data, accepted or not.
    pub fn attempts(&self) -> Vec<Received> {
        self.state().attempts.clone()
    }

    /// Every RCPT command and its reply.
    pub fn rcpt_attempts(&self) -> Vec<RcptAttempt> {
        self.state().rcpts.clone()
    }

    /// Every command line received, all connections, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.state().commands.clone()
    }

    /// Connections accepted so far (refused greetings included).
    pub fn connections(&self) -> usize {
        self.state().connections
    }

    /// Connections open right now.
    pub fn active_connections(&self) -> usize {
        self.state().active
    }

    /// The most connections ever open at the same time.
    pub fn max_concurrent(&self) -> usize {
        self.state().max_concurrent
    }

    /// Accepted messages per connection, indexed by connection number.
    pub fn messages_per_connection(&self) -> Vec<usize> {
        self.state().per_connection.clone()
    }

    /// Waits until at least `n` messages were accepted and returns all of
    /// them. Panics, with what the sink saw, if `deadline` passes first.
    pub async fn wait_for_messages(&self, n: usize, deadline: Duration) -> Vec<Received> {
        self.wait_for(deadline, &format!("{n} accepted messages"), |s| {
            (s.messages.len() >= n).then(|| s.messages.clone())
        })
        .await
    }

    /// Waits until at least `n` transactions reached the end of data
    /// (accepted or not) and returns them all.
    pub async fn wait_for_attempts(&self, n: usize, deadline: Duration) -> Vec<Received> {
        self.wait_for(deadline, &format!("{n} attempts"), |s| {
            (s.attempts.len() >= n).then(|| s.attempts.clone())
        })
        .await
    }

    /// Waits until at least `n` RCPT commands were received; returns them.
    pub async fn wait_for_rcpts(&self, n: usize, deadline: Duration) -> Vec<RcptAttempt> {
        self.wait_for(deadline, &format!("{n} RCPTs"), |s| {
            (s.rcpts.len() >= n).then(|| s.rcpts.clone())
        })
        .await
    }

    /// Waits until at least `n` connections were accepted.
    pub async fn wait_for_connections(&self, n: usize, deadline: Duration) -> usize {
        self.wait_for(deadline, &format!("{n} connections"), |s| {
            (s.connections >= n).then_some(s.connections)
        })
        .await
    }

    /// Waits until no connection is open (e.g. after the client's QUIT).
    pub async fn wait_for_idle(&self, deadline: Duration) {
        self.wait_for(deadline, "no open connection", |s| {
            (s.active == 0).then_some(())
        })
        .await
    }

    async fn wait_for<T>(
        &self,
        deadline: Duration,
        what: &str,
        check: impl Fn(&State) -> Option<T>,
    ) -> T {
        let end = Instant::now() + deadline;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a change in between is not lost.
            notified.as_mut().enable();
            if let Some(found) = check(&self.state()) {
                return found;
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                let state = self.state();
                panic!(
                    "SmtpSink: waited {deadline:?} for {what}; saw {} connections, {} attempts \
                     ({} accepted), last commands: {:#?}",
                    state.connections,
                    state.attempts.len(),
                    state.messages.len(),
                    state
                        .commands
                        .iter()
                        .rev()
                        .take(20)
                        .rev()
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("sink state lock")
    }
}

struct Config {
    hostname: String,
    greeting: Option<String>,
    acceptor: Option<TlsAcceptor>,
    delay: Duration,
    after_data: AfterData,
    fault_limit: Option<usize>,
    pipelining: bool,
    eightbitmime: bool,
    smtputf8: bool,
    size: usize,
    auth: Option<(String, String)>,
    rcpt_first_transactions: Option<(usize, String)>,
    mail_default: String,
    data_default: String,
}

struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Default)]
struct State {
    connections: usize,
    active: usize,
    max_concurrent: usize,
    transactions: usize,
    messages: Vec<Received>,
    attempts: Vec<Received>,
    per_connection: Vec<usize>,
    rcpts: Vec<RcptAttempt>,
    commands: Vec<Command>,
    rcpt_rules: Vec<RcptRule>,
    mail_replies: VecDeque<String>,
    data_replies: VecDeque<String>,
    /// Faults (stall, disconnect, reset) played so far.
    faults: usize,
}

impl Shared {
    /// Whether the configured data fault applies to this transaction; counts it.
    fn take_fault(&self, config: &Config) -> bool {
        if config.after_data == AfterData::Reply {
            return false;
        }
        self.update(|s| {
            let applies = config.fault_limit.is_none_or(|n| s.faults < n);
            if applies {
                s.faults += 1;
            }
            applies
        })
    }

    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.state.lock().expect("sink state lock"));
        self.notify.notify_waiters();
        out
    }
}
