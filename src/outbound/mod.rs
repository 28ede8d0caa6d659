//! Outbound: where a domain's mail goes (routes, MX, implicit MX, null MX) and
//! opening an SMTP session there, trying hosts and addresses in order.
//!
//! It knows nothing of the queue: it turns a domain into a connected
//! [`SmtpClient`] or into the reply to record for the recipients.

pub mod client;
pub mod tls;

pub use client::{ClientError, Envelope, RemoteReply, SessionParams, SmtpClient};
pub use tls::TlsClient;

use crate::config::{Config, RouteConfig, TlsPolicy};
use crate::dns::{DnsError, MxAnswer, Resolver};

/// The hosts to try for a domain, in order, and how to talk to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub hosts: Vec<(String, u16)>,
    pub tls: TlsPolicy,
    pub credentials: Option<(String, String)>,
}

/// The first matching `[[routes]]` entry: the exact domain, else `*`.
pub fn route_for<'a>(config: &'a Config, domain: &str) -> Option<&'a RouteConfig> {
    config
        .routes
        .iter()
        .find(|r| r.domain.eq_ignore_ascii_case(domain))
        .or_else(|| config.routes.iter().find(|r| r.domain == "*"))
}

/// Resolves where mail for `domain` goes. An `Err` is the reply to record for every
/// recipient at the domain: 5xx for a domain that cannot receive mail, 4xx for a
/// failure that may pass.
pub async fn destination(
    config: &Config,
    resolver: &dyn Resolver,
    domain: &str,
) -> Result<Destination, RemoteReply> {
    if let Some(route) = route_for(config, domain) {
        let (host, port) = route
            .to
            .rsplit_once(':')
            .expect("validated when the config was loaded");
        return Ok(Destination {
            hosts: vec![(
                host.trim_matches(['[', ']']).to_string(),
                port.parse().expect("validated port"),
            )],
            tls: route.tls.unwrap_or(config.delivery.tls),
            credentials: route.username.clone().zip(route.password.clone()),
        });
    }
    let port = config.delivery.mx_port;
    let tls = config.delivery.tls;
    if domain.starts_with('[') {
        // An address literal is its own host (RFC 5321 §4.1.3).
        return Ok(Destination {
            hosts: vec![(domain.to_string(), port)],
            tls,
            credentials: None,
        });
    }
    match resolver.mx(domain).await {
        Ok(MxAnswer::Exchanges(exchanges)) => Ok(Destination {
            hosts: exchanges
                .into_iter()
                .map(|(_, host)| (host, port))
                .collect(),
            tls,
            credentials: None,
        }),
        // RFC 5321 §5.1: no MX means the domain itself is the host.
        Ok(MxAnswer::None) => Ok(Destination {
            hosts: vec![(domain.to_string(), port)],
            tls,
            credentials: None,
        }),
        Ok(MxAnswer::Null) => Err(RemoteReply::local(
            556,
            [5, 1, 10],
            format!("domain {domain} does not accept mail (null MX, RFC 7505)"),
        )),
        Err(e) => Err(dns_failure(&e)),
    }
}

fn dns_failure(e: &DnsError) -> RemoteReply {
    if e.is_permanent() {
        RemoteReply::local(550, [5, 1, 2], e.to_string())
    } else {
        RemoteReply::local(451, [4, 4, 3], e.to_string())
    }
}

/// What delivery needs to open sessions.
pub struct Connector<'a> {
    pub config: &'a Config,
    pub resolver: &'a dyn Resolver,
    pub tls: &'a TlsClient,
}

impl Connector<'_> {
    /// Connects to the first host (and address) of `destination` that answers with a
    /// usable session. Opportunistic TLS that fails its handshake is retried in
    /// plaintext on the same address. The error is the reply to record.
    pub async fn open(&self, destination: &Destination) -> Result<SmtpClient, RemoteReply> {
        let mut last = RemoteReply::local(451, [4, 4, 1], "no host to deliver to");
        for (host, port) in &destination.hosts {
            let addresses = match self.resolver.addresses(host).await {
                Ok(a) if a.is_empty() => {
                    last = RemoteReply::local(
                        451,
                        [4, 4, 4],
                        format!("{host} has no address records"),
                    );
                    continue;
                }
                Ok(a) => a,
                Err(e) => {
                    let reply = dns_failure(&e);
                    // Only the domain itself being absent is permanent; a missing MX host is not.
                    last = if destination.hosts.len() == 1 && reply.is_permanent() {
                        reply
                    } else {
                        RemoteReply::local(451, [4, 4, 4], e.to_string())
                    };
                    continue;
                }
            };
            for ip in addresses {
                let mut params = SessionParams {
                    addr: std::net::SocketAddr::new(ip, *port),
                    server_name: host.trim_matches(['[', ']']),
                    helo: &self.config.hostname,
                    tls: destination.tls,
                    tls_client: self.tls,
                    credentials: destination
                        .credentials
                        .as_ref()
                        .map(|(u, p)| (u.as_str(), p.as_str())),
                    timeout: self.config.delivery.timeout.get(),
                };
                let mut result = SmtpClient::connect(&params).await;
                if let (Err(ClientError::Tls(reason)), TlsPolicy::Opportunistic) =
                    (&result, destination.tls)
                {
                    tracing::info!(host, %ip, reason, "opportunistic TLS failed; retrying in plaintext");
                    params.tls = TlsPolicy::None;
                    result = SmtpClient::connect(&params).await;
                }
                match result {
                    Ok(client) => return Ok(client),
                    Err(e) => {
                        tracing::info!(host, %ip, error = %e, "cannot open session");
                        last = e.as_reply();
                        // A 5xx greeting is the host's verdict on us, not on the
                        // recipients: keep trying, and in the end defer.
                        if last.is_permanent() {
                            last.code = 451;
                            last.enhanced = Some([4, 4, 1]);
                        }
                    }
                }
            }
        }
        Err(last)
    }
}
