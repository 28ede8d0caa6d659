//! Mailbox and domain newtypes: addresses as they appear in MAIL FROM / RCPT TO,
//! validated once so the rest of the code can rely on `local@domain` shape.

use std::fmt;

/// A lower-cased domain name or address literal (`[192.0.2.1]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Accepts LDH labels (and UTF-8 labels, for SMTPUTF8) or an address literal.
    pub fn parse(text: &str) -> Option<Domain> {
        let text = text.trim_end_matches('.');
        if text.is_empty() || text.len() > 255 {
            return None;
        }
        if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            // RFC 5321 §4.1.3: `[1.2.3.4]` or `[IPv6:...]`; the tag is matched without
            // regard to case and written in its canonical form.
            let (tag, ip) = match inner.get(..5) {
                Some(t) if t.eq_ignore_ascii_case("IPv6:") => ("IPv6:", &inner[5..]),
                _ => ("", inner),
            };
            return match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V6(v6)) if !tag.is_empty() => {
                    Some(Domain(format!("[IPv6:{v6}]")))
                }
                Ok(std::net::IpAddr::V4(v4)) if tag.is_empty() => Some(Domain(format!("[{v4}]"))),
                _ => None,
            };
        }
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        };
        // Only ASCII is folded: full Unicode lower-casing can turn a valid label
        // into an invalid one (`İ` becomes `i` + a combining dot).
        text.split('.')
            .all(valid_label)
            .then(|| Domain(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_address_literal(&self) -> bool {
        self.0.starts_with('[')
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest local part accepted, in octets (the command line limit bounds it too).
pub const MAX_LOCAL_PART: usize = 1024;

/// `local@domain`, with the local part kept as sent (it may be case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    local: String,
    domain: Domain,
}

impl Mailbox {
    pub fn parse(text: &str) -> Option<Mailbox> {
        // Source routes (`@a,@b:user@c`, RFC 5321 §4.1.2) must be accepted and ignored.
        let text = match text.strip_prefix('@') {
            Some(route) => route.split_once(':')?.1,
            None => text,
        };
        let (local, domain) = text.rsplit_once('@')?;
        if local.is_empty()
            // RFC 5321 §4.5.3.1.1 sets 64 octets as the least to accept, and
            // §4.5.3.1 asks for no limit where possible: longer local parts exist in
            // the wild (and in our own List-Unsubscribe mailto addresses).
            || local.len() > MAX_LOCAL_PART
            || local
                .chars()
                .any(|c| c.is_control() || c == ' ' && !local.starts_with('"'))
        {
            return None;
        }
        Some(Mailbox {
            local: local.to_string(),
            domain: Domain::parse(domain)?,
        })
    }

    pub fn local(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.as_str().is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_lowercases_domain() {
        let m = Mailbox::parse("Alice@Example.COM").unwrap();
        assert_eq!(m.local(), "Alice");
        assert_eq!(m.domain().as_str(), "example.com");
    }

    #[test]
    fn source_route_is_ignored() {
        let m = Mailbox::parse("@relay.example:bob@target.example").unwrap();
        assert_eq!(m.to_string(), "bob@target.example");
    }

    #[test]
    fn percent_hack_routes_to_the_last_domain() {
        let m = Mailbox::parse("a%b@c.example").unwrap();
        assert_eq!(m.domain().as_str(), "c.example");
    }

    #[test]
    fn rejects_junk() {
        for bad in [
            "",
            "noat",
            "@x",
            "a@",
            "a@-b.com",
            "a@b..c",
            "a@[999.1.1.1]",
            "a b@c.d",
        ] {
            assert!(Mailbox::parse(bad).is_none(), "{bad}");
        }
        assert!(
            Mailbox::parse("x@[192.0.2.1]")
                .unwrap()
                .domain()
                .is_address_literal()
        );
        assert!(Mailbox::parse("\"a b\"@c.d").is_some());
    }
}
