//! Reading bounce emails: what came back, for whom, and why.
//!
//! - RFC 3464 delivery status notifications (`multipart/report;
//!   report-type=delivery-status`): one recipient per `Final-Recipient` (or
//!   `Original-Recipient`) block of the `message/delivery-status` part, with its
//!   `Status` and `Diagnostic-Code`.
//! - Non-standard bounces (qmail, Exim, old Sendmail, Exchange, Gmail, Yahoo, the
//!   Japanese carriers…): every one of them lists the failed addresses, each at the
//!   start of a line, with the reason in the lines after it, above a marker such as
//!   "--- Below this line is a copy of the message". That shape is read generically
//!   rather than format by format, so that an MTA nobody listed is read too; the
//!   `X-Failed-Recipients` header (Exim, Gmail) and the returned message's `To:` are
//!   the fallbacks when no address leads a line.
//! - Feedback-loop complaints (ARF, RFC 5965, `report-type=feedback-report`): the
//!   complained-of recipient, from `Original-Rcpt-To` or the returned message's `To:`.
//! - Auto-replies (RFC 3834 `Auto-Submitted: auto-replied`, vacation and
//!   out-of-office headers) that are no bounce: recognised so that they are ignored.
//!
//! MIME is mail-parser's; the report fields and the text layouts are read here,
//! because no crate reads DSN fields or the non-standard layouts.
//!
//! Every recipient is classified with [`classify`], using its status, its reply and
//! the SMTP stage the report names.

use super::classify::{
    BounceClass, Stage, Verdict, classify, enhanced_in, parse_reply_line, says_disabled,
};
use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use serde::Serialize;

/// Longest text kept as one recipient's diagnostic, in characters.
const MAX_DIAGNOSTIC: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportKind {
    /// A bounce, standard (RFC 3464) or not.
    Dsn,
    /// A feedback-loop complaint (RFC 5965).
    Arf,
    /// An automatic reply (vacation, out of office) that is no failure.
    AutoReply,
    Unknown,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Dsn => "dsn",
            ReportKind::Arf => "arf",
            ReportKind::AutoReply => "auto-reply",
            ReportKind::Unknown => "unknown",
        }
    }
}

/// One recipient a report is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRecipient {
    pub address: String,
    /// The enhanced status code (`5.1.1`), when the report gives one.
    pub status: Option<String>,
    pub diagnostic: String,
    /// A bounce class, or `complaint` for an ARF report.
    pub class: String,
    pub suppress: bool,
    pub why: String,
    /// The SMTP command the failure answered, as the report tells it.
    pub stage: Stage,
    /// False for a DSN's `delayed`, `delivered`, `relayed` or `expanded` recipients.
    #[serde(skip)]
    pub failed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub kind: ReportKind,
    pub recipients: Vec<ReportRecipient>,
    /// ARF `Feedback-Type` (`abuse`, `fraud`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feedback_type: Option<String>,
}

/// What a bounce email says. Never fails: what cannot be read is `unknown`.
pub fn parse(raw: &[u8]) -> Report {
    let unknown = Report {
        kind: ReportKind::Unknown,
        recipients: Vec::new(),
        feedback_type: None,
    };
    let Some(message) = MessageParser::default().parse(raw) else {
        return unknown;
    };
    let report_type = message
        .content_type()
        .filter(|ct| ct.ctype().eq_ignore_ascii_case("multipart"))
        .and_then(|ct| ct.attribute("report-type"))
        .map(str::to_ascii_lowercase);
    if report_type.as_deref() == Some("feedback-report")
        || find_part(&message, "message", "feedback-report").is_some()
    {
        return arf(&message);
    }
    let mut text = human_text(&message);
    if text.trim().is_empty() {
        // A broken MIME structure (a boundary on a line of its own) hides every
        // part: the raw body is the best text there is.
        let raw_text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
        let body = raw_text.split_once("\n\n").map_or("", |(_, b)| b);
        text = cut_at_original(body).to_string();
    }
    let mut recipients = match find_part(&message, "message", "delivery-status") {
        Some(fields) => dsn_recipients(&String::from_utf8_lossy(fields), &text),
        None => Vec::new(),
    };
    if recipients.is_empty() {
        // Reports with a broken structure (an indented boundary, a part without a
        // type) still carry the fields in their text.
        recipients = dsn_recipients(&String::from_utf8_lossy(raw), &text);
    }
    if recipients.is_empty() {
        // Or in a text part, encoded (quoted-printable breaks the fields' lines).
        recipients = dsn_recipients(&text, &text);
    }
    if recipients.is_empty() {
        recipients = text_recipients(&message, &text);
    }
    if recipients.is_empty() {
        let kind = if is_auto_reply(&message) {
            ReportKind::AutoReply
        } else {
            ReportKind::Unknown
        };
        return Report { kind, ..unknown };
    }
    Report {
        kind: ReportKind::Dsn,
        recipients,
        feedback_type: None,
    }
}

/// The decoded body of the first part of type `ctype/subtype`, outside any
/// returned message.
fn find_part<'a>(message: &'a Message<'a>, ctype: &str, subtype: &str) -> Option<&'a [u8]> {
    message.parts.iter().find_map(|part| {
        let ct = part.content_type()?;
        let matches = ct.ctype().eq_ignore_ascii_case(ctype)
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case(subtype));
        if !matches {
            return None;
        }
        match &part.body {
            PartType::Text(t) | PartType::Html(t) => Some(t.as_bytes()),
            PartType::Binary(b) | PartType::InlineBinary(b) => Some(b.as_ref()),
            _ => None,
        }
    })
}

/// The report's text for people: its text parts (HTML stripped of tags when there
/// is no plain text), outside the returned message, cut where the copy of the
/// original message begins.
fn human_text(message: &Message<'_>) -> String {
    let mut text = String::new();
    let mut html = String::new();
    for part in &message.parts {
        let is_report_field_part = part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("text")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
        });
        match &part.body {
            PartType::Text(t) if !is_report_field_part => {
                text.push_str(t);
                text.push('\n');
            }
            PartType::Html(h) => {
                html.push_str(&strip_tags(h));
                html.push('\n');
            }
            _ => {}
        }
    }
    if text.trim().is_empty() {
        text = html;
    }
    cut_at_original(&text).to_string()
}

/// Lines that begin the copy of the original message in non-MIME bounces.
const ORIGINAL_MARKERS: &[&str] = &[
    "below this line is a copy of the message",
    "this is a copy of the message",
    "copy of the message",
    "copy of your message",
    "original message follows",
    "----- original message",
    "-----original message",
    "original message --",
    "--- original message",
    "the original message was",
    "unsent message below",
    "your message reads",
    "returned message",
    "message header follows",
    "the header of the original message",
    "text of the message",
    "original message headers",
    "returned mail: see transcript",
    "headers follow",
    "message follows",
    "mail as follows",
    "header of the original message",
    "message text follows",
    "unsent message follows",
];

fn cut_at_original(text: &str) -> &str {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let lower = line.to_ascii_lowercase();
        // A marker heads its line ("------ This is a copy of the message",
        // "Original mail as follows:"), not the end of a sentence: Postfix's
        // notice says "delete your own text from the attached returned message"
        // above the recipients.
        let heads = |m: &&str| {
            lower
                .find(*m)
                .is_some_and(|at| lower[..at].split_whitespace().count() <= 2)
        };
        // "The original message was received at …" opens Sendmail's reports.
        let opening = lower
            .trim_start()
            .starts_with("the original message was received");
        if !opening && ORIGINAL_MARKERS.iter().any(heads) && offset > 0 {
            return &text[..offset];
        }
        offset += line.len();
    }
    text
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        .replace("&nbsp;", " ")
}

/// Header-style fields (`Name: value`, continuation lines unfolded), in order.
fn fields(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = out.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':')
            && !name.is_empty()
            && !name.contains(' ')
        {
            out.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    out
}

/// The recipients of the per-recipient blocks of a `message/delivery-status` body
/// (RFC 3464 §2.3), in order.
fn dsn_recipients(fields_text: &str, text: &str) -> Vec<ReportRecipient> {
    let normalized = fields_text.replace("\r\n", "\n");
    let mut recipients = Vec::new();
    for fields in normalized
        .split("\n\n")
        .flat_map(|b| per_recipient(fields(b)))
    {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let Some(address) = get("final-recipient")
            .or_else(|| get("original-recipient"))
            .and_then(address_of_field)
        else {
            continue;
        };
        let action = get("action").unwrap_or("failed").to_ascii_lowercase();
        let status = get("status").and_then(|s| enhanced_in(s.split_whitespace().next()?));
        let diagnostic = get("diagnostic-code")
            .map(strip_type)
            .filter(|d| !d.is_empty())
            .map(str::to_string)
            .or_else(|| diagnostic_in_text(text, &address))
            .unwrap_or_else(|| paragraph_of(text, &address));
        recipients.push(recipient(address, status, diagnostic, text, &action));
    }
    recipients
}

/// The fields of a block split where a second recipient begins: some reports
/// leave out the blank line between recipients.
fn per_recipient(fields: Vec<(String, String)>) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (name, value) in fields {
        let current = out.last().expect("never empty");
        let starts_recipient = name == "original-recipient" || name == "final-recipient";
        if starts_recipient && current.iter().any(|(n, _)| n == &name) {
            out.push(Vec::new());
        }
        out.last_mut().expect("never empty").push((name, value));
    }
    out
}

/// `rfc822; <a@b>` → `a@b`.
fn address_of_field(value: &str) -> Option<String> {
    let address = strip_type(value)
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    address.contains('@').then(|| address.to_string())
}

/// Drops the type of a DSN field (`smtp; 550 …` → `550 …`, and RFC 3464's
/// extension types: `X-Outbound-Mail-Relay; …`).
fn strip_type(value: &str) -> &str {
    match value.split_once(';') {
        Some((kind, rest))
            if !kind.is_empty()
                && (kind.len() < 16 || kind.to_ascii_lowercase().starts_with("x-"))
                && !kind.contains([' ', '<', '@']) =>
        {
            rest.trim()
        }
        _ => value.trim(),
    }
}

/// A recipient with its classification. The stage is the one its diagnostic names,
/// else the one the report's text names when the report is about one address.
fn recipient(
    address: String,
    status: Option<[u8; 3]>,
    diagnostic: String,
    text: &str,
    action: &str,
) -> ReportRecipient {
    let diagnostic = clip(&diagnostic);
    let (code, reply_enhanced, reply_text) = reply_in(&diagnostic);
    // The reply's own code when it is specific, else the report's Status.
    let enhanced = reply_enhanced
        .filter(|e| e[1] != 0 || e[2] != 0)
        .or(status)
        .or(reply_enhanced);
    let failed = matches!(action, "failed" | "") || action.starts_with("fail");
    let code = match code {
        Some(code) => code,
        // No reply: the Status class (or the action) says whether it is final.
        None => match (enhanced, failed) {
            (Some([4, ..]), _) | (None, false) => 450,
            _ => 550,
        },
    };
    let code = if failed || code < 500 { code } else { 450 };
    let mut stage = Stage::named_in(&diagnostic);
    if stage == Stage::Unknown {
        stage = Stage::named_in(&near(text, &address));
    }
    let mut verdict = classify(code, enhanced, &reply_text, stage);
    if verdict.suppress && says_disabled(notice_heading(text)) {
        // EZweb heads its report "The user(s) account is disabled." above a reply
        // "user unknown": the receiver says two things, and a disabled account
        // comes back, so the address is kept.
        verdict = Verdict {
            class: BounceClass::BadMailbox,
            suppress: false,
            why: format!(
                "{}, but the report's notice says the account is disabled: conflicting, not suppressed",
                verdict.why
            ),
        };
    }
    if verdict.suppress && names_only_others(&diagnostic, &address) {
        // A report whose reply is about another address (a forwarding hop's,
        // a mixed-up report's) is no evidence about this one.
        verdict.suppress = false;
        verdict.why = format!(
            "{}, but the reply names another address than {address}: not suppressed",
            verdict.why
        );
    }
    ReportRecipient {
        address,
        status: status.map(|[a, b, c]| format!("{a}.{b}.{c}")),
        diagnostic,
        class: verdict.class.as_str().to_string(),
        suppress: verdict.suppress,
        why: verdict.why,
        stage,
        failed,
    }
}

/// The notice's own words above its first address or SMTP reply: what the
/// receiver says of every recipient of the report, in prose rather than in a reply.
fn notice_heading(text: &str) -> &str {
    let mut end = 0;
    for line in text.split_inclusive('\n') {
        if line.contains('@') || reply_in(line.trim()).0.is_some() {
            break;
        }
        end += line.len();
    }
    &text[..end]
}

/// True when `diagnostic` names addresses and `address` is not among them.
fn names_only_others(diagnostic: &str, address: &str) -> bool {
    let named = addresses_in(diagnostic);
    !named.is_empty() && !named.iter().any(|a| a.eq_ignore_ascii_case(address))
}

/// The part of `text` about `address`: from the start of the line of its first
/// mention (a transcript's `>>> RCPT To:<a@b>`), capped.
fn near(text: &str, address: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let Some(found) = lower.find(&address.to_ascii_lowercase()) else {
        return String::new();
    };
    let start = lower[..found].rfind('\n').map_or(0, |i| i + 1);
    let end = (start + 2000).min(text.len());
    let end = (end..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..end].to_string()
}

/// The paragraph of `text` that names `address`, or the text's first paragraph
/// that speaks of a failure: a report's prose when it gives no reply.
fn paragraph_of(text: &str, address: &str) -> String {
    let normalized = text.replace("\r\n", "\n");
    let paragraphs: Vec<&str> = normalized.split("\n\n").collect();
    let lower = address.to_ascii_lowercase();
    paragraphs
        .iter()
        .find(|p| p.to_ascii_lowercase().contains(&lower))
        .or_else(|| paragraphs.iter().find(|p| mentions_failure(p)))
        .map(|p| clip(p))
        .unwrap_or_default()
}

/// The SMTP reply inside a diagnostic: its code, its enhanced code and the text
/// from the reply on (`host x said: 550 5.1.1 …` → `550`, `5.1.1`, `…`).
fn reply_in(diagnostic: &str) -> (Option<u16>, Option<[u8; 3]>, String) {
    if let Some((code, enhanced, text)) = parse_reply_line(diagnostic) {
        return (Some(code), enhanced, text.to_string());
    }
    let bytes = diagnostic.as_bytes();
    for (at, _) in diagnostic.match_indices(['4', '5']) {
        let before_ok = at == 0 || !bytes[at - 1].is_ascii_alphanumeric() && bytes[at - 1] != b'.';
        if !before_ok {
            continue;
        }
        if let Some((code, enhanced, text)) = parse_reply_line(&diagnostic[at..])
            && (400..600).contains(&code)
        {
            return (Some(code), enhanced, text.to_string());
        }
    }
    (None, None, diagnostic.to_string())
}

/// The text on one line, cut at [`MAX_DIAGNOSTIC`] characters (not bytes: a
/// notice in Cyrillic or Chinese says as much as one in English).
fn clip(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match joined.char_indices().nth(MAX_DIAGNOSTIC) {
        Some((end, _)) => joined[..end].to_string(),
        None => joined,
    }
}

/// An address at the start of `line` (after `>>>`, white space or `<`), followed by
/// nothing, a colon, `>`, `...`, ` on `, `(` or white space: the way every
/// non-standard bounce lists the addresses that failed.
fn leading_address(line: &str) -> Option<(String, &str)> {
    let trimmed = line
        .trim_start()
        .trim_start_matches(">>>")
        .trim_start_matches(['*', '-'])
        .trim_start();
    let quoted = trimmed.starts_with(['<', '"']);
    let body = trimmed.trim_start_matches(['<', '"']);
    let end = body
        .find(|c: char| {
            c.is_whitespace() || matches!(c, '>' | '<' | '(' | ')' | ',' | ';' | '"' | '\'' | ':')
        })
        .unwrap_or(body.len());
    let candidate = body[..end].trim_end_matches([':', '.']);
    let (local, domain) = candidate.rsplit_once('@')?;
    if local.is_empty() || !domain.contains('.') || domain.ends_with('.') {
        return None;
    }
    let rest = &body[end..];
    let rest = rest.strip_prefix(['>', '"']).unwrap_or(rest);
    let rest_trim = rest.trim_start_matches([':', '.']).trim();
    // A sentence that merely starts with an address is no list entry, unless the
    // address was in brackets or the rest is a parenthesised or short reason.
    let listed = quoted
        || rest_trim.is_empty()
        || rest.starts_with(':')
        || rest_trim.starts_with('(')
        || rest_trim.starts_with('<')
        || rest_trim.to_ascii_lowercase().starts_with("on ")
        || rest.trim_start().starts_with("...")
        || reply_in(rest_trim).0.is_some()
        || mentions_failure(rest_trim);
    listed.then(|| (candidate.to_string(), rest_trim))
}

/// Recipients of a non-standard bounce: the addresses that lead lines of its text,
/// each with the text up to the next one.
fn text_recipients(message: &Message<'_>, text: &str) -> Vec<ReportRecipient> {
    let senders = sender_addresses(message);
    let lines: Vec<&str> = text.lines().collect();
    let mut found: Vec<(String, usize, String)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let lower = line.to_ascii_lowercase();
        if lower.trim_start().starts_with("from:")
            || lower.trim_start().starts_with("to:")
            || lower.contains("<<<")
        {
            continue;
        }
        // Old Sendmail lists each failure as `554 <a@b>... reason`.
        let listed = match parse_reply_line(line) {
            Some((code, None, rest)) if code >= 400 && rest.starts_with('<') => rest,
            _ => line,
        };
        if let Some((address, rest)) = leading_address(listed) {
            let key = address.to_ascii_lowercase();
            if senders.contains(&key) {
                continue;
            }
            if found.iter().any(|(a, ..)| a.eq_ignore_ascii_case(&address)) {
                continue;
            }
            found.push((address, i, rest.to_string()));
        }
    }
    let failed = failed_recipients_header(message);
    if !failed.is_empty() {
        // Exim and Gmail name the failed recipients in `X-Failed-Recipients`: an
        // address leading a line that is not among them is something else (the
        // greeting of a translated notice, a forwarding hop).
        found = failed
            .into_iter()
            .map(|address| {
                found
                    .iter()
                    .find(|(a, ..)| a.eq_ignore_ascii_case(&address))
                    .cloned()
                    .unwrap_or((address, usize::MAX, String::new()))
            })
            .collect();
    }
    if found.is_empty() {
        // Addresses inside sentences: transcripts' `RCPT TO:<a>` first, then the
        // lines that speak of a failure.
        let transcript = |l: &str| l.to_ascii_lowercase().contains("rcpt to");
        let failure =
            |l: &str| mentions_failure(l) && !l.to_ascii_lowercase().contains("mail from");
        for wanted in [&transcript as &dyn Fn(&str) -> bool, &failure] {
            for line in lines.iter().filter(|l| wanted(l)) {
                for address in addresses_in(line) {
                    let known = found.iter().any(|(a, ..)| a.eq_ignore_ascii_case(&address));
                    if !known && !senders.contains(&address.to_ascii_lowercase()) {
                        found.push((address, usize::MAX, String::new()));
                    }
                }
            }
            if !found.is_empty() {
                break;
            }
        }
    }
    if found.is_empty() {
        // A failure notice that names no address: it is about the returned
        // message's recipient, if the notice speaks of a failure at all.
        if let Some(address) = returned_recipient(message).filter(|_| mentions_failure(text)) {
            found.push((address, usize::MAX, String::new()));
        }
    }
    let whole = clip(text);
    let starts: Vec<usize> = found.iter().map(|(_, i, _)| *i).collect();
    found
        .iter()
        .map(|(address, line, rest)| {
            let block = if *line == usize::MAX {
                diagnostic_in_text(text, address).unwrap_or_else(|| whole.clone())
            } else {
                let end = starts
                    .iter()
                    .copied()
                    .filter(|&e| e != usize::MAX && e > *line)
                    .min()
                    .unwrap_or(lines.len());
                // The reason runs to the next address, or to the first blank line
                // after it.
                let mut block = rest.clone();
                for l in &lines[line + 1..end] {
                    if l.trim().is_empty() && !block.trim().is_empty() {
                        break;
                    }
                    block.push('\n');
                    block.push_str(l);
                }
                let block = clip(&block);
                if reply_in(&block).0.is_some() {
                    block
                } else {
                    // The reply is elsewhere (Sendmail's transcript below the list,
                    // Gmail's "technical details" further down).
                    match diagnostic_in_text(text, address) {
                        Some(reply) if block.is_empty() => reply,
                        Some(reply) => clip(&format!("{block} {reply}")),
                        None => block,
                    }
                }
            };
            let status = enhanced_in(&block);
            recipient(address.clone(), status, block, text, "failed")
        })
        .collect()
}

/// The text after the last mention of `address` that has an SMTP reply in it, or
/// the first reply line of the whole text.
fn diagnostic_in_text(text: &str, address: &str) -> Option<String> {
    let lower_address = address.to_ascii_lowercase();
    let lines: Vec<&str> = text.lines().collect();
    let reply_line = |l: &str| {
        let t = l.trim_start().trim_start_matches("<<<").trim_start();
        parse_reply_line(t).is_some_and(|(c, ..)| c >= 400)
    };
    let by_address = lines
        .iter()
        .position(|l| l.to_ascii_lowercase().contains(&lower_address) && reply_in(l).0.is_some());
    let index = by_address.or_else(|| lines.iter().position(|l| reply_line(l)))?;
    // A multi-line reply (`550-…` lines, then `550 …`) is read whole, from its
    // first line, wherever the address or the first reply line fell in it.
    let code = |i: usize| reply_line_code(lines[i]);
    let mut first = index;
    while first > 0
        && code(first - 1).is_some_and(|(c, more)| more && Some(c) == code(index).map(|x| x.0))
    {
        first -= 1;
    }
    let mut last = index;
    while code(last).is_some_and(|(_, more)| more)
        && last + 1 < lines.len()
        && code(last + 1).map(|x| x.0) == code(index).map(|x| x.0)
    {
        last += 1;
    }
    let mut out = lines[first]
        .trim()
        .trim_start_matches("<<<")
        .trim()
        .to_string();
    for l in &lines[first + 1..=last] {
        let t = l.trim().trim_start_matches("<<<").trim();
        out.push(' ');
        out.push_str(t.get(4..).unwrap_or("").trim());
    }
    for l in lines.iter().skip(last + 1).take(3) {
        if l.trim().is_empty() || reply_line(l) || leading_address(l).is_some() {
            break;
        }
        out.push(' ');
        out.push_str(l.trim());
    }
    Some(clip(&out))
}

/// The code of a line of an SMTP reply (`550-…` or `550 …`, maybe after a
/// transcript's `<<<`), and whether more lines of the reply follow (`-`).
fn reply_line_code(line: &str) -> Option<(&str, bool)> {
    let t = line.trim_start().trim_start_matches("<<<").trim_start();
    let code = t
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))?;
    match t.as_bytes().get(3) {
        Some(b'-') => Some((code, true)),
        Some(b' ') | None => Some((code, false)),
        _ => None,
    }
}

/// Every address written in `line`.
fn addresses_in(line: &str) -> Vec<String> {
    line.split(|c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '<' | '>' | '(' | ')' | '[' | ']' | ',' | ';' | '"' | '\''
            )
    })
    .map(|w| w.trim_matches([':', '.']))
    .filter(|w| {
        w.rsplit_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !d.contains('@') && !l.contains(['=', '/'])
        })
    })
    .map(str::to_string)
    .collect()
}

fn mentions_failure(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "could not be delivered",
        "couldn't be delivered",
        "undeliverable",
        "not delivered",
        "wasn't delivered",
        "delivery failed",
        "failed permanently",
        "unable to deliver",
        "user unknown",
        "invalid",
        "rejected",
        "not exist",
        "does not exist",
        "may not exist",
        "error",
        "failure",
        "full",
        "exceed",
        "unknown",
        "no such",
        "not found",
        "unable",
        "denied",
        "refused",
        "blocked",
        "disabled",
        "duplicated",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

/// The bounce's own addresses (From, Reply-To), which are never the failed
/// recipient. (Its `To:`, the original sender, can be: a message to oneself.)
fn sender_addresses(message: &Message<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for list in [message.from(), message.reply_to()].into_iter().flatten() {
        for addr in list.iter() {
            if let Some(a) = addr.address() {
                out.push(a.to_ascii_lowercase());
            }
        }
    }
    out
}

/// `X-Failed-Recipients` (Exim, Gmail), in order.
fn failed_recipients_header(message: &Message<'_>) -> Vec<String> {
    message
        .header_values("X-Failed-Recipients")
        .filter_map(|v| v.as_text())
        .flat_map(|v| v.split(','))
        .map(|a| {
            a.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
        .filter(|a| a.contains('@'))
        .collect()
}

/// The `To:` of the message returned inside the report.
fn returned_recipient(message: &Message<'_>) -> Option<String> {
    for part in &message.parts {
        let inner = match &part.body {
            PartType::Message(inner) => inner.to().and_then(|to| to.first()),
            _ => None,
        };
        if let Some(address) = inner.and_then(|a| a.address()) {
            return Some(address.to_string());
        }
    }
    None
}

/// RFC 3834 §5 and the common vacation headers.
fn is_auto_reply(message: &Message<'_>) -> bool {
    let header = |name: &str| {
        message
            .header_raw(name)
            .map(|v| v.trim().to_ascii_lowercase())
    };
    if header("Auto-Submitted").is_some_and(|v| v.starts_with("auto-replied")) {
        return true;
    }
    if ["X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress"]
        .iter()
        .any(|h| header(h).is_some())
    {
        return true;
    }
    if header("Precedence").is_some_and(|v| v == "auto_reply") {
        return true;
    }
    let subject = message.subject().unwrap_or("").to_ascii_lowercase();
    [
        "out of office",
        "automatic reply",
        "auto-reply",
        "autoreply",
        "vacation",
    ]
    .iter()
    .any(|w| subject.contains(w))
}

/// A feedback report (RFC 5965 §3): the complained-of recipient suppressed.
fn arf(message: &Message<'_>) -> Report {
    let fields = find_part(message, "message", "feedback-report")
        .map(|b| fields(&String::from_utf8_lossy(b)))
        .unwrap_or_default();
    let get = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let feedback_type = get("feedback-type").map(|t| t.to_ascii_lowercase());
    let address = get("original-rcpt-to")
        .and_then(|v| address_of_field(&v))
        .or_else(|| returned_recipient(message))
        .or_else(|| returned_headers_recipient(message));
    let recipients = address
        .map(|address| ReportRecipient {
            address,
            status: None,
            diagnostic: format!(
                "feedback report: {}",
                feedback_type.as_deref().unwrap_or("abuse")
            ),
            class: "complaint".to_string(),
            suppress: true,
            why: "the recipient reported the message (feedback loop)".to_string(),
            stage: Stage::Unknown,
            failed: true,
        })
        .into_iter()
        .collect();
    Report {
        kind: ReportKind::Arf,
        recipients,
        feedback_type,
    }
}

/// The `To:` of a `text/rfc822-headers` part.
fn returned_headers_recipient(message: &Message<'_>) -> Option<String> {
    let headers = find_part(message, "text", "rfc822-headers")?;
    let parsed = MessageParser::default().parse_headers(headers)?;
    parsed
        .to()
        .and_then(|to| to.first())
        .and_then(|a| a.address())
        .map(str::to_string)
}

impl ReportRecipient {
    /// The class as a bounce class (`None` for a complaint).
    pub fn bounce_class(&self) -> Option<BounceClass> {
        [
            BounceClass::BadMailbox,
            BounceClass::MailboxFull,
            BounceClass::Policy,
            BounceClass::SpamBlock,
            BounceClass::Dns,
            BounceClass::Tls,
            BounceClass::RateLimited,
            BounceClass::MessageTooBig,
            BounceClass::Other,
        ]
        .into_iter()
        .find(|c| c.as_str() == self.class)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_addresses() {
        assert_eq!(
            leading_address("<a@b.example>:").map(|(a, _)| a),
            Some("a@b.example".into())
        );
        assert_eq!(
            leading_address("  kijitora@example.ed.jp").map(|(a, _)| a),
            Some("kijitora@example.ed.jp".into())
        );
        assert_eq!(
            leading_address(">>> k@example.org <k@example.org>").map(|(a, _)| a),
            Some("k@example.org".into())
        );
        assert_eq!(
            leading_address("k@example.jp on Thu, 29 Apr 2010").map(|(a, _)| a),
            Some("k@example.jp".into())
        );
        assert_eq!(leading_address("a@b.example wrote a letter"), None);
        assert_eq!(leading_address("Hello world"), None);
    }

    #[test]
    fn a_dsn_of_outpost_itself_reads_back() {
        let dsn = "From: MAILER-DAEMON@relay.test\r\nTo: s@a.example\r\nSubject: x\r\n\
            MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
            --b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n\
            --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.test\r\n\r\n\
            Final-Recipient: rfc822; bad@x.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\
            Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n\
            Final-Recipient: rfc822; full@x.example\r\nAction: failed\r\nStatus: 5.2.2\r\n\
            Diagnostic-Code: smtp; 552 5.2.2 Mailbox full\r\n\r\n--b--\r\n";
        let report = parse(dsn.as_bytes());
        assert_eq!(report.kind, ReportKind::Dsn);
        let got: Vec<_> = report
            .recipients
            .iter()
            .map(|r| (r.address.as_str(), r.class.as_str(), r.suppress))
            .collect();
        assert_eq!(
            got,
            [
                ("bad@x.example", "bad-mailbox", true),
                ("full@x.example", "mailbox-full", false)
            ]
        );
    }

    #[test]
    fn the_stage_of_a_transcript_and_whose_reply_it_is() {
        // "No such user" is evidence only where the transcript shows it answered
        // RCPT for this address.
        let transcript = "From: MAILER-DAEMON@mx.a.example\r\nTo: s@a.example\r\nSubject: Returned mail\r\n\r\n\
            ----- Transcript of session follows -----\r\nWhile talking to mx.b.example:\r\n\
            >>> RCPT To:<bad@b.example>\r\n<<< 550 Requested action not taken: no such user here\r\n\r\n\
            ----- Unsent message follows -----\r\nTo: bad@b.example\r\nSubject: hi\r\n\r\nbody\r\n";
        let report = parse(transcript.as_bytes());
        let r = &report.recipients[0];
        assert_eq!(
            (r.address.as_str(), r.stage, r.class.as_str(), r.suppress),
            ("bad@b.example", Stage::Rcpt, "bad-mailbox", true),
            "{}",
            r.why
        );
        // Postfix's notice speaks of "the attached returned message" above the
        // recipients; the copy of the message begins further down.
        let postfix = "From: MAILER-DAEMON@mx.a.example\r\nTo: s@a.example\r\nSubject: x\r\n\
            MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
            --b\r\nContent-Type: text/plain\r\n\r\nIf you do so, please include this problem report. You can\r\n\
            delete your own text from the attached returned message.\r\n\r\n\
            <bad@b.example>: host mx.b.example[192.0.2.1] said: 550 User not found\r\n\
            \x20   (in reply to RCPT TO command)\r\n\
            --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.a.example\r\n\r\n\
            Final-Recipient: rfc822; bad@b.example\r\nAction: failed\r\nStatus: 5.0.0\r\n\
            Diagnostic-Code: smtp; 550 User not found\r\n\r\n--b--\r\n";
        let r = &parse(postfix.as_bytes()).recipients[0];
        assert_eq!((r.stage, r.suppress), (Stage::Rcpt, true), "{}", r.why);
        // A report whose reply is about another address says nothing about this one.
        let mixed = "From: MAILER-DAEMON@relay.test\r\nTo: s@a.example\r\nSubject: x\r\n\
            MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
            --b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n\
            --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.test\r\n\r\n\
            Final-Recipient: rfc822; kept@x.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\
            Diagnostic-Code: smtp; 550 5.1.1 <other@x.example>... User unknown\r\n\r\n--b--\r\n";
        let r = &parse(mixed.as_bytes()).recipients[0];
        assert_eq!(
            (r.class.as_str(), r.suppress),
            ("bad-mailbox", false),
            "{}",
            r.why
        );
    }

    #[test]
    fn a_notice_that_says_disabled_outweighs_a_reply_that_says_unknown() {
        // EZweb's report: its notice says the account is disabled, its reply says
        // the user is unknown. Conflicting evidence keeps the address; the same
        // reply without that notice is evidence enough.
        let report = |notice: &str| {
            format!(
                "From: MAILER-DAEMON@mx.b.example\r\nTo: s@a.example\r\nSubject: Mail System Error - Returned Mail\r\n\
                MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
                --b\r\nContent-Type: text/plain\r\n\r\n{notice}\r\n\r\n\
                <bad@b.example>: 550 user unknown (in reply to RCPT TO command)\r\n\
                --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.b.example\r\n\r\n\
                Final-Recipient: rfc822; bad@b.example\r\nAction: failed\r\nStatus: 5.0.0\r\n\r\n--b--\r\n"
            )
        };
        let disabled = parse(report("The user(s) account is disabled.").as_bytes());
        let r = &disabled.recipients[0];
        assert_eq!(
            (r.class.as_str(), r.suppress),
            ("bad-mailbox", false),
            "{}",
            r.why
        );
        let unknown = parse(report("Your message could not be delivered.").as_bytes());
        let r = &unknown.recipients[0];
        assert_eq!(
            (r.class.as_str(), r.suppress),
            ("bad-mailbox", true),
            "{}",
            r.why
        );
    }

    #[test]
    fn multi_line_replies_failed_recipients_and_extension_types() {
        let class_of = |raw: &str| {
            let report = parse(raw.as_bytes());
            report
                .recipients
                .iter()
                .map(|r| (r.address.clone(), r.class.clone()))
                .collect::<Vec<_>>()
        };
        // A multi-line reply is read from its first line, not from the line that
        // names the address.
        let multi_line = "From: postmaster@mx.b.example\nTo: s@a.example\nSubject: Undeliverable Mail\n\n\
            undeliverable to bad@b.example\n\nBody of message generated response:\n\
            550-REJECTED - Blacklisted URL in message.\n550-F=[s@a.example] T=[bad@b.example]\n550 end\n";
        assert_eq!(
            class_of(multi_line),
            [("bad@b.example".to_string(), "spam-block".to_string())]
        );
        // X-Failed-Recipients names the recipient; the address greeting the
        // sender in a translated notice is not one.
        let groups = "From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\nTo: s@a.example\n\
            X-Failed-Recipients: group@groups.example\nSubject: Delivery Status Notification (Failure)\n\
            MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n\n\
            s@a.example様\n\nグループが存在しないか、投稿する権限がない可能性があります。\n\
            https://groups.google.com/support/\n";
        assert_eq!(
            class_of(groups),
            [("group@groups.example".to_string(), "policy".to_string())]
        );
        // RFC 3464's extension diagnostic types (`X-…;`) are no part of the reply.
        let extension = "From: MAILER-DAEMON@relay.test\nTo: s@a.example\nSubject: x\nMIME-Version: 1.0\n\
            Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n\
            --b\nContent-Type: text/plain\n\nfailed\n\
            --b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; relay.test\n\n\
            Final-Recipient: rfc822; a@nowhere.example\nAction: failed\nStatus: 5.4.4\n\
            Diagnostic-Code: X-Outbound-Mail-Relay; Host or domain name not found\n\n--b--\n";
        assert_eq!(
            class_of(extension),
            [("a@nowhere.example".to_string(), "dns".to_string())]
        );
    }

    #[test]
    fn auto_replies_and_complaints() {
        let vacation = "From: a@x.example\r\nTo: b-t@bounces.example\r\nSubject: Out of Office: hello\r\n\
            Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n";
        let report = parse(vacation.as_bytes());
        assert_eq!(
            (report.kind, report.recipients.len()),
            (ReportKind::AutoReply, 0)
        );
        let arf_text = "From: fbl@isp.example\r\nTo: b-t@bounces.example\r\nSubject: complaint\r\n\
            MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n\
            --b\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n\
            --b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: x/1\r\nVersion: 1\r\n\
            Original-Rcpt-To: <user@isp.example>\r\n\r\n\
            --b\r\nContent-Type: message/rfc822\r\n\r\nFrom: s@a.example\r\nTo: user@isp.example\r\nSubject: hi\r\n\r\nbody\r\n--b--\r\n";
        let report = parse(arf_text.as_bytes());
        assert_eq!(report.kind, ReportKind::Arf);
        assert_eq!(report.feedback_type.as_deref(), Some("abuse"));
        assert_eq!(report.recipients[0].address, "user@isp.example");
        assert!(report.recipients[0].suppress);
    }
}
