//! `Resolver` on hickory-resolver: the system configuration, or the nameservers of
//! `[dns] nameservers`.

use super::{DnsError, DnsFuture, MxAnswer, Resolver};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub struct HickoryResolver {
    resolver: TokioResolver,
}

impl HickoryResolver {
    /// Uses `nameservers` when given, else the system's resolver configuration.
    pub fn new(nameservers: &[SocketAddr]) -> Result<HickoryResolver, String> {
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?
        } else {
            let servers = nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = Duration::from_secs(5);
        options.attempts = 2;
        // Names are absolute: never append a search domain.
        options.ndots = 0;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(HickoryResolver { resolver })
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// Maps hickory's error to ours: NXDOMAIN is permanent, an empty answer is data,
/// everything else is temporary.
fn classify(name: &str, err: NetError) -> Result<(), DnsError> {
    match &err {
        NetError::Dns(HickoryDnsError::NoRecordsFound(no))
            if no.response_code == ResponseCode::NXDomain =>
        {
            Err(DnsError::NotFound(name.to_string()))
        }
        NetError::Dns(HickoryDnsError::NoRecordsFound(no))
            if no.response_code == ResponseCode::NoError =>
        {
            Ok(())
        }
        _ => Err(DnsError::Temporary {
            name: name.to_string(),
            reason: err.to_string(),
        }),
    }
}

impl Resolver for HickoryResolver {
    fn mx(&self, domain: &str) -> DnsFuture<'_, MxAnswer> {
        let domain = domain.to_string();
        Box::pin(async move {
            let lookup = match self.resolver.mx_lookup(fqdn(&domain)).await {
                Ok(lookup) => lookup,
                Err(e) => return classify(&domain, e).map(|()| MxAnswer::None),
            };
            let mut exchanges: Vec<(u16, String)> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect();
            // RFC 7505 §3: a single MX with an empty exchange ("."), of any preference.
            if exchanges.len() == 1 && exchanges[0].1.trim_end_matches('.').is_empty() {
                return Ok(MxAnswer::Null);
            }
            exchanges.retain(|(_, host)| !host.trim_end_matches('.').is_empty());
            if exchanges.is_empty() {
                return Ok(MxAnswer::None);
            }
            // Equal preferences are tried in random order (RFC 5321 §5.1).
            exchanges.sort_by_key(|(pref, _)| (*pref, rand::random::<u16>()));
            Ok(MxAnswer::Exchanges(
                exchanges
                    .into_iter()
                    .map(|(p, h)| (p, h.trim_end_matches('.').to_ascii_lowercase()))
                    .collect(),
            ))
        })
    }

    fn addresses(&self, host: &str) -> DnsFuture<'_, Vec<IpAddr>> {
        let host = host.to_string();
        Box::pin(async move {
            if let Ok(ip) = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim_start_matches("IPv6:")
                .parse::<IpAddr>()
            {
                return Ok(vec![ip]);
            }
            match self.resolver.lookup_ip(fqdn(&host)).await {
                Ok(lookup) => Ok(lookup.iter().collect()),
                Err(e) => classify(&host, e).map(|()| Vec::new()),
            }
        })
    }

    fn txt(&self, name: &str) -> DnsFuture<'_, Vec<String>> {
        let name = name.to_string();
        Box::pin(async move {
            let lookup = match self.resolver.txt_lookup(fqdn(&name)).await {
                Ok(lookup) => lookup,
                Err(e) => return classify(&name, e).map(|()| Vec::new()),
            };
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect())
        })
    }
}
