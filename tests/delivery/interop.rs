//! Interop with a real MTA: Outpost delivers through MX lookup into Postfix's
//! `smtp-sink` (Debian package `postfix`, which `.ci/run` installs), and the
//! message smtp-sink wrote to disk is the one that was submitted.
//!
//! Skipped, saying so, only when `/usr/sbin/smtp-sink` is not installed.

use crate::support::common;
use crate::support::delivery as delivery_support;
use crate::support::fakes;

use delivery_support::{SENDER, Setup, WAIT, eventually, listening, mail};
use fakes::dns::FakeDns;
use outpost::store::RecipientStatus::Delivered;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

/// smtp-sink as a child process; killed when dropped.
struct PostfixSink {
    child: Child,
    addr: SocketAddr,
}

impl Drop for PostfixSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Starts smtp-sink on a free loopback port, dumping each transaction into a file
/// in `dump_dir`.
async fn start_smtp_sink(dump_dir: &Path) -> PostfixSink {
    // smtp-sink drops privileges (-u) before writing its dumps.
    std::fs::set_permissions(dump_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = Command::new(SMTP_SINK);
    if running_as_root() {
        command.args(["-u", "nobody"]);
    }
    let child = command
        .arg("-d")
        .arg(dump_dir.join("%Y%m%d%H%M%S."))
        .arg(addr.to_string())
        .arg("10")
        .stdin(Stdio::null())
        .spawn()
        .expect("start smtp-sink");
    let mut sink = PostfixSink { child, addr };
    let started = std::time::Instant::now();
    while !listening(addr).await {
        if let Ok(Some(status)) = sink.child.try_wait() {
            panic!("smtp-sink exited at start-up: {status}");
        }
        assert!(
            started.elapsed() < WAIT,
            "smtp-sink does not listen on {addr}"
        );
    }
    sink
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_into_postfix_smtp_sink() {
    if !Path::new(SMTP_SINK).exists() {
        eprintln!(
            "SKIPPED delivers_into_postfix_smtp_sink: {SMTP_SINK} is not installed \
             (Debian package postfix; .ci/run installs it)"
        );
        return;
    }
    let dumps = tempfile::tempdir().unwrap();
    let postfix = start_smtp_sink(dumps.path()).await;
    let dns =
        FakeDns::start("postfix.test MX 10 mx.postfix.test\nmx.postfix.test A 127.0.0.1\n").await;
    let relay = Setup::new(&dns, postfix.addr.port()).start().await;
    let original = mail(SENDER, "bob@postfix.test", "postfix-interop");
    let id = relay.submit(SENDER, &["bob@postfix.test"], &original).await;
    let summary = relay.wait_statuses(&id, &[Delivered]).await;
    let reply = summary.recipients[0].last_reply.clone().unwrap_or_default();
    assert!(reply.starts_with("250"), "smtp-sink's reply: {reply}");

    // smtp-sink writes the envelope as X- headers, its own Received:, then the
    // message as received (dot-stuffing undone), with LF line ends.
    let expected = String::from_utf8(original).unwrap().replace("\r\n", "\n");
    let dump = eventually("smtp-sink's dump of the whole message", WAIT, || {
        std::fs::read_dir(dumps.path())
            .ok()?
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .find(|text| text.contains(&expected))
    })
    .await;
    // The envelope sender is the message's return path (bounce::return_path).
    let mail_args = dump
        .lines()
        .find_map(|l| l.strip_prefix("X-Mail-Args: <"))
        .and_then(|rest| rest.split('>').next())
        .unwrap_or_default();
    assert!(common::return_path_message(mail_args).is_some(), "{dump}");
    assert!(dump.contains("X-Rcpt-Args: <bob@postfix.test>"), "{dump}");
    assert!(dump.contains("by relay.test (Outpost)"), "{dump}");
}
