//! `outpost store migrate --from sqlite:PATH --to postgres://...` end to end:
//! a real `outpost serve` on SQLite takes mail (delivery paused, so it stays
//! queued) and the CLI adds a user, an API key, a sending domain with its DKIM
//! key and a suppression; the store is migrated into an empty PostgreSQL
//! schema; a second migration into it is refused; `outpost serve` on
//! PostgreSQL then delivers the queued mail, and the CLI there shows what the
//! SQLite store held. Runs when `OUTPOST_TEST_POSTGRES` names a server.

use super::postgres::Schema;
use crate::support::delivery::{
    Process, Setup, WAIT, cli, cli_ok, client_of, deliver_marked, deliveries_by_marker,
    write_config,
};
use crate::support::fakes::dns::FakeDns;
use crate::support::fakes::sink::SmtpSink;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

const QUEUED: usize = 5;

#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_store_migrates_to_postgres_and_its_queue_is_delivered() {
    let Some(schema) =
        Schema::create("a_sqlite_store_migrates_to_postgres_and_its_queue_is_delivered").await
    else {
        return;
    };
    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start("pg.test MX 10 mx.pg.test\nmx.pg.test A 127.0.0.1\n").await;

    // The single node, on SQLite.
    let old = tempfile::tempdir().unwrap();
    let old_config = write_config(
        old.path(),
        &Setup::new(&dns, sink.port()).delivery("paused = true"),
    );
    let node = Process::start(&old_config);
    let mut client = client_of(&node).await;
    let markers = deliver_marked(
        &mut client,
        (0..QUEUED).map(|i| (format!("r{i}@pg.test"), format!("migrated-{i:03}"))),
    )
    .await;
    client.quit().await;
    node.signal("TERM");
    let mut node = node;
    assert!(node.wait_exit(WAIT).success(), "{}", node.log_text());
    let mut add_user = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("--config")
        .arg(&old_config)
        .args([
            "user",
            "add",
            "carol",
            "--domain",
            "carol.test",
            "--password-stdin",
        ])
        .env_remove("OUTPOST_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    add_user
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long enough password\n")
        .unwrap();
    assert!(add_user.wait().unwrap().success());
    cli_ok(&old_config, &["key", "add", "carol", "--name", "app"]);
    cli_ok(&old_config, &["domain", "add", "carol.test"]);
    cli_ok(
        &old_config,
        &["suppress", "add", "gone@pg.test", "--domain", "carol.test"],
    );
    let records = cli_ok(&old_config, &["domain", "dns", "carol.test"]);
    let keys = cli_ok(&old_config, &["key", "list"]);
    // The link key is in the store (secret `unsubscribe`), not in a file.
    let unsubscribe_key: Vec<u8> = rusqlite::Connection::open(old.path().join("data/outpost.db"))
        .unwrap()
        .query_row(
            "SELECT value FROM secrets WHERE name = 'unsubscribe'",
            [],
            |row| row.get(0),
        )
        .unwrap();

    // The cluster's first node, on PostgreSQL, with a data_dir of its own.
    let new = tempfile::tempdir().unwrap();
    let new_config = write_config(
        new.path(),
        &Setup::new(&dns, sink.port()).toml(&format!(
            "[server]\nnode_name = \"n0\"\n[store]\nurl = \"{}\"\nlease = \"2s\"\n",
            schema.url()
        )),
    );
    let from = format!("sqlite:{}", old.path().join("data").display());
    let out = cli_ok(
        &new_config,
        &["store", "migrate", "--from", &from, "--to", &schema.url()],
    );
    assert!(out.contains(&format!("messages: {QUEUED} row(s)")), "{out}");
    assert!(out.contains("users: 1 row(s)"), "{out}");
    assert!(out.contains("dkim_keys: 1 row(s)"), "{out}");
    // The unsubscribe links already sent verify on the new nodes.
    let copied = schema
        .query("SELECT value FROM secrets WHERE name = 'unsubscribe'")
        .await;
    assert_eq!(copied[0].get::<_, Vec<u8>>(0), unsubscribe_key);
    // Into a store that holds anything, never.
    let again = cli(
        &new_config,
        &["store", "migrate", "--from", &from, "--to", &schema.url()],
    );
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");
    assert!(
        !stderr.contains(&schema.url()),
        "the URL was repeated: {stderr}"
    );

    let node = Process::start(&new_config);
    let end = Instant::now() + WAIT;
    loop {
        let delivered = deliveries_by_marker(&sink.messages());
        if markers.iter().all(|m| delivered.contains_key(m)) {
            assert!(markers.iter().all(|m| delivered[m] == 1), "{delivered:?}");
            break;
        }
        assert!(
            Instant::now() < end,
            "the migrated queue was not delivered: {delivered:?}\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let users = cli_ok(&new_config, &["user", "list"]);
    assert!(
        users.contains("carol") && users.contains("carol.test"),
        "{users}"
    );
    assert_eq!(cli_ok(&new_config, &["key", "list"]), keys);
    assert_eq!(
        cli_ok(&new_config, &["domain", "dns", "carol.test"]),
        records
    );
    let suppressed = cli_ok(&new_config, &["suppress", "list"]);
    assert!(suppressed.contains("gone@pg.test"), "{suppressed}");
    node.kill();
}
