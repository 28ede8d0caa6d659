//! Session tests: the SMTP state machine driven over an in-memory pipe
//! (`tokio::io::duplex`), without sockets, TLS or listeners, where a raw transcript
//! says more than a client library would: pipelining, sequencing, relay decisions,
//! the error limit. The session runs on a real store in a temporary directory.
//! Everything a client meets over the network is tested black-box in
//! `tests/inbound/`.

use super::InboundContext;
use super::session::{ConnectionInfo, Session};
use crate::accept::Acceptor;
use crate::config::{Config, ListenerMode};
use crate::dkim::DkimSigners;
use crate::metrics::Metrics;
use crate::store::{QueueId, SqliteStore, Store};
use crate::unsubscribe::UnsubscribeKey;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::task::JoinHandle;

const HOSTNAME: &str = "mx.outpost.test";
/// Every read of a reply has this long at most: a session that stalls fails the test.
const WAIT: Duration = Duration::from_secs(10);

/// One session on a fresh store, and the client's end of its pipe.
struct Transcript {
    client: BufReader<DuplexStream>,
    session: JoinHandle<()>,
    store: Arc<dyn Store>,
    _dir: TempDir,
}

impl Transcript {
    /// A session on a listener of `mode`, from an untrusted, unauthenticated peer,
    /// with `extra` configuration; the greeting is already read.
    async fn open(mode: ListenerMode, extra: &str) -> Transcript {
        let dir = tempfile::tempdir().unwrap();
        let config = Arc::new(
            Config::from_toml(&format!(
                "hostname = \"{HOSTNAME}\"\ndata_dir = \"{}\"\n{extra}",
                dir.path().display()
            ))
            .unwrap(),
        );
        let store: Arc<dyn Store> = SqliteStore::open(dir.path(), 64).unwrap();
        let (tls, _, _) = crate::tls::server_config(None, None, dir.path(), HOSTNAME).unwrap();
        let acceptor = Acceptor {
            config: config.clone(),
            store: store.clone(),
            queue: None,
            metrics: Arc::new(Metrics::default()),
            unsubscribe: Arc::new(
                UnsubscribeKey::load(store.as_ref(), dir.path())
                    .await
                    .unwrap(),
            ),
            dkim: Arc::new(DkimSigners::new(store.clone())),
        };
        let login = Arc::new(crate::auth::LoginGate::new(store.clone(), &config.auth));
        let ctx = Arc::new(InboundContext::new(
            config,
            store.clone(),
            tls.into(),
            acceptor,
            login,
        ));
        let (client, server) = tokio::io::duplex(64 * 1024);
        let conn = ConnectionInfo {
            peer: "192.0.2.7:40000".parse().unwrap(),
            mode,
            tls: None,
        };
        let session = tokio::spawn(async move {
            let mut session = Session::new(&ctx, conn, server);
            session.greet();
            session.run().await;
        });
        let mut transcript = Transcript {
            client: BufReader::new(client),
            session,
            store,
            _dir: dir,
        };
        let (code, text) = transcript.reply().await;
        assert_eq!(code, 220, "{text}");
        assert!(text.contains("ESMTP Outpost"), "{text}");
        transcript
    }

    /// Writes `lines` in one piece, as a pipelining client does.
    async fn write(&mut self, lines: &str) {
        self.client
            .get_mut()
            .write_all(lines.as_bytes())
            .await
            .unwrap();
    }

    /// Reads one complete reply: its code and its lines joined.
    async fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.client.read_line(&mut line))
                .await
                .expect("the session answers")
                .unwrap();
            assert!(
                n > 0,
                "the session closed before replying; so far: {text:?}"
            );
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return (line[..3].parse().unwrap(), text);
            }
        }
    }

    /// Sends one command and checks the code of its reply.
    async fn command(&mut self, line: &str, code: u16) -> String {
        self.write(&format!("{line}\r\n")).await;
        let (got, text) = self.reply().await;
        assert_eq!(got, code, "{line} answered {text}");
        text
    }

    /// The session ends by itself (the client did not close its end).
    async fn closed(mut self) {
        let mut rest = String::new();
        let n = tokio::time::timeout(WAIT, self.client.read_line(&mut rest))
            .await
            .expect("the session closes");
        assert_eq!(n.unwrap(), 0, "unexpected: {rest:?}");
        tokio::time::timeout(WAIT, &mut self.session)
            .await
            .expect("the session task ends")
            .unwrap();
    }
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order_in_one_flush() {
    let mut t = Transcript::open(ListenerMode::Relay, "").await;
    t.write("EHLO client.example\r\nMAIL FROM:<a@sender.example>\r\nRCPT TO:<b@elsewhere.example>\r\nRCPT TO:<postmaster>\r\nRSET\r\n")
        .await;
    let (code, ehlo) = t.reply().await;
    assert_eq!(code, 250);
    assert!(
        ehlo.contains("PIPELINING") && ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(
        !ehlo.contains("AUTH"),
        "AUTH is offered only after TLS: {ehlo}"
    );
    let codes = [
        t.reply().await,
        t.reply().await,
        t.reply().await,
        t.reply().await,
    ];
    let codes: Vec<u16> = codes.iter().map(|(c, _)| *c).collect();
    // Relaying to a foreign domain is denied at RCPT (SPEC §1); <postmaster> is
    // always accepted (RFC 5321 §4.5.1).
    assert_eq!(codes, [250, 554, 250, 250]);
}

#[tokio::test]
async fn commands_out_of_sequence_are_refused_and_rset_ends_the_transaction() {
    let mut t = Transcript::open(ListenerMode::Relay, "").await;
    t.command("MAIL FROM:<a@sender.example>", 503).await;
    t.command("EHLO client.example", 250).await;
    t.command("RCPT TO:<postmaster>", 503).await;
    t.command("DATA", 503).await;
    t.command("MAIL FROM:<a@sender.example>", 250).await;
    t.command("MAIL FROM:<a@sender.example>", 503).await;
    t.command("RSET", 250).await;
    t.command("RCPT TO:<postmaster>", 503).await;
}

#[tokio::test]
async fn auth_needs_tls_and_submission_needs_auth() {
    let mut t = Transcript::open(ListenerMode::Submission, "").await;
    t.command("EHLO client.example", 250).await;
    t.command("AUTH PLAIN AGFsaWNlAHBhc3N3b3Jk", 538).await;
    t.command("MAIL FROM:<a@sender.example>", 530).await;
}

#[tokio::test]
async fn mail_to_postmaster_is_stored_under_the_queue_id_it_names() {
    let mut t = Transcript::open(ListenerMode::Relay, "").await;
    t.command("EHLO client.example", 250).await;
    t.command("MAIL FROM:<a@sender.example>", 250).await;
    t.command("RCPT TO:<postmaster>", 250).await;
    t.command("DATA", 354).await;
    t.write("Subject: hello\r\n\r\n..leading dot\r\n.\r\n")
        .await;
    let (code, text) = t.reply().await;
    assert_eq!(code, 250, "{text}");
    let id: QueueId = text.trim_end().rsplit(' ').next().unwrap().parse().unwrap();
    let stored = t.store.message(&id).await.unwrap().expect("stored");
    assert_eq!(stored.mail_from, "a@sender.example");
    assert_eq!(
        stored.recipients[0].address,
        format!("postmaster@{HOSTNAME}")
    );
    t.command("QUIT", 221).await;
    t.closed().await;
}

#[tokio::test]
async fn too_many_errors_close_the_session_with_421() {
    let mut t = Transcript::open(ListenerMode::Relay, "[limits]\nmax_errors = 3\n").await;
    t.command("BOGUS", 500).await;
    t.command("BOGUS", 500).await;
    t.write("BOGUS\r\n").await;
    let (code, _) = t.reply().await;
    assert_eq!(code, 500);
    let (code, text) = t.reply().await;
    assert_eq!(code, 421, "{text}");
    t.closed().await;
}
