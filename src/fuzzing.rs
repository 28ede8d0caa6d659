//! Invariant checks shared by the cargo-fuzz targets in `fuzz/` and the seed-replay
//! test `tests/fuzz_seeds.rs`, so both run exactly the same logic. Each entry point
//! takes the raw fuzzer input and panics when an invariant does not hold.
//!
//! Not part of the API: hidden from the docs and free to change.

use crate::accept::{Origin, Submission, added_headers};
use crate::api::{
    AddSuppression, Caller, RawRequest, SendRequest, compose_all, new_suppression, parse_json,
    raw_submission,
};
use crate::auth::{AuthenticatedUser, sasl};
use crate::config::Config;
use crate::dkim::DomainSigners;
use crate::message::{from_domains, header_block};
use crate::smtp::{
    DataReceiver, DataStatus, Domain, LineEndingViolation, Mailbox, dot_stuff,
    find_bare_line_ending,
};
use crate::store::{
    DkimAlgorithm, DkimKeyRecord, MessageSummary, NewRecipient, QueueId, RecipientState,
    RecipientStatus, SendingDomain,
};
use crate::unsubscribe::UnsubscribeKey;
use mail_auth::AuthenticatedMessage;
use smtp_proto::Request;
use std::net::SocketAddr;
use std::sync::LazyLock;

/// `smtp_command` target: one command line through the parser the session uses
/// (`Request::parse`, see `inbound::session::dispatch`), then the addresses and host
/// names it yields through [`Mailbox::parse`] and [`Domain::parse`]. The session
/// always hands the parser a line ending in LF, so an input without one is tried
/// both as is and with CRLF appended.
pub fn smtp_command(input: &[u8]) {
    command_line(input);
    if !input.ends_with(b"\n") {
        let mut line = input.to_vec();
        line.extend_from_slice(b"\r\n");
        command_line(&line);
    }
}

fn command_line(line: &[u8]) {
    let Ok(request) = Request::parse(&mut line.iter()) else {
        return;
    };
    match request {
        Request::Ehlo { host } | Request::Helo { host } | Request::Lhlo { host } => {
            // The HELO name is copied into the Received: header.
            no_line_break("HELO host", &host);
            domain(&host);
        }
        Request::Mail { from } => address(&from.address),
        Request::Rcpt { to } => address(&to.address),
        Request::Auth {
            initial_response, ..
        } => sasl_text(&initial_response),
        Request::Etrn { name } => domain(&name),
        Request::Atrn { domains } => domains.iter().for_each(|d| domain(d)),
        _ => {}
    }
}

fn no_line_break(what: &str, text: &str) {
    assert!(
        !text.contains(['\r', '\n']),
        "{what} {text:?} contains a line break"
    );
}

fn address(text: &str) {
    no_line_break("address", text);
    if let Some(mailbox) = Mailbox::parse(text) {
        // The mailbox is written into the Received: header and the queue.
        let shown = mailbox.to_string();
        assert!(
            !shown.chars().any(char::is_control),
            "mailbox {shown:?} from {text:?} contains a control character"
        );
        assert!(!mailbox.local().is_empty());
        // Stored addresses are parsed again by delivery: the shown form must round-trip.
        assert_eq!(
            Mailbox::parse(&shown).as_ref(),
            Some(&mailbox),
            "mailbox {shown:?} from {text:?} does not parse back"
        );
        domain(mailbox.domain().as_str());
    }
    domain(text.rsplit_once('@').map_or(text, |(_, d)| d));
}

fn domain(text: &str) {
    if let Some(domain) = Domain::parse(text) {
        let shown = domain.as_str();
        assert!(!shown.is_empty());
        assert!(
            !shown.chars().any(char::is_control),
            "domain {shown:?} from {text:?} contains a control character"
        );
    }
}

/// Output size limits a `data_receiver` input can select with its first byte.
pub const DATA_LIMITS: [usize; 8] = [0, 1, 3, 8, 20, 64, 512, usize::MAX];

/// `data_receiver` target. The input is a small header followed by the DATA bytes:
///
/// - byte 0: the output limit, `DATA_LIMITS[byte % 8]` (`'7'` = unlimited);
/// - byte 1: `k = byte % 8`, the number of chunk lengths that follow (`'0'`..`'7'`);
/// - `k` bytes: chunk lengths, `byte % 64` each (`'@'` = 0, `'A'` = 1, ... `'Z'` = 26),
///   used in a cycle to split the DATA bytes for the chunked feeding; none, or
///   all zero, means one byte at a time.
///
/// Inputs too short for their header are ignored.
pub fn data_receiver(input: &[u8]) {
    let [limit, k, rest @ ..] = input else {
        return;
    };
    let k = usize::from(k % 8);
    if rest.len() < k {
        return;
    }
    let (lengths, body) = rest.split_at(k);
    let mut chunks: Vec<usize> = lengths.iter().map(|b| usize::from(b % 64)).collect();
    if chunks.iter().all(|&c| c == 0) {
        chunks = vec![1];
    }
    data_receiver_checks(body, DATA_LIMITS[usize::from(limit % 8)], &chunks);
}

/// What one run of a [`DataReceiver`] over some input produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub output: Vec<u8>,
    pub consumed: usize,
    pub status: DataStatus,
    pub violation: Option<LineEndingViolation>,
    pub too_big: bool,
}

/// Feeds `input` to a new receiver in one call.
pub fn receive(input: &[u8], max_size: usize) -> Received {
    let mut receiver = DataReceiver::new(max_size);
    let mut output = Vec::new();
    let (consumed, status) = receiver.ingest(input, &mut output);
    assert!(consumed <= input.len());
    if status == DataStatus::Continue {
        assert_eq!(consumed, input.len(), "Continue must consume everything");
    }
    Received {
        output,
        consumed,
        status,
        violation: receiver.violation(),
        too_big: receiver.too_big(),
    }
}

/// Feeds `input` to a new receiver in pieces of the given lengths (used in a cycle;
/// at least one must be non-zero), stopping at the end of data like the session does.
pub fn receive_chunked(input: &[u8], max_size: usize, chunks: &[usize]) -> Received {
    assert!(chunks.iter().any(|&c| c > 0));
    let mut receiver = DataReceiver::new(max_size);
    let mut output = Vec::new();
    let mut consumed = 0;
    let mut status = DataStatus::Continue;
    let mut pos = 0;
    for &len in chunks.iter().cycle() {
        let chunk = &input[pos..input.len().min(pos + len)];
        let (n, s) = receiver.ingest(chunk, &mut output);
        assert!(n <= chunk.len());
        consumed += n;
        status = s;
        if s == DataStatus::Done {
            break;
        }
        assert_eq!(n, chunk.len(), "Continue must consume the whole chunk");
        pos += chunk.len();
        if pos == input.len() {
            break;
        }
    }
    Received {
        output,
        consumed,
        status,
        violation: receiver.violation(),
        too_big: receiver.too_big(),
    }
}

/// The DATA receiver written as a plain specification, without state or size limit:
/// data ends at the first `.<CRLF>` that begins a line following a real CRLF (or the
/// very start); a dot beginning such a line is removed; every other byte is kept. A
/// trailing CR is held back until the next byte tells whether it is bare.
pub fn reference_receive(input: &[u8]) -> Received {
    let line_start = |i: usize| i == 0 || (i >= 2 && &input[i - 2..i] == b"\r\n");
    let mut output = Vec::new();
    for (i, &b) in input.iter().enumerate() {
        if line_start(i) && input[i..].starts_with(b".\r\n") {
            return Received {
                output,
                consumed: i + 3,
                status: DataStatus::Done,
                violation: find_bare_line_ending(&input[..i]),
                too_big: false,
            };
        }
        if !(line_start(i) && b == b'.') {
            output.push(b);
        }
    }
    let seen = input.strip_suffix(b"\r").unwrap_or(input);
    if seen.len() < input.len() {
        output.pop();
    }
    Received {
        output,
        consumed: input.len(),
        status: DataStatus::Continue,
        violation: find_bare_line_ending(seen),
        too_big: false,
    }
}

/// All `data_receiver` invariants for one body, limit and chunking.
pub fn data_receiver_checks(body: &[u8], max_size: usize, chunks: &[usize]) {
    let whole = receive(body, max_size);

    // Chunked feeding gives what one-shot feeding gives. Over the limit the output is
    // discarded (the session answers 552), and how much of it was kept before the
    // limit depends on where the input was split, so there only its size is checked.
    let chunked = receive_chunked(body, max_size, chunks);
    let outcome = |r: &Received| (r.consumed, r.status, r.violation, r.too_big);
    assert_eq!(
        outcome(&chunked),
        outcome(&whole),
        "chunked {chunks:?} differs from one-shot"
    );
    if !whole.too_big {
        assert_eq!(
            chunked.output, whole.output,
            "chunked {chunks:?} output differs"
        );
    }

    // The output never exceeds the limit.
    for r in [&whole, &chunked] {
        assert!(r.output.len() <= max_size, "output over the limit");
    }

    // Data ends only at <CRLF>.<CRLF> (the first CRLF may be the DATA command's).
    if whole.status == DataStatus::Done {
        let taken = &body[..whole.consumed];
        assert!(
            taken == b".\r\n" || taken.ends_with(b"\r\n.\r\n"),
            "data ended at something other than <CRLF>.<CRLF>: {:?}",
            String::from_utf8_lossy(&taken[taken.len().saturating_sub(8)..])
        );
    }

    // The receiver agrees with the plain specification; over the limit, the output is
    // a prefix of the full output and the size is still counted.
    let spec = reference_receive(body);
    assert_eq!(
        (whole.consumed, whole.status, whole.violation),
        (spec.consumed, spec.status, spec.violation),
        "receiver differs from the specification"
    );
    assert_eq!(whole.too_big, spec.output.len() > max_size, "too_big wrong");
    if whole.too_big {
        assert!(spec.output.starts_with(&whole.output));
        assert!(spec.output.starts_with(&chunked.output));
    } else {
        assert_eq!(
            whole.output, spec.output,
            "output differs from specification"
        );
    }

    // Proper CRLF lines ending in <CRLF>.<CRLF> always end the data cleanly.
    if find_bare_line_ending(body).is_none() && body.ends_with(b"\r\n.\r\n") {
        assert_eq!(whole.status, DataStatus::Done);
        assert_eq!(whole.violation, None);
    }

    // Round trip: what was received, stuffed again, is received unchanged.
    if whole.status == DataStatus::Done && whole.violation.is_none() && !whole.too_big {
        assert_eq!(find_bare_line_ending(&whole.output), None);
        round_trip(&whole.output, &whole.output);
    }

    // And the other way: a body with only CRLF line endings survives stuffing.
    if find_bare_line_ending(body).is_none() {
        let mut expected = body.to_vec();
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        round_trip(body, &expected);
    }
}

fn round_trip(message: &[u8], expected: &[u8]) {
    let mut wire = Vec::new();
    dot_stuff(message, &mut wire);
    let again = receive(&wire, usize::MAX);
    assert_eq!(
        (again.status, again.consumed, again.violation),
        (DataStatus::Done, wire.len(), None),
        "stuffed message not received whole"
    );
    assert_eq!(
        again.output, expected,
        "stuffing round trip changed the message"
    );
}

/// `sasl` target: PLAIN and LOGIN decoding of arbitrary client text.
pub fn sasl(input: &[u8]) {
    sasl_text(&String::from_utf8_lossy(input));
}

fn sasl_text(text: &str) {
    if let Ok(credentials) = sasl::decode_plain(text) {
        assert!(!credentials.username.is_empty());
        assert!(!credentials.username.contains('\0') && !credentials.password.contains('\0'));
        let again = sasl::encode(&format!(
            "\0{}\0{}",
            credentials.username, credentials.password
        ));
        assert_eq!(sasl::decode_plain(&again), Ok(credentials));
    }
    if let Ok(decoded) = sasl::decode_utf8(text) {
        assert_eq!(sasl::decode_utf8(&sasl::encode(&decoded)), Ok(decoded));
    }
}

/// What the `message_headers` and `api_json` checks run against: a configuration
/// with small limits (so the size and recipient checks are reachable), an API
/// caller granted two domains, and an Ed25519 DKIM key (RSA would slow every run
/// tenfold and reads the same headers).
struct Fixture {
    config: Config,
    caller: Caller,
    unsubscribe: UnsubscribeKey,
    signers: DomainSigners,
}

/// The domains the fixture's caller may send as; seeds use them.
pub const CALLER_DOMAINS: [&str; 2] = ["a.example", "b.example"];

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let config = Config::from_toml(
        "hostname = \"relay.test\"\n\
         [limits]\nmax_recipients = 3\nmax_message_size = 16384\n",
    )
    .expect("the fixture configuration is valid");
    let (private_key, public_key) = mail_auth::dkim::generate::DkimKeyPair::generate_ed25519()
        .expect("Ed25519 key generation")
        .into_inner();
    let domain = SendingDomain {
        name: CALLER_DOMAINS[0].into(),
        created_at: 0,
        keys: vec![DkimKeyRecord {
            selector: "fuzz".into(),
            algorithm: DkimAlgorithm::Ed25519,
            private_key,
            public_key,
        }],
    };
    Fixture {
        config,
        caller: Caller(AuthenticatedUser {
            name: "fuzz".into(),
            admin: false,
            domains: CALLER_DOMAINS.map(String::from).to_vec(),
        }),
        unsubscribe: UnsubscribeKey([7; 32]),
        signers: DomainSigners::new(&domain).expect("the fixture key loads"),
    }
});

const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
    4321,
);

/// `message_headers` target: the input is a message's content (header block and
/// body) and goes through what the relay reads in the headers of mail it accepts:
/// the header block (`message::header_block`) of anything, and for content
/// acceptance would take (no NUL, CRLF line endings only: SMTP and the API refuse
/// the rest first) the `Received:`/`Date:`/`Message-ID:` fields it adds, the
/// `From:` domains of the completed message that sender authorization and DKIM
/// use (`message::from_domains`), DKIM signing and the returned headers of a
/// bounce.
pub fn message_headers(input: &[u8]) {
    let block = header_block(input);
    assert!(input.starts_with(block));
    assert!(
        memchr::memmem::find(block, b"\r\n\r\n").is_none(),
        "header block runs past the empty line"
    );
    if block.len() < input.len() {
        assert!(
            input[block.len()..].starts_with(b"\r\n"),
            "header block stops before the empty line"
        );
    }
    if input.contains(&0) || find_bare_line_ending(input).is_some() {
        return;
    }
    accepted(input);
}

/// When sender authorization lets the fixture's user send `message` (all its
/// `From:` domains granted), whoever a DKIM/DMARC verifier (mail-auth, with its
/// own header parser) takes for the author is in a granted domain too: otherwise
/// a user could get mail signed and accepted that receivers attribute to a domain
/// it was never granted. (Parsers may disagree on malformed fields as long as that
/// gets no such message through.)
fn authors_are_authorized(message: &[u8], domains: &[String]) {
    let user = &FIXTURE.caller.0;
    if !domains.iter().all(|d| user.may_send_as(d)) {
        return;
    }
    let Some(parsed) = AuthenticatedMessage::parse(message) else {
        return;
    };
    for author in &parsed.from {
        if let Some((_, domain)) = author.rsplit_once('@') {
            assert!(
                user.may_send_as(domain.trim_end_matches('.')),
                "a verifier reads author {author:?}, sender authorization {domains:?}"
            );
        }
    }
}

/// Acceptance's additions to `content`, then signing and a bounce of the result.
fn accepted(content: &[u8]) {
    let id: QueueId = "0123456789ABCDEF0123".parse().expect("a valid queue id");
    let submission = Submission {
        mail_from: Mailbox::parse("sender@a.example"),
        recipients: vec![NewRecipient {
            address: Mailbox::parse("rcpt@x.example").expect("an address"),
            local: false,
        }],
        user: Some(FIXTURE.caller.0.clone()),
        smtputf8: false,
        content: content.to_vec(),
        origin: Origin {
            from: "client.example ([192.0.2.1])".into(),
            tls: Some("TLS1.3".into()),
            protocol: "ESMTPSA".into(),
            source: "smtp",
        },
        submission: true,
        may_relay: true,
    };
    // A fixed Message-ID rather than `accept::message_id`'s random one: a first
    // line of the content can fold into that field, and runs must repeat.
    let added = added_headers(
        &FIXTURE.config.hostname,
        &id,
        "0123456789ABCDEF0123.00000000@relay.test",
        &submission,
        &chrono::DateTime::UNIX_EPOCH,
    );
    let full = [added.as_bytes(), content].concat();
    header_fields_prepended(&added, content, &full);
    // Sender authorization and the choice of DKIM key read the completed message.
    let full = match from_domains(&full) {
        Some(domains) => {
            for domain in &domains {
                // Compared with the user's granted domains; a line break would
                // also end up in logs.
                no_line_break("From: domain", domain);
            }
            authors_are_authorized(&full, &domains);
            let signatures = FIXTURE
                .signers
                .sign(&full)
                .unwrap_or_else(|e| panic!("a message with a From: domain cannot be signed: {e}"));
            header_fields_prepended(&signatures, &full, &[signatures.as_bytes(), &full].concat());
            let signed = [signatures.as_bytes(), &full].concat();
            body_hash_verifies(&signed);
            signed
        }
        None => full,
    };
    bounce(&id, &full);
}

/// `fields` (whole header fields) in front of `message` give `with` whose header
/// block is `fields` followed by the message's: the message's structure is kept.
fn header_fields_prepended(fields: &str, message: &[u8], with: &[u8]) {
    assert!(fields.ends_with("\r\n") && !fields.contains("\r\n\r\n"));
    assert_eq!(find_bare_line_ending(fields.as_bytes()), None);
    assert!(
        fields.split("\r\n").all(|line| line.is_empty()
            || line.starts_with([' ', '\t'])
            || line
                .split_once(':')
                .is_some_and(|(name, _)| !name.is_empty())),
        "added fields {fields:?} are not header fields"
    );
    assert_eq!(
        header_block(with),
        [fields.as_bytes(), header_block(message)].concat(),
        "prepending header fields changed the header block"
    );
}

/// The signature Outpost put first is found by a verifier's parser (mail-auth's),
/// and its body hash is that of the body where that parser finds it: signing and
/// verifying agree on where the body starts. (Whether the canonicalization itself is
/// right is checked against dkimpy in `tests/deliverability/verifiers.rs`: mail-auth 0.13's
/// own is wrong for bodies ending in white space.)
fn body_hash_verifies(signed: &[u8]) {
    let parsed = AuthenticatedMessage::parse(signed).expect("a signed message has headers");
    let ours = &parsed
        .dkim_headers
        .first()
        .expect("the verifier finds the signature")
        .header;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    crate::dkim::sign::relaxed_body(&signed[parsed.body_offset as usize..], |part| {
        hash.update(part)
    });
    assert_eq!(
        hash.finish().as_ref(),
        &ours.bh[..],
        "body hash does not verify"
    );
}

/// The bounce of `original` is a three-part report (unless the original's headers
/// contain the report's MIME boundary, which holds the queue id: a sender cannot
/// know it in advance) with CRLF line endings.
fn bounce(id: &QueueId, original: &[u8]) {
    let summary = MessageSummary {
        id: id.clone(),
        mail_from: "sender@a.example".into(),
        auth_user: None,
        size: original.len(),
        received_at: 0,
        smtputf8: false,
        recipients: vec![RecipientState {
            address: "rcpt@x.example".into(),
            status: RecipientStatus::Bounced,
            attempts: 1,
            next_attempt: 0,
            last_reply: Some("550 5.1.1 unknown".into()),
            last_class: None,
        }],
    };
    let dsn = crate::bounce::delivery_status_notification(
        &summary,
        original,
        &FIXTURE.config.hostname,
        chrono::DateTime::UNIX_EPOCH,
    )
    .expect("a bounced recipient and a sender give a report");
    assert_eq!(find_bare_line_ending(&dsn), None);
    let boundary = format!("{id}/{}", FIXTURE.config.hostname);
    if memchr::memmem::find(header_block(original), boundary.as_bytes()).is_none() {
        let parsed = mail_parser::MessageParser::new()
            .parse(&dsn)
            .expect("the report parses");
        assert_eq!(
            parsed.parts.len(),
            4,
            "report is not multipart with three parts"
        );
    }
}

/// `api_json` target: the input is a JSON request body, offered to every endpoint
/// that takes one (`POST /v1/messages`, `/v1/messages/raw`, `/v1/suppressions`),
/// each parsed as the handler's extractor does and validated by the handler's own
/// step from request to what it would store.
pub fn api_json(input: &[u8]) {
    let f = &*FIXTURE;
    if let Ok(request) = parse_json::<SendRequest>(input)
        && let Ok(submissions) = compose_all(&f.config, &f.unsubscribe, &f.caller, &request, PEER)
    {
        assert_eq!(submissions.len(), request.to.len());
        for (_, submission) in &submissions {
            valid_submission(submission);
            composed_headers(&submission.content);
            // Acceptance authorizes the From: of the message (a composed one
            // begins with a field, so the fields it adds change nothing): it must
            // be the address the request was authorized for.
            let from = submission
                .mail_from
                .as_ref()
                .expect("the API has no null sender");
            assert_eq!(
                from_domains(&submission.content),
                Some(vec![from.domain().as_str().to_lowercase()]),
                "the composed From: is not the authorized one"
            );
        }
    }
    if let Ok(request) = parse_json::<RawRequest>(input)
        && let Ok(submission) = raw_submission(&f.config, &f.caller, &request, PEER)
    {
        valid_submission(&submission);
    }
    if let Ok(body) = parse_json::<AddSuppression>(input)
        && let Ok(suppression) = new_suppression(&f.caller, body, 0)
    {
        assert!(f.caller.0.may_send_as(&suppression.domain));
        address(&suppression.address);
        assert!(!suppression.reason.chars().any(char::is_control));
    }
}

/// A submission the API would hand to acceptance: envelope addresses that cannot
/// break the `Received:` header or the SMTP commands of delivery, and content
/// acceptance takes, with a header block (then read as `message_headers` reads it).
fn valid_submission(s: &Submission) {
    if let Some(sender) = &s.mail_from {
        address(&sender.to_string());
    }
    for r in &s.recipients {
        address(&r.address.to_string());
    }
    assert_eq!(find_bare_line_ending(&s.content), None);
    assert!(
        memchr::memmem::find(&s.content, b"\r\n\r\n").is_some(),
        "submitted content has no header block"
    );
    assert!(s.content.len() <= FIXTURE.config.limits.max_message_size);
    message_headers(&s.content);
}

/// Every line of a composed message's header block is a field (a name of printable
/// ASCII before a colon) or the continuation of one: nothing in the request injected
/// a line of its own, and the fields Outpost writes appear once each.
fn composed_headers(content: &[u8]) {
    let block = String::from_utf8_lossy(header_block(content));
    let mut names = Vec::new();
    for line in block.strip_suffix("\r\n").unwrap_or(&block).split("\r\n") {
        if line.starts_with([' ', '\t']) && !names.is_empty() {
            continue;
        }
        let name = line
            .split_once(':')
            .map(|(name, _)| name)
            .filter(|name| !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b)))
            .unwrap_or_else(|| panic!("header line {line:?} is not a field"));
        names.push(name.to_ascii_lowercase());
    }
    for managed in [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
    ] {
        let count = names.iter().filter(|n| *n == managed).count();
        assert_eq!(count, 1, "{managed}: appears {count} times in {block:?}");
    }
}
