//! RFC 5322 message helpers the relay needs: finding header fields and the `From:`
//! addresses. Parsing of addresses is mail-parser's; we only locate the header block.

use mail_parser::{HeaderName, MessageParser};

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

/// True when the header block has a field called `name` (case-insensitive).
pub fn has_header(headers: &[u8], name: &str) -> bool {
    headers
        .split(|&b| b == b'\n')
        .filter(|line| !line.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
        .filter_map(|line| {
            line.iter()
                .position(|&b| b == b':')
                .map(|colon| &line[..colon])
        })
        .any(|field| field.trim_ascii_end().eq_ignore_ascii_case(name.as_bytes()))
}

/// Lower-cased domains of every address in the `From:` field(s). `None` when there is
/// no `From:` field or an address in it has no domain.
pub fn from_domains(content: &[u8]) -> Option<Vec<String>> {
    let parsed = MessageParser::new().parse_headers(header_block(content))?;
    let mut domains = Vec::new();
    let mut seen_from = false;
    for header in parsed.headers() {
        if header.name != HeaderName::From {
            continue;
        }
        seen_from = true;
        let address = header.value().as_address()?;
        for addr in address.iter() {
            let email = addr.address.as_deref()?;
            let (_, domain) = email.rsplit_once('@')?;
            domains.push(domain.trim_end_matches('.').to_lowercase());
        }
    }
    (seen_from && !domains.is_empty()).then_some(domains)
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
    }
}
