//! Bounce classification: what kind of failure a reply describes, and whether it is
//! evidence that the address itself is bad. It reads everything known when the reply
//! came: the reply code, the enhanced status code (RFC 3463), the words of the text,
//! and the SMTP stage (connect/EHLO, MAIL, RCPT, DATA). A pure function, so it can be
//! measured on a labelled corpus of real bounces
//! (`tests/deliverability/bounce_corpus.rs`).
//!
//! The rules, in the order they are tried:
//!
//! 1. Refusals about the *sender* (its IP's reputation, blocklisting or dynamic
//!    address, its reverse DNS, its SPF/DKIM/DMARC, its envelope address or
//!    domain, relaying, its rate, TLS) are recognised first, by their words or
//!    their codes, because servers often wrap them in recipient-looking text
//!    (Postfix writes "Recipient address rejected:" before many of them), and so
//!    is anything refused at MAIL, or in vague words at the greeting or EHLO.
//!    They never suppress.
//! 2. A specific enhanced code (x.1.1, x.2.2, x.3.4, …) names the class; generic
//!    ones (x.0.0, x.7.1, x.5.0, …) say little and leave it to the text.
//! 3. The words of the text, then the bare reply code.
//!
//! Only the class `bad-mailbox` can suppress, and only with evidence that the address
//! does not exist (x.1.1, x.1.3, x.1.6, or "user unknown" and its kin, which
//! x.1.0 and x.1.10 confirm), on a
//! permanent failure, not at connect or MAIL (no recipient was named yet), and not
//! after DATA without a specific code: receivers' content filters (the Japanese
//! carriers' among them) refuse whole messages with "User unknown" after DATA, and
//! a reply to DATA is for every recipient at once. Where the code and the words
//! disagree (x.2.1, "mailbox not accepting", beside "User Unknown"), only a refusal
//! known to answer RCPT counts. A disabled or suspended account
//! is `bad-mailbox` without suppression: accounts are re-enabled, and one bounce is
//! not proof. When unsure, the address is kept.

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BounceClass {
    /// The mailbox does not exist or is disabled (5.1.1, "user unknown").
    BadMailbox,
    /// Over quota (x.2.2).
    MailboxFull,
    /// Refused by the receiver's policy: the sender's authentication, PTR, envelope
    /// address, relaying, content format (x.7.x other than spam).
    Policy,
    /// Refused as spam or for the sender's reputation (blocklists, content filters).
    SpamBlock,
    /// The destination domain could not be resolved or accepts no mail (x.1.2, x.4.4, x.1.10).
    Dns,
    /// TLS could not be negotiated or was required (x.7.10, x.7.11, x.7.4, x.7.5).
    Tls,
    /// Too many messages or connections: slow down (x.7.28, 421, rate words).
    RateLimited,
    /// Larger than the receiver accepts (x.3.4, x.2.3).
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
}

impl fmt::Display for BounceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in the SMTP conversation a reply came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Greeting, EHLO/HELO, STARTTLS, AUTH, or no connection at all.
    Connect,
    Mail,
    Rcpt,
    /// The reply to DATA or to the end of the data (or BDAT).
    Data,
    #[default]
    Unknown,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Unknown => "unknown",
        }
    }

    /// The stage a bounce's text names: Postfix's "(in reply to RCPT TO command)",
    /// Exim's "after RCPT TO:", Sendmail's transcript ">>> DATA", Yahoo's
    /// "[RCPT_TO]". The last one named wins: a transcript ends with the command
    /// that failed.
    pub fn named_in(text: &str) -> Stage {
        // Reports wrap long lines anywhere ("refused to\n    talk to me").
        let lower = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_lowercase();
        const NAMES: &[(&str, Stage)] = &[
            ("in reply to rcpt to", Stage::Rcpt),
            ("after rcpt to", Stage::Rcpt),
            (">>> rcpt to", Stage::Rcpt),
            ("[rcpt_to]", Stage::Rcpt),
            // qmail: "does not like recipient", "does not like sender", "failed
            // after I sent the message".
            ("does not like recipient", Stage::Rcpt),
            ("does not like sender", Stage::Mail),
            ("failed after i sent the message", Stage::Data),
            ("in reply to mail from", Stage::Mail),
            ("after mail from", Stage::Mail),
            (">>> mail from", Stage::Mail),
            ("[mail_from]", Stage::Mail),
            ("in reply to end of data", Stage::Data),
            ("in reply to data", Stage::Data),
            ("after end of data", Stage::Data),
            ("after data", Stage::Data),
            (">>> data", Stage::Data),
            ("[data]", Stage::Data),
            ("in reply to ehlo", Stage::Connect),
            ("in reply to helo", Stage::Connect),
            ("after initial connection", Stage::Connect),
            // Exim: "SMTP error from remote mail server after EHLO x:".
            ("after ehlo", Stage::Connect),
            ("after helo", Stage::Connect),
            // Postfix: "host x refused to talk to me: 421 …", the greeting.
            ("refused to talk to me", Stage::Connect),
        ];
        NAMES
            .iter()
            .filter_map(|(name, stage)| lower.rfind(name).map(|at| (at, *stage)))
            .max_by_key(|(at, _)| *at)
            .map_or(Stage::Unknown, |(_, stage)| stage)
    }
}

impl std::str::FromStr for Stage {
    type Err = String;

    fn from_str(s: &str) -> Result<Stage, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "connect" | "ehlo" | "helo" | "greeting" => Stage::Connect,
            "mail" => Stage::Mail,
            "rcpt" => Stage::Rcpt,
            "data" => Stage::Data,
            "unknown" => Stage::Unknown,
            other => {
                return Err(format!(
                    "unknown stage {other:?} (connect, mail, rcpt, data, unknown)"
                ));
            }
        })
    }
}

/// What a failure means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub class: BounceClass,
    /// The address must not be mailed again.
    pub suppress: bool,
    /// The rule that decided, in words, for operators.
    pub why: String,
}

/// One rule: words that, found in the reply text, decide the class.
struct Words {
    class: BounceClass,
    why: &'static str,
    words: &'static [&'static str],
}

/// Refusals about the sender, its infrastructure or its pace: tried before anything
/// about the recipient, because their text often mentions the recipient too.
const SENDER_RULES: &[Words] = &[
    Words {
        class: BounceClass::Policy,
        why: "the sender's authentication (SPF, DKIM, DMARC) failed",
        words: &[
            "spf",
            "dkim",
            "dmarc",
            "unauthenticated",
            "not authenticated",
            "authentication check",
            "sender policy framework",
            "domainkeys",
            "smtp authentication",
            "authentication required",
        ],
    },
    Words {
        class: BounceClass::Policy,
        why: "the sending IP's reverse DNS (PTR) was refused",
        words: &[
            "reverse dns",
            "reverse-dns",
            "rdns",
            "reverse lookup",
            "reverse hostname",
            "ptr record",
            "no ptr",
            "dns ptr",
            "ptr lookup",
            "hostname lookup",
            "resolve your address",
            "cannot find your hostname",
            "cannot resolve your",
            "not resolve your",
        ],
    },
    Words {
        class: BounceClass::SpamBlock,
        why: "the sending IP or domain is blocklisted or has a poor reputation",
        words: &[
            "blocked using",
            "blocklist",
            "blacklist",
            "block list",
            "black list",
            "dnsbl",
            "rbl",
            "spamhaus",
            "spamcop",
            "sorbs",
            "barracuda",
            "reputation",
            "complaints",
            "banned sending",
            "client host rejected",
            "client host blocked",
            "listed at",
            "listed on",
            "listed in",
            "ip blocked",
            "invalid ip for sending",
            "not allowed to send",
            "block_",
            // Refusals of dynamic (consumer) addresses: "use the SMTP server of
            // your ISP".
            "dynamic ip",
            "dynamic address",
            "dynamically assigned",
            "dial-up",
            "dialup",
            "residential ip",
            "server of your isp",
            "your isp's",
        ],
    },
    Words {
        class: BounceClass::RateLimited,
        why: "the receiver asks the sender to slow down",
        words: &[
            "rate limit",
            "ratelimit",
            "too many connections",
            "too many messages",
            "too many concurrent",
            "too many sessions",
            "connection limit",
            "throttl",
            "frequency limit",
            "slow down",
            "unusual rate",
            "sending rate",
            "at a rate",
            "rate that prevents",
            "exceeded the rate",
            "too fast",
            // Directory-harvest protection: the sender named too many unknown
            // recipients in a row. It is about the sender's list, and says
            // nothing of the address in this reply, which may be a good one.
            "too many invalid",
            "too many bad recipients",
            "too many unknown recipients",
        ],
    },
    Words {
        class: BounceClass::Tls,
        why: "TLS was required or failed",
        words: &[
            "starttls",
            "tls required",
            "tls is required",
            "must use tls",
            "encryption required",
            "tls negotiation",
            "certificate",
        ],
    },
    Words {
        class: BounceClass::Policy,
        why: "the envelope sender (its address or domain) was refused",
        words: &[
            "sender address",
            "sender domain",
            "domain of sender",
            "sender rejected",
            "sender verify",
            "sender is not",
            "sender denied",
            "sender not",
            "invalid sender",
            "unknown sender",
            "mail from",
            "envelope from",
            "return path",
            "return-path",
            "from address",
            "mailfrom",
        ],
    },
    Words {
        class: BounceClass::Policy,
        why: "the message's form breaks the receiver's rules (RFC 5322)",
        words: &["rfc 5322", "rfc 2822", "rfc5322", "not compliant"],
    },
    Words {
        class: BounceClass::SpamBlock,
        why: "the message was refused as spam or malware",
        words: &[
            "spam",
            "unsolicited",
            "ube",
            "virus",
            "malware",
            "infected",
            "phish",
        ],
    },
    Words {
        class: BounceClass::Policy,
        // Its notice is translated into the sender's language; its help address
        // is not.
        why: "Google Groups refused the post (the sender may not post to the group, or there is no such group)",
        words: &["groups.google.com"],
    },
    Words {
        class: BounceClass::Policy,
        why: "relaying was denied",
        words: &["relay", "relaying", "not local"],
    },
];

/// Words about the recipient, the message or the receiving system, tried after the
/// sender rules and the specific codes.
const RECIPIENT_RULES: &[Words] = &[
    Words {
        class: BounceClass::MailboxFull,
        why: "the mailbox is over quota",
        words: &[
            "quota",
            "mailbox full",
            "mailbox is full",
            "mailbox size",
            "out of storage",
            "insufficient storage",
            "storage space",
            "mailbox exceeds",
            "exceeded storage",
            "full mailbox",
            "mail box full",
            "inbox is full",
        ],
    },
    Words {
        class: BounceClass::MessageTooBig,
        why: "the message is larger than the receiver accepts",
        words: &[
            "too big",
            "too large",
            "size limit",
            "exceeds size",
            "message size",
            "size exceeds",
            "exceeds the maximum",
            "maximum message size",
            "message length exceeds",
        ],
    },
    Words {
        class: BounceClass::Dns,
        why: "the recipient's domain does not exist or accepts no mail",
        words: &[
            "host unknown",
            "unknown host",
            "domain not found",
            "no such domain",
            "domain does not exist",
            "domain doesn't exist",
            "domain name not found",
            "host not found",
            "name service error",
            "unrouteable mail domain",
            "null mx",
            "does not accept mail",
            "not accepting network messages",
            "not accepting mail",
            "no mx",
            "no smtp service",
            "mx record",
            "domain may not exist",
            "dns lookup failure",
            "host or domain name not found",
            "unknown domain",
            "nxdomain",
        ],
    },
    Words {
        class: BounceClass::SpamBlock,
        why: "the message or its sender was blocked",
        words: &[
            "junk",
            "bulk mail",
            "blocked",
            "mail rejected",
            "mail rejete",
        ],
    },
    SYSTEM_FAILURE,
    Words {
        class: BounceClass::Policy,
        why: "refused by the receiver's policy or for the message's form",
        words: &[
            "policy",
            "permission",
            "denied",
            "not permitted",
            "prohibited",
            "not allowed",
            "filtered",
            "rfc 5322",
            "rfc 2822",
            "not compliant",
            "refused",
            "rejected",
            // Says only that nobody was accepted; why is in the rest of the text.
            "no valid recipients",
        ],
    },
];

/// The receiving system's own failures.
const SYSTEM_FAILURE: Words = Words {
    class: BounceClass::Other,
    why: "the receiving system failed",
    words: &[
        "mailer error",
        "system error",
        "internal error",
        "system problem",
        "local problem",
        "disk space",
        "out of memory",
        "ldap",
        "directory server",
    ],
};

/// Evidence that the recipient's account is disabled rather than absent.
const DISABLED: &[&str] = &[
    "disabled",
    "suspended",
    "inactive",
    "deactivated",
    "discontinued",
    "locked",
    "account is blocked",
    "account has been blocked",
    "expired account",
    "account expired",
    "is not active",
    "frozen",
];

/// Evidence that the recipient's mailbox does not exist.
const NOT_EXIST: &[&str] = &[
    "user unknown",
    "unknown user",
    "no such user",
    "no such recipient",
    "no such mailbox",
    "no such address",
    "no mailbox",
    "mailbox not found",
    "mailbox unavailable",
    "mailbox does not exist",
    "mailbox not exist",
    "recipient not found",
    "recipnotfound",
    "recipientnotfound",
    "recipient unknown",
    "unknown recipient",
    "invalid recipient",
    "recipient invalid",
    "invalid address",
    "address invalid",
    "address not found",
    "address unknown",
    "unknown address",
    "destinataire invalide",
    "does not exist",
    "doesn't exist",
    "not exist",
    "user not found",
    "userid",
    "no longer",
    "not a valid",
    "invalid mailbox",
    "bad destination mailbox",
    "doesn't have a",
    "does not have an account",
    "not a registered",
    "unrouteable address",
    "not our customer",
    "no account",
    "couldn't be found",
    "could not be found",
];

/// The class of a failure reply: `code` is the SMTP code, `enhanced` the RFC 3463
/// code if known (from the reply or a DSN's `Status:`), `text` the rest of the reply,
/// `stage` the command it answered.
pub fn classify(code: u16, enhanced: Option<[u8; 3]>, text: &str, stage: Stage) -> Verdict {
    let lower = text.to_ascii_lowercase();
    let enhanced = enhanced
        .filter(|e| e[1] != 0 || e[2] != 0)
        .or_else(|| enhanced_in(&lower))
        .or(enhanced);
    let stage = match stage {
        Stage::Unknown => Stage::named_in(&lower),
        known => known,
    };
    let permanent = code >= 500 || (code == 0 && enhanced.is_some_and(|e| e[0] == 5));
    let verdict = |class, why: &str| Verdict {
        class,
        suppress: false,
        why: why.to_string(),
    };

    // RFC 7505 gives x.7.27 to a sender whose domain has a null MX, but Sendmail
    // also reports with it a recipient's host that accepts no mail (RFC 7504's
    // "Host does not accept mail"): the words say whose domain it is.
    let recipient_accepts_no_mail = matches!(enhanced, Some([_, 7, 27]))
        && lower.contains("does not accept mail")
        && !lower.contains("sender");
    if let Some(v) = by_sender_code(enhanced).filter(|_| !recipient_accepts_no_mail) {
        return verdict(v.0, v.1);
    }
    if let Some(rule) = first_match(SENDER_RULES, &lower) {
        return verdict(rule.class, rule.why);
    }
    if stage == Stage::Mail {
        return verdict(
            BounceClass::Policy,
            "refused at MAIL FROM, before any recipient was named: about the sender",
        );
    }

    let mailbox = mailbox_evidence(enhanced, &lower);
    if let Some((class, why)) = by_recipient_code(enhanced) {
        // RFC 3463's x.4.3 is a directory server failure, which Postfix and qmail
        // also give to DNS failures: the words say which.
        if matches!(enhanced, Some([_, 4, 3])) && says(&SYSTEM_FAILURE, &lower) {
            return verdict(SYSTEM_FAILURE.class, SYSTEM_FAILURE.why);
        }
        // A specific code beats the words, unless a code itself says the mailbox
        // does not exist (Microsoft's x.1.10).
        if !matches!(mailbox, Some(Mailbox::Absent { by_code: true })) {
            return verdict(class, why);
        }
    }
    if let Some(rule) = first_match(&RECIPIENT_RULES[..3], &lower) {
        return verdict(rule.class, rule.why);
    }
    if let Some(evidence) = mailbox {
        if !permanent {
            return verdict(
                BounceClass::Other,
                "a temporary failure says nothing lasting about the mailbox",
            );
        }
        return match evidence {
            Mailbox::Disabled => verdict(
                BounceClass::BadMailbox,
                "the account is disabled or suspended: not suppressed, accounts come back",
            ),
            Mailbox::Absent { by_code } => {
                if stage == Stage::Connect {
                    verdict(
                        BounceClass::Policy,
                        "refused before any recipient was named: about the session",
                    )
                } else if stage != Stage::Rcpt && matches!(enhanced, Some([_, 2, 1])) {
                    // x.2.1 says the mailbox exists but takes nothing; with "user
                    // unknown" beside it, the code and the words disagree. Zoho's and
                    // the Japanese carriers' filters answer so to senders their users
                    // refuse. Only at RCPT, where a server answers about the address
                    // before seeing any content, is it taken as the address being bad.
                    verdict(
                        BounceClass::Policy,
                        "x.2.1 (mailbox not accepting) with \"user unknown\" words, not known to answer RCPT: filters answer so too, so it is not taken as evidence about this address",
                    )
                } else if stage == Stage::Data && !by_code {
                    verdict(
                        BounceClass::Policy,
                        "\"no such user\" after DATA without an x.1.x code: a content filter's refusal for the whole message, not evidence about this address",
                    )
                } else if stage != Stage::Rcpt && !by_code && !names_recipient(&lower) {
                    verdict(
                        BounceClass::Policy,
                        "\"no such user\" with no x.1.1 code, no stage and no address named: receivers' filters refuse with these words too, so it is not taken as evidence about this address",
                    )
                } else {
                    Verdict {
                        class: BounceClass::BadMailbox,
                        suppress: true,
                        why: if by_code {
                            "the enhanced status code says the mailbox does not exist (x.1.1, x.1.3, x.1.6; x.1.0 or x.1.10 with words saying so, as Microsoft 365 answers)".into()
                        } else {
                            "the reply says the mailbox does not exist".into()
                        },
                    }
                }
            }
        };
    }
    if let Some(rule) = first_match(&RECIPIENT_RULES[3..], &lower) {
        if stage == Stage::Connect && rule.class == BounceClass::Policy {
            return verdict(
                BounceClass::SpamBlock,
                "refused at connection, before any message: about the sending IP",
            );
        }
        // "Refused", "denied" say nothing of why; an x.3.x code (the mail
        // system's status) does: Sendmail's `5.3.0 Insufficient permission` is
        // its local delivery failing.
        if rule.class == BounceClass::Policy && matches!(enhanced, Some([_, 3, _])) {
            return verdict(
                BounceClass::Other,
                "x.3.x: the receiving mail system failed; the refusal's words say no more",
            );
        }
        return verdict(rule.class, rule.why);
    }
    if let Some((class, why)) = by_generic_code(enhanced) {
        return verdict(class, why);
    }
    match code {
        421 => verdict(
            BounceClass::RateLimited,
            "421: the server closed the session",
        ),
        // RFC 5321 §4.2.3: 552 is "exceeded storage allocation".
        552 => verdict(
            BounceClass::MessageTooBig,
            "552: storage allocation exceeded",
        ),
        _ => verdict(BounceClass::Other, "no rule recognised this reply"),
    }
}

/// True when the reply names an address the way servers answer RCPT about one
/// recipient: Sendmail's `<a@b>... User unknown` (or `a@b... `), Postfix's `<a@b>:
/// Recipient address rejected`, Gmail's `delivered to a@b because`. A content filter's refusal after DATA is for the
/// whole message and names nobody (`550 : User unknown`).
fn names_recipient(lower: &str) -> bool {
    lower.match_indices('@').any(|(at, _)| {
        let after = &lower[at + 1..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
            .unwrap_or(after.len());
        let domain = after[..end].trim_end_matches('.');
        let follows = &after[domain.len()..];
        // Gmail's "wasn't delivered to a@b because the address couldn't be found".
        domain.contains('.')
            && [">:", ">...", "...", "]:", " because"]
                .iter()
                .any(|f| follows.starts_with(f))
    })
}

enum Mailbox {
    Disabled,
    /// `by_code`: an x.1.1/x.1.3/x.1.6 code says so, not only the words.
    Absent {
        by_code: bool,
    },
}

/// What the code and text say about the recipient's mailbox. Either "does not exist"
/// sign wins over "disabled" words: Apple's `5.1.1 inactive email address` is a
/// deleted one, Yahoo's `5.2.1 User Unknown` an unknown one.
fn mailbox_evidence(enhanced: Option<[u8; 3]>, lower: &str) -> Option<Mailbox> {
    let mut by_code = matches!(enhanced, Some([_, 1, 1 | 3 | 6]));
    // Microsoft 365 refuses unknown recipients of directory-checked domains with
    // `550 5.4.1 Recipient address rejected: Access denied`; Postfix's "Recipient
    // address rejected:" is otherwise only a prefix, and evidence only when no
    // reason follows it: the sentence ends there (`550 5.1.0 Address rejected.`,
    // whatever a report appends after it).
    let bare_rejection = lower.match_indices("address rejected").any(|(at, w)| {
        let rest = lower[at + w.len()..].trim_start();
        rest.is_empty() || rest.starts_with(['.', '\''])
    }) || lower.contains("recipient address rejected: access denied");
    // A hedge ("the group may not exist, or you may not have permission") is no
    // evidence.
    let hedged = lower.contains("may not exist") || lower.contains("might not exist");
    let disabled = DISABLED.iter().any(|w| contains_word(lower, w));
    let absent = !hedged && (bare_rejection || NOT_EXIST.iter().any(|w| lower.contains(w)));
    // RFC 7505's x.1.10 is a null MX, but Microsoft 365 answers unknown recipients
    // with `5.1.10 RESOLVER.ADR.RecipientNotFound`. RFC 3463's x.1.0 is "other
    // address status": with words saying the address is not there (`550 5.1.0
    // Address rejected`) it says what x.1.1 says. Refusals of the sender's address
    // under x.1.0 (`5.1.0 <a> sender rejected`) never get here: the sender rules
    // come first.
    by_code |= absent && matches!(enhanced, Some([_, 1, 0 | 10]));
    if by_code || (absent && !disabled) {
        return Some(Mailbox::Absent { by_code });
    }
    if absent || disabled || matches!(enhanced, Some([_, 2, 1])) {
        return Some(Mailbox::Disabled);
    }
    None
}

/// True when `text` says an account is disabled, suspended or inactive.
pub(super) fn says_disabled(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    DISABLED.iter().any(|w| contains_word(&lower, w))
}

fn first_match<'a>(rules: &'a [Words], lower: &str) -> Option<&'a Words> {
    rules.iter().find(|rule| says(rule, lower))
}

fn says(rule: &Words, lower: &str) -> bool {
    rule.words.iter().any(|w| contains_word(lower, w))
}

/// `text` contains `word` not inside a longer word ("ube" is not in "tube", "rbl"
/// not in "verbless"), except where the word ends in `_` or white space.
fn contains_word(text: &str, word: &str) -> bool {
    let bytes = text.as_bytes();
    text.match_indices(word).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + word.len()).copied();
        let boundary = |b: Option<u8>| b.is_none_or(|b| !b.is_ascii_alphanumeric());
        boundary(before) && (boundary(after) || word.len() > 4)
    })
}

/// RFC 3463 / RFC 7372 codes that are about the sender, whatever the text says.
fn by_sender_code(enhanced: Option<[u8; 3]>) -> Option<(BounceClass, &'static str)> {
    let [_, subject, detail] = enhanced?;
    Some(match (subject, detail) {
        (1, 7) | (1, 8) | (7, 27) => (
            BounceClass::Policy,
            "x.1.7/x.1.8: the sender's address or domain was refused",
        ),
        (7, 20..=26) => (
            BounceClass::Policy,
            "x.7.20-x.7.26: the sender's authentication (DKIM, SPF, DMARC, PTR) failed",
        ),
        (7, 28) => (BounceClass::RateLimited, "x.7.28: mail flood, slow down"),
        (7, 4 | 5 | 10 | 11) => (BounceClass::Tls, "x.7.4/5/10/11: TLS required or failed"),
        (5, 3) => (
            BounceClass::RateLimited,
            "x.5.3: too many recipients for the receiver",
        ),
        _ => return None,
    })
}

/// Specific codes about the recipient or the message.
fn by_recipient_code(enhanced: Option<[u8; 3]>) -> Option<(BounceClass, &'static str)> {
    let [_, subject, detail] = enhanced?;
    Some(match (subject, detail) {
        (1, 2) | (1, 10) | (4, 3) | (4, 4) | (3, 2) => (
            BounceClass::Dns,
            "x.1.2/x.1.10/x.4.3/x.4.4/x.3.2: the domain cannot be resolved or accepts no mail",
        ),
        (2, 2) => (BounceClass::MailboxFull, "x.2.2: mailbox over quota"),
        (2, 3) | (3, 4) => (
            BounceClass::MessageTooBig,
            "x.2.3/x.3.4: message larger than accepted",
        ),
        (6, _) => (
            BounceClass::Policy,
            "x.6.x: the message's content or format was refused",
        ),
        _ => return None,
    })
}

/// What is left of the codes once the words said nothing.
fn by_generic_code(enhanced: Option<[u8; 3]>) -> Option<(BounceClass, &'static str)> {
    let [_, subject, _] = enhanced?;
    Some(match subject {
        7 | 6 => (
            BounceClass::Policy,
            "x.7.x/x.6.x: refused by the receiver's policy or for the message's format",
        ),
        3 | 5 => (
            BounceClass::Other,
            "x.3.x/x.5.x: the receiving system or the protocol failed",
        ),
        _ => return None,
    })
}

/// An enhanced status code written inside the text (`#5.1.1`, `ERROR_CODE :5.2.2`),
/// for replies and reports that carry it there rather than after the reply code.
pub fn enhanced_in(text: &str) -> Option<[u8; 3]> {
    let bytes = text.as_bytes();
    (0..bytes.len()).find_map(|at| {
        if !matches!(bytes[at], b'2' | b'4' | b'5')
            || at > 0 && (bytes[at - 1].is_ascii_digit() || bytes[at - 1] == b'.')
        {
            return None;
        }
        let rest = &text[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let token = rest[..end].trim_end_matches('.');
        let parts: Vec<&str> = token.split('.').collect();
        let [class, subject, detail] = parts.as_slice() else {
            return None;
        };
        if class.len() != 1 || subject.is_empty() || subject.len() > 3 || detail.is_empty() {
            return None;
        }
        Some([
            class.parse().ok()?,
            subject.parse().ok()?,
            detail.parse().ok()?,
        ])
    })
}

/// A reply as one line of text (`550 5.1.1 <a@b>: user unknown`): its code, its
/// enhanced code if it has one, and the rest. Multi-line replies joined with spaces
/// are read the same way. `None` when it does not start with a three-digit code.
pub fn parse_reply_line(line: &str) -> Option<(u16, Option<[u8; 3]>, &str)> {
    let line = line.trim();
    let code_text = line.get(..3)?;
    if !code_text.bytes().all(|b| b.is_ascii_digit())
        || !matches!(code_text.as_bytes()[0], b'2'..=b'5')
    {
        return None;
    }
    let rest = &line[3..];
    if !(rest.is_empty() || rest.starts_with([' ', '-', '\t'])) {
        return None;
    }
    let rest = rest.trim_start_matches([' ', '-', '\t']);
    let (first, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    match enhanced_in(first) {
        Some(e) if first.len() <= 11 && first.starts_with(&code_text[..1]) => {
            Some((code_text.parse().ok()?, Some(e), after.trim()))
        }
        _ => Some((code_text.parse().ok()?, None, rest)),
    }
}

#[cfg(test)]
mod tests;
