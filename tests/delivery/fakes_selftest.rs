//! Proves the test doubles in `tests/support/fakes/` do what they promise, with
//! independent clients: hickory-resolver against `FakeDns`, lettre and a raw
//! socket against `SmtpSink`.

use crate::support::fakes;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use fakes::dns::FakeDns;
use fakes::sink::{SmtpSink, Tls, test_ca_pem};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls as LettreTls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const WAIT: Duration = Duration::from_secs(5);

const ZONE: &str = r#"
; the example from the brief
example.test.      MX  10 mx1.example.test.
example.test.      MX  20 mx2.example.test.
mx1.example.test.  A   127.0.0.2
mx2.example.test.  A   127.0.0.1
nullmx.test.       MX  0 .
noMX.test.         A   127.0.0.1
v6only.test.       AAAA ::1
txt.test.          TXT "v=spf1 -all"
broken.test.       SERVFAIL
alias.test      300 CNAME mx2.example.test   ; TTL and no trailing dots
"#;

// ---------------------------------------------------------------- DNS

/// A resolver that asks only `dns`, UDP first and TCP on truncation, with no
/// hosts file and no system configuration.
fn resolver(dns: &FakeDns) -> TokioResolver {
    let connection = |protocol| {
        let mut c = ConnectionConfig::new(protocol);
        c.port = dns.addr().port();
        c
    };
    let server = NameServerConfig::new(
        dns.addr().ip(),
        true,
        vec![
            connection(ProtocolConfig::Udp),
            connection(ProtocolConfig::Tcp),
        ],
    );
    let config = ResolverConfig::from_parts(None, vec![], vec![server]);
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 1;
    opts.use_hosts_file = ResolveHosts::Never;
    Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .expect("resolver")
}

fn response_code(err: &NetError) -> Option<ResponseCode> {
    use hickory_resolver::net::DnsError;
    match err {
        NetError::Dns(DnsError::ResponseCode(code)) => Some(*code),
        NetError::Dns(DnsError::NoRecordsFound(no)) => Some(no.response_code),
        _ => None,
    }
}

#[tokio::test]
async fn dns_answers_mx_a_aaaa_txt_cname() {
    let dns = FakeDns::start(ZONE).await;
    let resolver = resolver(&dns);

    let mx = resolver.mx_lookup("example.test.").await.expect("MX");
    let mut mxs: Vec<(u16, String)> = mx
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        })
        .collect();
    mxs.sort();
    assert_eq!(
        mxs,
        [
            (10, "mx1.example.test.".to_string()),
            (20, "mx2.example.test.".to_string())
        ]
    );

    let null = resolver.mx_lookup("nullmx.test.").await.expect("null MX");
    match &null.answers()[0].data {
        RData::MX(mx) => {
            assert_eq!(mx.preference, 0);
            assert!(mx.exchange.is_root(), "{}", mx.exchange);
        }
        other => panic!("expected MX, got {other:?}"),
    }

    let a = resolver.ipv4_lookup("MX1.Example.Test.").await.expect("A");
    assert!(
        matches!(&a.answers()[0].data, RData::A(a) if a.0 == Ipv4Addr::new(127, 0, 0, 2)),
        "{:?}",
        a.answers()
    );

    let ips: Vec<IpAddr> = resolver
        .lookup_ip("v6only.test.")
        .await
        .expect("AAAA")
        .iter()
        .collect();
    assert_eq!(ips, [IpAddr::V6(Ipv6Addr::LOCALHOST)]);

    let txt = resolver.txt_lookup("txt.test.").await.expect("TXT");
    match &txt.answers()[0].data {
        RData::TXT(t) => assert_eq!(t.txt_data.concat(), b"v=spf1 -all"),
        other => panic!("expected TXT, got {other:?}"),
    }

    // A CNAME is followed inside the zone, and the TTL column is honoured.
    let alias = resolver.ipv4_lookup("alias.test.").await.expect("CNAME");
    let cname = &alias.answers()[0];
    assert_eq!(cname.ttl, 300);
    assert!(matches!(&cname.data, RData::CNAME(_)), "{cname:?}");
    assert!(
        alias
            .answers()
            .iter()
            .any(|r| matches!(&r.data, RData::A(a) if a.0 == Ipv4Addr::LOCALHOST)),
        "{:?}",
        alias.answers()
    );
}

#[tokio::test]
async fn dns_negative_answers() {
    let dns = FakeDns::start(ZONE).await;
    let resolver = resolver(&dns);

    let err = resolver.mx_lookup("absent.test.").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");

    // Present name, no MX: NODATA, not NXDOMAIN.
    let err = resolver.mx_lookup("nomx.test.").await.unwrap_err();
    assert!(err.is_no_records_found(), "{err:?}");
    assert!(!err.is_nx_domain(), "{err:?}");
    assert_eq!(response_code(&err), Some(ResponseCode::NoError));
    // ... while its A record is there.
    resolver.ipv4_lookup("nomx.test.").await.expect("A");

    let err = resolver.mx_lookup("broken.test.").await.unwrap_err();
    assert_eq!(response_code(&err), Some(ResponseCode::ServFail), "{err:?}");
    assert!(!err.is_no_records_found());
}

#[tokio::test]
async fn dns_long_txt_is_chunked_and_falls_back_to_tcp() {
    let long: String = (0..2000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let dns = FakeDns::start(&format!("long.test TXT \"{long}\"\nshort.test TXT \"x\"\n")).await;
    let resolver = resolver(&dns);

    let txt = resolver.txt_lookup("long.test.").await.expect("long TXT");
    let RData::TXT(t) = &txt.answers()[0].data else {
        panic!("expected TXT: {:?}", txt.answers());
    };
    let lens: Vec<usize> = t.txt_data.iter().map(|s| s.len()).collect();
    assert_eq!(lens, [255, 255, 255, 255, 255, 255, 255, 215]);
    assert_eq!(t.txt_data.concat(), long.as_bytes());
    // 2000 bytes do not fit the 1232-byte EDNS size: a truncated UDP answer,
    // then the same question over TCP.
    assert_eq!(
        dns.query_log(),
        ["TXT long.test", "TXT long.test"],
        "expected a UDP try and a TCP retry"
    );
}

#[tokio::test]
async fn dns_set_zone_replaces_records_and_queries_are_counted() {
    let dns = FakeDns::start("flap.test A 127.0.0.3").await;
    let resolver = resolver(&dns);
    assert_eq!(dns.queries(), 0);

    let a = resolver.ipv4_lookup("flap.test.").await.unwrap();
    assert!(matches!(&a.answers()[0].data, RData::A(a) if a.0 == Ipv4Addr::new(127, 0, 0, 3)));
    assert_eq!(dns.queries(), 1);

    dns.set_zone("flap.test A 127.0.0.4");
    let a = resolver.ipv4_lookup("flap.test.").await.unwrap();
    assert!(matches!(&a.answers()[0].data, RData::A(a) if a.0 == Ipv4Addr::new(127, 0, 0, 4)));

    dns.set_zone("flap.test SERVFAIL");
    let err = resolver.ipv4_lookup("flap.test.").await.unwrap_err();
    assert_eq!(response_code(&err), Some(ResponseCode::ServFail), "{err:?}");

    dns.set_zone("");
    let err = resolver.ipv4_lookup("flap.test.").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
    // The resolver may retry a SERVFAIL: count what the log saw.
    let log = dns.query_log();
    assert!(log.len() >= 4, "{log:?}");
    assert!(log.iter().all(|q| q == "A flap.test"), "{log:?}");
    assert_eq!(dns.queries(), log.len());
}

#[tokio::test]
async fn dns_timeout_name_is_never_answered() {
    use hickory_resolver::proto::op::{Message, Query};
    use hickory_resolver::proto::rr::{Name, RecordType};

    let dns = FakeDns::start("slow.test TIMEOUT\nfast.test A 127.0.0.1").await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(dns.addr()).await.unwrap();
    let ask = |id: u16, name: &str| {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    };
    socket.send(&ask(1, "slow.test.")).await.unwrap();
    socket.send(&ask(2, "fast.test.")).await.unwrap();
    // The server handles UDP in order: when the answer to 2 arrives, 1 was
    // already dropped, so the first datagram back must be the answer to 2.
    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("an answer for fast.test")
        .unwrap();
    let answer = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(answer.metadata.id, 2);
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(dns.queries(), 2);
}

#[tokio::test]
#[should_panic(expected = "line 3")]
async fn dns_rejects_a_malformed_zone_line() {
    FakeDns::start("a.test A 127.0.0.1\n\nb.test A not-an-address").await;
}

// ---------------------------------------------------------------- SMTP via lettre

fn message(to: &[&str], body: &str) -> Message {
    let mut builder = Message::builder()
        .from("Sender <sender@origin.test>".parse::<Mailbox>().unwrap())
        .subject("fakes selftest");
    for addr in to {
        builder = builder.to(addr.parse::<Mailbox>().unwrap());
    }
    builder.body(body.to_string()).unwrap()
}

fn transport(sink: &SmtpSink, tls: LettreTls) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(sink.port())
        .hello_name(lettre::transport::smtp::extension::ClientId::Domain(
            "client.test".into(),
        ))
        .timeout(Some(WAIT))
        .tls(tls)
        .build()
}

fn tls_no_verify() -> LettreTls {
    LettreTls::Required(
        TlsParameters::builder("localhost".into())
            .dangerous_accept_invalid_certs(true)
            .dangerous_accept_invalid_hostnames(true)
            .build_rustls()
            .unwrap(),
    )
}

fn tls_trusting_test_ca() -> LettreTls {
    let ca = Certificate::from_pem(test_ca_pem().as_bytes()).unwrap();
    LettreTls::Required(
        TlsParameters::builder("localhost".into())
            .add_root_certificate(ca)
            .build_rustls()
            .unwrap(),
    )
}

/// A body with lines a client must dot-stuff.
const DOTTY_BODY: &str = "First line\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n";

#[tokio::test]
async fn lettre_plaintext_is_recorded_byte_exact() {
    let sink = SmtpSink::start_default().await;
    let msg = message(&["rcpt@dest.test"], DOTTY_BODY);
    let formatted = msg.formatted();
    transport(&sink, LettreTls::None).send(msg).await.unwrap();

    let got = sink.wait_for_messages(1, WAIT).await;
    let m = &got[0];
    assert_eq!(m.connection, 0);
    assert_eq!(m.helo, "client.test");
    assert_eq!(m.mail_from, "sender@origin.test");
    assert_eq!(m.rcpt_to, ["rcpt@dest.test"]);
    assert!(!m.tls);
    assert_eq!(m.auth_user, None);
    // lettre ends the data with CRLF . CRLF after the message: the CRLF is
    // part of the data (RFC 5321 §4.1.1.4).
    let mut expected = formatted.clone();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(m.text(), String::from_utf8(expected).unwrap());
    assert!(
        m.text()
            .contains("\r\n.leading dot\r\n..two dots\r\n.\r\nlast")
    );
    assert_eq!(sink.connections(), 1);
    assert_eq!(sink.messages_per_connection(), [1]);
}

#[tokio::test]
async fn lettre_starttls_with_self_signed_cert() {
    let sink = SmtpSink::builder().starttls(Tls::SelfSigned).start().await;
    transport(&sink, tls_no_verify())
        .send(message(&["rcpt@dest.test"], "hello\r\n"))
        .await
        .unwrap();
    let m = &sink.wait_for_messages(1, WAIT).await[0];
    assert!(m.tls);
    let lines: Vec<(bool, String)> = sink
        .commands()
        .into_iter()
        .map(|c| (c.tls, c.line.split(' ').next().unwrap().to_string()))
        .collect();
    assert_eq!(lines[0], (false, "EHLO".to_string()));
    assert_eq!(lines[1], (false, "STARTTLS".to_string()));
    assert_eq!(lines[2], (true, "EHLO".to_string()));
    assert!(lines[3..].iter().all(|(tls, _)| *tls));

    // A verifying client rejects the same certificate.
    let err = transport(&sink, tls_trusting_test_ca())
        .send(message(&["rcpt@dest.test"], "hello\r\n"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn lettre_verifies_ca_signed_and_rejects_bad_cert() {
    let good = SmtpSink::builder()
        .starttls(Tls::CaSigned(vec!["mx.dest.test".into()]))
        .start()
        .await;
    transport(&good, tls_trusting_test_ca())
        .send(message(&["rcpt@dest.test"], "hello\r\n"))
        .await
        .unwrap();
    assert!(good.wait_for_messages(1, WAIT).await[0].tls);

    let bad = SmtpSink::builder().starttls(Tls::BadCert).start().await;
    let err = transport(&bad, tls_trusting_test_ca())
        .send(message(&["rcpt@dest.test"], "hello\r\n"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // ... but a client that does not verify gets through.
    transport(&bad, tls_no_verify())
        .send(message(&["rcpt@dest.test"], "hello\r\n"))
        .await
        .unwrap();
    assert_eq!(bad.wait_for_messages(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn lettre_sees_550_for_one_recipient() {
    let sink = SmtpSink::builder()
        .rcpt_reply("bad@", "550 5.1.1 User unknown")
        .start()
        .await;
    let err = transport(&sink, LettreTls::None)
        .send(message(&["good@dest.test", "bad@dest.test"], "hi\r\n"))
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert_eq!(err.status().map(|c| c.to_string()), Some("550".into()));

    let rcpts = sink.wait_for_rcpts(2, WAIT).await;
    let seen: Vec<(&str, &str)> = rcpts
        .iter()
        .map(|r| (r.address.as_str(), &r.reply[..3]))
        .collect();
    assert_eq!(seen, [("good@dest.test", "250"), ("bad@dest.test", "550")]);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn lettre_auth_plain_and_login() {
    let sink = SmtpSink::builder()
        .require_auth("relay-user", "s3cret")
        .start()
        .await;
    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(sink.port())
            .credentials(Credentials::new("relay-user".into(), "s3cret".into()))
            .authentication(vec![mechanism])
            .timeout(Some(WAIT))
            .build()
            .send(message(&["rcpt@dest.test"], "hi\r\n"))
            .await
            .unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
    }
    let got = sink.wait_for_messages(2, WAIT).await;
    assert!(
        got.iter()
            .all(|m| m.auth_user.as_deref() == Some("relay-user"))
    );

    let err = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(sink.port())
        .credentials(Credentials::new("relay-user".into(), "wrong".into()))
        .authentication(vec![Mechanism::Plain])
        .timeout(Some(WAIT))
        .build()
        .send(message(&["rcpt@dest.test"], "hi\r\n"))
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|c| c.to_string()), Some("535".into()));

    // Without credentials, MAIL is refused.
    let err = transport(&sink, LettreTls::None)
        .send(message(&["rcpt@dest.test"], "hi\r\n"))
        .await
        .unwrap_err();
    assert_eq!(err.status().map(|c| c.to_string()), Some("530".into()));
    assert_eq!(sink.messages().len(), 2);
}

// ---------------------------------------------------------------- SMTP via a raw socket

/// A minimal SMTP client that can pipeline and see every reply line.
struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    async fn connect(sink: &SmtpSink) -> Raw {
        let (r, w) = TcpStream::connect(sink.addr()).await.unwrap().into_split();
        Raw {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.unwrap();
    }

    /// One (possibly multi-line) reply, lines joined with `\n`; `None` at EOF.
    async fn reply(&mut self) -> Option<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            if n == 0 {
                return (!lines.is_empty()).then(|| lines.join("\n"));
            }
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Some(lines.join("\n"));
            }
        }
    }

    async fn code(&mut self) -> u16 {
        let reply = self.reply().await.expect("a reply, not EOF");
        reply[..3].parse().unwrap()
    }

    async fn ehlo(&mut self) -> String {
        assert_eq!(self.code().await, 220);
        self.send("EHLO raw.test\r\n").await;
        let reply = self.reply().await.unwrap();
        assert!(reply.starts_with("250"), "{reply}");
        reply
    }
}

#[tokio::test]
async fn raw_pipelined_transaction_with_mixed_recipients_and_dot_stuffing() {
    let sink = SmtpSink::builder()
        .rcpt_reply("bad@", "550 5.1.1 User unknown")
        .rcpt_reply("later@", "451 4.3.0 Try later")
        .start()
        .await;
    let mut c = Raw::connect(&sink).await;
    let ehlo = c.ehlo().await;
    for ext in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE ",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing from {ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );

    c.send(
        "MAIL FROM:<s@origin.test> BODY=8BITMIME SMTPUTF8\r\n\
         RCPT TO:<good@dest.test>\r\nRCPT TO:<Bad@dest.test>\r\n\
         RCPT TO:<later@dest.test>\r\nRCPT TO:<also-good@dest.test> NOTIFY=NEVER\r\nDATA\r\n",
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(c.code().await);
    }
    assert_eq!(codes, [250, 250, 550, 451, 250, 354]);
    c.send("Subject: t\r\n\r\n..one dot\r\n...two dots\r\n.\r\n")
        .await;
    assert_eq!(c.code().await, 250);
    c.send("QUIT\r\n").await;
    assert_eq!(c.code().await, 221);
    assert_eq!(c.reply().await, None, "closed after QUIT");

    let m = &sink.wait_for_messages(1, WAIT).await[0];
    assert_eq!(m.mail_from, "s@origin.test");
    assert_eq!(m.mail_params, ["BODY=8BITMIME", "SMTPUTF8"]);
    assert_eq!(m.rcpt_to, ["good@dest.test", "also-good@dest.test"]);
    assert_eq!(m.data, b"Subject: t\r\n\r\n.one dot\r\n..two dots\r\n");
    assert!(m.reply.starts_with("250"));
    sink.wait_for_idle(WAIT).await;
}

#[tokio::test]
async fn raw_retry_then_success_sequences() {
    let sink = SmtpSink::builder()
        .rcpt_reply_first_transactions(1, "451 4.3.0 Try later")
        .data_replies(["451 4.7.1 slow down"])
        .rcpt_reply_times("flaky@", "452 4.2.2 Mailbox full", 1)
        .rcpt_reply_exact("exact@dest.test", "550 5.1.1 Exactly this one")
        .start()
        .await;
    let mut c = Raw::connect(&sink).await;
    c.ehlo().await;
    let mut transaction = async |rcpts: &[&str]| -> Vec<u16> {
        c.send("MAIL FROM:<>\r\n").await;
        let mut codes = vec![c.code().await];
        for r in rcpts {
            c.send(&format!("RCPT TO:<{r}>\r\n")).await;
            codes.push(c.code().await);
        }
        c.send("DATA\r\n").await;
        let code = c.code().await;
        codes.push(code);
        if code == 354 {
            c.send("x\r\n.\r\n").await;
            codes.push(c.code().await);
        } else {
            c.send("RSET\r\n").await;
            assert_eq!(c.code().await, 250);
        }
        codes
    };
    let everyone = [
        "a@dest.test",
        "flaky@dest.test",
        "exact@dest.test",
        "xexact@dest.test",
    ];
    // 1st transaction: every RCPT deferred, so DATA has no recipient.
    assert_eq!(transaction(&everyone).await, [250, 451, 451, 451, 451, 554]);
    // 2nd: rules apply; flaky is deferred once; the end of data is deferred.
    assert_eq!(
        transaction(&everyone).await,
        [250, 250, 452, 550, 250, 354, 451]
    );
    // 3rd: flaky now accepted, data accepted.
    assert_eq!(
        transaction(&everyone).await,
        [250, 250, 250, 550, 250, 354, 250]
    );

    let attempts = sink.wait_for_attempts(2, WAIT).await;
    assert!(attempts[0].reply.starts_with("451"));
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].mail_from, "");
    assert_eq!(
        messages[0].rcpt_to,
        ["a@dest.test", "flaky@dest.test", "xexact@dest.test"]
    );
    assert_eq!(messages[0].data, b"x\r\n");
    assert_eq!(sink.messages_per_connection(), [1]);
}

#[tokio::test]
async fn raw_refusing_greeting_closes() {
    let sink = SmtpSink::builder()
        .greeting("421 4.7.0 Too busy")
        .start()
        .await;
    let mut c = Raw::connect(&sink).await;
    assert_eq!(c.reply().await.as_deref(), Some("421 4.7.0 Too busy"));
    assert_eq!(c.reply().await, None);
    assert_eq!(sink.connections(), 1);
}

#[tokio::test]
async fn raw_421_at_data_end_closes_and_multiline_replies() {
    let sink = SmtpSink::builder()
        .data_reply("421 4.7.0 first line\n421 4.7.0 go away")
        .start()
        .await;
    let mut c = Raw::connect(&sink).await;
    c.ehlo().await;
    c.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        .await;
    assert_eq!(
        [c.code().await, c.code().await, c.code().await],
        [250, 250, 354]
    );
    c.send("x\r\n.\r\n").await;
    assert_eq!(
        c.reply().await.as_deref(),
        Some("421-4.7.0 first line\n421 4.7.0 go away")
    );
    assert_eq!(c.reply().await, None);
    assert!(sink.messages().is_empty());
    assert_eq!(sink.attempts().len(), 1);
}

#[tokio::test]
async fn raw_extension_switches_are_enforced() {
    let sink = SmtpSink::builder()
        .no_8bitmime()
        .no_smtputf8()
        .size(1000)
        .start()
        .await;
    let mut c = Raw::connect(&sink).await;
    let ehlo = c.ehlo().await;
    assert!(
        !ehlo.contains("8BITMIME") && !ehlo.contains("SMTPUTF8"),
        "{ehlo}"
    );
    assert!(ehlo.contains("SIZE 1000"), "{ehlo}");
    c.send("MAIL FROM:<a@b.test> BODY=8BITMIME\r\n").await;
    assert_eq!(c.code().await, 555);
    c.send("MAIL FROM:<a@b.test> SMTPUTF8\r\n").await;
    assert_eq!(c.code().await, 555);
    c.send("MAIL FROM:<a@b.test> SIZE=1001\r\n").await;
    assert_eq!(c.code().await, 552);
    c.send("MAIL FROM:<a@b.test> SIZE=999 BODY=7BIT\r\n").await;
    assert_eq!(c.code().await, 250);
    c.send("MAIL FROM:<a@b.test>\r\n").await;
    assert_eq!(c.code().await, 503);
}

#[tokio::test]
async fn raw_delay_and_stall_after_data() {
    let sink = SmtpSink::builder()
        .delay(Duration::from_millis(150))
        .stall_after_data()
        .start()
        .await;
    let start = Instant::now();
    let mut c = Raw::connect(&sink).await;
    c.ehlo().await;
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "two delayed replies"
    );
    c.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        .await;
    assert_eq!(
        [c.code().await, c.code().await, c.code().await],
        [250, 250, 354]
    );
    c.send("x\r\n.\r\n").await;
    let attempts = sink.wait_for_attempts(1, WAIT).await;
    assert_eq!(attempts[0].reply, "");
    // The sink recorded the end of data and never answers it.
    let mut line = String::new();
    let silent =
        tokio::time::timeout(Duration::from_millis(500), c.reader.read_line(&mut line)).await;
    assert!(silent.is_err(), "unexpected reply {line:?}");
    assert_eq!(sink.active_connections(), 1);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn raw_disconnect_after_data() {
    let sink = SmtpSink::builder().disconnect_after_data().start().await;
    let mut c = Raw::connect(&sink).await;
    c.ehlo().await;
    c.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        .await;
    assert_eq!(
        [c.code().await, c.code().await, c.code().await],
        [250, 250, 354]
    );
    c.send("x\r\n.\r\n").await;
    assert_eq!(c.reply().await, None);
    assert_eq!(sink.attempts().len(), 1);
}

#[tokio::test]
async fn raw_counts_connections_and_concurrency() {
    let sink = SmtpSink::builder()
        .bind("127.0.0.2:0".parse().unwrap())
        .start()
        .await;
    assert_eq!(sink.addr().ip(), IpAddr::from([127, 0, 0, 2]));
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = Raw::connect(&sink).await;
        assert_eq!(c.code().await, 220);
        open.push(c);
    }
    assert_eq!(sink.wait_for_connections(3, WAIT).await, 3);
    assert_eq!(sink.max_concurrent(), 3);
    assert_eq!(sink.active_connections(), 3);
    drop(open);
    sink.wait_for_idle(WAIT).await;

    let mut c = Raw::connect(&sink).await;
    c.ehlo().await;
    for _ in 0..2 {
        c.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
            .await;
        assert_eq!(
            [c.code().await, c.code().await, c.code().await],
            [250, 250, 354]
        );
        c.send("x\r\n.\r\n").await;
        assert_eq!(c.code().await, 250);
    }
    let got = sink.wait_for_messages(2, WAIT).await;
    assert!(got.iter().all(|m| m.connection == 3));
    assert_eq!(sink.connections(), 4);
    assert_eq!(sink.max_concurrent(), 3);
    assert_eq!(sink.messages_per_connection(), [0, 0, 0, 2]);
}

#[tokio::test]
#[should_panic(expected = "waited")]
async fn wait_for_messages_panics_at_the_deadline() {
    let sink = SmtpSink::start_default().await;
    sink.wait_for_messages(1, Duration::from_millis(50)).await;
}

#[tokio::test]
async fn dropping_the_sink_closes_its_connections() {
    // 127.0.0.3 is used by no other test here, so no one can reuse the port.
    let sink = SmtpSink::builder()
        .bind("127.0.0.3:0".parse().unwrap())
        .start()
        .await;
    let mut c = Raw::connect(&sink).await;
    c.ehlo().await;
    let addr = sink.addr();
    drop(sink);
    assert_eq!(c.reply().await, None);
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn raw_mail_reply_sequence_and_simple_verbs() {
    let sink = SmtpSink::builder()
        .mail_replies(["451 4.3.2 Not now"])
        .start()
        .await;
    let mut c = Raw::connect(&sink).await;
    assert_eq!(c.code().await, 220);
    c.send("MAIL FROM:<a@b.test>\r\n").await;
    assert_eq!(c.code().await, 503, "MAIL before HELO");
    c.send("HELO raw.test\r\n").await;
    assert_eq!(c.code().await, 250);
    c.send("MAIL FROM:<a@b.test>\r\n").await;
    assert_eq!(c.code().await, 451);
    c.send("RCPT TO:<c@d.test>\r\n").await;
    assert_eq!(c.code().await, 503, "no transaction after a refused MAIL");
    c.send("MAIL FROM:<a@b.test>\r\nNOOP\r\nVRFY x\r\nRSET\r\nDATA\r\nBOGUS\r\n")
        .await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(c.code().await);
    }
    assert_eq!(codes, [250, 250, 252, 250, 503, 500]);
    let lines: Vec<String> = sink.commands().into_iter().map(|c| c.line).collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[9], "BOGUS");
}
