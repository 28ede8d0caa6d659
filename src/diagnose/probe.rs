//! `outpost check HOST`: probes a mail server's ports the way a sending MTA or a
//! mail client would meet them (SPEC §5.3) and reports, per port: reachability, the
//! banner, the EHLO extensions, STARTTLS or implicit TLS, the TLS version, the
//! certificate's validity against the Mozilla roots and its expiry, the AUTH
//! mechanisms (offered before TLS is a finding), SIZE, and a verdict.
//!
//! Every step has a deadline ([`ProbeLimits`]): a port that does not answer is
//! reported as such, never waited on. A port not known to use implicit TLS that
//! sends no banner within [`ProbeLimits::banner_wait`] is tried with a TLS
//! handshake, so implicit TLS is found on any port. Host names are resolved
//! through the configured [`Resolver`] (`[dns] nameservers`), as delivery does. TLS is set up without verification (as
//! delivery does, [`TlsClient`]) so that a bad certificate is reported rather than
//! ending the probe; the certificate is then verified on its own.

use crate::dns::Resolver;
use crate::outbound::TlsClient;
use crate::outbound::client::{ClientError, parse_reply, read_reply_bytes};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{CertificateError, Error as TlsError};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The ports probed when none is given: SMTP, submissions, submission, alternate.
pub const DEFAULT_PORTS: [u16; 4] = [25, 465, 587, 2525];
/// The port on which TLS starts at once by default (RFC 8314).
pub const IMPLICIT_TLS_PORT: u16 = 465;
/// A certificate expiring sooner than this is a finding.
const EXPIRY_WARNING_DAYS: i64 = 14;

#[derive(Debug, Clone, Copy)]
pub struct ProbeLimits {
    /// To open the TCP connection.
    pub connect: Duration,
    /// For the whole conversation on one port.
    pub total: Duration,
    /// How long a port not known to use implicit TLS may stay silent before a TLS
    /// handshake is tried instead of waiting for a banner.
    pub banner_wait: Duration,
}

impl Default for ProbeLimits {
    fn default() -> Self {
        ProbeLimits {
            connect: Duration::from_secs(5),
            total: Duration::from_secs(15),
            banner_wait: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Nothing to change.
    Ok,
    /// Works, with findings.
    Warning,
    /// Answers, but a mail peer cannot use it (refused banner, TLS failure, no answer).
    Fail,
    Unreachable,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CertificateReport {
    pub subject: String,
    pub issuer: String,
    /// RFC 3339.
    pub not_after: String,
    pub days_left: i64,
    /// Verifies against the Mozilla roots for the probed name.
    pub valid: bool,
    /// `self-signed`, `expired`, `name mismatch`, `unknown issuer`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortReport {
    pub port: u16,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub banner: Option<String>,
    /// EHLO keywords, as offered after TLS when TLS was set up.
    pub extensions: Vec<String>,
    /// `implicit`, `starttls` or `none`.
    pub tls: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateReport>,
    pub auth: Vec<String>,
    pub auth_before_tls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub findings: Vec<String>,
    pub verdict: Verdict,
}

impl PortReport {
    fn new(port: u16) -> PortReport {
        PortReport {
            port,
            reachable: false,
            banner: None,
            extensions: Vec::new(),
            tls: "none",
            tls_version: None,
            certificate: None,
            auth: Vec::new(),
            auth_before_tls: false,
            size: None,
            findings: Vec::new(),
            verdict: Verdict::Unreachable,
        }
    }
}

/// Why a probe stopped early; becomes a finding and a `fail` verdict.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("no answer within {} s", .0.as_secs_f32())]
    Timeout(Duration),
    #[error(
        "accepts connections but sent no banner within {} s and did not answer a TLS handshake",
        .0.as_secs_f32()
    )]
    Silent(Duration),
    #[error("{0}")]
    Io(String),
    #[error("malformed reply")]
    Protocol,
    #[error("{stage} refused: {reply}")]
    Refused { stage: &'static str, reply: String },
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

/// A port to probe and whether TLS starts at once there (implicit TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub number: u16,
    pub implicit_tls: bool,
}

impl Port {
    /// Implicit TLS on 465, plaintext (with STARTTLS if offered) elsewhere.
    pub fn by_convention(number: u16) -> Port {
        Port {
            number,
            implicit_tls: number == IMPLICIT_TLS_PORT,
        }
    }
}

/// Probes `ports` of `host` (a name resolved through `resolver`, or an address)
/// concurrently; reports in the order of `ports`.
pub async fn probe(
    resolver: &dyn Resolver,
    host: &str,
    ports: &[Port],
    helo: &str,
    limits: ProbeLimits,
) -> Vec<PortReport> {
    let address = match resolve(resolver, host, limits.connect).await {
        Ok(address) => address,
        Err(finding) => {
            return ports
                .iter()
                .map(|port| {
                    let mut report = PortReport::new(port.number);
                    report.findings.push(finding.clone());
                    report
                })
                .collect();
        }
    };
    let tls = Arc::new(TlsClient::new());
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (host, helo, tls) = (host.to_string(), helo.to_string(), tls.clone());
        let address = SocketAddr::new(address, port.number);
        tasks.spawn(async move {
            let report = probe_port(&host, address, port, &helo, &tls, limits).await;
            (i, report)
        });
    }
    let mut reports: Vec<Option<PortReport>> = vec![None; ports.len()];
    while let Some(Ok((i, report))) = tasks.join_next().await {
        reports[i] = Some(report);
    }
    reports.into_iter().flatten().collect()
}

/// The address to probe: `host` itself when it is an IP address (bracketed or
/// not), else its first address in DNS. The error is the finding to report.
async fn resolve(resolver: &dyn Resolver, host: &str, wait: Duration) -> Result<IpAddr, String> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(ip);
    }
    match tokio::time::timeout(wait, resolver.addresses(host)).await {
        Ok(Ok(addresses)) => addresses
            .first()
            .copied()
            .ok_or_else(|| format!("cannot resolve {host}: it has no address")),
        Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
        Err(_) => Err(format!(
            "cannot resolve {host}: no DNS answer within {} s",
            wait.as_secs_f32()
        )),
    }
}

async fn probe_port(
    host: &str,
    address: SocketAddr,
    port: Port,
    helo: &str,
    tls: &TlsClient,
    limits: ProbeLimits,
) -> PortReport {
    let mut report = PortReport::new(port.number);
    let deadline = Instant::now() + limits.total;
    let tcp = match tokio::time::timeout(limits.connect, TcpStream::connect(address)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            report.findings.push(format!("cannot connect: {e}"));
            return report;
        }
        Err(_) => {
            report.findings.push(format!(
                "cannot connect: no answer within {} s",
                limits.connect.as_secs_f32()
            ));
            return report;
        }
    };
    report.reachable = true;
    let conversation = Conversation {
        host,
        helo,
        tls,
        deadline,
        banner_wait: limits.banner_wait,
    };
    let outcome = tokio::time::timeout_at(
        deadline,
        conversation.run(&mut report, tcp, port.implicit_tls),
    )
    .await
    .unwrap_or(Err(ProbeError::Timeout(limits.total)));
    if let Err(e) = outcome {
        report.findings.push(e.to_string());
        report.verdict = Verdict::Fail;
        return report;
    }
    judge(&mut report);
    report
}

/// What one port's conversation needs besides the report and the connection.
struct Conversation<'a> {
    host: &'a str,
    helo: &'a str,
    tls: &'a TlsClient,
    deadline: Instant,
    banner_wait: Duration,
}

impl Conversation<'_> {
    async fn run(
        &self,
        report: &mut PortReport,
        tcp: TcpStream,
        implicit_tls: bool,
    ) -> Result<(), ProbeError> {
        if implicit_tls {
            let wait = self.deadline.saturating_duration_since(Instant::now());
            return self.implicit_tls(report, tcp, wait).await;
        }
        let mut stream = BufReader::new(tcp);
        let wait = self
            .banner_wait
            .min(self.deadline.saturating_duration_since(Instant::now()));
        let banner = match read_reply(&mut stream, Instant::now() + wait).await {
            // Silent, not a byte sent: perhaps a TLS port (RFC 8314), whose server
            // waits for the client's hello. Nothing was read, so the same
            // connection carries the handshake.
            Err(ProbeError::Timeout(_)) if stream.buffer().is_empty() => {
                let tcp = stream.into_inner();
                return match self.implicit_tls(report, tcp, self.banner_wait).await {
                    Err(ProbeError::Tls(_) | ProbeError::Timeout(_)) => {
                        report.tls_version = None;
                        report.certificate = None;
                        report.tls = "none";
                        Err(ProbeError::Silent(self.banner_wait))
                    }
                    outcome => outcome,
                };
            }
            banner => banner?,
        };
        record_banner(report, banner)?;
        let plain = ehlo(&mut stream, self.helo, self.deadline).await?;
        read_extensions(report, &plain, false);
        if !report.extensions.iter().any(|e| e == "STARTTLS") {
            quit(&mut stream).await;
            return Ok(());
        }
        let (code, lines) = command(&mut stream, "STARTTLS", self.deadline).await?;
        if code != 220 {
            return Err(ProbeError::Refused {
                stage: "STARTTLS",
                reply: format!("{code} {}", lines.join(" ")),
            });
        }
        let stream = handshake(self.tls, self.server_name(), stream.into_inner(), report).await?;
        report.tls = "starttls";
        let mut stream = BufReader::new(stream);
        let secured = ehlo(&mut stream, self.helo, self.deadline).await?;
        read_extensions(report, &secured, true);
        quit(&mut stream).await;
        Ok(())
    }

    /// TLS from the first byte; the handshake gets at most `handshake_wait`.
    async fn implicit_tls(
        &self,
        report: &mut PortReport,
        tcp: TcpStream,
        handshake_wait: Duration,
    ) -> Result<(), ProbeError> {
        let handshake = handshake(self.tls, self.server_name(), tcp, report);
        let stream = tokio::time::timeout(handshake_wait, handshake)
            .await
            .map_err(|_| ProbeError::Timeout(handshake_wait))??;
        report.tls = "implicit";
        let mut stream = BufReader::new(stream);
        let banner = read_reply(&mut stream, self.deadline).await?;
        record_banner(report, banner)?;
        let ehlo = ehlo(&mut stream, self.helo, self.deadline).await?;
        read_extensions(report, &ehlo, true);
        quit(&mut stream).await;
        Ok(())
    }

    fn server_name(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

async fn handshake(
    tls: &TlsClient,
    server_name: &str,
    tcp: TcpStream,
    report: &mut PortReport,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProbeError> {
    let stream = tls
        .connect(server_name, tcp, false)
        .await
        .map_err(|e| ProbeError::Tls(e.to_string()))?;
    let (_, session) = stream.get_ref();
    report.tls_version = session.protocol_version().map(|v| {
        v.as_str().map_or_else(
            || format!("{v:?}"),
            |s| s.replace('_', ".").replace("TLSv1.", "TLS 1."),
        )
    });
    if let Some(chain) = session.peer_certificates() {
        report.certificate = Some(certificate_report(chain, server_name));
    }
    Ok(stream)
}

/// Describes the end-entity certificate and verifies the chain for `server_name`.
fn certificate_report(
    chain: &[rustls::pki_types::CertificateDer<'static>],
    server_name: &str,
) -> CertificateReport {
    let mut report = CertificateReport::default();
    let Some((end_entity, intermediates)) = chain.split_first() else {
        report.problem = Some("no certificate".into());
        return report;
    };
    let mut self_signed = false;
    match x509_parser::parse_x509_certificate(end_entity) {
        Ok((_, cert)) => {
            report.subject = cert.subject().to_string();
            report.issuer = cert.issuer().to_string();
            let not_after = cert.validity().not_after.timestamp();
            report.not_after = chrono::DateTime::from_timestamp(not_after, 0)
                .map_or_else(String::new, |t| t.to_rfc3339());
            report.days_left = (not_after - chrono::Utc::now().timestamp()).div_euclid(86_400);
            self_signed = cert.subject() == cert.issuer();
        }
        Err(e) => report.problem = Some(format!("unparsable certificate: {e}")),
    }
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verified = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())
        .and_then(|verifier| {
            let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
            verifier
                .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
                .map(|_| ())
                .map_err(|e| match e {
                    TlsError::InvalidCertificate(
                        CertificateError::Expired | CertificateError::ExpiredContext { .. },
                    ) => "expired".to_string(),
                    TlsError::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    ) => "name mismatch".to_string(),
                    // A self-signed certificate fails chain building with
                    // UnknownIssuer, or CaUsedAsEndEntity when it is marked as a CA.
                    _ if self_signed => "self-signed".to_string(),
                    TlsError::InvalidCertificate(CertificateError::UnknownIssuer) => {
                        "unknown issuer".to_string()
                    }
                    other => other.to_string(),
                })
        });
    match verified {
        Ok(()) => report.valid = true,
        Err(problem) => report.problem = report.problem.take().or(Some(problem)),
    }
    report
}

fn record_banner(
    report: &mut PortReport,
    (code, lines): (u16, Vec<String>),
) -> Result<(), ProbeError> {
    report.banner = Some(format!("{code} {}", lines.join(" ")));
    if code != 220 {
        return Err(ProbeError::Refused {
            stage: "greeting",
            reply: format!("{code} {}", lines.join(" ")),
        });
    }
    Ok(())
}

async fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    helo: &str,
    deadline: Instant,
) -> Result<Vec<String>, ProbeError> {
    let (code, lines) = command(stream, &format!("EHLO {helo}"), deadline).await?;
    if code != 250 {
        return Err(ProbeError::Refused {
            stage: "EHLO",
            reply: format!("{code} {}", lines.join(" ")),
        });
    }
    // The first line is the server's name, the others are extensions (RFC 5321 §4.1.1.1).
    Ok(lines.into_iter().skip(1).collect())
}

/// Records the extensions of an EHLO reply; `secured` tells whether TLS is up.
fn read_extensions(report: &mut PortReport, lines: &[String], secured: bool) {
    report.extensions = lines
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_ascii_uppercase)
        .collect();
    report.auth = Vec::new();
    for line in lines {
        let mut words = line.split_whitespace();
        match words.next().map(str::to_ascii_uppercase).as_deref() {
            Some("AUTH") => {
                report.auth = words.map(str::to_ascii_uppercase).collect();
                if !secured && !report.auth.is_empty() {
                    report.auth_before_tls = true;
                }
            }
            Some("SIZE") => report.size = words.next().and_then(|w| w.parse().ok()),
            _ => {}
        }
    }
}

/// The findings and the verdict of a probe that ran to the end.
fn judge(report: &mut PortReport) {
    if report.tls == "none" {
        report
            .findings
            .push("no TLS: neither STARTTLS nor implicit TLS is offered".into());
    }
    if report.auth_before_tls {
        report.findings.push(format!(
            "AUTH ({}) is offered before TLS: passwords can cross the network in clear",
            report.auth.join(" ")
        ));
    }
    if let Some(version) = &report.tls_version
        && (version.contains("1.0") || version.contains("1.1"))
    {
        report
            .findings
            .push(format!("{version} is obsolete (RFC 8996)"));
    }
    if let Some(cert) = &report.certificate {
        if let Some(problem) = &cert.problem {
            report.findings.push(format!("certificate: {problem}"));
        }
        if cert.days_left >= 0 && cert.days_left < EXPIRY_WARNING_DAYS {
            report
                .findings
                .push(format!("certificate expires in {} day(s)", cert.days_left));
        }
    }
    report.verdict = if report.findings.is_empty() {
        Verdict::Ok
    } else {
        Verdict::Warning
    };
}

async fn command<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    line: &str,
    deadline: Instant,
) -> Result<(u16, Vec<String>), ProbeError> {
    let inner = stream.get_mut();
    inner
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .map_err(|e| ProbeError::Io(e.to_string()))?;
    inner
        .flush()
        .await
        .map_err(|e| ProbeError::Io(e.to_string()))?;
    read_reply(stream, deadline).await
}

async fn quit<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut BufReader<S>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let inner = stream.get_mut();
        let _ = inner.write_all(b"QUIT\r\n").await;
        let _ = inner.shutdown().await;
    })
    .await;
}

/// Reads one reply before `deadline`: its code and the text of each line.
async fn read_reply<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    deadline: Instant,
) -> Result<(u16, Vec<String>), ProbeError> {
    let wait = deadline.saturating_duration_since(Instant::now());
    let raw = read_reply_bytes(stream, wait).await.map_err(|e| match e {
        ClientError::Timeout => ProbeError::Timeout(wait),
        ClientError::Protocol => ProbeError::Protocol,
        other => ProbeError::Io(other.to_string()),
    })?;
    let code = parse_reply(&raw).map_err(|_| ProbeError::Protocol)?.code;
    let lines = String::from_utf8_lossy(&raw)
        .lines()
        .map(|line| line.get(4..).unwrap_or("").trim_end().to_string())
        .collect();
    Ok((code, lines))
}
