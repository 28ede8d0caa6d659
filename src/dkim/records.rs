//! The DNS records a sending domain publishes (SPEC §5.1): its DKIM keys, an SPF
//! suggestion that covers this server, a DMARC starter policy, and the MX of the
//! return-path (bounce) domain.

use crate::store::{DkimAlgorithm, DkimKeyRecord, SendingDomain};
use base64::Engine;
use serde::Serialize;
use std::net::IpAddr;

/// Longest character-string in a TXT record (RFC 1035 §3.3).
const TXT_STRING_MAX: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsRecord {
    /// Fully qualified, without the trailing dot.
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: &'static str,
    /// The record data; for TXT the text, whole (see `strings` for its split).
    pub value: String,
    /// For TXT: the value split into character-strings of at most 255 bytes, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strings: Vec<String>,
    /// What the record is for.
    pub purpose: &'static str,
}

impl DnsRecord {
    fn txt(name: String, value: String, purpose: &'static str) -> DnsRecord {
        DnsRecord {
            strings: split_txt(&value),
            name,
            rtype: "TXT",
            value,
            purpose,
        }
    }

    /// The record as a zone-file line.
    pub fn zone_line(&self) -> String {
        let data = if self.rtype == "TXT" {
            self.strings
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            self.value.clone()
        };
        format!("{}.\tIN\t{}\t{data}", self.name, self.rtype)
    }
}

/// Splits TXT data into character-strings of at most 255 bytes (the text is ASCII).
pub fn split_txt(value: &str) -> Vec<String> {
    value
        .as_bytes()
        .chunks(TXT_STRING_MAX)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}

/// The `p=` text of a key's DKIM record (RFC 6376 §3.6.1, RFC 8463 §4.2).
pub fn dkim_value(key: &DkimKeyRecord) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        key.algorithm.as_str(),
        base64::engine::general_purpose::STANDARD.encode(&key.public_key)
    )
}

/// `<selector>._domainkey.<domain>`.
pub fn dkim_name(domain: &str, key: &DkimKeyRecord) -> String {
    format!("{}._domainkey.{domain}", key.selector)
}

/// The address DMARC aggregate reports go to in the suggested record.
pub fn dmarc_report_address(domain: &str) -> String {
    format!("dmarc-reports@{domain}")
}

/// Every record to publish for `domain`, sent from this server (`hostname`, whose
/// addresses are `server_ips` when known) with bounces going to `bounce_domain`.
pub fn records(
    domain: &SendingDomain,
    hostname: &str,
    server_ips: &[IpAddr],
    bounce_domain: &str,
) -> Vec<DnsRecord> {
    let mut out: Vec<DnsRecord> = domain
        .keys
        .iter()
        .map(|key| {
            DnsRecord::txt(
                dkim_name(&domain.name, key),
                dkim_value(key),
                match key.algorithm {
                    DkimAlgorithm::Rsa => "DKIM public key (rsa-sha256)",
                    DkimAlgorithm::Ed25519 => "DKIM public key (ed25519-sha256)",
                },
            )
        })
        .collect();
    out.push(DnsRecord::txt(
        domain.name.clone(),
        spf_value(hostname, server_ips),
        "SPF: authorizes this server; merge with an existing v=spf1 record, there must be only one",
    ));
    out.push(DnsRecord::txt(
        format!("_dmarc.{}", domain.name),
        format!(
            "v=DMARC1; p=none; rua=mailto:{}; adkim=r; aspf=r",
            dmarc_report_address(&domain.name)
        ),
        "DMARC starter: monitor only; move to p=quarantine once reports show all mail aligned",
    ));
    out.push(DnsRecord {
        name: bounce_domain.to_string(),
        rtype: "MX",
        value: format!("10 {hostname}."),
        strings: Vec::new(),
        purpose: "return path: bounces to the bounce domain reach this server",
    });
    out
}

/// `v=spf1 a:<hostname> [ip4:..] [ip6:..] ~all`. Loopback addresses (a host name
/// mapped to 127.0.1.1 in /etc/hosts) are left out: no receiver sees mail from them.
pub fn spf_value(hostname: &str, server_ips: &[IpAddr]) -> String {
    let mut value = format!("v=spf1 a:{hostname}");
    for ip in server_ips.iter().filter(|ip| !ip.is_loopback()) {
        match ip {
            IpAddr::V4(v4) => value.push_str(&format!(" ip4:{v4}")),
            IpAddr::V6(v6) => value.push_str(&format!(" ip6:{v6}")),
        }
    }
    value.push_str(" ~all");
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spf_never_advises_a_loopback_address() {
        let ips: Vec<IpAddr> = ["127.0.1.1", "203.0.113.7", "::1"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        assert_eq!(
            spf_value("mail.example.com", &ips),
            "v=spf1 a:mail.example.com ip4:203.0.113.7 ~all"
        );
    }

    #[test]
    fn long_dkim_record_is_split_at_255_bytes() {
        let domain = crate::dkim::generate("example.com", true, chrono::Utc::now()).unwrap();
        let records = records(
            &domain,
            "mx.relay.test",
            &["192.0.2.1".parse().unwrap()],
            "relay.test",
        );
        let rsa = &records[0];
        assert!(
            rsa.name.ends_with("._domainkey.example.com"),
            "{}",
            rsa.name
        );
        assert!(rsa.value.starts_with("v=DKIM1; k=rsa; p=MII"));
        assert!(rsa.strings.len() >= 2 && rsa.strings.iter().all(|s| s.len() <= 255));
        assert_eq!(rsa.strings.concat(), rsa.value);
        assert!(records[1].value.starts_with("v=DKIM1; k=ed25519; p="));
        assert_eq!(
            records[2].value,
            "v=spf1 a:mx.relay.test ip4:192.0.2.1 ~all"
        );
        assert_eq!(records[3].name, "_dmarc.example.com");
        assert!(records[3].value.contains("p=none") && records[3].value.contains("rua=mailto:"));
        assert_eq!(
            (records[4].rtype, records[4].value.as_str()),
            ("MX", "10 mx.relay.test.")
        );
        assert!(rsa.zone_line().contains("\" \""), "{}", rsa.zone_line());
    }
}
