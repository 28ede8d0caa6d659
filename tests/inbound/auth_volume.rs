//! Authenticated submission at volume: a pool of connections logging in at once
//! from one address, the wrong-password budget SMTP and HTTP share (per address,
//! and per account across addresses), a store failure during a login, the
//! verified-credential cache against `user passwd` run by the CLI in another
//! process, API keys, and TLS session resumption.
//!
//! Several client addresses are 127.0.0.x source addresses (all on loopback).

use crate::support::{common, hardening};

use crate::support::fakes::sink::SmtpSink;
use common::*;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor, address::Envelope};
use outpost::config::ListenerMode;
use outpost::store::{NewApiKey, UserRecord};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::task::JoinSet;

/// `auth.max_failures` default.
const MAX_FAILURES: usize = 5;

fn address(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A TLS session from 127.0.0.`last` on the submissions port that has sent EHLO.
async fn session_from(server: &Server, last: u8) -> Client {
    let mut client = Client::connect_from(
        SocketAddr::new(address(last), 0),
        server.addr(ListenerMode::Submissions),
    )
    .await;
    client.start_tls_handshake().await;
    client.expect_greeting().await;
    client.ehlo().await;
    client
}

/// AUTH PLAIN on a new session from 127.0.0.`last`; the reply, and the session.
async fn login_from(server: &Server, last: u8, user: &str, secret: &str) -> (Reply, Client) {
    let mut client = session_from(server, last).await;
    let reply = client.cmd(&auth_plain_command(user, secret)).await;
    (reply, client)
}

fn basic(user: &str, secret: &str) -> String {
    format!("Basic {}", b64(&format!("{user}:{secret}")))
}

/// The status of an authenticated API request from 127.0.0.`last`.
async fn http_status(server: &Server, last: u8, authorization: &str) -> u16 {
    http_get(server.running.http_addr, last, authorization).await
}

async fn http_get(http: SocketAddr, last: u8, authorization: &str) -> u16 {
    let client = reqwest::Client::builder()
        .local_address(address(last))
        .timeout(DEADLINE)
        .build()
        .expect("HTTP client");
    let url = format!("http://{http}/v1/stats");
    within(
        "HTTP request",
        client
            .get(url)
            .header("Authorization", authorization)
            .send(),
    )
    .await
    .expect("HTTP request")
    .status()
    .as_u16()
}

async fn add_user(server: &Server, name: &str, password: &str, domains: &[&str]) {
    server
        .running
        .store
        .add_user(UserRecord {
            name: name.into(),
            password_hash: outpost::auth::password::hash(password),
            admin: false,
            domains: domains.iter().map(|d| d.to_string()).collect(),
        })
        .await
        .expect("add user");
}

/// Polls `condition` until it holds, failing after [`DEADLINE`].
async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `outpost ARGS` (another process) on the server's data directory; its
/// standard output, or its standard error when it fails.
async fn cli(server: &Server, args: &[&str], stdin: &str) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let config = server.dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!("data_dir = \"{}\"\n", server.dir.path().display()),
    )
    .expect("write the CLI configuration");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start outpost");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let output = within("outpost CLI", child.wait_with_output())
        .await
        .expect("outpost runs");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    if output.status.success() {
        Ok(text(output.stdout))
    } else {
        Err(text(output.stderr))
    }
}

async fn lettre_send(port: u16, user: &str, secret: &str, body: String) {
    let tls = TlsParameters::builder(HOSTNAME.into())
        .dangerous_accept_invalid_certs(true)
        .build()
        .expect("TLS parameters");
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(port)
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(user.into(), secret.into()))
        .authentication(vec![Mechanism::Plain])
        .timeout(Some(DEADLINE))
        .build();
    let envelope = Envelope::new(
        Some(SENDER.parse().unwrap()),
        vec![REMOTE_RCPT.parse().unwrap()],
    )
    .unwrap();
    let content = message(SENDER, REMOTE_RCPT, &body);
    let response = within("lettre send", transport.send_raw(&envelope, &content))
        .await
        .unwrap_or_else(|e| panic!("lettre: {body:?} not accepted: {e}"));
    assert_eq!(response.code().to_string(), "250", "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_20_connections_logs_in_at_once_and_every_message_is_delivered() {
    const POOL: usize = 20;
    let sink = SmtpSink::start_default().await;
    let server = hardening::delivering_server(sink.addr(), "").await;
    let mut pool = Vec::new();
    for _ in 0..POOL {
        pool.push(server.tls_session(ListenerMode::Submission).await);
    }
    // Every AUTH is written before any reply is read.
    for client in &mut pool {
        client
            .send(format!("{}\r\n", auth_plain_command(USER, PASSWORD)))
            .await;
    }
    for client in &mut pool {
        client.reply().await.assert("235 2.7.0");
    }
    for (i, client) in pool.iter_mut().enumerate() {
        let body = format!("pool connection {i}\r\n");
        client
            .deliver(SENDER, &[REMOTE_RCPT], &message(SENDER, REMOTE_RCPT, &body))
            .await;
        client.quit().await;
    }
    // The same again as applications do it: a new connection, STARTTLS and AUTH
    // per message, all at once (lettre, one connection per send).
    let port = server.port(ListenerMode::Submission);
    let mut sends = JoinSet::new();
    for i in 0..POOL {
        sends.spawn(lettre_send(
            port,
            USER,
            PASSWORD,
            format!("lettre connection {i}\r\n"),
        ));
    }
    while let Some(sent) = sends.join_next().await {
        sent.expect("a lettre client");
    }
    eventually("every message reached the sink", async || {
        sink.messages().len() >= 2 * POOL
    })
    .await;
    let received: Vec<String> = sink.messages().iter().map(|m| m.text()).collect();
    assert_eq!(received.len(), 2 * POOL);
    for i in 0..POOL {
        for marker in [
            format!("pool connection {i}\r\n"),
            format!("lettre connection {i}\r\n"),
        ] {
            let copies = received.iter().filter(|t| t.contains(&marker)).count();
            assert_eq!(copies, 1, "{marker:?} delivered {copies} times");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_lock_the_address_and_other_addresses_keep_working() {
    let server = Server::start().await;
    let (reply, _) = login_from(&server, 2, USER, PASSWORD).await;
    reply.assert("235 2.7.0");
    let mut guesser = session_from(&server, 3).await;
    for guess in 0..MAX_FAILURES {
        guesser
            .expect(
                &auth_plain_command(USER, &format!("guess {guess}")),
                "535 5.7.8",
            )
            .await;
    }
    let reply = guesser.cmd(&auth_plain_command(USER, PASSWORD)).await;
    assert!(
        reply.is("421 4.7.0") && reply.last().contains("from your address"),
        "the right password from a locked address: {reply}"
    );
    guesser.expect_closed().await;
    let (reply, _) = login_from(&server, 3, USER, PASSWORD).await;
    reply.assert("421 4.7.0");
    let (reply, _) = login_from(&server, 2, USER, PASSWORD).await;
    reply.assert("235 2.7.0");
    assert_eq!(http_status(&server, 3, &basic(USER, PASSWORD)).await, 429);
    assert_eq!(http_status(&server, 2, &basic(USER, PASSWORD)).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_spread_over_addresses_lock_the_account_for_strangers_only() {
    const MAX_ACCOUNT_FAILURES: u8 = 6;
    let server = Server::start_with(Options {
        auth: "max_account_failures = 6",
        ..Options::default()
    })
    .await;
    add_user(&server, "bob", "bob's password", &["bob.example"]).await;
    let key = outpost::auth::api_key::generate();
    server
        .running
        .store
        .add_api_key(NewApiKey {
            user: USER.into(),
            name: None,
            key_hash: outpost::auth::api_key::hash(&key),
            domains: vec![],
            created_at: 0,
        })
        .await
        .expect("add key");
    let (reply, _) = login_from(&server, 2, USER, PASSWORD).await;
    reply.assert("235 2.7.0");
    // One guess from each of many addresses: no address comes near its limit.
    for n in 0..MAX_ACCOUNT_FAILURES {
        let (reply, _) = login_from(&server, 10 + n, USER, "a guess").await;
        reply.assert("535 5.7.8");
    }
    // The account is now closed to addresses it never logged in from, even with
    // the right password ...
    let (reply, mut refused) = login_from(&server, 30, USER, PASSWORD).await;
    assert!(
        reply.is("421 4.7.0") && reply.last().contains("for this account"),
        "a stranger with the right password: {reply}"
    );
    refused.expect_closed().await;
    assert_eq!(http_status(&server, 31, &basic(USER, PASSWORD)).await, 429);
    // ... but not to the address it logged in from, nor to its API keys, and the
    // stranger's own address is not locked for other accounts.
    let (reply, _) = login_from(&server, 2, USER, PASSWORD).await;
    reply.assert("235 2.7.0");
    assert_eq!(http_status(&server, 2, &basic(USER, PASSWORD)).await, 200);
    let (reply, _) = login_from(&server, 30, USER, &key).await;
    reply.assert("235 2.7.0");
    let (reply, _) = login_from(&server, 30, "bob", "bob's password").await;
    reply.assert("235 2.7.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_http_guesses_get_no_more_tries_than_sequential_ones() {
    const PARALLEL: usize = 20;
    let server = Server::start().await;
    let mut sequential = 0;
    loop {
        match http_status(&server, 40, &basic(USER, "sequential guess")).await {
            401 => sequential += 1,
            429 => break,
            status => panic!("a wrong password answered {status}"),
        }
        assert!(sequential <= MAX_FAILURES, "never locked");
    }
    assert_eq!(sequential, MAX_FAILURES);

    let http = server.running.http_addr;
    let mut burst = JoinSet::new();
    for i in 0..PARALLEL {
        burst.spawn(async move {
            http_get(http, 41, &basic(USER, &format!("parallel guess {i}"))).await
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = burst.join_next().await {
        statuses.push(status.expect("a request"));
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        (checked, refused),
        (sequential, PARALLEL - sequential),
        "{statuses:?}"
    );
    assert_eq!(http_status(&server, 41, &basic(USER, PASSWORD)).await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_and_http_share_one_budget() {
    let server = Server::start().await;
    let mut client = session_from(&server, 50).await;
    for guess in 0..3 {
        client
            .expect(
                &auth_plain_command(USER, &format!("smtp {guess}")),
                "535 5.7.8",
            )
            .await;
    }
    for guess in 0..2 {
        let status = http_status(&server, 50, &basic(USER, &format!("http {guess}"))).await;
        assert_eq!(status, 401);
    }
    assert_eq!(http_status(&server, 50, &basic(USER, PASSWORD)).await, 429);
    client
        .expect(&auth_plain_command(USER, PASSWORD), "421 4.7.0")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_during_auth_is_454_and_never_counted() {
    let server = Server::start().await;
    let (reply, _) = login_from(&server, 60, USER, PASSWORD).await;
    reply.assert("235 2.7.0");
    // Another connection to the database takes the users table away: every
    // lookup of the server fails as it would on a damaged store.
    let db = rusqlite::Connection::open(server.dir.path().join("outpost.db")).expect("open db");
    db.execute_batch("ALTER TABLE users RENAME TO users_away")
        .expect("rename users");
    let mut client = session_from(&server, 60).await;
    for attempt in 0..2 * MAX_FAILURES {
        let secret = if attempt % 2 == 0 { PASSWORD } else { "wrong" };
        client
            .expect(&auth_plain_command(USER, secret), "454 4.7.0")
            .await;
    }
    assert_eq!(http_status(&server, 60, &basic(USER, PASSWORD)).await, 503);
    db.execute_batch("ALTER TABLE users_away RENAME TO users")
        .expect("rename users back");
    // Nothing was counted: the same address and session log in.
    client
        .expect(&auth_plain_command(USER, "still wrong"), "535 5.7.8")
        .await;
    client
        .expect(&auth_plain_command(USER, PASSWORD), "235 2.7.0")
        .await;
    assert_eq!(http_status(&server, 60, &basic(USER, PASSWORD)).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_passwd_in_another_process_ends_the_cached_password_at_once() {
    const NEW_PASSWORD: &str = "a brand new password";
    let server = Server::start().await;
    for _ in 0..2 {
        let (reply, _) = login_from(&server, 70, USER, PASSWORD).await;
        reply.assert("235 2.7.0");
        assert_eq!(http_status(&server, 70, &basic(USER, PASSWORD)).await, 200);
    }
    cli(
        &server,
        &["user", "passwd", USER, "--password-stdin"],
        NEW_PASSWORD,
    )
    .await
    .expect("user passwd");
    let (reply, _) = login_from(&server, 70, USER, PASSWORD).await;
    reply.assert("535 5.7.8");
    assert_eq!(http_status(&server, 70, &basic(USER, PASSWORD)).await, 401);
    let (reply, _) = login_from(&server, 70, USER, NEW_PASSWORD).await;
    reply.assert("235 2.7.0");
    assert_eq!(
        http_status(&server, 70, &basic(USER, NEW_PASSWORD)).await,
        200
    );
    cli(&server, &["user", "remove", USER], "")
        .await
        .expect("user remove");
    let (reply, _) = login_from(&server, 70, USER, NEW_PASSWORD).await;
    reply.assert("535 5.7.8");
}

/// `key add` output: the id and the key.
fn parse_key_add(output: &str) -> (String, String) {
    let id = output
        .lines()
        .find_map(|l| l.strip_prefix("key ")?.split(' ').next())
        .unwrap_or_else(|| panic!("no key id in {output:?}"));
    let key = output
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .unwrap_or_else(|| panic!("no key in {output:?}"));
    (id.to_string(), key.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_work_on_smtp_and_http_and_stop_at_once_when_revoked() {
    let server = Server::start().await;
    add_user(
        &server,
        "carol",
        "carol's password",
        &["one.example", "two.example"],
    )
    .await;
    let (ci_id, ci_key) = parse_key_add(
        &cli(&server, &["key", "add", USER, "--name", "ci"], "")
            .await
            .expect("key add"),
    );
    let (_, second_key) = parse_key_add(&cli(&server, &["key", "add", USER], "").await.unwrap());
    let refused = cli(
        &server,
        &["key", "add", USER, "--domain", "one.example"],
        "",
    )
    .await
    .expect_err("a domain that is not alice's");
    assert!(refused.contains("one.example"), "{refused}");

    // The key as the SMTP password, then to send.
    let (reply, mut client) = login_from(&server, 80, USER, &ci_key).await;
    reply.assert("235 2.7.0");
    client
        .deliver(
            SENDER,
            &[REMOTE_RCPT],
            &message(SENDER, REMOTE_RCPT, "by key\r\n"),
        )
        .await;
    let (reply, _) = login_from(&server, 80, USER, &second_key).await;
    reply.assert("235 2.7.0");
    let (reply, _) = login_from(&server, 80, "carol", &ci_key).await;
    reply.assert("535 5.7.8");
    // And as the HTTP credential.
    assert_eq!(
        http_status(&server, 81, &format!("Bearer {ci_key}")).await,
        200
    );
    assert_eq!(http_status(&server, 81, &basic(USER, &ci_key)).await, 200);
    assert_eq!(http_status(&server, 81, "Bearer opk_not-a-key").await, 401);

    // Listed without the key; the use is noted.
    eventually("key list shows a last use", async || {
        let listed = cli(&server, &["key", "list", USER], "").await.unwrap();
        assert!(!listed.contains(&ci_key) && !listed.contains(&second_key));
        let line = listed
            .lines()
            .find(|l| l.starts_with(&format!("{ci_id}\t{USER}\tci\t")))
            .unwrap_or_else(|| panic!("key {ci_id} not listed: {listed:?}"));
        !line.contains("never")
    })
    .await;

    cli(&server, &["key", "revoke", &ci_id], "")
        .await
        .expect("key revoke");
    let (reply, _) = login_from(&server, 80, USER, &ci_key).await;
    reply.assert("535 5.7.8");
    assert_eq!(
        http_status(&server, 81, &format!("Bearer {ci_key}")).await,
        401
    );
    let (reply, _) = login_from(&server, 80, USER, &second_key).await;
    reply.assert("235 2.7.0");
    assert!(cli(&server, &["key", "revoke", &ci_id], "").await.is_err());

    // A key restricted to one of carol's domains sends only as that domain.
    let (_, one_key) = parse_key_add(
        &cli(
            &server,
            &["key", "add", "carol", "--domain", "one.example"],
            "",
        )
        .await
        .unwrap(),
    );
    let (reply, mut client) = login_from(&server, 82, "carol", &one_key).await;
    reply.assert("235 2.7.0");
    client
        .expect("MAIL FROM:<carol@two.example>", "550 5.7.1")
        .await;
    client
        .expect("MAIL FROM:<carol@one.example>", "250 2.1.0")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reconnects_resumes_its_tls_session() {
    let server = Server::start().await;
    let config = outpost::outbound::tls::unverified_config();
    let connector = tokio_rustls::TlsConnector::from(config);
    for expected in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
        let tcp = within(
            "connect",
            tokio::net::TcpStream::connect(server.addr(ListenerMode::Submissions)),
        )
        .await
        .expect("connect");
        let name = rustls::pki_types::ServerName::try_from(HOSTNAME).unwrap();
        let mut tls = within("TLS handshake", connector.connect(name, tcp))
            .await
            .expect("TLS handshake");
        // Reading the greeting also reads the session ticket sent after the
        // handshake (TLS 1.3).
        let mut greeting = [0u8; 4];
        within(
            "greeting",
            tokio::io::AsyncReadExt::read_exact(&mut tls, &mut greeting),
        )
        .await
        .expect("read the greeting");
        assert_eq!(&greeting, b"220 ");
        assert_eq!(tls.get_ref().1.handshake_kind(), Some(expected));
    }
}
