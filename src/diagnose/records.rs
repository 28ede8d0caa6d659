//! `outpost domain check`: looks up what a sending domain publishes and says, record
//! by record, what is right and what to change (SPEC §5.3). It reads DNS only
//! through the [`Resolver`] trait, so tests point it at a loopback DNS server.
//!
//! SPF is walked the way a receiver would (RFC 7208): its syntax, whether it
//! authorizes this server, and the count of DNS-querying terms across includes and
//! redirects (at most 10, §4.6.4). DKIM keys must be published and equal to the
//! stored ones. DMARC must exist (RFC 7489); `p=none` is reported as a start, not an
//! error. The return-path (bounce) domain must receive mail here.

use crate::dkim::records::{dkim_name, dkim_value, spf_value};
use crate::dns::{MxAnswer, Resolver};
use crate::store::SendingDomain;
use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;

/// RFC 7208 §4.6.4: at most 10 terms that cause DNS queries.
pub const SPF_LOOKUP_LIMIT: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `spf`, `dkim`, `dmarc` or `return-path`.
    pub record: &'static str,
    pub severity: Severity,
    pub message: String,
    /// What to change, when something should change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub domain: String,
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when some finding is an error: the command then exits non-zero.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Who "this server" is for the checks.
pub struct ThisServer<'a> {
    pub hostname: &'a str,
    /// Where bounces go: the domain's return-path host (`bounce::return_path::host_for`).
    pub bounce_domain: &'a str,
}

struct Findings(Vec<Finding>);

impl Findings {
    fn ok(&mut self, record: &'static str, message: String) {
        self.push(record, Severity::Ok, message, None);
    }
    fn warn(&mut self, record: &'static str, message: String, fix: String) {
        self.push(record, Severity::Warning, message, Some(fix));
    }
    fn error(&mut self, record: &'static str, message: String, fix: String) {
        self.push(record, Severity::Error, message, Some(fix));
    }
    fn push(
        &mut self,
        record: &'static str,
        severity: Severity,
        message: String,
        fix: Option<String>,
    ) {
        self.0.push(Finding {
            record,
            severity,
            message,
            fix,
        });
    }
}

/// Checks every record of `domain` as published in DNS.
pub async fn check(
    resolver: &dyn Resolver,
    domain: &SendingDomain,
    server: &ThisServer<'_>,
) -> Report {
    let server_ips = resolver
        .addresses(server.hostname)
        .await
        .unwrap_or_default();
    let mut findings = Findings(Vec::new());
    check_spf(resolver, &domain.name, server, &server_ips, &mut findings).await;
    check_dkim(resolver, domain, &mut findings).await;
    check_dmarc(resolver, &domain.name, &mut findings).await;
    check_return_path(resolver, server, &server_ips, &mut findings).await;
    Report {
        domain: domain.name.clone(),
        findings: findings.0,
    }
}

/// The one `v=spf1` record at `name`: `Ok(None)` when there is none, `Err` with the
/// count when there are several (RFC 7208 §4.5: that is a permanent error).
async fn spf_record(resolver: &dyn Resolver, name: &str) -> Result<Option<String>, String> {
    let texts = resolver.txt(name).await.map_err(|e| e.to_string())?;
    let spf: Vec<String> = texts
        .into_iter()
        .filter(|t| {
            t.eq_ignore_ascii_case("v=spf1") || t.to_ascii_lowercase().starts_with("v=spf1 ")
        })
        .collect();
    match spf.len() {
        0 => Ok(None),
        1 => Ok(spf.into_iter().next()),
        n => Err(format!(
            "{name} has {n} SPF records; receivers treat that as a permanent error"
        )),
    }
}

async fn check_spf(
    resolver: &dyn Resolver,
    domain: &str,
    server: &ThisServer<'_>,
    server_ips: &[IpAddr],
    findings: &mut Findings,
) {
    let suggestion = spf_value(server.hostname, server_ips);
    let record = match spf_record(resolver, domain).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            findings.error(
                "spf",
                format!("{domain} has no SPF record"),
                format!("publish TXT \"{suggestion}\" at {domain}"),
            );
            return;
        }
        Err(e) => {
            findings.error(
                "spf",
                e,
                format!("publish exactly one v=spf1 record at {domain}, e.g. \"{suggestion}\""),
            );
            return;
        }
    };
    let mut walk = SpfWalk {
        hostname: server.hostname,
        server_ips,
        lookups: 0,
        covers: false,
        problems: Vec::new(),
    };
    // Records still to read: (domain, text). Includes and redirects are added as found.
    let mut pending = vec![(domain.to_string(), record.clone())];
    while let Some((name, text)) = pending.pop() {
        for target in walk.terms(resolver, &name, &text).await {
            if walk.lookups > SPF_LOOKUP_LIMIT {
                break;
            }
            match spf_record(resolver, &target).await {
                Ok(Some(r)) => pending.push((target, r)),
                Ok(None) => walk.problems.push((
                    format!("{target} (included from {name}) has no SPF record"),
                    format!("remove include:{target} or have {target} publish one"),
                )),
                Err(e) => walk
                    .problems
                    .push((e, format!("fix the SPF records of {target}"))),
            }
        }
    }
    for (message, fix) in walk.problems {
        findings.error("spf", message, fix);
    }
    if walk.lookups > SPF_LOOKUP_LIMIT {
        findings.error(
            "spf",
            format!(
                "SPF of {domain} needs more than {SPF_LOOKUP_LIMIT} DNS lookups ({}+); receivers fail it",
                walk.lookups
            ),
            "replace include:/a/mx terms by ip4:/ip6: ranges, or drop unused includes".into(),
        );
    } else {
        findings.ok(
            "spf",
            format!(
                "SPF of {domain} needs {} DNS lookup(s) of {SPF_LOOKUP_LIMIT}",
                walk.lookups
            ),
        );
    }
    if walk.covers {
        findings.ok(
            "spf",
            format!("SPF of {domain} authorizes {}", server.hostname),
        );
    } else {
        findings.error(
            "spf",
            format!(
                "SPF of {domain} does not authorize this server ({})",
                server.hostname
            ),
            format!(
                "add a:{} to the record (\"{record}\"), e.g. \"{suggestion}\"",
                server.hostname
            ),
        );
    }
}

struct SpfWalk<'a> {
    hostname: &'a str,
    server_ips: &'a [IpAddr],
    lookups: usize,
    covers: bool,
    /// (what is wrong, what to change).
    problems: Vec<(String, String)>,
}

impl SpfWalk<'_> {
    /// Reads one record's terms (RFC 7208 §4.6.1); returns the domains it includes
    /// or redirects to.
    async fn terms(&mut self, resolver: &dyn Resolver, name: &str, text: &str) -> Vec<String> {
        let mut next = Vec::new();
        for term in text.split_whitespace().skip(1) {
            let lower = term.to_ascii_lowercase();
            let mechanism = lower.trim_start_matches(['+', '-', '~', '?']);
            let (kind, arg) = match mechanism.split_once([':', '=']) {
                Some((k, a)) => (k, Some(a)),
                None => (mechanism.split('/').next().unwrap_or(mechanism), None),
            };
            let target = || {
                arg.map_or(name.to_string(), |a| {
                    a.split('/').next().unwrap_or(a).to_string()
                })
            };
            match kind {
                "all" if arg.is_none() => {}
                "include" | "redirect" => {
                    self.lookups += 1;
                    match arg {
                        Some(a) if !a.is_empty() => next.push(a.to_string()),
                        _ => self.syntax(name, term),
                    }
                }
                "a" => {
                    self.lookups += 1;
                    let host = target();
                    let ips = resolver.addresses(&host).await.unwrap_or_default();
                    if host.eq_ignore_ascii_case(self.hostname)
                        || ips.iter().any(|ip| self.server_ips.contains(ip))
                    {
                        self.covers = true;
                    }
                }
                "mx" => {
                    self.lookups += 1;
                    if let Ok(MxAnswer::Exchanges(hosts)) = resolver.mx(&target()).await {
                        for (_, host) in hosts {
                            let ips = resolver.addresses(&host).await.unwrap_or_default();
                            if host.eq_ignore_ascii_case(self.hostname)
                                || ips.iter().any(|ip| self.server_ips.contains(ip))
                            {
                                self.covers = true;
                            }
                        }
                    }
                }
                "ptr" => {
                    self.lookups += 1;
                    self.problems.push((
                        format!("SPF of {name} uses ptr, which RFC 7208 §5.5 says not to use"),
                        "replace ptr with ip4:/ip6: or a: terms".into(),
                    ));
                }
                "exists" => self.lookups += 1,
                "ip4" | "ip6" => {
                    let Some(a) = arg else {
                        self.syntax(name, term);
                        continue;
                    };
                    let net = a
                        .parse::<IpNet>()
                        .or_else(|_| a.parse::<IpAddr>().map(IpNet::from));
                    match net {
                        Ok(net) if (kind == "ip4") == net.addr().is_ipv4() => {
                            if self.server_ips.iter().any(|ip| net.contains(ip)) {
                                self.covers = true;
                            }
                        }
                        _ => self.syntax(name, term),
                    }
                }
                // Unknown modifiers (name=value) are ignored (RFC 7208 §6).
                "exp" => {}
                _ if mechanism.contains('=') => {}
                _ => self.syntax(name, term),
            }
        }
        next
    }

    fn syntax(&mut self, name: &str, term: &str) {
        self.problems.push((
            format!("SPF of {name} has an invalid term {term:?}"),
            format!("correct or remove {term:?} (RFC 7208 §4.6.1)"),
        ));
    }
}

async fn check_dkim(resolver: &dyn Resolver, domain: &SendingDomain, findings: &mut Findings) {
    for key in &domain.keys {
        let name = dkim_name(&domain.name, key);
        let expected = dkim_value(key);
        let published = match resolver.txt(&name).await {
            Ok(texts) => texts,
            Err(e) if e.is_permanent() => Vec::new(),
            Err(e) => {
                findings.error(
                    "dkim",
                    format!("cannot look up {name}: {e}"),
                    "try again; check the DNS servers".into(),
                );
                continue;
            }
        };
        let Some(text) = published.iter().find(|t| t.contains("p=")) else {
            findings.error(
                "dkim",
                format!("no DKIM key published at {name}"),
                format!(
                    "publish TXT \"{expected}\" at {name} (outpost domain dns {})",
                    domain.name
                ),
            );
            continue;
        };
        if public_key_of(text) == public_key_of(&expected) {
            findings.ok(
                "dkim",
                format!(
                    "{name} publishes the {} key Outpost signs with",
                    key.algorithm.as_str()
                ),
            );
        } else {
            findings.error(
                "dkim",
                format!(
                    "{name} publishes a key that does not match the stored {} key",
                    key.algorithm.as_str()
                ),
                format!("replace the TXT record at {name} with \"{expected}\""),
            );
        }
    }
}

/// The `p=` tag of a DKIM record, whitespace removed (RFC 6376 §3.6.1 allows folding).
fn public_key_of(record: &str) -> Option<String> {
    record.split(';').find_map(|tag| {
        let (name, value) = tag.split_once('=')?;
        (name.trim() == "p").then(|| value.split_whitespace().collect())
    })
}

async fn check_dmarc(resolver: &dyn Resolver, domain: &str, findings: &mut Findings) {
    let name = format!("_dmarc.{domain}");
    let starter = format!(
        "v=DMARC1; p=none; rua=mailto:{}",
        crate::dkim::records::dmarc_report_address(domain)
    );
    let records: Vec<String> = resolver
        .txt(&name)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.to_ascii_lowercase().starts_with("v=dmarc1"))
        .collect();
    let record = match records.as_slice() {
        [] => {
            findings.error(
                "dmarc",
                format!("no DMARC record at {name}"),
                format!("publish TXT \"{starter}\" at {name}"),
            );
            return;
        }
        [one] => one,
        _ => {
            findings.error(
                "dmarc",
                format!("{name} has several DMARC records; receivers ignore them all"),
                "keep exactly one".into(),
            );
            return;
        }
    };
    let tags: Vec<(String, String)> = record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let tag = |name: &str| {
        tags.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match tag("p").map(str::to_ascii_lowercase).as_deref() {
        Some("reject") | Some("quarantine") => findings.ok(
            "dmarc",
            format!(
                "DMARC policy of {domain} is {}",
                tag("p").unwrap_or_default()
            ),
        ),
        Some("none") => findings.warn(
            "dmarc",
            format!(
                "DMARC policy of {domain} is p=none: reports only, spoofed mail is not stopped"
            ),
            "once the reports show your mail passing, move to p=quarantine, then p=reject".into(),
        ),
        other => findings.error(
            "dmarc",
            format!("DMARC record of {domain} has no valid p= tag ({other:?})"),
            format!("use \"{starter}\""),
        ),
    }
    if tag("rua").is_none() {
        findings.warn(
            "dmarc",
            format!("DMARC record of {domain} asks for no reports (no rua=)"),
            format!(
                "add rua=mailto:{}",
                crate::dkim::records::dmarc_report_address(domain)
            ),
        );
    }
    // Outpost signs with d=<domain>, so DKIM aligns under either mode; strict SPF
    // alignment fails when the envelope sender uses another domain.
    if tag("aspf") == Some("s") {
        findings.warn(
            "dmarc",
            format!("DMARC of {domain} asks for strict SPF alignment (aspf=s)"),
            "use aspf=r unless every envelope sender is exactly this domain".into(),
        );
    } else {
        findings.ok(
            "dmarc",
            format!("DKIM signatures of {domain} align with its From: domain"),
        );
    }
}

async fn check_return_path(
    resolver: &dyn Resolver,
    server: &ThisServer<'_>,
    server_ips: &[IpAddr],
    findings: &mut Findings,
) {
    let bounce = server.bounce_domain;
    let fix = format!("publish MX \"10 {}.\" at {bounce}", server.hostname);
    match resolver.mx(bounce).await {
        Ok(MxAnswer::Exchanges(hosts)) => {
            let mut ours = false;
            for (_, host) in &hosts {
                let ips = resolver.addresses(host).await.unwrap_or_default();
                ours |= host.eq_ignore_ascii_case(server.hostname)
                    || ips.iter().any(|ip| server_ips.contains(ip));
            }
            if ours {
                findings.ok(
                    "return-path",
                    format!("bounces to {bounce} reach this server"),
                );
            } else {
                findings.error(
                    "return-path",
                    format!(
                        "the MX of {bounce} ({}) is not this server",
                        hosts
                            .iter()
                            .map(|(_, h)| h.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    fix,
                );
            }
        }
        Ok(MxAnswer::None)
            if !server_ips.is_empty() && bounce.eq_ignore_ascii_case(server.hostname) =>
        {
            findings.warn(
                "return-path",
                format!("{bounce} has no MX; mail falls back to its address"),
                fix,
            );
        }
        Ok(MxAnswer::None) | Ok(MxAnswer::Null) => findings.error(
            "return-path",
            format!(
                "{bounce} does not receive mail here (no MX to {})",
                server.hostname
            ),
            fix,
        ),
        Err(e) => findings.error(
            "return-path",
            format!("cannot look up MX of {bounce}: {e}"),
            fix,
        ),
    }
}
