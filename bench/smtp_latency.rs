//! SMTP load generator that measures per-message accept latency.
//!
//! Postfix's smtp-source reports only totals; the issue asks for accept latency
//! percentiles under load, measured the same way for Outpost and for Postfix. No
//! crate of this field does that (lettre hides the reply timing), so this is a
//! small hand-written client: plain SMTP, no pipelining (as smtp-source), one
//! recipient per message.
//!
//! Two latencies per message, in microseconds:
//! - accept: from writing the final `.` of DATA to reading the reply — the time the
//!   relay takes to make the message durable and answer 250;
//! - transaction: from the moment the message was due to be sent (its scheduled slot
//!   with `--rate`, else when MAIL FROM is written) to that reply. With `--rate`
//!   this includes time spent waiting for a free session, so a stalled relay shows up
//!   in the percentiles instead of silently lowering the offered load.
//!
//! With `--per-connection`, every message gets a connection of its own (connect,
//! EHLO, optionally STARTTLS and `--auth` AUTH PLAIN, one transaction, QUIT), as
//! applications that log in once per message do; the latencies are then those of
//! the transaction in that connection.
//!
//! Output: `key=value` lines on stdout (the scripts in bench/ parse them); exit
//! status 1 if any message was not accepted.

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

#[derive(Parser, Debug)]
#[command(about = "SMTP load generator measuring accept latency")]
struct Args {
    /// Relay address, host:port.
    #[arg(long, default_value = "127.0.0.1:2525")]
    target: String,
    /// Parallel SMTP sessions, each reusing its connection.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Messages in total.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Message size in bytes (headers included).
    #[arg(long, default_value_t = 10_240)]
    size: usize,
    /// Offered load in messages per second over all sessions; 0 sends as fast
    /// as the relay answers (closed loop).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value = "bench@source.test")]
    from: String,
    #[arg(long, default_value = "rcpt@example.test")]
    rcpt: String,
    /// Deadline for any single reply.
    #[arg(long, default_value_t = 60)]
    reply_timeout_s: u64,
    /// A new connection for every message instead of one per session.
    #[arg(long)]
    per_connection: bool,
    /// STARTTLS after EHLO (the certificate is not verified; sessions are resumed
    /// when the relay allows it, as TLS clients do).
    #[arg(long)]
    starttls: bool,
    /// `USER:PASSWORD` for AUTH PLAIN after STARTTLS.
    #[arg(long)]
    auth: Option<String>,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Latencies of the messages one session sent, in microseconds.
#[derive(Default)]
struct SessionResult {
    accept_us: Vec<u64>,
    transaction_us: Vec<u64>,
    rejected: usize,
}

struct Session {
    reader: BufReader<ReadHalf<Box<dyn Stream>>>,
    writer: WriteHalf<Box<dyn Stream>>,
    reply_timeout: Duration,
    line: String,
}

/// How a session opens: TLS (one client configuration, so its session cache
/// is shared) and AUTH PLAIN.
struct Login {
    tls: Option<tokio_rustls::TlsConnector>,
    /// Base64 of `\0user\0password`.
    auth_plain: Option<String>,
}

impl Session {
    async fn connect(target: &str, login: &Login, reply_timeout: Duration) -> Result<Session> {
        let stream = timeout(reply_timeout, TcpStream::connect(target))
            .await
            .context("connect timed out")?
            .with_context(|| format!("connect to {target}"))?;
        stream.set_nodelay(true)?;
        let mut session = Session::over(Box::new(stream), reply_timeout);
        session.expect(220).await.context("greeting")?;
        session.command(b"EHLO latency.bench.test\r\n", 250).await?;
        if let Some(tls) = &login.tls {
            session.command(b"STARTTLS\r\n", 220).await?;
            let plain = session.reader.into_inner().unsplit(session.writer);
            let name = rustls::pki_types::ServerName::try_from("relay.bench.test")?;
            let stream = timeout(reply_timeout, tls.connect(name, plain))
                .await
                .context("TLS handshake timed out")??;
            session = Session::over(Box::new(stream), reply_timeout);
            session.command(b"EHLO latency.bench.test\r\n", 250).await?;
        }
        if let Some(plain) = &login.auth_plain {
            session
                .command(format!("AUTH PLAIN {plain}\r\n").as_bytes(), 235)
                .await
                .context("AUTH")?;
        }
        Ok(session)
    }

    fn over(stream: Box<dyn Stream>, reply_timeout: Duration) -> Session {
        let (read, writer) = tokio::io::split(stream);
        Session {
            reader: BufReader::new(read),
            writer,
            reply_timeout,
            line: String::new(),
        }
    }

    /// Reads one (possibly multi-line) reply and returns its code.
    async fn reply(&mut self) -> Result<u16> {
        loop {
            self.line.clear();
            let n = timeout(self.reply_timeout, self.reader.read_line(&mut self.line))
                .await
                .context("reply timed out")??;
            if n == 0 {
                bail!("connection closed by the relay");
            }
            let code: u16 = self
                .line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .with_context(|| format!("malformed reply {:?}", self.line))?;
            if self.line.as_bytes().get(3) != Some(&b'-') {
                return Ok(code);
            }
        }
    }

    async fn expect(&mut self, code: u16) -> Result<()> {
        let got = self.reply().await?;
        if got != code {
            bail!("expected {code}, got {:?}", self.line.trim_end());
        }
        Ok(())
    }

    async fn command(&mut self, line: &[u8], code: u16) -> Result<()> {
        self.writer.write_all(line).await?;
        self.expect(code).await
    }
}

/// A message of exactly `size` bytes (at least its headers) with 78-column body lines.
fn message(from: &str, rcpt: &str, size: usize) -> Vec<u8> {
    let mut text = format!(
        "From: <{from}>\r\nTo: <{rcpt}>\r\nSubject: latency benchmark\r\n\
         Date: Sat, 28 Nov 2026 00:00:00 +0000\r\nMessage-ID: <latency@bench.test>\r\n\r\n"
    )
    .into_bytes();
    let line = [b'X'; 78];
    while text.len() + 80 <= size {
        text.extend_from_slice(&line);
        text.extend_from_slice(b"\r\n");
    }
    if text.len() + 2 < size {
        text.extend(std::iter::repeat_n(b'Y', size - text.len() - 2));
        text.extend_from_slice(b"\r\n");
    }
    text.extend_from_slice(b".\r\n");
    text
}

async fn run_session(
    args: Arc<Args>,
    login: Arc<Login>,
    next: Arc<AtomicUsize>,
    start: Instant,
    body: Arc<Vec<u8>>,
) -> Result<SessionResult> {
    let reply_timeout = Duration::from_secs(args.reply_timeout_s);
    let mut session = Session::connect(&args.target, &login, reply_timeout).await?;
    let mut fresh = true;
    let mail = format!("MAIL FROM:<{}>\r\n", args.from);
    let rcpt = format!("RCPT TO:<{}>\r\n", args.rcpt);
    let mut result = SessionResult::default();
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= args.messages {
            break;
        }
        let due = if args.rate > 0.0 {
            let slot = start + Duration::from_secs_f64(index as f64 / args.rate);
            tokio::time::sleep_until(slot).await;
            slot
        } else {
            Instant::now()
        };
        if args.per_connection && !fresh {
            session.command(b"QUIT\r\n", 221).await.ok();
            session = Session::connect(&args.target, &login, reply_timeout).await?;
        }
        fresh = false;
        session.command(mail.as_bytes(), 250).await?;
        session.command(rcpt.as_bytes(), 250).await?;
        session.command(b"DATA\r\n", 354).await?;
        session.writer.write_all(&body).await?;
        let dot_written = Instant::now();
        let code = session.reply().await?;
        let done = Instant::now();
        if code == 250 {
            result
                .accept_us
                .push((done - dot_written).as_micros() as u64);
            result.transaction_us.push((done - due).as_micros() as u64);
        } else {
            result.rejected += 1;
            eprintln!("rejected: {}", session.line.trim_end());
        }
    }
    session.command(b"QUIT\r\n", 221).await.ok();
    Ok(result)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn print_latencies(name: &str, mut values: Vec<u64>) {
    values.sort_unstable();
    for (label, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)] {
        println!("{name}_{label}_ms={:.3}", percentile(&values, p));
    }
    println!("{name}_max_ms={:.3}", percentile(&values, 100.0));
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    if args.sessions == 0 || args.messages == 0 {
        bail!("--sessions and --messages must be at least 1");
    }
    if args.auth.is_some() && !args.starttls {
        bail!("--auth needs --starttls (relays offer AUTH only over TLS)");
    }
    let login = Arc::new(Login {
        tls: args
            .starttls
            .then(|| tokio_rustls::TlsConnector::from(outpost::outbound::tls::unverified_config())),
        auth_plain: args.auth.as_deref().map(|credentials| {
            let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
        }),
    });
    let body = Arc::new(message(&args.from, &args.rcpt, args.size));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.sessions)
        .map(|_| {
            tokio::spawn(run_session(
                args.clone(),
                login.clone(),
                next.clone(),
                start,
                body.clone(),
            ))
        })
        .collect();
    let (mut accept, mut transaction, mut rejected, mut failed_sessions) =
        (Vec::new(), Vec::new(), 0, 0);
    for task in tasks {
        match task.await? {
            Ok(result) => {
                accept.extend(result.accept_us);
                transaction.extend(result.transaction_us);
                rejected += result.rejected;
            }
            Err(error) => {
                failed_sessions += 1;
                eprintln!("session failed: {error:#}");
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "sessions={} messages={} size={} rate={} per_connection={} starttls={} auth={}",
        args.sessions,
        args.messages,
        args.size,
        args.rate,
        args.per_connection,
        args.starttls,
        args.auth.is_some()
    );
    println!("accepted={}", accept.len());
    println!("rejected={rejected}");
    println!("failed_sessions={failed_sessions}");
    println!("elapsed_s={elapsed:.3}");
    println!("accepted_per_s={:.1}", accept.len() as f64 / elapsed);
    print_latencies("accept", accept.clone());
    print_latencies("transaction", transaction);
    if accept.len() != args.messages {
        std::process::exit(1);
    }
    Ok(())
}
