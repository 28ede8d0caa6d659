//! EHLO and HELO: the greeting exchange and the capability list (SPEC §2).

use super::io::IoEnd;
use super::session::{Next, Session};
use crate::config::ListenerMode;
use crate::smtp::Reply;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<'_, S> {
    pub(super) fn ehlo(&mut self, host: &str, extended: bool) -> Result<Next, IoEnd> {
        // RFC 5321 §4.1.4: EHLO/HELO in the middle of a transaction resets it.
        self.transaction = None;
        self.helo = Some((host.to_string(), extended));
        let hostname = &self.ctx.config.hostname;
        if !extended {
            self.io.reply(&Reply::new(250, "", hostname.clone()));
            return Ok(Next::Continue);
        }
        let mut lines = vec![
            format!("{hostname} Hello {host} [{}]", self.conn.peer.ip()),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.ctx.config.limits.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
        ];
        if self.conn.tls.is_none() && self.conn.mode != ListenerMode::Submissions {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_allowed() && self.user.is_none() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        self.io.reply(&Reply::new(250, "", lines.join("\n")));
        Ok(Next::Continue)
    }
}
