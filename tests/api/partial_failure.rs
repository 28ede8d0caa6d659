//! A multi-recipient `POST /v1/messages` whose commits partly fail: the answer
//! says exactly which recipients were stored (`207`), sending the failed ones
//! again stores every message once, and `outpost send` does just that.
//!
//! The failure is the store's own: a trigger in the server's database makes it
//! refuse the commit of one recipient's message, as a full disk or an I/O error
//! would, while the other commits go through.

use super::*;

const REFUSED: &str = "ben@two.example";

/// Makes the server's store refuse every message to [`REFUSED`] until the trigger
/// is dropped through the returned connection.
fn refuse_commits(server: &Server) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(server.dir.path().join("outpost.db")).unwrap();
    db.execute_batch(&format!(
        "CREATE TRIGGER refuse BEFORE INSERT ON recipients WHEN NEW.address = '{REFUSED}'
         BEGIN SELECT RAISE(ABORT, 'injected: disk I/O error'); END;"
    ))
    .unwrap();
    db
}

/// (recipient, queue id) of every message the store holds, sorted.
async fn stored(server: &Server) -> Vec<(String, String)> {
    let mut held: Vec<(String, String)> = server
        .running
        .store
        .queued_messages(100)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|m| {
            m.recipients
                .into_iter()
                .map(move |r| (r.address, m.id.to_string()))
        })
        .collect();
    held.sort();
    held
}

fn request(to: &[&str]) -> Value {
    json!({"from": "a@alice.example", "to": to, "subject": "s", "text": "t"})
}

#[tokio::test]
async fn a_partly_stored_request_names_what_was_stored_and_what_was_not() {
    let server = Server::start(Options::default()).await;
    let db = refuse_commits(&server);

    let (status, resp) = server
        .post(
            "/v1/messages",
            ALICE,
            request(&["ann@one.example", REFUSED, "carl@three.example"]),
        )
        .await;
    assert_eq!(status, 207, "{resp}");
    let mut answered: Vec<(String, String)> = resp["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["to"].as_array().unwrap().len(), 1, "{m}");
            (
                m["to"][0].as_str().unwrap().to_string(),
                m["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let failed = resp["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{resp}");
    assert_eq!(failed[0]["index"], 1, "{resp}");
    assert_eq!(failed[0]["to"], json!([REFUSED]), "{resp}");
    assert_eq!(failed[0]["status"], 503, "{resp}");
    assert!(
        failed[0]["error"].as_str().unwrap().contains("injected"),
        "{resp}"
    );
    // The answer is exactly what the store holds.
    answered.sort();
    assert_eq!(stored(&server).await, answered);
    assert_eq!(
        answered
            .iter()
            .map(|(to, _)| to.as_str())
            .collect::<Vec<_>>(),
        ["ann@one.example", "carl@three.example"]
    );
    for (_, id) in &answered {
        let (status, view) = server.get(&format!("/v1/messages/{id}"), ALICE).await;
        assert_eq!(status, 200, "{view}");
    }

    // Sending only the failed recipient again, once the store works: each
    // message is stored once.
    db.execute_batch("DROP TRIGGER refuse").unwrap();
    let ids = server.send(ALICE, request(&[REFUSED])).await;
    let held = stored(&server).await;
    let recipients: Vec<&str> = held.iter().map(|(to, _)| to.as_str()).collect();
    assert_eq!(
        recipients,
        ["ann@one.example", REFUSED, "carl@three.example"]
    );
    assert!(held.iter().any(|(_, id)| id == &ids[0]));
}

#[tokio::test]
async fn a_request_of_which_nothing_was_stored_fails_as_a_whole() {
    let server = Server::start(Options::default()).await;
    let _db = refuse_commits(&server);
    let (status, resp) = server
        .post("/v1/messages", ALICE, request(&[REFUSED]))
        .await;
    assert_eq!(status, 503, "{resp}");
    assert!(
        resp["error"].as_str().unwrap().contains("injected"),
        "{resp}"
    );
    assert!(stored(&server).await.is_empty());
}

/// `outpost send` sends again only the rows a `207` names, and reports the row
/// that never could be stored: no row is sent twice.
#[tokio::test]
async fn outpost_send_retries_only_the_rows_that_were_not_stored() {
    let server = Server::start(Options::default()).await;
    let _db = refuse_commits(&server);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("list.csv");
    std::fs::write(
        &csv,
        format!("email\nann@one.example\n{REFUSED}\ncarl@three.example\n"),
    )
    .unwrap();
    let text = dir.path().join("body.txt");
    std::fs::write(&text, "t\n").unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"));
    cmd.args([
        "send",
        "--from",
        "a@alice.example",
        "--subject",
        "s",
        "--to-csv",
    ])
    .arg(&csv)
    .arg("--text")
    .arg(&text)
    .args(["--api", &server.url(""), "--user", "alice"])
    .env("OUTPOST_PASSWORD", ALICE.1)
    .env("NO_COLOR", "1");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{report}");
    assert!(
        stdout.contains("accepted: 2, rejected: 1, not sent: 0 ("),
        "{report}"
    );
    assert!(
        stdout.contains(REFUSED) && stdout.contains("503"),
        "{report}"
    );
    let recipients: Vec<String> = stored(&server)
        .await
        .into_iter()
        .map(|(to, _)| to)
        .collect();
    assert_eq!(recipients, ["ann@one.example", "carl@three.example"]);
}
