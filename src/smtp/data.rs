//! Message data on the wire: the DATA receiver and its inverse, dot-stuffing.
//!
//! Invariants of [`DataReceiver`]:
//! - the only end of data is `<CRLF>.<CRLF>` (RFC 5321 §4.1.1.4), where the first CRLF
//!   may be the one ending the DATA command itself;
//! - a leading dot on a line is removed exactly once (§4.5.2);
//! - a CR not followed by LF, or an LF not preceded by CR, is recorded as a
//!   violation. The session rejects such a message with `550 5.5.2` after reading to
//!   the true end of data, so `\n.\n`, `\r.\r`, `\r\n.\r` and friends can never end
//!   the message early and smuggle a second one;
//! - output beyond the size limit is counted but not stored, so a huge message costs
//!   no memory; the session answers `552 5.3.4`.

use memchr::memchr2;

/// What was wrong with the line endings of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEndingViolation {
    BareCr,
    BareLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    /// More input is needed.
    Continue,
    /// `<CRLF>.<CRLF>` was seen; bytes after it belong to the next command.
    Done,
}

#[derive(Debug)]
pub struct DataReceiver {
    /// At the start of a line that followed a proper CRLF.
    line_start: bool,
    /// The current line so far is exactly one (removed) leading dot.
    dot_only: bool,
    /// The previous byte was a CR that has not been emitted yet.
    pending_cr: bool,
    violation: Option<LineEndingViolation>,
    max_size: usize,
    /// Octets of unstuffed message data, including any past `max_size`.
    size: usize,
}

impl DataReceiver {
    pub fn new(max_size: usize) -> DataReceiver {
        DataReceiver {
            line_start: true,
            dot_only: false,
            pending_cr: false,
            violation: None,
            max_size,
            size: 0,
        }
    }

    /// First bare CR or LF seen, if any.
    pub fn violation(&self) -> Option<LineEndingViolation> {
        self.violation
    }

    /// True when the data exceeded the size limit.
    pub fn too_big(&self) -> bool {
        self.size > self.max_size
    }

    /// Consumes bytes from `input`, appending unstuffed message data to `out`.
    /// Returns how many input bytes were consumed and whether the data ended.
    pub fn ingest(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, DataStatus) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    i += 1;
                    if self.dot_only {
                        return (i, DataStatus::Done);
                    }
                    self.emit(out, b"\r\n");
                    self.line_start = true;
                    continue;
                }
                self.note(LineEndingViolation::BareCr);
                self.emit(out, b"\r");
                // What follows a bare CR does not start a line: a dot there is data,
                // and `<CRLF><CR>.<CRLF>` must not end the message.
                self.line_start = false;
                self.dot_only = false;
                // fall through: `b` is processed as ordinary input below
            }
            match b {
                b'\r' => {
                    self.pending_cr = true;
                    i += 1;
                }
                b'\n' => {
                    self.note(LineEndingViolation::BareLf);
                    self.emit(out, b"\n");
                    // The next line did not follow a CRLF, so it cannot end the data.
                    self.line_start = false;
                    self.dot_only = false;
                    i += 1;
                }
                b'.' if self.line_start => {
                    self.line_start = false;
                    self.dot_only = true;
                    i += 1;
                }
                _ => {
                    // Fast path: copy up to the next CR or LF in one go.
                    let run = memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                    self.emit(out, &input[i..i + run]);
                    self.line_start = false;
                    self.dot_only = false;
                    i += run;
                }
            }
        }
        (i, DataStatus::Continue)
    }

    fn note(&mut self, v: LineEndingViolation) {
        self.violation.get_or_insert(v);
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len());
        if self.size <= self.max_size {
            out.extend_from_slice(bytes);
        }
    }
}

/// First bare CR or LF in `data` (used for BDAT chunks, which have no dot-stuffing
/// but are relayed later with DATA, where a bare LF could end the message early at a
/// lenient receiver).
pub fn find_bare_line_ending(data: &[u8]) -> Option<LineEndingViolation> {
    let mut rest = data;
    while let Some(pos) = memchr2(b'\r', b'\n', rest) {
        if rest[pos] == b'\n' {
            return Some(LineEndingViolation::BareLf);
        }
        if rest.get(pos + 1) != Some(&b'\n') {
            return Some(LineEndingViolation::BareCr);
        }
        rest = &rest[pos + 2..];
    }
    None
}

/// Encodes message data for DATA: a dot is added to every line that starts with one,
/// a final CRLF is added if missing, and `.<CRLF>` ends it (RFC 5321 §4.5.2).
pub fn dot_stuff(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + 8);
    let mut line_start = true;
    for chunk in message.split_inclusive(|&b| b == b'\n') {
        if line_start && chunk.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(chunk);
        line_start = chunk.ends_with(b"\n");
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(input: &[u8]) -> (Vec<u8>, usize, DataStatus, Option<LineEndingViolation>) {
        let mut r = DataReceiver::new(1 << 20);
        let mut out = Vec::new();
        let (n, status) = r.ingest(input, &mut out);
        (out, n, status, r.violation())
    }

    #[test]
    fn ends_at_crlf_dot_crlf_and_leaves_the_rest() {
        let (out, n, status, v) = receive(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(status, DataStatus::Done);
        assert_eq!(
            &b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n"[n..],
            b"QUIT\r\n"
        );
        assert_eq!(v, None);
    }

    #[test]
    fn empty_message() {
        let (out, n, status, _) = receive(b".\r\n");
        assert!(out.is_empty());
        assert_eq!((n, status), (3, DataStatus::Done));
    }

    #[test]
    fn dots_are_unstuffed_exactly_once() {
        let (out, _, status, _) = receive(b"..\r\n...x\r\n.y\r\na.b\r\n.\r\n");
        assert_eq!(out, b".\r\n..x\r\ny\r\na.b\r\n");
        assert_eq!(status, DataStatus::Done);
    }

    #[test]
    fn byte_at_a_time_gives_the_same_result() {
        let input = b"a\r\n..b\r\n\r\n.\r\nNEXT";
        let mut r = DataReceiver::new(1 << 20);
        let mut out = Vec::new();
        let mut consumed = 0;
        for (i, b) in input.iter().enumerate() {
            let (n, status) = r.ingest(std::slice::from_ref(b), &mut out);
            consumed += n;
            if status == DataStatus::Done {
                assert_eq!(i + 1, consumed);
                break;
            }
        }
        assert_eq!(out, b"a\r\n.b\r\n\r\n");
        assert_eq!(&input[consumed..], b"NEXT");
    }

    #[test]
    fn smuggling_variants_do_not_end_data_and_are_flagged() {
        for (variant, kind) in [
            (&b"a\n.\nMAIL FROM:<x@y>\n"[..], LineEndingViolation::BareLf),
            (b"a\r.\rMAIL FROM:<x@y>\r", LineEndingViolation::BareCr),
            (b"a\r\n.\rMAIL FROM:<x@y>\r\n", LineEndingViolation::BareCr),
            (b"a\n.\r\nMAIL FROM:<x@y>\r\n", LineEndingViolation::BareLf),
            (b"a\r\n.\nMAIL FROM:<x@y>\r\n", LineEndingViolation::BareLf),
        ] {
            let (_, n, status, v) = receive(variant);
            assert_eq!(status, DataStatus::Continue, "{variant:?} ended data");
            assert_eq!(n, variant.len());
            assert_eq!(v, Some(kind), "{variant:?}");
        }
    }

    /// Found by `fuzz/data_receiver`: a bare CR at the start of a line left the line
    /// "at its start", so `<CRLF><CR>.<CRLF>` (or `<CR>.<CRLF>` right after DATA) ended
    /// the data and the rest was read as commands: a smuggled second message.
    #[test]
    fn dot_after_bare_cr_neither_unstuffed_nor_ends_data() {
        for variant in [
            &b"\r.\r\nMAIL FROM:<x@y>\r\n"[..],
            b"a\r\n\r.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n\r..\r\n",
        ] {
            let (out, n, status, v) = receive(variant);
            assert_eq!(status, DataStatus::Continue, "{variant:?} ended data");
            assert_eq!(n, variant.len());
            assert_eq!(v, Some(LineEndingViolation::BareCr), "{variant:?}");
            assert_eq!(out, variant, "{variant:?}: a dot was removed");
        }
    }

    #[test]
    fn oversize_is_counted_not_stored() {
        let mut r = DataReceiver::new(4);
        let mut out = Vec::new();
        let (_, status) = r.ingest(b"123456789\r\n.\r\n", &mut out);
        assert_eq!(status, DataStatus::Done);
        assert!(r.too_big());
        assert!(out.len() <= 4);
    }

    #[test]
    fn bare_endings_found_in_bdat_data() {
        assert_eq!(find_bare_line_ending(b"a\r\nb\r\n"), None);
        assert_eq!(
            find_bare_line_ending(b"a\nb"),
            Some(LineEndingViolation::BareLf)
        );
        assert_eq!(
            find_bare_line_ending(b"a\rb"),
            Some(LineEndingViolation::BareCr)
        );
        assert_eq!(
            find_bare_line_ending(b"a\r"),
            Some(LineEndingViolation::BareCr)
        );
    }

    #[test]
    fn stuffing_round_trips() {
        let message = b"From: a\r\n\r\n.hidden\r\n..two\r\nend\r\n";
        let mut wire = Vec::new();
        dot_stuff(message, &mut wire);
        assert_eq!(wire, b"From: a\r\n\r\n..hidden\r\n...two\r\nend\r\n.\r\n");
        let (out, n, status, v) = receive(&wire);
        assert_eq!((status, n, v), (DataStatus::Done, wire.len(), None));
        assert_eq!(out, message);
    }
}
