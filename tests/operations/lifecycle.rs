//! The process under a service manager: SIGTERM stops it gracefully (the
//! transaction in progress completes, idle sessions get `421`, nothing acknowledged
//! is lost, exit 0 within the grace period), and SIGHUP swaps the certificate
//! without dropping connections.

use super::support::common::{Client, DEADLINE};
use super::support::server_process::Process;
use outpost::store::{QueueId, QueueStore, SqliteStore};
use rustls::pki_types::ServerName;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GRACE: Duration = Duration::from_secs(20);

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"relay.test\"\ndata_dir = \"{}\"\n\
             [[listeners]]\naddr = \"127.0.0.1:0\"\nmode = \"relay\"\n\
             [[listeners]]\naddr = \"127.0.0.1:0\"\nmode = \"submissions\"\n\
             [relay]\ntrusted_networks = [\"127.0.0.0/8\"]\n\
             [http]\naddr = \"127.0.0.1:0\"\n[delivery]\npaused = true\n\
             [server]\nshutdown_grace = \"{}s\"\n{extra}",
            dir.join("data").display(),
            GRACE.as_secs()
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_open_transaction_finish_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Process::start(&write_config(dir.path(), ""));
    let addr = server.addr;

    // One session in the middle of DATA, one idle between transactions.
    let mut sending = Client::connect(addr).await;
    sending.expect_greeting().await;
    sending.ehlo().await;
    sending.expect("MAIL FROM:<a@client.example>", "250").await;
    sending.expect("RCPT TO:<b@remote.example>", "250").await;
    sending.expect("DATA", "354").await;
    sending
        .send("From: a@client.example\r\nTo: b@remote.example\r\nSubject: in flight\r\n\r\nfirst half\r\n")
        .await;
    let mut idle = Client::connect(addr).await;
    idle.expect_greeting().await;
    idle.ehlo().await;

    server.signal("TERM");
    tokio::task::block_in_place(|| server.wait_for_log("stopped accepting connections", DEADLINE));
    // The idle session is told and closed; no new connection is accepted.
    let reply = idle.reply().await;
    assert_eq!(reply.code, 421, "{reply}");
    assert!(reply.last().contains("4.3.2"), "{reply}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a new connection was accepted after SIGTERM"
    );

    // The transaction in flight completes and is acknowledged; then 421.
    sending.send("second half\r\n.\r\n").await;
    let accepted = sending.reply().await;
    assert_eq!(accepted.code, 250, "{accepted}");
    let id: QueueId = accepted.queue_id();
    let closing = sending.reply().await;
    assert_eq!(closing.code, 421, "{closing}");

    let status = tokio::task::block_in_place(|| server.wait_exit(GRACE + DEADLINE));
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        server.log_text()
    );
    let log = server.log_text();
    assert!(
        log.contains("signal=\"SIGTERM\"") || log.contains("signal=SIGTERM"),
        "{log}"
    );
    assert!(log.contains("every session finished"), "{log}");

    // What was acknowledged is in the store, whole.
    let store = SqliteStore::open(&dir.path().join("data"), 16).unwrap();
    let content = store
        .message_content(&id)
        .await
        .unwrap()
        .expect("the acknowledged message");
    let content = String::from_utf8_lossy(&content);
    assert!(
        content.contains("first half\r\nsecond half\r\n"),
        "{content}"
    );
}

/// A certificate and key for `relay.test`, each generation with its own key.
fn certificate() -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["relay.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// An implicit-TLS session; returns it with the certificate the server presented.
async fn tls_session(
    addr: std::net::SocketAddr,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    let connector = tokio_rustls::TlsConnector::from(outpost::outbound::tls::unverified_config());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio::time::timeout(
        DEADLINE,
        connector.connect(ServerName::try_from("relay.test").unwrap(), tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let greeting = read_reply(&mut tls).await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    (tls, presented)
}

/// Reads one (single-line) reply.
async fn read_reply(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let mut reply = Vec::new();
    while !reply.ends_with(b"\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(DEADLINE, tls.read(&mut byte))
            .await
            .expect("reply in time")
            .expect("read");
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&reply));
        reply.push(byte[0]);
    }
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (first_pem, first_key, first_der) = certificate();
    std::fs::write(&cert_path, &first_pem).unwrap();
    std::fs::write(&key_path, &first_key).unwrap();
    let server = Process::start(&write_config(
        dir.path(),
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        ),
    ));
    // Listeners are logged in order; the relay one (which `start` waits for) first.
    server.wait_for_log("mode=submissions", DEADLINE);
    let addr = server
        .listener("submissions")
        .expect("submissions listener");
    let (mut open, presented) = tls_session(addr).await;
    assert_eq!(presented, first_der);

    // Renewal as an ACME client does it: new files, then SIGHUP.
    let (second_pem, second_key, second_der) = certificate();
    std::fs::write(&cert_path, &second_pem).unwrap();
    std::fs::write(&key_path, &second_key).unwrap();
    server.signal("HUP");
    tokio::task::block_in_place(|| server.wait_for_log("TLS certificate reloaded", DEADLINE));

    // The open session goes on; a new handshake sees the new certificate.
    open.write_all(b"NOOP\r\n").await.unwrap();
    assert!(read_reply(&mut open).await.starts_with("250 "));
    let (_, presented) = tls_session(addr).await;
    assert_eq!(presented, second_der);

    // A broken renewal (a key that does not match) keeps the working certificate.
    std::fs::write(&key_path, &first_key).unwrap();
    server.signal("HUP");
    tokio::task::block_in_place(|| {
        server.wait_for_log("cannot reload the TLS certificate", DEADLINE)
    });
    let (_, presented) = tls_session(addr).await;
    assert_eq!(presented, second_der);
}
