//! The session state machine: reads commands, dispatches them to the per-verb
//! handlers, and owns the typed state (greeting, TLS, authenticated user, the open
//! mail transaction).

use super::InboundContext;
use super::io::{IoEnd, Line, SmtpIo};
use crate::auth::AuthenticatedUser;
use crate::config::ListenerMode;
use crate::smtp::{Mailbox, Reply};
use crate::store::NewRecipient;
use smtp_proto::{Error as ParseError, Request};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

/// What is known about the connection itself.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    pub mode: ListenerMode,
    /// Negotiated TLS version and cipher, once TLS is up.
    pub tls: Option<String>,
}

/// One mail transaction: opened by MAIL, closed by the end of data, RSET, EHLO/HELO
/// or STARTTLS.
#[derive(Debug, Default)]
pub struct Transaction {
    /// Envelope sender; `None` for `<>`.
    pub mail_from: Option<Mailbox>,
    pub smtputf8: bool,
    pub recipients: Vec<NewRecipient>,
    /// BDAT content received so far, and whether it stayed within the size limit.
    pub bdat: Option<(Vec<u8>, bool)>,
}

/// How a session ended.
pub enum SessionEnd<S> {
    Closed,
    /// The client asked for STARTTLS; here is the raw stream, its buffered plaintext
    /// already discarded.
    StartTls(S),
}

/// What a command handler wants to happen next.
pub enum Next {
    Continue,
    Close,
    StartTls,
}

pub struct Session<'a, S> {
    pub ctx: &'a InboundContext,
    pub conn: ConnectionInfo,
    pub io: SmtpIo<S>,
    /// The EHLO/HELO name, and whether it was EHLO.
    pub helo: Option<(String, bool)>,
    pub user: Option<AuthenticatedUser>,
    pub transaction: Option<Transaction>,
    errors: usize,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Session<'a, S> {
    pub fn new(ctx: &'a InboundContext, conn: ConnectionInfo, stream: S) -> Self {
        Session {
            ctx,
            conn,
            io: SmtpIo::new(stream, ctx.config.limits.command_timeout.get()),
            helo: None,
            user: None,
            transaction: None,
            errors: 0,
        }
    }

    pub fn greet(&mut self) {
        let banner = format!("{} ESMTP Outpost", self.ctx.config.hostname);
        self.io.reply(&Reply::new(220, "", banner));
    }

    /// Runs until QUIT, an error, a limit, STARTTLS, or the server's shutdown
    /// (which waits for an open transaction to end).
    pub async fn run(mut self) -> SessionEnd<S> {
        let limits = &self.ctx.config.limits;
        let mut shutdown = self.ctx.shutdown.subscribe();
        loop {
            let read = self
                .io
                .read_line(limits.max_line_length, limits.command_timeout.get());
            let next = if self.transaction.is_none() {
                // Between transactions nothing is lost by closing: a command
                // half-read now is answered with the 421 instead.
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => None,
                    next = read => Some(next),
                }
            } else {
                Some(read.await)
            };
            let Some(next) = next else {
                self.io.reply(&Reply::shutting_down());
                break;
            };
            let line = match next {
                Ok(Line::Complete(line)) => line,
                Ok(Line::TooLong) => {
                    if self.error(Reply::line_too_long()) {
                        break;
                    }
                    continue;
                }
                Err(end) => {
                    self.end_on(end).await;
                    return SessionEnd::Closed;
                }
            };
            // Boxed so that an idle session holds only the small read-loop state,
            // not room for the largest command handler (AUTH, DATA, BDAT).
            match Box::pin(self.dispatch(&line)).await {
                Ok(Next::Continue) => {}
                Ok(Next::Close) => break,
                Ok(Next::StartTls) => {
                    if self.io.flush().await.is_err() {
                        return SessionEnd::Closed;
                    }
                    return SessionEnd::StartTls(self.io.into_stream_discarding_input());
                }
                Err(end) => {
                    self.end_on(end).await;
                    return SessionEnd::Closed;
                }
            }
        }
        self.io.close().await;
        SessionEnd::Closed
    }

    async fn end_on(&mut self, end: IoEnd) {
        match end {
            IoEnd::Timeout => {
                tracing::info!(peer = %self.conn.peer, "client timed out");
                self.io.reply(&Reply::timeout());
                self.io.close().await;
            }
            IoEnd::Error(e) => {
                tracing::debug!(peer = %self.conn.peer, error = %e, "connection error")
            }
            IoEnd::Closed => {
                tracing::debug!(peer = %self.conn.peer, "client closed the connection")
            }
        }
    }

    /// Sends an error reply and counts it; true when the client has now made too
    /// many errors and the connection must close.
    pub fn error(&mut self, reply: Reply) -> bool {
        self.io.reply(&reply);
        self.errors += 1;
        if self.errors >= self.ctx.config.limits.max_errors {
            self.io.reply(&Reply::too_many_errors());
            return true;
        }
        false
    }

    async fn dispatch(&mut self, line: &[u8]) -> Result<Next, IoEnd> {
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(e) => {
                let reply = match e {
                    ParseError::UnknownCommand => Reply::unknown_command(),
                    ParseError::InvalidSenderAddress | ParseError::InvalidRecipientAddress => {
                        Reply::bad_mailbox("invalid address")
                    }
                    ParseError::UnsupportedParameter { param } => {
                        Reply::param_not_implemented(&param)
                    }
                    ParseError::InvalidParameter { param } => {
                        Reply::syntax_error(format_args!("invalid {param} parameter"))
                    }
                    ParseError::SyntaxError { syntax } => {
                        Reply::syntax_error(format_args!("use {syntax}"))
                    }
                    ParseError::NeedsMoreData { .. }
                    | ParseError::ResponseTooLong
                    | ParseError::InvalidResponse { .. } => {
                        Reply::syntax_error("malformed command")
                    }
                };
                return Ok(if self.error(reply) {
                    Next::Close
                } else {
                    Next::Continue
                });
            }
        };
        match request {
            Request::Ehlo { host } => self.ehlo(&host, true),
            Request::Helo { host } => self.ehlo(&host, false),
            Request::StartTls => Ok(self.starttls()),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response).await,
            Request::Mail { from } => Ok(self.mail(from)),
            Request::Rcpt { mut to } => {
                // smtp-proto returns `<postmaster>` (RFC 5321 §4.5.1) as an empty
                // address, the same as `<>`; only the raw line tells them apart.
                if to.address.is_empty() && memchr::memmem::find(line, b"<>").is_none() {
                    to.address = "postmaster".into();
                }
                Ok(self.rcpt(to))
            }
            Request::Data => self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.transaction = None;
                self.io.reply(&Reply::ok());
                Ok(Next::Continue)
            }
            Request::Noop { .. } => {
                self.io.reply(&Reply::ok());
                Ok(Next::Continue)
            }
            Request::Quit => {
                self.io.reply(&Reply::bye());
                Ok(Next::Close)
            }
            // VRFY and EXPN never reveal users (SPEC §2).
            Request::Vrfy { .. } => {
                self.io.reply(&Reply::cannot_vrfy());
                Ok(Next::Continue)
            }
            Request::Expn { .. } => {
                self.io.reply(&Reply::expn_disabled());
                Ok(Next::Continue)
            }
            Request::Help { .. } => {
                self.io.reply(&Reply::help());
                Ok(Next::Continue)
            }
            Request::Lhlo { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => Ok(if self.error(Reply::not_implemented()) {
                Next::Close
            } else {
                Next::Continue
            }),
        }
    }

    fn starttls(&mut self) -> Next {
        if self.conn.tls.is_some() {
            self.io.reply(&Reply::bad_sequence("TLS already active"));
            return Next::Continue;
        }
        self.io.reply(&Reply::ready_for_tls());
        Next::StartTls
    }

    /// True when this connection may use AUTH: only over TLS (SPEC §1).
    pub fn auth_allowed(&self) -> bool {
        self.conn.tls.is_some()
    }
}
