//! `kill -9` under continuous load with delivery ON (the pattern of tests/durability/crash.rs,
//! taken further): the real `outpost serve` relays everything to an `SmtpSink`
//! (`[[routes]] domain = "*"`, `retry = ["1s"]`). Each of 20 rounds starts the
//! server on the same data directory, runs concurrent senders, and SIGKILLs it once
//! a randomly chosen number of messages was acknowledged in that round (a condition,
//! not a timer), while senders and deliveries are mid-stream. After a final restart
//! every message ever acknowledged must reach the sink: zero lost. Duplicates
//! (deliveries made again after a crash: at least once) are counted and printed.

use crate::support::fakes;
use crate::support::server_process;

use fakes::sink::SmtpSink;
use server_process::Process as Outpost;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const ROUNDS: usize = 20;
const SENDERS: usize = 4;
const ROUND_DEADLINE: Duration = Duration::from_secs(10);
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

type IoResult<T> = Result<T, String>;

/// A minimal plaintext SMTP client whose every failure is an `Err` (the kill).
struct Client {
    reader: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> IoResult<Client> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out")?
            .map_err(|e| e.to_string())?;
        let (r, w) = stream.into_split();
        let mut client = Client {
            reader: tokio::io::BufReader::new(r),
            writer: w,
        };
        client.expect(220).await?;
        client.command("EHLO crash.test\r\n", 250).await?;
        Ok(client)
    }

    async fn expect(&mut self, code: u16) -> IoResult<String> {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(IO_TIMEOUT, self.reader.read_line(&mut line))
                .await
                .map_err(|_| "reply timed out")?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed".into());
            }
            if line.as_bytes().get(3) == Some(&b'-') {
                continue;
            }
            return if line.starts_with(&code.to_string()) {
                Ok(line.trim_end().to_string())
            } else {
                Err(format!("expected {code}, got {line:?}"))
            };
        }
    }

    async fn command(&mut self, line: &str, code: u16) -> IoResult<String> {
        tokio::time::timeout(IO_TIMEOUT, self.writer.write_all(line.as_bytes()))
            .await
            .map_err(|_| "write timed out")?
            .map_err(|e| e.to_string())?;
        self.expect(code).await
    }

    /// One transaction carrying `marker`; Ok once the server said 250.
    async fn send(&mut self, marker: &str) -> IoResult<()> {
        self.command("MAIL FROM:<load@source.example>\r\n", 250)
            .await?;
        self.command(&format!("RCPT TO:<{marker}@dest.example>\r\n"), 250)
            .await?;
        self.command("DATA\r\n", 354).await?;
        let body = format!(
            "From: <load@source.example>\r\nSubject: {marker}\r\n\r\nmarker {marker}\r\n.\r\n"
        );
        self.command(&body, 250).await.map(|_| ())
    }
}

/// Sends until the connection breaks (the kill); records every acknowledged marker.
async fn sender(
    addr: std::net::SocketAddr,
    round: usize,
    id: usize,
    acked: Arc<Mutex<HashSet<String>>>,
    count: Arc<watch::Sender<usize>>,
) {
    let Ok(mut client) = Client::connect(addr).await else {
        return;
    };
    for seq in 0..100_000 {
        let marker = format!("m-r{round}-s{id}-n{seq}");
        if client.send(&marker).await.is_err() {
            return;
        }
        acked.lock().unwrap().insert(marker);
        count.send_modify(|n| *n += 1);
    }
}

/// Deterministic pseudo-random kill points, different every round.
fn kill_after(round: usize, seed: u64) -> usize {
    let mut x = seed ^ (round as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    5 + (x % 80) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_with_delivery_loses_no_acknowledged_message() {
    let _alone = crate::alone().await;
    let started = Instant::now();
    let sink = SmtpSink::start_default().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"relay.test\"\ndata_dir = \"{}\"\n\
             [[listeners]]\naddr = \"127.0.0.1:0\"\nmode = \"relay\"\n\
             [relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\
             [http]\naddr = \"127.0.0.1:0\"\n\
             [delivery]\ntls = \"none\"\nretry = [\"1s\"]\ntimeout = \"5s\"\n\
             [[routes]]\ndomain = \"*\"\nto = \"{}\"\ntls = \"none\"\n\
             [dns]\nnameservers = [\"127.0.0.1:9\"]\n",
            dir.path().join("data").display(),
            sink.addr()
        ),
    )
    .unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    for round in 0..ROUNDS {
        let server = Outpost::start(&config);
        let (count_tx, mut count_rx) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let mut senders = tokio::task::JoinSet::new();
        for id in 0..SENDERS {
            senders.spawn(sender(
                server.addr,
                round,
                id,
                acked.clone(),
                count_tx.clone(),
            ));
        }
        let target = kill_after(round, seed);
        tokio::time::timeout(ROUND_DEADLINE, count_rx.wait_for(|n| *n >= target))
            .await
            .unwrap_or_else(|_| panic!("round {round}: fewer than {target} acks in time"))
            .expect("count channel");
        server.kill();
        // Every sender sees the kill as an error and stops.
        tokio::time::timeout(ROUND_DEADLINE, async {
            while senders.join_next().await.is_some() {}
        })
        .await
        .expect("senders stop after the kill");
    }
    // The final restart delivers whatever is left.
    let server = Outpost::start(&config);
    let acked = acked.lock().unwrap().clone();
    let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
    let received: HashMap<String, usize> = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for m in sink.messages() {
            for rcpt in &m.rcpt_to {
                let marker = rcpt.split('@').next().unwrap_or_default().to_string();
                *counts.entry(marker).or_default() += 1;
            }
        }
        if acked.iter().all(|m| counts.contains_key(m)) {
            break counts;
        }
        if tokio::time::Instant::now() > deadline {
            let missing: Vec<_> = acked.iter().filter(|m| !counts.contains_key(*m)).collect();
            panic!(
                "{} of {} acknowledged messages never reached the sink: {missing:?}",
                missing.len(),
                acked.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(server);
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    let unacked_delivered = received.keys().filter(|m| !acked.contains(*m)).count();
    println!(
        "{ROUNDS} kills: {} acknowledged, 0 lost, {duplicates} duplicate deliveries, \
         {unacked_delivered} delivered without an ack seen (killed before the 250 arrived), \
         {:.1}s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        acked.len() >= ROUNDS * 5,
        "too few messages to mean anything"
    );
}
