//! `outpost serve` on PostgreSQL (`[store] url`, docs/cluster.md): the real
//! binary accepts a message over SMTP, delivers it to a sink, and the CLI on the
//! same URL sees it delivered. Runs when `OUTPOST_TEST_POSTGRES` names a server
//! (`postgres://postgres@127.0.0.1:5432/test`; scripts/test.sh sets it when one
//! answers there); the test gets a schema of its own, dropped after it.

use crate::support::delivery::{
    Process, SENDER, Setup, WAIT, cli_ok, client_of, mail, with_marker, write_config,
};
use crate::support::fakes::dns::FakeDns;
use crate::support::fakes::sink::SmtpSink;
use std::io::Write;
use std::time::{Duration, Instant};

const POSTGRES_ENV: &str = "OUTPOST_TEST_POSTGRES";

/// A schema of its own on the test server, dropped with its tables when this is.
pub struct Schema {
    server: String,
    name: String,
}

impl Schema {
    /// A fresh schema on the server of `OUTPOST_TEST_POSTGRES`; `None`, said on
    /// stderr past the harness's capture (so a run without the server says
    /// so), when the variable is not set.
    pub async fn create(test: &str) -> Option<Schema> {
        let Some(server) = std::env::var(POSTGRES_ENV).ok().filter(|s| !s.is_empty()) else {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test} ({POSTGRES_ENV} is not set)"
            );
            return None;
        };
        let schema = Schema {
            name: format!("e2e_{:016x}", rand::random::<u64>()),
            server,
        };
        connect(&schema.server)
            .await
            .batch_execute(&format!("CREATE SCHEMA {}", schema.name))
            .await
            .unwrap();
        Some(schema)
    }

    /// The server's URL with the schema as the search path, for `[store] url`.
    pub fn url(&self) -> String {
        let sep = if self.server.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{}", self.server, self.name)
    }

    /// The server's address (TCP), for a link to it that a test can cut.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        let config: tokio_postgres::Config = self.server.parse().expect("a PostgreSQL URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => panic!("{POSTGRES_ENV} must name a TCP host"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let ip = if host == "localhost" {
            "127.0.0.1"
        } else {
            host.as_str()
        };
        format!("{ip}:{port}")
            .parse()
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV}: host {host}: {e}"))
    }

    /// [`Schema::url`] through 127.0.0.1:`port` instead of the server's own
    /// address (a [`CuttableLink`](crate::support::fakes::cut::CuttableLink)).
    pub fn url_through(&self, port: u16) -> String {
        let config: tokio_postgres::Config = self.server.parse().expect("a PostgreSQL URL");
        let user = config.get_user().unwrap_or("postgres");
        let db = config.get_dbname().unwrap_or(user);
        format!(
            "postgres://{user}@127.0.0.1:{port}/{db}?options=-csearch_path%3D{}",
            self.name
        )
    }

    pub async fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        connect(&self.url()).await.query(sql, &[]).await.unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Not on the test's runtime, which cannot block: one of its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move {
                    connect(&server)
                        .await
                        .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
                        .await
                })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("cannot drop test schema {}: {e}", self.name);
        }
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={url}: cannot connect: {e}"));
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_on_postgres_accepts_delivers_and_the_cli_sees_it() {
    let Some(schema) =
        Schema::create("serve_on_postgres_accepts_delivers_and_the_cli_sees_it").await
    else {
        return;
    };

    let sink = SmtpSink::start_default().await;
    let dns = FakeDns::start("pg.test MX 10 mx.pg.test\nmx.pg.test A 127.0.0.1\n").await;
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&dns, sink.port()).toml(&format!("[store]\nurl = \"{}\"", schema.url()));
    let config = write_config(dir.path(), &setup);
    // Before any node opened it, the schema holds no store: the CLI says so.
    let out = crate::support::delivery::cli(&config, &["queue", "list"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no Outpost store"), "{stderr}");
    let process = Process::start(&config);

    let mut client = client_of(&process).await;
    let id = client
        .deliver(
            SENDER,
            &["bob@pg.test"],
            &mail(SENDER, "bob@pg.test", "pg-e2e"),
        )
        .await;
    client.quit().await;
    let received = sink.wait_for_messages(1, WAIT).await;
    assert_eq!(with_marker(&received, "pg-e2e").len(), 1);

    // The delivery is recorded after the sink's reply: wait for the CLI to see it.
    let end = Instant::now() + WAIT;
    let shown = loop {
        let shown = cli_ok(&config, &["queue", "show", "--json", id.as_str()]);
        let json: serde_json::Value = serde_json::from_str(&shown).expect("queue show --json");
        if json["recipients"][0]["status"] == "delivered" {
            break json;
        }
        assert!(
            Instant::now() < end,
            "not delivered after {WAIT:?}: {shown}\nserver log:\n{}",
            process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(shown["recipients"][0]["address"], "bob@pg.test");
    let list = cli_ok(&config, &["queue", "list"]);
    assert_eq!(
        list.lines().last(),
        Some("-- 0 message(s) in the queue"),
        "{list}"
    );
    // It is PostgreSQL that holds the message, not a SQLite file in data_dir.
    assert!(!dir.path().join("data").join("outpost.db").exists());
    let rows = schema
        .query("SELECT m.id, r.status FROM messages m JOIN recipients r ON r.message_id = m.id")
        .await;
    let stored: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(stored, vec![(id.to_string(), "delivered".to_string())]);
    process.kill();
}
