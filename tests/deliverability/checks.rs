//! `outpost domain check` against a FakeDns serving a good zone and deliberately
//! broken ones (each broken record must be reported), and `outpost check` probing
//! Outpost's own listeners, a sink that offers AUTH in clear, a closed port and a
//! port that never answers.

use crate::support::common;
use crate::support::fakes;

use common::{HOSTNAME, MAX_MESSAGE_SIZE, Server, within};
use fakes::dns::FakeDns;
use fakes::sink::SmtpSink;
use outpost::config::ListenerMode;
use outpost::diagnose::probe::{Port, ProbeLimits, Verdict, probe};
use outpost::diagnose::records::{Report, Severity, ThisServer, check};
use outpost::dkim::records::{dkim_name, dkim_value};
use outpost::dns::HickoryResolver;
use outpost::store::SendingDomain;
use std::process::Command;
use std::time::{Duration, Instant};

const DOMAIN: &str = "brand.example";

/// A zone in which everything is right for `domain` sent from `relay.test`.
fn good_zone(domain: &SendingDomain) -> String {
    let mut zone = String::new();
    for key in &domain.keys {
        zone.push_str(&format!(
            "{} TXT \"{}\"\n",
            dkim_name(DOMAIN, key),
            dkim_value(key)
        ));
    }
    zone.push_str(&format!(
        "{DOMAIN} TXT \"v=spf1 include:_spf.esp.example a:{HOSTNAME} ~all\"\n\
         {DOMAIN} TXT \"google-site-verification=abc\"\n\
         {DOMAIN} MX 10 mx.{DOMAIN}\n\
         _spf.esp.example TXT \"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all\"\n\
         _dmarc.{DOMAIN} TXT \"v=DMARC1; p=none; rua=mailto:dmarc-reports@{DOMAIN}\"\n\
         {HOSTNAME} A 127.0.0.1\n\
         {HOSTNAME} MX 10 {HOSTNAME}\n"
    ));
    zone
}

/// `zone` with the lines containing `remove` dropped and `add` appended.
fn edit(zone: &str, remove: &str, add: &str) -> String {
    let mut out: String = zone
        .lines()
        .filter(|l| remove.is_empty() || !l.contains(remove))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(add);
    out
}

async fn run_check(dns: &FakeDns, domain: &SendingDomain) -> Report {
    let resolver = HickoryResolver::new(&[dns.addr()]).unwrap();
    let server = ThisServer {
        hostname: HOSTNAME,
        bounce_domain: HOSTNAME,
    };
    within("domain check", check(&resolver, domain, &server)).await
}

fn errors(report: &Report) -> Vec<(&'static str, String)> {
    report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| (f.record, f.message.clone()))
        .collect()
}

#[tokio::test]
async fn domain_check_passes_a_good_zone_and_reports_each_broken_record() {
    let domain = outpost::dkim::generate(DOMAIN, true, chrono::Utc::now()).unwrap();
    let good = good_zone(&domain);
    let dns = FakeDns::start(&good).await;
    let report = run_check(&dns, &domain).await;
    assert!(!report.has_errors(), "{:#?}", report.findings);
    for record in ["spf", "dkim", "dmarc", "return-path"] {
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.record == record && f.severity == Severity::Ok),
            "no ok finding for {record}: {:#?}",
            report.findings
        );
    }
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.record == "dmarc" && f.severity == Severity::Warning),
        "p=none is worth a warning"
    );

    let other_key = outpost::dkim::generate(DOMAIN, false, chrono::Utc::now()).unwrap();
    let rsa_name = dkim_name(DOMAIN, &domain.keys[0]);
    let includes: String = (0..11)
        .map(|i| {
            format!(
                "i{i}.spf.example TXT \"v=spf1 include:i{}.spf.example ~all\"\n",
                i + 1
            )
        })
        .chain(std::iter::once(
            "i11.spf.example TXT \"v=spf1 -all\"\n".to_string(),
        ))
        .collect();
    let broken = [
        (
            "no SPF",
            edit(&good, "v=spf1 include:_spf", ""),
            "spf",
            "no SPF record",
        ),
        (
            "SPF without this server",
            edit(
                &good,
                "v=spf1 include:_spf",
                &format!("{DOMAIN} TXT \"v=spf1 ip4:198.51.100.7 -all\"\n"),
            ),
            "spf",
            "does not authorize",
        ),
        (
            "SPF syntax",
            edit(
                &good,
                "v=spf1 include:_spf",
                &format!("{DOMAIN} TXT \"v=spf1 a:{HOSTNAME} ip4:300.1.1.1 bogus ~all\"\n"),
            ),
            "spf",
            "invalid term",
        ),
        (
            "two SPF records",
            edit(&good, "", &format!("{DOMAIN} TXT \"v=spf1 -all\"\n")),
            "spf",
            "2 SPF records",
        ),
        (
            "SPF over 10 lookups",
            edit(
                &good,
                "v=spf1 include:_spf",
                &format!(
                    "{DOMAIN} TXT \"v=spf1 a:{HOSTNAME} include:i0.spf.example ~all\"\n{includes}"
                ),
            ),
            "spf",
            "more than 10 DNS lookups",
        ),
        (
            "DKIM missing",
            edit(&good, &rsa_name, ""),
            "dkim",
            "no DKIM key published",
        ),
        (
            "DKIM not matching",
            edit(
                &good,
                &rsa_name,
                &format!("{rsa_name} TXT \"{}\"\n", dkim_value(&other_key.keys[0])),
            ),
            "dkim",
            "does not match",
        ),
        (
            "DMARC missing",
            edit(&good, "_dmarc", ""),
            "dmarc",
            "no DMARC record",
        ),
        (
            "DMARC without policy",
            edit(
                &good,
                "_dmarc",
                &format!("_dmarc.{DOMAIN} TXT \"v=DMARC1; p=maybe\"\n"),
            ),
            "dmarc",
            "no valid p=",
        ),
        (
            "return path elsewhere",
            edit(
                &good,
                &format!("{HOSTNAME} MX"),
                &format!(
                    "{HOSTNAME} MX 10 mx.elsewhere.example\nmx.elsewhere.example A 192.0.2.99\n"
                ),
            ),
            "return-path",
            "is not this server",
        ),
    ];
    for (what, zone, record, message) in broken {
        dns.set_zone(&zone);
        let report = run_check(&dns, &domain).await;
        let errors = errors(&report);
        assert!(
            errors
                .iter()
                .any(|(r, m)| *r == record && m.contains(message)),
            "{what}: expected a {record} error containing {message:?}, got {errors:#?}"
        );
        // Only the broken record is reported as broken.
        assert!(
            errors.iter().all(|(r, _)| *r == record),
            "{what}: {errors:#?}"
        );
        assert!(
            report
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .all(|f| f.fix.is_some()),
            "{what}: every error says what to change"
        );
    }
}

fn outpost(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run outpost")
}

// Multi-threaded: the CLI runs as a blocking child process while FakeDns answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_commands_through_the_cli() {
    let dns = FakeDns::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"{HOSTNAME}\"\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"{}\"]\n",
            dir.path().join("data").display(),
            dns.addr()
        ),
    )
    .unwrap();
    let out = outpost(&config, &["domain", "add", DOMAIN, "--ed25519"]);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !printed.contains("PRIVATE") && !printed.contains("MII"),
        "keys are never printed: {printed}"
    );
    let out = outpost(&config, &["domain", "dns", DOMAIN, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = json["records"].as_array().unwrap();
    assert_eq!(records.len(), 5, "{json:#}");
    let zone: String = records
        .iter()
        .map(|r| {
            format!(
                "{} {} {}\n",
                r["name"].as_str().unwrap(),
                r["type"].as_str().unwrap(),
                if r["type"] == "TXT" {
                    format!("\"{}\"", r["value"].as_str().unwrap())
                } else {
                    r["value"].as_str().unwrap().to_string()
                }
            )
        })
        .collect();
    assert!(
        zone.contains(&format!("._domainkey.{DOMAIN} TXT \"v=DKIM1; k=rsa; p=")),
        "{zone}"
    );
    assert!(
        zone.contains(&format!(
            "._domainkey.{DOMAIN} TXT \"v=DKIM1; k=ed25519; p="
        )),
        "{zone}"
    );

    // Nothing published: the check fails and names each record.
    let out = outpost(&config, &["domain", "check", DOMAIN, "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failing: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| f["record"].as_str().unwrap())
        .collect();
    for record in ["spf", "dkim", "dmarc", "return-path"] {
        assert!(
            failing.contains(&record),
            "{record} not reported: {report:#}"
        );
    }
    // Publish exactly what `domain dns` printed (plus the server's address): it passes.
    dns.set_zone(&format!("{zone}{HOSTNAME} A 127.0.0.1\n"));
    let out = outpost(&config, &["domain", "check", DOMAIN]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let out = outpost(&config, &["domain", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(DOMAIN));
    assert!(
        outpost(&config, &["domain", "remove", DOMAIN])
            .status
            .success()
    );
    assert!(
        !outpost(&config, &["domain", "dns", DOMAIN])
            .status
            .success()
    );

    // Suppression list by hand.
    assert!(
        outpost(
            &config,
            &["suppress", "add", "Bob@Remote.example", "--domain", DOMAIN]
        )
        .status
        .success()
    );
    let out = outpost(&config, &["suppress", "list", "--domain", DOMAIN]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.contains("bob@remote.example") && listed.contains("manual"),
        "{listed}"
    );
    assert!(
        outpost(
            &config,
            &[
                "suppress",
                "remove",
                "bob@remote.example",
                "--domain",
                DOMAIN
            ]
        )
        .status
        .success()
    );
    assert!(
        !outpost(
            &config,
            &[
                "suppress",
                "remove",
                "bob@remote.example",
                "--domain",
                DOMAIN
            ]
        )
        .status
        .success()
    );
}

// Multi-threaded: the CLI at the end blocks while the in-process server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probes_outpost_a_clear_text_auth_server_and_dead_ports() {
    let server = Server::start().await;
    let sink = SmtpSink::builder().require_auth("u", "p").start().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let _silent_task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let ports = [
        Port::by_convention(server.port(ListenerMode::Relay)),
        Port::by_convention(server.port(ListenerMode::Submission)),
        Port {
            number: server.port(ListenerMode::Submissions),
            implicit_tls: true,
        },
        Port::by_convention(sink.port()),
        Port::by_convention(closed),
        Port::by_convention(silent_port),
        // Implicit TLS on a port that is not 465 and not named as such: found by
        // the silence before the banner.
        Port::by_convention(server.port(ListenerMode::Submissions)),
    ];
    let limits = ProbeLimits {
        connect: Duration::from_secs(2),
        total: Duration::from_secs(3),
        banner_wait: Duration::from_secs(1),
    };
    let started = Instant::now();
    let reports = within(
        "probe",
        probe(&no_dns(), "127.0.0.1", &ports, "probe.test", limits),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ports are probed concurrently, each bounded"
    );
    let [
        relay,
        submission,
        submissions,
        sink_report,
        closed_report,
        silent_report,
        detected,
    ] = reports.as_slice()
    else {
        panic!("{reports:#?}");
    };
    for r in [relay, submission, submissions, detected] {
        assert!(r.reachable, "{r:#?}");
        assert!(r.banner.as_deref().unwrap().starts_with("220 "), "{r:#?}");
        assert!(
            r.tls_version.as_deref().unwrap().starts_with("TLS 1."),
            "{r:#?}"
        );
        let cert = r.certificate.as_ref().unwrap();
        assert!(
            !cert.valid && cert.problem.as_deref() == Some("self-signed"),
            "the generated certificate is not trusted: {cert:#?}"
        );
        assert!(cert.days_left > 30, "{cert:#?}");
        assert!(
            r.findings.iter().any(|f| f.starts_with("certificate:")),
            "{r:#?}"
        );
        assert_eq!(r.verdict, Verdict::Warning);
        assert!(!r.auth_before_tls, "{r:#?}");
    }
    assert_eq!(relay.tls, "starttls");
    assert_eq!(submission.tls, "starttls");
    assert!(
        submission.auth.contains(&"PLAIN".to_string()),
        "{submission:#?}"
    );
    assert_eq!(submission.size, Some(MAX_MESSAGE_SIZE as u64));
    assert_eq!(submissions.tls, "implicit");
    assert!(submissions.extensions.contains(&"AUTH".to_string()));
    assert_eq!(detected.tls, "implicit", "{detected:#?}");
    assert_eq!(detected.banner, submissions.banner);

    assert!(sink_report.auth_before_tls, "{sink_report:#?}");
    assert!(
        sink_report
            .findings
            .iter()
            .any(|f| f.contains("before TLS")),
        "{sink_report:#?}"
    );

    assert!(!closed_report.reachable);
    assert_eq!(closed_report.verdict, Verdict::Unreachable);
    assert!(silent_report.reachable);
    assert_eq!(silent_report.verdict, Verdict::Fail);
    assert!(
        silent_report
            .findings
            .iter()
            .any(|f| f
                == "accepts connections but sent no banner within 1 s and did not answer a TLS handshake"),
        "{silent_report:#?}"
    );

    // The command line prints the same as JSON, and finds the host by name
    // through `[dns] nameservers`, as delivery does.
    let dns = FakeDns::start("mx.probe.test A 127.0.0.1\n").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!("[dns]\nnameservers = [\"{}\"]\n", dns.addr()),
    )
    .unwrap();
    let submissions_port = server.port(ListenerMode::Submissions).to_string();
    let out = tokio::task::spawn_blocking(move || {
        outpost(
            &config,
            &[
                "check",
                "mx.probe.test",
                "--port",
                &closed.to_string(),
                "--tls-port",
                &submissions_port,
                "--json",
            ],
        )
    })
    .await
    .unwrap();
    // An unreachable port: exit status 2, for monitoring.
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ports"][0]["verdict"], "unreachable", "{json:#}");
    assert_eq!(json["ports"][1]["tls"], "implicit", "{json:#}");
}

/// A resolver the probes above never ask: they name their host by address.
fn no_dns() -> HickoryResolver {
    HickoryResolver::new(&["127.0.0.1:9".parse().unwrap()]).unwrap()
}

/// Postfix's `smtp-sink` (a real Postfix SMTP server program, without STARTTLS)
/// on a loopback port: the probe reads its Postfix EHLO reply, finds no TLS and
/// AUTH offered in clear. `.ci/run` installs postfix.
#[tokio::test]
async fn check_reads_postfix_smtp_sink() {
    const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
    assert!(
        std::path::Path::new(SMTP_SINK).exists(),
        "{SMTP_SINK} is missing: install Debian's postfix package (.ci/run does)"
    );
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut command = tokio::process::Command::new(SMTP_SINK);
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root {
        // smtp-sink refuses to run as root without a user to switch to.
        command.args(["-u", "nobody"]);
    }
    let _postfix = command
        .arg(format!("127.0.0.1:{port}"))
        .arg("10")
        .kill_on_drop(true)
        .spawn()
        .expect("start smtp-sink");
    within("smtp-sink listening", async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let reports = within(
        "probe",
        probe(
            &no_dns(),
            "127.0.0.1",
            &[Port::by_convention(port)],
            "probe.test",
            ProbeLimits::default(),
        ),
    )
    .await;
    let r = &reports[0];
    assert!(r.reachable, "{r:#?}");
    assert!(r.banner.as_deref().unwrap().contains("smtp-sink"), "{r:#?}");
    assert!(
        r.extensions.contains(&"PIPELINING".to_string())
            && r.extensions.contains(&"8BITMIME".to_string()),
        "{r:#?}"
    );
    assert_eq!(r.tls, "none");
    assert!(
        r.auth_before_tls && r.auth.contains(&"PLAIN".to_string()),
        "{r:#?}"
    );
    assert!(r.findings.iter().any(|f| f.starts_with("no TLS")), "{r:#?}");
    assert_eq!(r.verdict, Verdict::Warning);
}
