//! AUTH PLAIN and LOGIN (RFC 4954), with throttling of failures per client IP.

use super::io::{IoEnd, Line};
use super::session::{Next, Session};
use crate::auth::sasl::{self, Credentials};
use crate::auth::{AuthenticatedUser, Refused};
use crate::smtp::Reply;
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN};
use tokio::io::{AsyncRead, AsyncWrite};

/// Why an exchange did not produce credentials.
enum Exchange {
    Cancelled,
    Malformed(sasl::SaslError),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<'_, S> {
    pub(super) async fn auth(&mut self, mechanism: u64, initial: &str) -> Result<Next, IoEnd> {
        if self.helo.as_ref().is_none_or(|(_, extended)| !extended) {
            self.io.reply(&Reply::bad_sequence("Send EHLO first"));
            return Ok(Next::Continue);
        }
        if self.user.is_some() {
            self.io.reply(&Reply::already_authenticated());
            return Ok(Next::Continue);
        }
        if self.transaction.is_some() {
            self.io.reply(&Reply::bad_sequence(
                "AUTH not allowed during a mail transaction",
            ));
            return Ok(Next::Continue);
        }
        if !self.auth_allowed() {
            self.io.reply(&Reply::encryption_required());
            return Ok(Next::Continue);
        }
        let ip = self.conn.peer.ip();
        let attempt = match self.ctx.throttle.begin(ip).await {
            Ok(attempt) => attempt,
            Err(Refused::LockedOut) => {
                tracing::warn!(%ip, "AUTH refused: address locked out after repeated failures");
                self.io.reply(&Reply::auth_locked_out());
                return Ok(Next::Close);
            }
            Err(Refused::Busy) => {
                self.io.reply(&Reply::auth_busy());
                return Ok(Next::Continue);
            }
        };
        let exchange = match mechanism {
            AUTH_PLAIN => self.exchange_plain(initial).await?,
            AUTH_LOGIN => self.exchange_login(initial).await?,
            _ => {
                self.io.reply(&Reply::auth_mechanism_unknown());
                return Ok(Next::Continue);
            }
        };
        let credentials = match exchange {
            Ok(c) => c,
            Err(Exchange::Cancelled) => {
                self.io.reply(&Reply::auth_cancelled());
                return Ok(Next::Continue);
            }
            Err(Exchange::Malformed(e)) => {
                self.io.reply(&Reply::syntax_error(e));
                return Ok(Next::Continue);
            }
        };
        match self.verify(&credentials).await {
            Some(user) => {
                attempt.succeeded();
                tracing::info!(peer = %self.conn.peer, user = %user.name, "authenticated");
                self.user = Some(user);
                self.io.reply(&Reply::auth_ok());
            }
            None => {
                let delay = attempt.failed();
                tracing::warn!(peer = %self.conn.peer, user = %credentials.username, "AUTH failed");
                tokio::time::sleep(delay).await;
                self.io.reply(&Reply::auth_failed());
            }
        }
        Ok(Next::Continue)
    }

    async fn exchange_plain(
        &mut self,
        initial: &str,
    ) -> Result<Result<Credentials, Exchange>, IoEnd> {
        let response = match initial {
            "" => match self.challenge("").await? {
                Some(r) => r,
                None => return Ok(Err(Exchange::Cancelled)),
            },
            // RFC 4954 §4: "=" is an empty initial response.
            "=" => String::new(),
            text => text.to_string(),
        };
        Ok(sasl::decode_plain(&response).map_err(Exchange::Malformed))
    }

    async fn exchange_login(
        &mut self,
        initial: &str,
    ) -> Result<Result<Credentials, Exchange>, IoEnd> {
        let username = if initial.is_empty() {
            match self.challenge(&sasl::encode("Username:")).await? {
                Some(r) => r,
                None => return Ok(Err(Exchange::Cancelled)),
            }
        } else {
            initial.to_string()
        };
        let Some(password) = self.challenge(&sasl::encode("Password:")).await? else {
            return Ok(Err(Exchange::Cancelled));
        };
        let decoded = sasl::decode_utf8(&username).and_then(|username| {
            Ok(Credentials {
                username,
                password: sasl::decode_utf8(&password)?,
            })
        });
        Ok(decoded.map_err(Exchange::Malformed))
    }

    /// Sends `334 <challenge>` and reads the client's line; `None` if it sent `*`.
    async fn challenge(&mut self, challenge: &str) -> Result<Option<String>, IoEnd> {
        self.io.reply_raw(format!("334 {challenge}\r\n").as_bytes());
        let limits = &self.ctx.config.limits;
        let line = match self
            .io
            .read_line(limits.max_line_length, limits.command_timeout.get())
            .await?
        {
            Line::Complete(line) => line,
            Line::TooLong => Vec::new(),
        };
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        Ok((text != "*").then_some(text))
    }

    async fn verify(&self, credentials: &Credentials) -> Option<AuthenticatedUser> {
        self.ctx
            .credentials
            .check(&credentials.username, &credentials.password)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot look up user");
                None
            })
    }
}
