//! The logs an operator reads: one line per delivery outcome, at the level it
//! deserves, with the queue id, recipients, remote server and reply; and JSON
//! lines for log shippers.

use super::support::common::{Client, DEADLINE};
use super::support::fakes::sink::SmtpSink;
use super::support::server_process::Process;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_delivery_outcome_is_one_line_at_its_level() {
    let sink = SmtpSink::builder()
        .rcpt_reply("gone@", "550 5.1.1 no such user")
        .rcpt_reply("busy@", "451 4.7.1 try later")
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"relay.test\"\ndata_dir = \"{}\"\n\
             [[listeners]]\naddr = \"127.0.0.1:0\"\nmode = \"relay\"\n\
             [relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\
             [http]\naddr = \"127.0.0.1:0\"\n\
             [[routes]]\ndomain = \"*\"\nto = \"{}\"\ntls = \"none\"\n",
            dir.path().join("data").display(),
            sink.addr()
        ),
    )
    .unwrap();
    let server = Process::start(&config);
    let mut client = Client::connect(server.addr).await;
    client.expect_greeting().await;
    client.ehlo().await;
    client.expect("MAIL FROM:<a@client.example>", "250").await;
    for rcpt in ["ok@dest.example", "gone@dest.example", "busy@dest.example"] {
        client.expect(&format!("RCPT TO:<{rcpt}>"), "250").await;
    }
    client.expect("DATA", "354").await;
    client
        .send("From: a@client.example\r\nSubject: outcomes\r\n\r\nhello\r\n.\r\n")
        .await;
    let id = client.reply().await.queue_id().to_string();

    let remote = format!("remote={}", sink.addr());
    let line = |outcome: &str| {
        tokio::task::block_in_place(|| {
            server.wait_for_log(&format!("outcome=\"{outcome}\""), DEADLINE)
        })
    };
    for (outcome, level, rcpt, reply) in [
        ("delivered", "INFO", "ok@dest.example", "250"),
        (
            "bounced",
            "WARN",
            "gone@dest.example",
            "550 5.1.1 no such user",
        ),
        (
            "deferred",
            "INFO",
            "busy@dest.example",
            "451 4.7.1 try later",
        ),
    ] {
        let line = line(outcome);
        for part in [
            level,
            &format!("queue_id={id}"),
            &format!("rcpts={rcpt} "),
            &remote,
            reply,
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
    }
    let log = server.log_text();
    assert!(
        !log.contains("Some("),
        "Debug formatting in the log:\n{log}"
    );
    assert!(!log.contains("destination unavailable"), "{log}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"relay.test\"\ndata_dir = \"{}\"\n\
             [[listeners]]\naddr = \"127.0.0.1:0\"\nmode = \"relay\"\n\
             [http]\naddr = \"127.0.0.1:0\"\n[delivery]\npaused = true\n\
             [log]\nformat = \"json\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env_remove("OUTPOST_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let running = loop {
        let line = rx
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("no start-up line ({e}); got {seen:#?}"));
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        seen.push(line);
        if event["message"] == "listening" {
            break event;
        }
    };
    assert_eq!(running["level"], "INFO", "{running}");
    assert!(
        running["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{running}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
