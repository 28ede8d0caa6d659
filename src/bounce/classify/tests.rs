//! The classifier on replies from the issue and from real receivers.

use super::*;
use BounceClass::*;

fn c(reply: &str) -> Verdict {
    let (code, enhanced, text) = parse_reply_line(reply).unwrap();
    classify(code, enhanced, text, Stage::Unknown)
}

#[test]
fn real_world_replies() {
    let cases = [
        (
            "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces.",
            BadMailbox,
            true,
        ),
        (
            "550 5.1.1 <x@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
            BadMailbox,
            true,
        ),
        // Words alone, with no code, stage or address: not evidence enough.
        (
            "550 5.5.0 Requested action not taken: mailbox unavailable",
            Policy,
            false,
        ),
        ("550 No such user here", Policy, false),
        ("550 <a@b.example>... No such user here", BadMailbox, true),
        (
            "550 <a@b.example>: Recipient address rejected: User unknown in local recipient table",
            BadMailbox,
            true,
        ),
        (
            "550 <a@b.example>: Recipient address rejected: Policy violation",
            Policy,
            false,
        ),
        (
            "553 5.1.3 The recipient address <foo> is not a valid RFC-5321 address",
            BadMailbox,
            true,
        ),
        (
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
            BadMailbox,
            true,
        ),
        (
            "550 5.2.1 The email account that you tried to reach is disabled.",
            BadMailbox,
            false,
        ),
        ("450 4.2.0 Mailbox temporarily unavailable", Other, false),
        (
            "452 4.2.2 The email account that you tried to reach is over quota.",
            MailboxFull,
            false,
        ),
        ("552 5.2.2 Mailbox full", MailboxFull, false),
        (
            "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
            SpamBlock,
            false,
        ),
        (
            "521 5.7.1 Service unavailable; client [203.0.113.225] blocked using dnsbl.sorbs.net",
            SpamBlock,
            false,
        ),
        (
            "550 5.7.1 Our system has detected that this message is likely unsolicited mail.",
            SpamBlock,
            false,
        ),
        (
            "550 5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM. To reduce spam ...",
            Policy,
            false,
        ),
        (
            "550 5.7.25 <x@example.com>: Recipient address rejected: Reverse DNS validation failed",
            Policy,
            false,
        ),
        (
            "550 5.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]",
            Policy,
            false,
        ),
        ("501 5.1.8 Sender address rejected", Policy, false),
        (
            "553 5.1.8 <a@b.example>: Domain of sender address does not exist",
            Policy,
            false,
        ),
        ("550 Domain does not exist", Dns, false),
        (
            "550 5.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.",
            RateLimited,
            false,
        ),
        (
            "554 5.7.1 <x@example.com>: Relay access denied",
            Policy,
            false,
        ),
        (
            "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address.",
            RateLimited,
            false,
        ),
        (
            "450 4.7.0 Too many connections, slow down",
            RateLimited,
            false,
        ),
        (
            "421 Service not available, closing transmission channel",
            RateLimited,
            false,
        ),
        (
            "552 5.3.4 Message size exceeds fixed limit",
            MessageTooBig,
            false,
        ),
        ("552 Message too large", MessageTooBig, false),
        (
            "550 5.1.2 domain nonexistent.example does not exist",
            Dns,
            false,
        ),
        (
            "556 5.1.10 domain x.example does not accept mail (null MX, RFC 7505)",
            Dns,
            false,
        ),
        (
            "451 4.4.3 DNS lookup failed for x.example: timeout",
            Dns,
            false,
        ),
        ("530 5.7.0 Must issue a STARTTLS command first", Tls, false),
        ("451 4.7.5 TLS: invalid peer certificate", Tls, false),
        ("451 4.3.0 Temporary local problem", Other, false),
        (
            "550 #5.1.1 sorry, no mailbox here by that name",
            BadMailbox,
            true,
        ),
        (
            "550 Your message wasn't delivered to a@b.example because the address couldn't be found.",
            BadMailbox,
            true,
        ),
        (
            "550 5.7.0 <a@b.example>... Please use the SMTP server of your ISP.",
            SpamBlock,
            false,
        ),
        // x.4.3 is a directory server failure, and Postfix's DNS failure.
        ("451 4.4.3 Unable to contact LDAP server", Other, false),
        // x.7.27 is the sender's null MX, unless the words name the receiving host.
        ("550 5.7.27 Host does not accept mail", Dns, false),
        ("550 5.7.27 Sender address has null MX", Policy, false),
        (
            "550 5.3.0 <a@b.example>... Insufficient permission",
            Other,
            false,
        ),
        (
            "550 no valid recipients were found for this message a@b.example ... unknown host",
            Dns,
            false,
        ),
        // A translated Google Groups notice: "the group may not exist or you may
        // not post to it".
        (
            "550 Hallo a@b.example, die Gruppe, die Sie kontaktieren möchten, ist möglicherweise nicht vorhanden. https://groups.google.com/support/",
            Policy,
            false,
        ),
    ];
    for (reply, class, suppress) in cases {
        let v = c(reply);
        assert_eq!(
            (v.class, v.suppress),
            (class, suppress),
            "{reply}: {}",
            v.why
        );
    }
}

#[test]
fn the_stage_decides_what_the_words_cannot() {
    let unknown = |stage| classify(550, None, "User unknown", stage);
    assert!(unknown(Stage::Rcpt).suppress);
    for stage in [Stage::Connect, Stage::Mail, Stage::Data, Stage::Unknown] {
        let v = unknown(stage);
        assert!(!v.suppress, "{stage:?}: {}", v.why);
    }
    // With the code that says so, a DATA-stage refusal is about the mailbox.
    assert!(classify(550, Some([5, 1, 1]), "User unknown", Stage::Data).suppress);
    assert_eq!(
        Stage::named_in("host x said: 550 5.1.1 unknown (in reply to RCPT TO command)"),
        Stage::Rcpt
    );
    assert_eq!(
        Stage::named_in(">>> RCPT To:<a@b>\n<<< 250 ok\n>>> DATA\n<<< 550 no"),
        Stage::Data
    );
}

#[test]
fn stages_named_in_wrapped_reports() {
    assert_eq!(
        Stage::named_in(
            "SMTP error from remote mail server after EHLO mx.a.example:\n 550 Rejected"
        ),
        Stage::Connect
    );
    assert_eq!(
        Stage::named_in(
            "<a@b.example>: host mx.b.example[192.0.2.1] refused to\n    talk to me: 421 Service refused"
        ),
        Stage::Connect
    );
    // Refused at the greeting, a refusal is about the sending IP.
    let v = classify(550, None, "Rejected", Stage::named_in("after EHLO x:"));
    assert_eq!(v.class, SpamBlock, "{}", v.why);
}

#[test]
fn codes_inside_text_and_reply_lines() {
    assert_eq!(enhanced_in("(#5.1.1 - chkusr)"), Some([5, 1, 1]));
    assert_eq!(enhanced_in("ERROR_CODE :5.2.2 <a@b>"), Some([5, 2, 2]));
    assert_eq!(enhanced_in("client [192.0.2.1] blocked"), None);
    assert_eq!(
        parse_reply_line("550 5.1.1 <a@b>: user unknown"),
        Some((550, Some([5, 1, 1]), "<a@b>: user unknown"))
    );
    assert_eq!(
        parse_reply_line("550 user unknown"),
        Some((550, None, "user unknown"))
    );
    assert_eq!(parse_reply_line("hello"), None);
}

#[test]
fn a_code_that_disagrees_with_the_words_needs_the_rcpt_stage() {
    // x.2.1 says the mailbox exists but takes nothing; "User Unknown" says it does
    // not exist. Zoho and the Japanese carriers' reception filters answer so to a
    // sender their user refused, so only a refusal at RCPT, before any content was
    // seen, is taken as the address being bad.
    for reply in [
        "550 5.2.1 <a@b.example>... User Unknown",
        "550 Invalid Address, ERROR_CODE :550, ERROR_CODE :5.2.1 <a@b.example>... User Unknown",
    ] {
        let (code, enhanced, text) = parse_reply_line(reply).unwrap();
        for stage in [Stage::Unknown, Stage::Data] {
            let v = classify(code, enhanced, text, stage);
            assert_eq!((v.class, v.suppress), (Policy, false), "{reply}: {}", v.why);
        }
        let v = classify(code, enhanced, text, Stage::Rcpt);
        assert_eq!(
            (v.class, v.suppress),
            (BadMailbox, true),
            "{reply}: {}",
            v.why
        );
    }
}

#[test]
fn other_address_status_with_words_saying_the_address_is_not_there() {
    // x.1.0 ("other address status") beside "Address rejected." says what x.1.1
    // says; the same code on the sender's address is the sender's problem, and an
    // "Address rejected:" followed by a reason is only Postfix's prefix.
    let cases = [
        ("550 5.1.0 Address rejected.", BadMailbox, true),
        ("550 #5.1.0 Address rejected.", BadMailbox, true),
        (
            "550 5.1.0 <bounce@mailer.a.example> sender rejected. AUP#CDRBL",
            Policy,
            false,
        ),
        (
            "550 5.1.0 Address rejected: Policy violation",
            Policy,
            false,
        ),
        // Directory-harvest protection refuses the sender, whatever address the
        // reply names: its words "invalid recipients" are about other addresses.
        (
            "550 5.1.0 Address rejected: too many invalid recipients from your IP",
            RateLimited,
            false,
        ),
        (
            "452 4.5.3 <a@b.example>: Too many invalid recipients",
            RateLimited,
            false,
        ),
    ];
    for (reply, class, suppress) in cases {
        let v = c(reply);
        assert_eq!(
            (v.class, v.suppress),
            (class, suppress),
            "{reply}: {}",
            v.why
        );
    }
}
