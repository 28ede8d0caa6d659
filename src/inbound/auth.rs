//! AUTH PLAIN and LOGIN (RFC 4954); the login gate decides (`crate::auth::LoginGate`).

use super::io::{IoEnd, Line};
use super::session::{Next, Session};
use crate::auth::sasl::{self, Credentials};
use crate::auth::{Lock, LoginOutcome};
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
        let (peer, name) = (self.conn.peer, credentials.username.as_str());
        let outcome = self
            .ctx
            .login
            .check(peer.ip(), Some(name), &credentials.password)
            .await;
        match outcome {
            LoginOutcome::Ok(principal) => {
                tracing::info!(%peer, user = %principal.user.name, credential = %principal.credential, "authenticated");
                self.user = Some(principal.user);
                self.io.reply(&Reply::auth_ok());
            }
            LoginOutcome::Wrong => {
                tracing::warn!(%peer, user = %name, "AUTH failed: wrong user name or password");
                self.io.reply(&Reply::auth_failed());
            }
            LoginOutcome::Locked(lock) => {
                tracing::warn!(%peer, user = %name, lock = lock.as_str(), "AUTH refused without a check: too many wrong passwords before");
                self.io.reply(&match lock {
                    Lock::Address => Reply::auth_locked_out(),
                    Lock::Account => Reply::auth_account_locked(),
                });
                return Ok(Next::Close);
            }
            LoginOutcome::Unavailable(reason) => {
                tracing::warn!(%peer, user = %name, %reason, "AUTH not checked now; answered 454, not counted as a failure");
                self.io.reply(&Reply::auth_unavailable());
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
}
