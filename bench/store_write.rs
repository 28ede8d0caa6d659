//! The embedded store's write path alone, without SMTP: what the group commit costs
//! per message.
//!
//!     cargo run --release --example store_write -- [MESSAGES] [SESSIONS] [SIZE] [DATA_DIR]
//!
//! SESSIONS tasks (default 20) each store MESSAGES / SESSIONS messages (default
//! 20,000 in all) of SIZE bytes (default 10,240) the way a relay at saturation does:
//! the acceptance (`enqueue`, the message claimed by this node as inbound hands it
//! to delivery), then the delivery's outcome (`record_attempt`, delivered, which
//! finishes the message). Every write goes through the one writer thread, so the
//! group commit batches them as it does under SMTP load. Prints the rate, the
//! writer's accept stages and the writer thread's CPU time (user and system: the
//! system calls of the writes and fsyncs count too).
//!
//! Under `valgrind --tool=callgrind --toggle-collect='*writer_loop*'` the instruction
//! count of the writer thread divided by MESSAGES is the write path's cost per
//! message, independent of how busy the machine is (bench/RESULTS.md).

use outpost::smtp::Mailbox;
use outpost::store::{
    AttemptPath, NewMessage, NewRecipient, QueueId, QueueStore, RecipientStatus, RecipientUpdate,
    SqliteStore,
};
use std::sync::Arc;
use std::time::Instant;

fn message(n: usize, size: usize, now: i64) -> NewMessage {
    let id = QueueId::generate();
    let mut content = format!(
        "Received: from client (localhost [127.0.0.1])\r\n\tby relay (Outpost) with ESMTP id {id};\r\n\tMon, 7 Dec 2026 23:00:00 +0000\r\n\
         From: bench@source.test\r\nTo: rcpt{n}@sink.test\r\nSubject: bench message {n}\r\n\
         Message-ID: <{id}@relay>\r\n\r\n"
    )
    .into_bytes();
    let headers = content.len();
    while content.len() < size {
        content.extend_from_slice(
            b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n",
        );
    }
    content.truncate(size.max(headers));
    NewMessage {
        id,
        mail_from: Mailbox::parse("bench@source.test"),
        recipients: vec![NewRecipient {
            address: Mailbox::parse(&format!("rcpt{n}@sink.test")).expect("address"),
            local: false,
        }],
        auth_user: None,
        smtputf8: false,
        content: Arc::new(content),
        received_at: now,
        first_attempt_at: now + 600_000,
        claimed_by: Some("bench".into()),
    }
}

fn delivered() -> RecipientUpdate {
    RecipientUpdate {
        idx: 0,
        status: RecipientStatus::Delivered,
        next_attempt: 0,
        reply: "250 2.0.0 Ok: queued".into(),
        class: None,
        attempted: true,
        path: AttemptPath {
            mx_host: Some("127.0.0.1".into()),
            tls: None,
        },
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| {
        args.get(i)
            .map(|a| a.parse().expect("a number"))
            .unwrap_or(default)
    };
    let (messages, sessions, size) = (arg(0, 20_000), arg(1, 20), arg(2, 10_240));
    let temp = tempfile::tempdir().expect("temporary directory");
    let dir = args
        .get(3)
        .map_or_else(|| temp.path().to_path_buf(), std::path::PathBuf::from);
    let stages = Arc::new(outpost::metrics::CommitStages::default());
    let store = SqliteStore::open_measured(&dir, 256, stages.clone()).expect("store opens");
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..sessions {
        let store = store.clone();
        let count = messages / sessions + usize::from(s < messages % sessions);
        tasks.spawn(async move {
            for n in 0..count {
                let now = chrono::Utc::now().timestamp_millis();
                let msg = message(n * sessions + s, size, now);
                let id = msg.id.clone();
                store.enqueue(msg).await.expect("enqueue");
                store
                    .record_attempt(&id, vec![delivered()], now)
                    .await
                    .expect("record_attempt");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("session ran");
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{messages} messages of {size} B, {sessions} sessions: {elapsed:.2} s, {:.0} msgs/s",
        messages as f64 / elapsed
    );
    print!("{}", stages.summary());
    if let Some((user, system)) = writer_cpu() {
        println!(
            "writer thread CPU: {user:.2} s user + {system:.2} s system = {:.0} µs per message",
            (user + system) / messages as f64 * 1e6
        );
    }
}

/// User and system CPU seconds of the store's writer thread so far (Linux).
fn writer_cpu() -> Option<(f64, f64)> {
    let ticks = 100.0; // USER_HZ
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != "store-writer" {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the command name, which ends with the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let user: f64 = fields.get(11)?.parse().ok()?;
        let system: f64 = fields.get(12)?.parse().ok()?;
        return Some((user / ticks, system / ticks));
    }
    None
}
