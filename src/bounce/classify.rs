//! Bounce classification: what kind of failure a reply describes, from its enhanced
//! status code (RFC 3463) and, because many servers send a bare or generic code, from
//! the words of its text. A pure function, so it can be tested on real replies.
//!
//! Only [`BounceClass::BadMailbox`] means the address itself is wrong, and only it
//! puts the address on the suppression list; every other class is about the message,
//! the sender or the moment.

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BounceClass {
    /// The mailbox does not exist or is disabled (5.1.1, "user unknown").
    BadMailbox,
    /// Over quota (x.2.2).
    MailboxFull,
    /// Refused by the receiver's policy (x.7.x other than spam, relaying denied).
    Policy,
    /// Refused as spam or for the sender's reputation (blocklists).
    SpamBlock,
    /// The destination domain could not be resolved or accepts no mail (x.1.2, x.4.3, x.1.10).
    Dns,
    /// TLS could not be negotiated or was required (x.7.5, x.7.10, x.7.4).
    Tls,
    /// Too many messages or connections: slow down (x.7.28, 421, 450 with rate words).
    RateLimited,
    /// Larger than the receiver accepts (x.3.4, 552 x.2.3).
    MessageTooBig,
    Other,
}

impl BounceClass {
    pub fn as_str(self) -> &'static str {
        match self {
            BounceClass::BadMailbox => "bad-mailbox",
            BounceClass::MailboxFull => "mailbox-full",
            BounceClass::Policy => "policy",
            BounceClass::SpamBlock => "spam-block",
            BounceClass::Dns => "dns",
            BounceClass::Tls => "tls",
            BounceClass::RateLimited => "rate-limited",
            BounceClass::MessageTooBig => "message-too-big",
            BounceClass::Other => "other",
        }
    }

    /// True when a permanent failure of this class means the address must not be
    /// mailed again.
    pub fn suppresses(self) -> bool {
        self == BounceClass::BadMailbox
    }
}

impl fmt::Display for BounceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Words that name the class better than a generic code does, checked first, in
/// order: spam wording beats "policy" and "rejected", rate wording beats "try later".
const TEXT_RULES: &[(BounceClass, &[&str])] = &[
    (
        BounceClass::SpamBlock,
        &[
            "spam",
            "blocklist",
            "blacklist",
            "block list",
            "black list",
            "spamhaus",
            "reputation",
            "junk",
            "unsolicited",
        ],
    ),
    (
        BounceClass::RateLimited,
        &[
            "rate limit",
            "too many",
            "throttl",
            "slow down",
            "unusual rate",
            "sending rate",
        ],
    ),
    (
        BounceClass::MailboxFull,
        &[
            "quota",
            "mailbox full",
            "mailbox is full",
            "over quota",
            "insufficient storage",
            "out of storage",
        ],
    ),
    (
        BounceClass::MessageTooBig,
        &[
            "too big",
            "too large",
            "size limit",
            "exceeds size",
            "message size",
        ],
    ),
    (
        BounceClass::BadMailbox,
        &[
            "user unknown",
            "unknown user",
            "no such user",
            "no such recipient",
            "no such mailbox",
            "mailbox unavailable",
            "mailbox not found",
            "recipient not found",
            "address rejected",
            "does not exist",
            "doesn't exist",
            "invalid recipient",
            "recipient unknown",
            "unknown recipient",
            "account disabled",
            "account has been disabled",
            "mailbox disabled",
            "user not found",
            "address unknown",
        ],
    ),
    (
        BounceClass::Tls,
        &["tls", "starttls", "certificate", "encryption required"],
    ),
    (
        BounceClass::Dns,
        &[
            "domain not found",
            "host not found",
            "dns",
            "does not accept mail",
            "null mx",
        ],
    ),
    (
        BounceClass::Policy,
        &[
            "policy",
            "relay",
            "not permitted",
            "denied",
            "dmarc",
            "spf",
            "dkim",
        ],
    ),
];

/// The class of a failure reply: `code` is the SMTP code, `enhanced` the RFC 3463
/// code if the server gave one, `text` the rest of the reply.
pub fn classify(code: u16, enhanced: Option<[u8; 3]>, text: &str) -> BounceClass {
    let text = text.to_ascii_lowercase();
    if let Some(class) = by_enhanced_code(enhanced) {
        // A specific code is believed, except that spam or rate wording under a
        // generic policy code is the more useful answer.
        if class != BounceClass::Policy {
            return class;
        }
    }
    for (class, words) in TEXT_RULES {
        if words.iter().any(|w| text.contains(w)) {
            return *class;
        }
    }
    if let Some(class) = by_enhanced_code(enhanced) {
        return class;
    }
    match code {
        421 => BounceClass::RateLimited,
        // RFC 5321 §4.2.3: 552 is "exceeded storage allocation", 550/553 often a mailbox.
        552 => BounceClass::MessageTooBig,
        _ => BounceClass::Other,
    }
}

fn by_enhanced_code(enhanced: Option<[u8; 3]>) -> Option<BounceClass> {
    let [_, subject, detail] = enhanced?;
    Some(match (subject, detail) {
        // RFC 3463 §3.2: x.1.1 bad mailbox, x.1.6 moved, x.2.1 disabled; x.1.3 bad syntax.
        (1, 1) | (1, 3) | (1, 6) | (2, 1) => BounceClass::BadMailbox,
        (1, 2) | (1, 10) | (4, 3) | (4, 4) => BounceClass::Dns,
        (2, 2) => BounceClass::MailboxFull,
        (2, 3) | (3, 4) => BounceClass::MessageTooBig,
        // RFC 7372 / RFC 8689 (x.7.10, x.7.11), RFC 3207 (x.7.4 "security features").
        (7, 4) | (7, 5) | (7, 10) | (7, 11) => BounceClass::Tls,
        // RFC 8689 / common practice: x.7.28 "mail flood", x.4.5 congestion is not it.
        (7, 28) => BounceClass::RateLimited,
        (7, _) => BounceClass::Policy,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use BounceClass::*;

    fn c(reply: &str) -> BounceClass {
        let mut words = reply.splitn(3, ' ');
        let code: u16 = words.next().unwrap().parse().unwrap();
        let second = words.next().unwrap_or("");
        let parts: Vec<u8> = second.split('.').filter_map(|p| p.parse().ok()).collect();
        match parts.as_slice() {
            [a, b, d] if second.split('.').count() == 3 => {
                classify(code, Some([*a, *b, *d]), words.next().unwrap_or(""))
            }
            _ => classify(code, None, &reply[4..]),
        }
    }

    #[test]
    fn real_world_replies() {
        let cases = [
            (
                "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.",
                BadMailbox,
            ),
            (
                "550 5.1.1 <x@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
                BadMailbox,
            ),
            (
                "550 5.5.0 Requested action not taken: mailbox unavailable",
                BadMailbox,
            ),
            ("550 No such user here", BadMailbox),
            (
                "553 5.1.3 The recipient address <foo> is not a valid RFC-5321 address",
                BadMailbox,
            ),
            (
                "550 5.2.1 The email account that you tried to reach is disabled.",
                BadMailbox,
            ),
            (
                "452 4.2.2 The email account that you tried to reach is over quota.",
                MailboxFull,
            ),
            ("552 5.2.2 Mailbox full", MailboxFull),
            (
                "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
                SpamBlock,
            ),
            (
                "550 5.7.1 Our system has detected that this message is likely unsolicited mail.",
                SpamBlock,
            ),
            (
                "550 5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM.",
                Policy,
            ),
            ("554 5.7.1 <x@example.com>: Relay access denied", Policy),
            (
                "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address.",
                RateLimited,
            ),
            ("450 4.7.0 Too many connections, slow down", RateLimited),
            (
                "421 Service not available, closing transmission channel",
                RateLimited,
            ),
            ("552 5.3.4 Message size exceeds fixed limit", MessageTooBig),
            ("552 Message too large", MessageTooBig),
            ("550 5.1.2 domain nonexistent.example does not exist", Dns),
            (
                "556 5.1.10 domain x.example does not accept mail (null MX, RFC 7505)",
                Dns,
            ),
            ("451 4.4.3 DNS lookup failed for x.example: timeout", Dns),
            ("530 5.7.0 Must issue a STARTTLS command first", Tls),
            ("451 4.7.5 TLS: invalid peer certificate", Tls),
            ("451 4.3.0 Temporary local problem", Other),
        ];
        for (reply, expected) in cases {
            assert_eq!(c(reply), expected, "{reply}");
        }
    }

    #[test]
    fn only_bad_mailbox_suppresses() {
        assert!(BadMailbox.suppresses());
        for class in [
            MailboxFull,
            Policy,
            SpamBlock,
            Dns,
            Tls,
            RateLimited,
            MessageTooBig,
            Other,
        ] {
            assert!(!class.suppresses(), "{class}");
        }
    }
}
