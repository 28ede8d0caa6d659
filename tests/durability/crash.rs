//! Crash test of the durability contract (SPEC §3): every message that got
//! `250 2.0.0 Ok: queued as ID` survives a `kill -9` of the server.
//!
//! Each round starts the real `outpost serve` on the same data directory with one
//! relay listener on an ephemeral loopback port and `trusted_networks =
//! ["127.0.0.0/8"]`, runs 16 concurrent plain-SMTP senders, and SIGKILLs the server
//! once at least 200 messages were acknowledged in that round (a condition, not a
//! timer), while the senders are still mid-stream. It then restarts the server on
//! the same directory (recovery must let it start and accept mail again), kills it
//! once more, opens the store in this process and checks that every message ever
//! acknowledged is there, byte for byte, with its envelope. Messages whose `250`
//! was never seen may or may not be there.
//!
//! The same rounds run with large messages (64-130 KiB, bodies kept in the spool
//! beside the database): before each restart a file no row names is put in the
//! spool, as a crash between a spool file's fsync and its batch's COMMIT leaves
//! one, and the restarted server must have removed it.

use crate::support::server_process;

use outpost::store::{QueueId, QueueStore, RecipientStatus, SqliteStore};
use server_process::Process as Server;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const ROUNDS: usize = 3;
const SENDERS: usize = 16;
/// Acknowledged messages per round before the server is killed.
const KILL_AFTER_ACKS: usize = 200;
/// Upper bound of messages one sender sends in a round (it is normally cut off by
/// the kill long before).
const MAX_PER_SENDER: usize = 10_000;
const ROUND_DEADLINE: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client was told was queued.
#[derive(Debug, Clone)]
struct Acked {
    mail_from: String,
    recipients: Vec<String>,
    /// The message exactly as sent, before dot-stuffing.
    content: Vec<u8>,
}

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("outpost.toml");
    let text = format!(
        "hostname = \"relay.test\"\n\
         data_dir = \"{}\"\n\
         [[listeners]]\naddr = \"127.0.0.1:0\"\nmode = \"relay\"\n\
         [relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\
         [delivery]\npaused = true\n\
         [http]\naddr = \"127.0.0.1:0\"\n",
        dir.join("data").display()
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// A minimal SMTP client over one plaintext connection.
struct Client {
    reader: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

type IoResult<T> = Result<T, String>;

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> IoResult<Client> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let (r, w) = stream.into_split();
        let mut client = Client {
            reader: tokio::io::BufReader::new(r),
            writer: w,
        };
        client.expect(220).await?;
        client.command("EHLO crash.test\r\n", 250).await?;
        Ok(client)
    }

    /// Reads one (possibly multi-line) reply; returns its code and last line.
    async fn reply(&mut self) -> IoResult<(u16, String)> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(IO_TIMEOUT, self.reader.read_line(&mut line))
                .await
                .map_err(|_| "reply timed out".to_string())?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| format!("malformed reply {line:?}"))?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, line.trim_end().to_string()));
            }
        }
    }

    async fn expect(&mut self, code: u16) -> IoResult<String> {
        let (got, line) = self.reply().await?;
        if got == code {
            Ok(line)
        } else {
            Err(format!("expected {code}, got {line:?}"))
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> IoResult<()> {
        tokio::time::timeout(IO_TIMEOUT, self.writer.write_all(bytes))
            .await
            .map_err(|_| "write timed out".to_string())?
            .map_err(|e| format!("write: {e}"))
    }

    async fn command(&mut self, line: &str, code: u16) -> IoResult<String> {
        self.send(line.as_bytes()).await?;
        self.expect(code).await
    }

    /// One transaction; returns the queue id from the `250` to DATA.
    async fn transaction(&mut self, message: &Acked) -> IoResult<QueueId> {
        self.command(&format!("MAIL FROM:<{}>\r\n", message.mail_from), 250)
            .await?;
        for rcpt in &message.recipients {
            self.command(&format!("RCPT TO:<{rcpt}>\r\n"), 250).await?;
        }
        self.command("DATA\r\n", 354).await?;
        self.send(&dot_stuff(&message.content)).await?;
        let line = self.expect(250).await?;
        let id = line
            .strip_prefix("250 2.0.0 Ok: queued as ")
            .ok_or_else(|| format!("unexpected DATA reply {line:?}"))?;
        id.parse::<QueueId>()
    }
}

/// RFC 5321 §4.5.2: a leading dot is doubled; then the end-of-data line.
fn dot_stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 16);
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The sizes of the messages sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sizes {
    /// A few hundred octets to ~16 KiB: bodies in the database.
    Mixed,
    /// 64-130 KiB: bodies in the spool.
    Large,
}

fn make_message(round: usize, sender: usize, seq: usize, nonce: u128, sizes: Sizes) -> Acked {
    let marker = format!("crash-{nonce:x}-r{round}-s{sender}-n{seq}");
    let recipients: Vec<String> = (0..1 + seq % 3)
        .map(|i| format!("rcpt{i}.{sender}@dest{}.example", seq % 7))
        .collect();
    let mail_from = format!("sender{sender}@source.example");
    let mut content = format!(
        "From: <{mail_from}>\r\nTo: <{}>\r\nSubject: {marker}\r\nMessage-ID: <{marker}@crash.test>\r\n\r\n\
         marker {marker}\r\n.a line that starts with a dot\r\n..and one with two\r\n",
        recipients[0]
    );
    // Sizes from a few hundred octets to ~16 KiB, so some DATA is in flight at the
    // kill; large ones from 64 KiB (the spool's threshold) to ~130 KiB.
    let lines = match sizes {
        Sizes::Mixed => (seq * 37 + sender * 11) % 200,
        Sizes::Large => 800 + (seq * 37 + sender * 11) % 800,
    };
    for i in 0..lines {
        content.push_str(&format!(
            "{marker} filler line {i:04} ............................\r\n"
        ));
    }
    Acked {
        mail_from,
        recipients,
        content: content.into_bytes(),
    }
}

/// Sends until the connection breaks (the kill) or the cap; records every ack.
async fn sender(
    addr: std::net::SocketAddr,
    round: usize,
    id: usize,
    nonce: u128,
    sizes: Sizes,
    acked: Arc<Mutex<HashMap<QueueId, Acked>>>,
    count: Arc<watch::Sender<usize>>,
) -> String {
    let mut client = match Client::connect(addr).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    for seq in 0..MAX_PER_SENDER {
        let message = make_message(round, id, seq, nonce, sizes);
        match client.transaction(&message).await {
            Ok(queue_id) => {
                let previous = acked.lock().unwrap().insert(queue_id.clone(), message);
                assert!(previous.is_none(), "queue id {queue_id} acknowledged twice");
                count.send_modify(|n| *n += 1);
            }
            Err(e) => return e,
        }
    }
    "cap reached".into()
}

/// Every acknowledged message is in the store, intact.
async fn verify(data_dir: &Path, acked: &HashMap<QueueId, Acked>) {
    let store = SqliteStore::open(data_dir, 64).expect("open the store after the crash");
    let mut missing = Vec::new();
    for (id, sent) in acked {
        let Some(summary) = store.message(id).await.expect("read a message") else {
            missing.push(id.to_string());
            continue;
        };
        assert_eq!(summary.mail_from, sent.mail_from, "envelope sender of {id}");
        let rcpts: Vec<&str> = summary
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(rcpts, sent.recipients, "recipients of {id}");
        assert!(
            summary
                .recipients
                .iter()
                .all(|r| r.status == RecipientStatus::Queued),
            "recipient state of {id}: {:?}",
            summary.recipients
        );
        let content = store
            .message_content(id)
            .await
            .expect("read content")
            .unwrap_or_else(|| panic!("message {id} has no content"));
        assert_eq!(summary.size, content.len(), "size of {id}");
        assert!(
            content.starts_with(b"Received: "),
            "message {id} lacks its Received: header"
        );
        assert!(
            content.ends_with(&sent.content),
            "content of {id} differs from what was sent:\n{}",
            String::from_utf8_lossy(&content)
        );
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost after kill -9: {missing:?}",
        missing.len(),
        acked.len()
    );
    let queued = store.queued_messages(1_000_000).await.expect("list queue");
    assert!(
        queued.len() >= acked.len(),
        "queue holds {} messages, fewer than the {} acknowledged",
        queued.len(),
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    kill_rounds(Sizes::Mixed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_large_messages_survive_kill_9_and_orphans_are_removed() {
    kill_rounds(Sizes::Large).await;
}

/// The spool's files (not its lock).
fn spool_files(data_dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(data_dir.join("spool")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().is_some_and(|n| n != "lock"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn kill_rounds(sizes: Sizes) {
    let _alone = crate::alone().await;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data_dir = dir.path().join("data");
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let acked: Arc<Mutex<HashMap<QueueId, Acked>>> = Arc::default();

    for round in 1..=ROUNDS {
        let server = Server::start(&config);
        let before = acked.lock().unwrap().len();
        let (count, mut seen) = watch::channel(0usize);
        let count = Arc::new(count);
        let senders: Vec<_> = (0..SENDERS)
            .map(|i| {
                tokio::spawn(sender(
                    server.addr,
                    round,
                    i,
                    nonce,
                    sizes,
                    acked.clone(),
                    count.clone(),
                ))
            })
            .collect();
        let reached =
            tokio::time::timeout(ROUND_DEADLINE, seen.wait_for(|n| *n >= KILL_AFTER_ACKS))
                .await
                .is_ok();
        let at_kill = *seen.borrow();
        if !reached {
            panic!(
                "round {round}: only {at_kill} acks within {ROUND_DEADLINE:?}; server log:\n{}",
                server.log_text()
            );
        }
        server.kill();
        let mut ends = Vec::new();
        for task in senders {
            let end = tokio::time::timeout(IO_TIMEOUT * 2, task)
                .await
                .expect("a sender did not stop after the kill")
                .expect("a sender panicked");
            ends.push(end);
        }
        // The kill came mid-stream: every sender was cut off, none ran out of work.
        assert!(
            ends.iter().all(|e| e != "cap reached"),
            "round {round}: a sender finished before the kill: {ends:?}"
        );
        let acked_now = acked.lock().unwrap().len();
        eprintln!(
            "round {round}: killed at {at_kill} acks, {} acknowledged this round, {acked_now} in total",
            acked_now - before
        );

        // What a crash between a spool file's fsync and its COMMIT leaves.
        let next = spool_files(&data_dir)
            .iter()
            .filter_map(|p| i64::from_str_radix(p.file_name()?.to_str()?, 16).ok())
            .max()
            .unwrap_or(0)
            + 1;
        let orphan = data_dir.join("spool").join(format!("{next:016x}"));
        if sizes == Sizes::Large {
            std::fs::write(&orphan, b"a body no row names").unwrap();
        }

        // Restart on the same data dir: recovery must succeed and mail flow again.
        let restarted = Server::start(&config);
        let mut client = Client::connect(restarted.addr)
            .await
            .expect("connect after restart");
        let probe = make_message(round, SENDERS, 0, nonce, sizes);
        let id = client
            .transaction(&probe)
            .await
            .expect("the restarted server accepts mail");
        acked.lock().unwrap().insert(id, probe);
        drop(client);
        restarted.kill();
        if sizes == Sizes::Large {
            // The server listens only after it opened the store.
            assert!(
                !orphan.exists(),
                "round {round}: orphan spool file not removed"
            );
            assert!(
                !spool_files(&data_dir).is_empty(),
                "round {round}: no body was spooled"
            );
        }

        let snapshot = acked.lock().unwrap().clone();
        verify(&data_dir, &snapshot).await;
    }
    let total = acked.lock().unwrap().len();
    assert!(total >= ROUNDS * (KILL_AFTER_ACKS + 1));
    eprintln!(
        "{ROUNDS} rounds, {total} acknowledged messages all intact, in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn dot_stuffing_doubles_leading_dots_only() {
    assert_eq!(
        dot_stuff(b"a\r\n.b\r\n..c\r\nd.\r\n"),
        b"a\r\n..b\r\n...c\r\nd.\r\n.\r\n".to_vec()
    );
}

#[test]
fn listening_line_is_parsed() {
    let line =
        "2026-01-01T00:00:00Z  INFO outpost::server: listening addr=127.0.0.1:4242 mode=relay";
    assert_eq!(
        server_process::relay_listener(line),
        Some("127.0.0.1:4242".parse().unwrap())
    );
    assert_eq!(
        server_process::relay_listener("INFO listening addr=127.0.0.1:1 mode=submission"),
        None
    );
}
