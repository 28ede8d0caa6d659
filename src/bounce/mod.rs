//! Bounces: the delivery status notification sent to the envelope sender when
//! recipients fail permanently (RFC 3464, `multipart/report;
//! report-type=delivery-status`, RFC 6522), the reading of replies that ask us
//! to slow down, and the reading of the bounces and complaints that come back
//! (`parse`).
//!
//! Every failure is also given a [`BounceClass`] and a suppression decision
//! (`classify`), from its codes, its text and the SMTP stage it came at.
//!
//! The report is written out by hand: it is a fixed three-part structure, and
//! building it with a general MIME builder would not make its fields any clearer.

mod classify;
pub mod feedback;
mod parse;
pub mod reputation;
pub mod return_path;

pub use classify::{BounceClass, Stage, Verdict, classify, enhanced_in, parse_reply_line};
pub use parse::{Report, ReportKind, ReportRecipient, parse};

use crate::message::header_block;
use crate::store::{MessageSummary, RecipientStatus};
use chrono::{DateTime, Utc};

/// The report for the bounced recipients of `message`, or `None` when nothing
/// bounced or the message had the null sender (RFC 5321 §6.1: no bounce of a bounce).
pub fn delivery_status_notification(
    message: &MessageSummary,
    original: &[u8],
    hostname: &str,
    now: DateTime<Utc>,
) -> Option<Vec<u8>> {
    if message.mail_from.is_empty() {
        return None;
    }
    let failed: Vec<_> = message
        .recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Bounced)
        .collect();
    if failed.is_empty() {
        return None;
    }
    let boundary = format!("{}/{hostname}", message.id);
    let date = now.to_rfc2822();
    let arrival = DateTime::from_timestamp_millis(message.received_at)
        .unwrap_or(now)
        .to_rfc2822();
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at host {hostname}.\r\n\
         \r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         \r\n",
        to = message.mail_from,
        id = message.id,
    ));
    for r in &failed {
        out.push_str(&format!(
            "<{}>: {}\r\n",
            r.address,
            r.last_reply.as_deref().unwrap_or("failed")
        ));
    }
    out.push_str(&format!(
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Outpost-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        id = message.id,
    ));
    for r in &failed {
        let reply = r.last_reply.as_deref().unwrap_or("550 5.0.0 failed");
        // RFC 3464 §2.3.7: when the last attempt was made, which can be long before
        // this report (another recipient kept the message waiting, or a restart).
        let last_attempt = r
            .last_attempt
            .and_then(DateTime::from_timestamp_millis)
            .map_or_else(|| date.clone(), |t| t.to_rfc2822());
        out.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\nDiagnostic-Code: smtp; {}\r\nLast-Attempt-Date: {last_attempt}\r\n",
            r.address,
            status_of(reply).as_deref().unwrap_or("5.0.0"),
            reply,
        ));
    }
    out.push_str(&format!(
        "\r\n--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(header_block(original));
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Some(bytes)
}

/// The enhanced status code of a recorded reply (`550 5.1.1 ...` → `5.1.1`); for a
/// reply without one, the code of its class (`250 OK id=1abc` → `2.0.0`, RFC 3463
/// §3.1), and `None` when the reply has no success or failure class to derive it
/// from. A second word that only looks like a code (its class is not the reply's)
/// is text.
pub fn status_of(reply: &str) -> Option<String> {
    let mut words = reply.split_whitespace();
    let class = words
        .next()
        .filter(|code| code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))?
        .chars()
        .next()
        .filter(|c| matches!(c, '2' | '4' | '5'))?;
    let given = words.next().filter(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && parts[0].len() == 1
            && parts[0].starts_with(class)
            && parts[1..]
                .iter()
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    });
    Some(given.map_or_else(|| format!("{class}.0.0"), str::to_string))
}

/// True for replies that mean "you are sending too fast": 421, and temporary
/// failures whose text speaks of rates or limits.
pub fn means_slow_down(code: u16, text: &str) -> bool {
    if code == 421 {
        return true;
    }
    if code / 100 != 4 {
        return false;
    }
    let text = text.to_ascii_lowercase();
    [
        "rate",
        "slow down",
        "too many",
        "throttl",
        "try again later",
    ]
    .iter()
    .any(|w| text.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{QueueId, RecipientState};

    /// When the recipients were last tried: a day before the report.
    const ATTEMPTED_AT: i64 = 1_796_000_000_000;

    fn summary(mail_from: &str) -> MessageSummary {
        let rcpt = |address: &str, status, reply: &str| RecipientState {
            address: address.into(),
            status,
            attempts: 1,
            next_attempt: 0,
            last_reply: Some(reply.into()),
            last_class: None,
            last_attempt: Some(ATTEMPTED_AT),
        };
        MessageSummary {
            id: "0123456789ABCDEF0123".parse::<QueueId>().unwrap(),
            mail_from: mail_from.into(),
            auth_user: None,
            size: 10,
            received_at: 0,
            smtputf8: false,
            recipients: vec![
                rcpt("ok@x.example", RecipientStatus::Delivered, "250 2.0.0 ok"),
                rcpt(
                    "bad@x.example",
                    RecipientStatus::Bounced,
                    "550 5.1.1 User unknown",
                ),
            ],
        }
    }

    #[test]
    fn report_names_the_failed_recipient_only() {
        let dsn = delivery_status_notification(
            &summary("sender@a.example"),
            b"Subject: hello\r\nFrom: sender@a.example\r\n\r\nbody text\r\n",
            "relay.test",
            DateTime::from_timestamp_millis(ATTEMPTED_AT + 86_400_000).unwrap(),
        )
        .unwrap();
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("report-type=delivery-status"));
        let attempted = DateTime::from_timestamp_millis(ATTEMPTED_AT).unwrap();
        assert!(
            text.contains(&format!(
                "Last-Attempt-Date: {}\r\n",
                attempted.to_rfc2822()
            )),
            "{text}"
        );
        assert!(text.contains("Final-Recipient: rfc822; bad@x.example"));
        assert!(text.contains("Status: 5.1.1"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 User unknown"));
        assert!(!text.contains("Final-Recipient: rfc822; ok@x.example"));
        assert!(text.contains("Subject: hello"));
        assert!(!text.contains("body text"), "only the headers are returned");
        let parsed = mail_parser::MessageParser::new()
            .parse(text.as_bytes())
            .unwrap();
        assert_eq!(parsed.parts.len(), 4, "multipart with three parts");
    }

    #[test]
    fn no_report_for_null_sender() {
        assert!(
            delivery_status_notification(&summary(""), b"\r\n", "relay.test", Utc::now()).is_none()
        );
    }

    #[test]
    fn status_codes_and_slow_down() {
        assert_eq!(status_of("550 5.1.1 User unknown").unwrap(), "5.1.1");
        assert_eq!(status_of("550 User unknown").unwrap(), "5.0.0");
        assert_eq!(status_of("451 try later").unwrap(), "4.0.0");
        // Exim's answer to DATA: a success, not a permanent failure.
        assert_eq!(status_of("250 OK id=1abc").unwrap(), "2.0.0");
        assert_eq!(status_of("250 2.6.0 queued as X").unwrap(), "2.6.0");
        assert_eq!(
            status_of("250 5.1.1 not a code of this class").unwrap(),
            "2.0.0"
        );
        assert_eq!(status_of("550 1.2.3.4 bad").unwrap(), "5.0.0");
        assert_eq!(status_of("354 go ahead"), None);
        assert_eq!(status_of("garbage"), None);
        assert_eq!(status_of(""), None);
        assert!(means_slow_down(421, "Service not available"));
        assert!(means_slow_down(450, "4.7.0 Rate limit exceeded"));
        assert!(!means_slow_down(451, "Temporary local problem"));
        assert!(!means_slow_down(550, "rate"));
    }
}
