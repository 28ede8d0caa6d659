//! SMTP smuggling end to end (the 2023 SEC Consult research and its follow-ups):
//! every published end-of-data variant is sent through Outpost (relay port, trusted
//! network, delivery on, every domain routed to one destination), with a smuggled
//! second transaction after the fake end. The destination is first our `SmtpSink`
//! (which splits lines at LF, so it is itself fooled by `<LF>.<CRLF>`: a permissive
//! receiver) and then Postfix's `smtp-sink`. Outpost must refuse every carrier
//! (`550 5.5.2` for a bare CR/LF, `550 5.6.0` for a NUL) and stay in step with the
//! client; the destination must see exactly one message per `250` (the clean control
//! messages), every one from the real sender, and never the smuggled MAIL FROM.

use crate::support::common;
use crate::support::fakes;
use crate::support::hardening;

use common::*;
use fakes::sink::SmtpSink;
use outpost::config::ListenerMode;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

const SMUGGLED_SENDER: &str = "smuggled@evil.example";
const RCPT: &str = "rcpt@dest.example";

/// (name, the bytes that end the data early at some receiver).
const VARIANTS: &[(&str, &[u8])] = &[
    ("LF.LF", b"\n.\n"),
    ("LF.CRLF", b"\n.\r\n"),
    ("CRLF.LF", b"\r\n.\n"),
    ("CR.CR", b"\r.\r"),
    ("CRLF.CR", b"\r\n.\r"),
    ("CR.CRLF", b"\r.\r\n"),
    ("LF.CR", b"\n.\r"),
    ("CR.LF", b"\r.\n"),
    ("CRCRLF.CRCRLF", b"\r\r\n.\r\r\n"),
    ("CRLF.CRCRLF", b"\r\n.\r\r\n"),
    ("LFLF.LFLF", b"\n\n.\n\n"),
    ("CRLF-NUL.CRLF", b"\r\n\x00.\r\n"),
    ("CRLF.NUL-CRLF", b"\r\n.\x00\r\n"),
    ("CRLF-NUL.NUL-CRLF", b"\r\n\x00.\x00\r\n"),
    ("NUL-LF.LF", b"\x00\n.\n"),
];

/// A message whose data holds `variant` followed by a complete smuggled
/// transaction, then the real end of data.
fn smuggling_wire(n: usize, variant: &[u8]) -> Vec<u8> {
    let mut wire = format!(
        "From: <{CLIENT_SENDER}>\r\nTo: <{RCPT}>\r\nSubject: carrier-{n}\r\n\r\ncarrier body {n}"
    )
    .into_bytes();
    wire.extend_from_slice(variant);
    wire.extend_from_slice(
        format!(
            "MAIL FROM:<{SMUGGLED_SENDER}>\r\nRCPT TO:<victim@dest.example>\r\nDATA\r\n\
             From: <{SMUGGLED_SENDER}>\r\nSubject: SMUGGLED-{n}\r\n\r\nsmuggled {n}\r\n.\r\n"
        )
        .as_bytes(),
    );
    // The smuggled transaction's `<CRLF>.<CRLF>` is the real end of data.
    wire
}

/// Sends every variant (each followed by a clean control message); every carrier
/// must be refused. Returns how many messages Outpost acknowledged with 250.
async fn send_all(server: &Server) -> usize {
    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    let mut accepted = 0;
    for (n, (name, variant)) in VARIANTS.iter().enumerate() {
        client.begin(CLIENT_SENDER, &[RCPT]).await;
        client.expect("DATA", "354").await;
        client.send(smuggling_wire(n, variant)).await;
        let reply = client.reply().await;
        // Every variant holds a bare CR, a bare LF or a NUL: refused after its
        // real end, so nothing of it is relayed.
        assert!(
            reply.is("550 5.5.2") || reply.is("550 5.6.0"),
            "{name}: carrier not refused: {reply}"
        );
        // The session is in sync: the smuggled commands were data, not commands.
        let control = message(CLIENT_SENDER, RCPT, &format!("control {n}\r\n"));
        client.deliver(CLIENT_SENDER, &[RCPT], &control).await;
        accepted += 1;
    }
    client.quit().await;
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_variants_never_reach_the_permissive_sink_as_a_second_message() {
    let sink = SmtpSink::start_default().await;
    let server = hardening::delivering_server(sink.addr(), "retry = [\"1s\"]").await;
    let accepted = send_all(&server).await;
    hardening::wait_until_settled(&server, Duration::from_secs(30)).await;
    let messages = sink.messages();
    assert_eq!(
        messages.len(),
        accepted,
        "the sink got {} messages for {accepted} acknowledged: {:#?}",
        messages.len(),
        messages.iter().map(|m| m.text()).collect::<Vec<_>>()
    );
    for m in &messages {
        assert!(
            common::return_path_message(&m.mail_from).is_some(),
            "{}",
            m.text()
        );
        assert_eq!(m.rcpt_to, [RCPT]);
    }
    let commands = sink.commands();
    assert!(
        !commands
            .iter()
            .any(|c| c.line.to_ascii_lowercase().contains(SMUGGLED_SENDER)),
        "a smuggled command reached the sink as a command: {commands:?}"
    );
    println!(
        "{} variants refused; the sink received {} control messages",
        VARIANTS.len(),
        messages.len()
    );
}

/// Postfix's `smtp-sink` on a free loopback port, dumping one file per
/// transaction into a directory; killed when dropped.
struct PostfixSink {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl PostfixSink {
    /// `None` (with the reason) when smtp-sink cannot run here.
    fn start() -> Result<PostfixSink, String> {
        let binary = Path::new("/usr/sbin/smtp-sink");
        if !binary.exists() {
            return Err("/usr/sbin/smtp-sink not installed (Debian package postfix)".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut command = Command::new(binary);
        // As root smtp-sink must drop privileges; the dump directory must then be
        // writable by that user.
        let root = std::fs::read_to_string("/proc/self/status")
            .map(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
            .unwrap_or(false);
        if root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
                .map_err(|e| e.to_string())?;
            command.args(["-u", "nobody"]);
        }
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            probe.local_addr().map_err(|e| e.to_string())?.port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = command
            .arg("-d")
            .arg(dir.path().join("%H%M%S."))
            .arg(format!("127.0.0.1:{port}"))
            .arg("64")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn smtp-sink: {e}"))?;
        let mut sink = PostfixSink { child, addr, dir };
        // Ready when it accepts a connection (a condition with a deadline).
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(sink);
            }
            if let Ok(Some(status)) = sink.child.try_wait() {
                let mut err = String::new();
                use std::io::Read;
                if let Some(mut e) = sink.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!("smtp-sink exited ({status}): {err}"));
            }
            if std::time::Instant::now() > deadline {
                return Err("smtp-sink did not start listening".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The dumped transactions.
    fn dumps(&self) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).expect("read the dump directory") {
            let path = entry.expect("dump entry").path();
            let bytes = std::fs::read(&path).expect("read a dump");
            out.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        out
    }
}

impl Drop for PostfixSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_variants_never_reach_postfix_smtp_sink_as_a_second_message() {
    let postfix = match PostfixSink::start() {
        Ok(s) => s,
        Err(reason) => {
            eprintln!("SKIPPED: Postfix smtp-sink unavailable: {reason}");
            return;
        }
    };
    let server = hardening::delivering_server(postfix.addr, "retry = [\"1s\"]").await;
    let accepted = send_all(&server).await;
    hardening::wait_until_settled(&server, Duration::from_secs(30)).await;
    // smtp-sink writes the dump before its 250, so every delivered message is on
    // disk now; wait briefly for the count anyway (a condition, with a deadline).
    let deadline = Instant::now() + DEADLINE;
    let dumps = loop {
        let dumps = postfix.dumps();
        if dumps.len() >= accepted || Instant::now() > deadline {
            break dumps;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        dumps.len(),
        accepted,
        "smtp-sink stored {} transactions for {accepted} acknowledged",
        dumps.len()
    );
    for dump in &dumps {
        // smtp-sink's dump starts with the envelope: `X-Mail-Args: <sender>`, the
        // return path of a message Outpost accepted (bounce::return_path).
        let mail_args: Vec<&str> = dump
            .lines()
            .filter_map(|l| l.strip_prefix("X-Mail-Args: "))
            .collect();
        assert!(
            matches!(mail_args.as_slice(), [one] if return_path_message(one.trim_matches(['<', '>'])).is_some()),
            "smtp-sink saw a transaction not from an accepted message: {dump:?}"
        );
        assert!(
            !dump.contains("Subject: SMUGGLED") || dump.contains("carrier body"),
            "a smuggled message stands on its own at smtp-sink: {dump:?}"
        );
    }
    println!(
        "Postfix smtp-sink stored {} transactions for {accepted} acknowledged",
        dumps.len()
    );
}

/// BDAT has no end-of-data marker, but its content is relayed later with DATA: the
/// same bytes are refused there too.
#[tokio::test]
async fn bdat_carriers_are_refused_as_well() {
    let server = Server::start_with(Options::trusted()).await;
    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    for (name, variant) in VARIANTS {
        client.begin(CLIENT_SENDER, &[RCPT]).await;
        client.send_bdat(&smuggling_wire(0, variant), true).await;
        let reply = client.reply().await;
        assert!(
            reply.is("550 5.5.2") || reply.is("550 5.6.0"),
            "{name}: BDAT carrier not refused: {reply}"
        );
    }
    client.quit().await;
    server.assert_nothing_queued().await;
}
