//! RFC 5322 message helpers the relay needs: finding header fields and the `From:`
//! addresses. Parsing of addresses is mail-parser's; we split the header block.

use mail_parser::HeaderValue;
use mail_parser::parsers::MessageStream;

/// The header block: everything before the first empty line (or all of it).
pub fn header_block(content: &[u8]) -> &[u8] {
    if content.starts_with(b"\r\n") {
        return &content[..0];
    }
    match memchr::memmem::find(content, b"\r\n\r\n") {
        Some(pos) => &content[..pos + 2],
        None => content,
    }
}

/// The fields of a header block as `(name, value)`, split the way RFC 5322 §2.2
/// does: a line beginning with white space continues the field before it. The
/// value is everything after the colon, continuation lines and final CRLF
/// included; lines without a colon are skipped.
pub(crate) fn fields(headers: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut starts = Vec::new();
    let mut pos = 0;
    for line in headers.split_inclusive(|&b| b == b'\n') {
        if !line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            starts.push(pos);
        }
        pos += line.len();
    }
    starts.push(headers.len());
    starts
        .windows(2)
        .map(|w| &headers[w[0]..w[1]])
        .filter_map(|field| {
            let colon = field.iter().position(|&b| b == b':')?;
            Some((field[..colon].trim_ascii_end(), &field[colon + 1..]))
        })
        .collect::<Vec<_>>()
        .into_iter()
}

/// True when the header block has a field called `name` (case-insensitive).
pub fn has_header(headers: &[u8], name: &str) -> bool {
    fields(headers).any(|(field, _)| field.eq_ignore_ascii_case(name.as_bytes()))
}

/// Lower-cased domains of every address in the `From:` field(s). `None` when there is
/// no `From:` field, or one without an address, or an address without a domain.
///
/// The fields are split here and only their values parsed (by mail-parser's
/// address parser, as mail-auth does for DKIM and DMARC): mail-parser's own
/// header splitting can run a malformed field into the next, hiding a second
/// `From:` that receivers see.
pub fn from_domains(content: &[u8]) -> Option<Vec<String>> {
    let mut domains = Vec::new();
    // mail-auth takes `F rom:` for `From:` too (it skips white space in names):
    // such a field is an author as well.
    let is_from = |name: &[u8]| {
        name.iter()
            .filter(|b| !b.is_ascii_whitespace())
            .map(u8::to_ascii_lowercase)
            .eq(b"from".iter().copied())
    };
    for (_, value) in fields(header_block(content)).filter(|(name, _)| is_from(name)) {
        let HeaderValue::Address(address) = MessageStream::new(value).parse_address() else {
            return None;
        };
        let before = domains.len();
        for addr in address.iter() {
            let email = addr.address.as_deref()?;
            let (_, domain) = email.rsplit_once('@')?;
            domains.push(domain.trim_end_matches('.').to_lowercase());
        }
        if domains.len() == before {
            return None;
        }
    }
    (!domains.is_empty()).then_some(domains)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_headers_case_insensitively_and_ignores_the_body() {
        let msg = b"Subject: x\r\nmessage-id: <a@b>\r\n\r\nDate: in body\r\n";
        let headers = header_block(msg);
        assert!(has_header(headers, "Message-ID"));
        assert!(!has_header(headers, "Date"));
        assert!(!has_header(header_block(b"\r\nDate: x\r\n"), "Date"));
    }

    #[test]
    fn continuation_lines_are_not_fields() {
        assert!(!has_header(b"Subject: a\r\n Date: folded\r\n\r\n", "Date"));
    }

    #[test]
    fn from_domains_of_single_and_multiple_addresses() {
        assert_eq!(
            from_domains(b"From: Alice <alice@Example.COM>\r\n\r\nhi").unwrap(),
            vec!["example.com"]
        );
        assert_eq!(
            from_domains(b"From: a@x.example, \"B\" <b@y.example>\r\n\r\n").unwrap(),
            vec!["x.example", "y.example"]
        );
        assert!(from_domains(b"Subject: none\r\n\r\n").is_none());
        assert!(from_domains(b"From: undisclosed\r\n\r\n").is_none());
        assert!(from_domains(b"From: a@x.example\r\nFrom: ;\r\n\r\n").is_none());
    }

    /// Found by the message_headers fuzz target: mail-parser's header splitting ran
    /// this malformed `date` field into the next line, so only the second author
    /// was authorized while DKIM/DMARC verifiers (and readers) see both.
    #[test]
    fn a_malformed_field_does_not_hide_the_next_from() {
        let mut message = b"date : Thu, 1 Jan 19".to_vec();
        message.extend_from_slice(&[0xa6; 40]);
        message.extend_from_slice(b"DK\x067@\x8e alice@\x8e s=s; h=from; bh=AAAA; b=AA-A\r\n");
        message
            .extend_from_slice(b"From: ceo@evil.example\r\nFrom: alice@a.example\r\n\r\nbody\r\n");
        assert_eq!(
            from_domains(&message).unwrap(),
            vec!["evil.example", "a.example"]
        );
    }

    /// Found by the message_headers fuzz target: mail-auth reads `F  rom:` as an
    /// author, so sender authorization must too.
    #[test]
    fn a_from_name_with_white_space_is_an_author() {
        assert_eq!(
            from_domains(b"From: a@a.example\r\nF  rom: ceo@evil.example\r\n\r\n").unwrap(),
            vec!["a.example", "evil.example"]
        );
        assert!(from_domains(b"Fromage: a@a.example\r\n\r\n").is_none());
    }
}
