//! `outpost send` through the binary with a 1,000-row CSV.

use super::*;

#[tokio::test]
async fn outpost_send_bulk_sends_a_1000_row_csv() {
    let server = Server::start(Options {
        max_recipients: Some(1000),
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("list.csv");
    let mut rows = String::from("email,first_name\n");
    for i in 0..1000 {
        rows.push_str(&format!("user{i}@list.example,Name{i}\n"));
    }
    rows.push_str("not an address,Broken\n");
    std::fs::write(&csv, rows).unwrap();
    let body = dir.path().join("body.txt");
    std::fs::write(&body, "Hello {{ first_name }}!\n").unwrap();
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.args(["send", "--from", "news@alice.example", "--to-csv"])
            .arg(&csv)
            .args(["--subject", "Hi {{ first_name }}", "--text"])
            .arg(&body)
            .args([
                "--api",
                &server.url(""),
                "--user",
                "alice",
                "--batch-size",
                "250",
            ])
            .args(extra)
            .env("OUTPOST_PASSWORD", ALICE.1)
            .env("NO_COLOR", "1");
        cmd
    };
    let dry = tokio::task::spawn_blocking({
        let mut cmd = run(&["--dry-run"]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let printed = String::from_utf8_lossy(&dry.stdout);
    assert!(printed.contains("Subject: Hi Name0\r\n"), "{printed}");
    assert!(printed.contains("Hello Name0!"), "{printed}");
    assert!(
        server
            .running
            .store
            .queued_messages(10)
            .await
            .unwrap()
            .is_empty()
    );

    let out = tokio::task::spawn_blocking({
        let mut cmd = run(&[]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a rejected row makes the exit status non-zero"
    );
    assert!(
        stdout.contains("accepted: 1000, rejected: 1, not sent: 0 ("),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("row 1002 <not an address>:"), "{stdout}");
    let queued = server.running.store.queued_messages(2000).await.unwrap();
    assert_eq!(queued.len(), 1000);
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "outpost_queue_recipients_pending 1000"),
        "{metrics}"
    );
    let m = queued
        .iter()
        .find(|m| m.recipients[0].address == "user777@list.example")
        .unwrap();
    let content = server
        .running
        .store
        .message_content(&m.id)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&content);
    assert!(text.contains("Subject: Hi Name777\r\n"), "{text}");
    assert!(text.contains("Hello Name777!"), "{text}");

    let wrong = tokio::task::spawn_blocking({
        let mut cmd = run(&[]);
        cmd.env("OUTPOST_PASSWORD", "wrong");
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
}
