//! Invariant checks shared by the cargo-fuzz targets in `fuzz/` and the seed-replay
//! test `tests/fuzz_seeds.rs`, so both run exactly the same logic. Each entry point
//! takes the raw fuzzer input and panics when an invariant does not hold.
//!
//! Not part of the API: hidden from the docs and free to change.

use crate::auth::sasl;
use crate::smtp::{
    DataReceiver, DataStatus, Domain, LineEndingViolation, Mailbox, dot_stuff,
    find_bare_line_ending,
};
use smtp_proto::Request;

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
