//! SMTP replies as values: code, enhanced status code (RFC 3463/2034) and text.
//! Every reply the server sends is built here, so the codes stay consistent.

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code such as `5.7.1`; empty for replies that must not carry one
    /// (the greeting and EHLO, RFC 2034 §3).
    pub enhanced: &'static str,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            text: text.into(),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Wire form; multi-line text (separated by `\n`) becomes `code-` continuation lines.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut text = String::new();
        let lines: Vec<&str> = self.text.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            text.clear();
            if self.enhanced.is_empty() {
                let _ = write!(text, "{}{}{}\r\n", self.code, sep, line);
            } else {
                let _ = write!(text, "{}{}{} {}\r\n", self.code, sep, self.enhanced, line);
            }
            out.extend_from_slice(text.as_bytes());
        }
    }

    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    // --- the replies the server uses, in one place -------------------------------

    pub fn ok() -> Reply {
        Reply::new(250, "2.0.0", "Ok")
    }
    pub fn sender_ok() -> Reply {
        Reply::new(250, "2.1.0", "Sender ok")
    }
    pub fn recipient_ok() -> Reply {
        Reply::new(250, "2.1.5", "Recipient ok")
    }
    pub fn queued(id: &str) -> Reply {
        Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
    }
    pub fn bye() -> Reply {
        Reply::new(221, "2.0.0", "Bye")
    }
    pub fn start_data() -> Reply {
        Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")
    }
    pub fn ready_for_tls() -> Reply {
        Reply::new(220, "2.0.0", "Ready to start TLS")
    }
    pub fn auth_ok() -> Reply {
        Reply::new(235, "2.7.0", "Authentication successful")
    }
    pub fn cannot_vrfy() -> Reply {
        // RFC 5321 §3.5.3: 252 when the server will not verify but will accept mail.
        Reply::new(
            252,
            "2.5.2",
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }
    pub fn expn_disabled() -> Reply {
        Reply::new(502, "5.5.1", "EXPN not available")
    }
    pub fn help() -> Reply {
        Reply::new(
            214,
            "2.0.0",
            "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY STARTTLS AUTH",
        )
    }
    pub fn too_many_connections() -> Reply {
        Reply::new(421, "4.7.0", "Too many connections, try again later")
    }
    pub fn timeout() -> Reply {
        Reply::new(421, "4.4.2", "Timeout, closing connection")
    }
    pub fn too_many_errors() -> Reply {
        Reply::new(421, "4.7.0", "Too many errors, closing connection")
    }
    pub fn shutting_down() -> Reply {
        Reply::new(421, "4.3.2", "Service shutting down")
    }
    pub fn line_too_long() -> Reply {
        Reply::new(500, "5.5.2", "Line too long")
    }
    pub fn syntax_error(what: impl std::fmt::Display) -> Reply {
        Reply::new(501, "5.5.4", format!("Syntax error: {what}"))
    }
    pub fn unknown_command() -> Reply {
        Reply::new(500, "5.5.1", "Command unrecognized")
    }
    pub fn not_implemented() -> Reply {
        Reply::new(502, "5.5.1", "Command not implemented")
    }
    pub fn bad_sequence(text: &str) -> Reply {
        Reply::new(503, "5.5.1", text)
    }
    pub fn param_not_implemented(param: &str) -> Reply {
        Reply::new(555, "5.5.4", format!("Parameter {param} not recognized"))
    }
    pub fn auth_required() -> Reply {
        Reply::new(530, "5.7.0", "Authentication required")
    }
    pub fn encryption_required() -> Reply {
        // RFC 4954 §4/§6: 538 when the mechanism needs an encrypted channel.
        Reply::new(
            538,
            "5.7.11",
            "Encryption required for requested authentication mechanism",
        )
    }
    pub fn auth_failed() -> Reply {
        Reply::new(535, "5.7.8", "Authentication credentials invalid")
    }
    pub fn auth_locked_out() -> Reply {
        Reply::new(
            421,
            "4.7.0",
            "Too many failed authentications from your address, try again later",
        )
    }
    pub fn auth_account_locked() -> Reply {
        Reply::new(
            421,
            "4.7.0",
            "Too many failed authentications for this account from new addresses, try again later",
        )
    }
    /// RFC 4954 §6: the credentials could not be checked now (store error).
    pub fn auth_unavailable() -> Reply {
        Reply::new(
            454,
            "4.7.0",
            "Temporary authentication failure, try again later",
        )
    }
    pub fn auth_mechanism_unknown() -> Reply {
        Reply::new(504, "5.5.4", "Unrecognized authentication mechanism")
    }
    pub fn auth_cancelled() -> Reply {
        Reply::new(501, "5.0.0", "Authentication cancelled")
    }
    pub fn already_authenticated() -> Reply {
        Reply::new(503, "5.5.1", "Already authenticated")
    }
    pub fn tls_not_available() -> Reply {
        Reply::new(454, "4.7.0", "TLS not available")
    }
    pub fn sender_not_authorized() -> Reply {
        Reply::new(550, "5.7.1", "Sender not authorized")
    }
    pub fn relay_denied() -> Reply {
        Reply::new(554, "5.7.1", "Relay access denied")
    }
    pub fn too_many_recipients() -> Reply {
        Reply::new(452, "4.5.3", "Too many recipients")
    }
    pub fn message_too_big() -> Reply {
        Reply::new(
            552,
            "5.3.4",
            "Message size exceeds fixed maximum message size",
        )
    }
    pub fn bare_line_ending() -> Reply {
        Reply::new(
            550,
            "5.5.2",
            "Bare CR or LF in message data is not allowed; use CRLF",
        )
    }
    /// RFC 5321 §4.1.4 / RFC 6152 §3: NUL is not allowed in text, even 8BITMIME
    /// (only BINARYMIME, not offered, allows it).
    pub fn nul_in_data() -> Reply {
        Reply::new(
            550,
            "5.6.0",
            "NUL in message data is not allowed (BINARYMIME is not offered)",
        )
    }
    pub fn no_valid_recipients() -> Reply {
        Reply::new(554, "5.5.1", "No valid recipients")
    }
    pub fn smtputf8_required() -> Reply {
        Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
    }
    pub fn bad_mailbox(what: &str) -> Reply {
        Reply::new(553, "5.1.3", format!("Bad address syntax: {what}"))
    }
    pub fn store_unavailable() -> Reply {
        Reply::new(452, "4.3.1", "Insufficient system storage, try again later")
    }
    pub fn local_error() -> Reply {
        Reply::new(451, "4.3.0", "Local error in processing, try again later")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced_code() {
        assert_eq!(
            Reply::queued("ABC").to_wire(),
            b"250 2.0.0 Ok: queued as ABC\r\n"
        );
    }

    #[test]
    fn multi_line_uses_continuations() {
        let r = Reply::new(250, "", "host\nPIPELINING\nSIZE 10");
        assert_eq!(
            r.to_wire(),
            b"250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }
}
