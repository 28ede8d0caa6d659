//! DKIM signing (RFC 6376, RFC 8463): relaxed/relaxed canonicalization, the
//! `DKIM-Signature:` field, and the signatures themselves (`ring`).
//!
//! Written from the RFC rather than taken from mail-auth 0.13 (the version this
//! toolchain can build): its relaxed body canonicalization keeps lines of white
//! space at the end of a body that §3.4.4 says to drop, and its field is folded
//! between the `b=` value and the `;` after it, which dkimpy refuses. Both were
//! seen by receivers as broken signatures on whole classes of mail; working around
//! them would have meant re-doing the canonicalization and the formatting anyway,
//! which is all of signing but the arithmetic, so only `ring` is used here. What
//! canonicalization is correct is checked against dkimpy, an independent verifier,
//! on thousands of generated messages (`tests/deliverability/verifiers.rs`).
//!
//! The body is canonicalized and hashed once per message, whatever the number of
//! keys. The header fields of [`SIGNED_HEADERS`] are each signed one more time than
//! the message has them (RFC 6376 §8.15): no one can add another `From:`, or a
//! `Cc:` that was not there, without breaking the signature.

use super::DkimError;
use crate::message::{fields, header_block};
use crate::store::{DkimAlgorithm, SendingDomain};
use base64::Engine;
use ring::digest::{Context, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};

/// The header fields signed (SPEC §5.2). List-Unsubscribe-Post is in the list so
/// RFC 8058 one-click is covered.
pub const SIGNED_HEADERS: [&str; 11] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Cc",
    "Reply-To",
];

/// Lines of the signature field are folded before this width where the tags allow
/// (RFC 5322 §2.1.1 recommends 78 characters); a domain name longer than that
/// stays whole on its line.
const LINE_WIDTH: usize = 76;

enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

struct KeySigner {
    selector: String,
    key: Key,
}

/// The signing keys of one sending domain, RSA first.
pub struct DomainSigners {
    domain: String,
    keys: Vec<KeySigner>,
    random: SystemRandom,
}

impl DomainSigners {
    /// Loads the keys of `domain` as the store keeps them (RSA as PKCS#1, Ed25519 as
    /// PKCS#8).
    pub fn new(domain: &SendingDomain) -> Result<DomainSigners, DkimError> {
        let keys = domain
            .keys
            .iter()
            .map(|record| {
                let bad = |reason: String| DkimError::BadKey {
                    domain: domain.name.clone(),
                    selector: record.selector.clone(),
                    reason,
                };
                let key = match record.algorithm {
                    DkimAlgorithm::Rsa => RsaKeyPair::from_der(&record.private_key)
                        .map(Key::Rsa)
                        .map_err(|e| bad(e.to_string()))?,
                    DkimAlgorithm::Ed25519 => {
                        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&record.private_key)
                            .map(Key::Ed25519)
                            .map_err(|e| bad(e.to_string()))?
                    }
                };
                Ok(KeySigner {
                    selector: record.selector.clone(),
                    key,
                })
            })
            .collect::<Result<Vec<_>, DkimError>>()?;
        Ok(DomainSigners {
            domain: domain.name.clone(),
            keys,
            random: SystemRandom::new(),
        })
    }

    /// The `DKIM-Signature:` fields for `message` (CRLF line endings), to be put in
    /// front of it: one per key.
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let headers = header_block(message);
        // The body follows the empty line; a message without one has none.
        let body = message.get(headers.len() + 2..).unwrap_or_default();
        let mut body_hash = Context::new(&SHA256);
        relaxed_body(body, |part| body_hash.update(part));
        let body_hash = base64(body_hash.finish().as_ref());
        let (names, signed_fields) = signed_fields(headers);

        let mut out = String::new();
        for signer in &self.keys {
            let algorithm = match signer.key {
                Key::Rsa(_) => DkimAlgorithm::Rsa,
                Key::Ed25519(_) => DkimAlgorithm::Ed25519,
            };
            let unsigned = unsigned_field(
                algorithm,
                &self.domain,
                &signer.selector,
                now,
                &names,
                &body_hash,
            );
            // RFC 6376 §3.7: the signed fields, then this one as it will be but for
            // the empty `b=`, without its final CRLF.
            let mut data = signed_fields.clone();
            let (name, value) = unsigned.split_once(':').expect("the field has a colon");
            relaxed_field(name.as_bytes(), value.as_bytes(), &mut data);
            data.truncate(data.len() - 2);
            let signature = match &signer.key {
                Key::Rsa(key) => {
                    let mut signature = vec![0; key.public().modulus_len()];
                    key.sign(&RSA_PKCS1_SHA256, &self.random, &data, &mut signature)
                        .map_err(|_| DkimError::Sign("RSA signing failed".into()))?;
                    signature
                }
                // RFC 8463 §3: Ed25519 signs the SHA-256 hash of the data.
                Key::Ed25519(key) => key
                    .sign(ring::digest::digest(&SHA256, &data).as_ref())
                    .as_ref()
                    .to_vec(),
            };
            out.push_str(&unsigned);
            fold_b(&mut out, &base64(&signature));
            out.push_str("\r\n");
        }
        Ok(out)
    }
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The field up to and including `b=`, folded at tag and name boundaries.
fn unsigned_field(
    algorithm: DkimAlgorithm,
    domain: &str,
    selector: &str,
    time: u64,
    names: &[&str],
    body_hash: &str,
) -> String {
    let a = match algorithm {
        DkimAlgorithm::Rsa => "rsa-sha256",
        DkimAlgorithm::Ed25519 => "ed25519-sha256",
    };
    let mut field = Folded::new("DKIM-Signature:");
    for tag in [
        "v=1;".to_string(),
        format!("a={a};"),
        "c=relaxed/relaxed;".to_string(),
        format!("d={domain};"),
        format!("s={selector};"),
        format!("t={time};"),
    ] {
        field.word(&tag, " ");
    }
    // `h=` may be folded after any colon (RFC 6376 §3.5 `sig-h-tag`).
    for (i, name) in names.iter().enumerate() {
        let word = match i {
            0 => format!("h={name}:"),
            _ if i + 1 == names.len() => format!("{name};"),
            _ => format!("{name}:"),
        };
        field.word(&word, if i == 0 { " " } else { "" });
    }
    field.word(&format!("bh={body_hash};"), " ");
    // On a line of its own, last: nothing follows the value.
    field.text.push_str("\r\n\tb=");
    field.text
}

/// Appends the `b=` value to the field [`unsigned_field`] made: white space is
/// allowed between its characters (RFC 6376 §3.5 `base64string`), so it is folded
/// there, and none follows its last one.
fn fold_b(field: &mut String, value: &str) {
    let (head, mut rest) = value.split_at((LINE_WIDTH - 3).min(value.len()));
    field.push_str(head);
    while !rest.is_empty() {
        let (line, tail) = rest.split_at((LINE_WIDTH - 1).min(rest.len()));
        field.push_str("\r\n\t");
        field.push_str(line);
        rest = tail;
    }
}

/// A header field built word by word, a new line begun when a word would pass
/// [`LINE_WIDTH`].
struct Folded {
    text: String,
    line_start: usize,
}

impl Folded {
    fn new(name: &str) -> Folded {
        Folded {
            text: name.to_string(),
            line_start: 0,
        }
    }

    /// Appends `word` after `separator`, or on a new line instead.
    fn word(&mut self, word: &str, separator: &str) {
        let line = self.text.len() - self.line_start;
        if line + separator.len() + word.len() > LINE_WIDTH && line > 1 {
            self.text.push_str("\r\n\t");
            self.line_start = self.text.len() - 1;
        } else {
            self.text.push_str(separator);
        }
        self.text.push_str(word);
    }
}

/// The `h=` names and the relaxed canonical form of the fields they select, in
/// that order: each name of [`SIGNED_HEADERS`] once per instance, the last instance
/// first (RFC 6376 §5.4.2), and once more for an instance that does not exist.
fn signed_fields(headers: &[u8]) -> (Vec<&'static str>, Vec<u8>) {
    let fields: Vec<(&[u8], &[u8])> = fields(headers).collect();
    let mut names = Vec::with_capacity(SIGNED_HEADERS.len() * 2);
    let mut data = Vec::with_capacity(headers.len());
    for name in SIGNED_HEADERS {
        for (field, value) in fields.iter().rev() {
            if field.eq_ignore_ascii_case(name.as_bytes()) {
                names.push(name);
                relaxed_field(field, value, &mut data);
            }
        }
        names.push(name);
    }
    (names, data)
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Appends the relaxed canonical form of a header field (RFC 6376 §3.4.2): the name
/// in lower case; the value unfolded, each run of white space made one space, none
/// at its start or end; then CRLF.
fn relaxed_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend(name.trim_ascii_end().iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let mut space = false;
    let mut started = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => space = started,
            _ => {
                if space {
                    out.push(b' ');
                    space = false;
                }
                out.push(b);
                started = true;
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the relaxed canonical form of `body` (RFC 6376 §3.4.4) to `write`: white
/// space at the end of each line removed and every other run of it made one space,
/// then every empty line at the end removed; a last line without CRLF gets one.
/// Canonical text is mostly the body itself, so it is written in the longest
/// unchanged runs of the body there are: a few calls per message, not per line.
pub(crate) fn relaxed_body(body: &[u8], mut write: impl FnMut(&[u8])) {
    // `body[run..]` up to the current position is canonical and not written yet.
    let mut run = 0;
    let mut empty_lines = 0;
    let mut start = 0;
    let crlf = memchr::memmem::Finder::new(b"\r\n");
    while start < body.len() {
        let (end, next) = match crlf.find(&body[start..]) {
            Some(i) => (start + i, start + i + 2),
            None => (body.len(), body.len()),
        };
        let content_end = body[start..end]
            .iter()
            .rposition(|&b| !is_wsp(b))
            .map_or(start, |i| start + i + 1);
        if content_end == start {
            // Written only if a line with content follows.
            write(&body[run..start]);
            run = next;
            empty_lines += 1;
            start = next;
            continue;
        }
        for _ in 0..empty_lines {
            write(b"\r\n");
        }
        empty_lines = 0;
        let mut i = start;
        while let Some(found) = memchr::memchr2(b' ', b'\t', &body[i..content_end]) {
            let wsp = i + found;
            let wsp_end = wsp
                + body[wsp..content_end]
                    .iter()
                    .position(|&b| !is_wsp(b))
                    .expect("the line's content ends in a non-space");
            if body[wsp] != b' ' || wsp_end > wsp + 1 {
                write(&body[run..wsp]);
                write(b" ");
                run = wsp_end;
            }
            i = wsp_end;
        }
        if content_end < end || next == end {
            write(&body[run..content_end]);
            write(b"\r\n");
            run = next;
        }
        start = next;
    }
    write(&body[run..start.min(body.len())]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        relaxed_body(body, |part| out.extend_from_slice(part));
        out
    }

    #[test]
    fn relaxed_body_as_rfc_6376_says() {
        // §3.4.6 example.
        assert_eq!(
            canonical(b" C \r\nD \t E\r\n\r\n\r\n"),
            b" C\r\nD E\r\n".to_vec()
        );
        for (body, expected) in [
            (&b""[..], &b""[..]),
            (b"\r\n", b""),
            (b"  \r\n\t\r\n", b""),
            (b" ", b""),
            (b"text\r\n \r\n", b"text\r\n"),
            (b"text\r\n\t\r\n \t \r\n\r\n", b"text\r\n"),
            (b"text", b"text\r\n"),
            (b"a\r\n\r\n \r\nb", b"a\r\n\r\n\r\nb\r\n"),
            (b"a  b\t\tc \td\r\n", b"a b c d\r\n"),
            (b"\tlead\r\n", b" lead\r\n"),
            (b"one two three\r\n", b"one two three\r\n"),
            (b"x \r\n", b"x\r\n"),
        ] {
            assert_eq!(
                canonical(body),
                expected.to_vec(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn relaxed_fields_as_rfc_6376_says() {
        let mut out = Vec::new();
        // §3.4.6 example.
        relaxed_field(b"A", b" X\r\n", &mut out);
        relaxed_field(b"B ", b" Y\t\r\n\tZ  \r\n", &mut out);
        assert_eq!(out, b"a:X\r\nb:Y Z\r\n".to_vec());
    }

    #[test]
    fn absent_and_repeated_fields_are_named_once_more_than_they_occur() {
        let (names, data) =
            signed_fields(b"To: a@x.example\r\nFrom: f@y.example\r\nTo:  b@x.example\r\n");
        assert_eq!(&names[..4], ["From", "From", "To", "To"]);
        assert_eq!(names[4], "To");
        assert_eq!(names.len(), SIGNED_HEADERS.len() + 3);
        assert_eq!(
            data,
            b"from:f@y.example\r\nto:b@x.example\r\nto:a@x.example\r\n".to_vec()
        );
    }

    #[test]
    fn the_b_value_is_last_and_folded_without_trailing_space() {
        let domain = crate::dkim::generate("example.com", true, chrono::Utc::now()).unwrap();
        let signers = DomainSigners::new(&domain).unwrap();
        let fields = signers
            .sign(b"From: a@example.com\r\nSubject: hi\r\n\r\nbody \r\n \r\n")
            .unwrap();
        let signatures: Vec<&str> = fields
            .split("DKIM-Signature:")
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(signatures.len(), 2);
        for signature in signatures {
            let b = signature.rsplit_once("b=").unwrap().1;
            assert!(b.ends_with("\r\n") && !b.trim_end().ends_with(';'), "{b}");
            assert!(!b.trim_end().ends_with(char::is_whitespace));
            assert!(
                signature.lines().all(|l| l.len() <= LINE_WIDTH + 1),
                "{signature}"
            );
            // The body hash of "body\r\n".
            let expected = base64(ring::digest::digest(&SHA256, b"body\r\n").as_ref());
            assert!(
                signature.contains(&format!("bh={expected};")),
                "{signature}"
            );
        }
    }
}
