//! DATA and BDAT: receiving the content and the checks at the end of data (line
//! endings, size). The `From:` check, the added headers and the durable hand-off
//! are the shared acceptance path's (`crate::accept`), which the HTTP API uses too.

use super::io::IoEnd;
use super::session::{Next, Session, Transaction};
use crate::accept::{AcceptError, Origin, Submission};
use crate::config::ListenerMode;
use crate::smtp::{DataReceiver, Reply, find_bare_line_ending};
use crate::store::StoreError;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<'_, S> {
    pub(super) async fn data(&mut self) -> Result<Next, IoEnd> {
        let Some(transaction) = &self.transaction else {
            return Ok(self.refuse(Reply::bad_sequence("Need MAIL before DATA")));
        };
        if transaction.bdat.is_some() {
            return Ok(self.refuse(Reply::bad_sequence("DATA not allowed after BDAT")));
        }
        if transaction.recipients.is_empty() {
            return Ok(self.refuse(Reply::no_valid_recipients()));
        }
        self.io.reply(&Reply::start_data());
        let limits = &self.ctx.config.limits;
        let mut receiver = DataReceiver::new(limits.max_message_size);
        let mut content = Vec::with_capacity(16 * 1024);
        self.io
            .read_data(&mut receiver, &mut content, limits.data_timeout.get())
            .await?;
        let transaction = self.transaction.take().expect("checked above");
        let reply = if let Some(violation) = receiver.violation() {
            tracing::warn!(peer = %self.conn.peer, ?violation, "message with bare CR/LF rejected");
            Reply::bare_line_ending()
        } else if receiver.too_big() {
            Reply::message_too_big()
        } else {
            self.accept(transaction, content).await
        };
        self.io.reply(&reply);
        Ok(Next::Continue)
    }

    pub(super) async fn bdat(&mut self, size: usize, last: bool) -> Result<Next, IoEnd> {
        let limits = &self.ctx.config.limits;
        let (max, timeout) = (limits.max_message_size, limits.data_timeout.get());
        // The chunk is read even when it will be refused, to stay in step with the client.
        let Some(transaction) = self
            .transaction
            .as_mut()
            .filter(|t| !t.recipients.is_empty())
        else {
            self.io
                .read_chunk(size, &mut Vec::new(), 0, timeout)
                .await?;
            let reply = if self.transaction.is_none() {
                Reply::bad_sequence("Need MAIL before BDAT")
            } else {
                Reply::no_valid_recipients()
            };
            return Ok(self.refuse(reply));
        };
        let (content, within) = transaction.bdat.get_or_insert_with(|| (Vec::new(), true));
        let fits = self.io.read_chunk(size, content, max, timeout).await?;
        *within &= fits;
        if !last {
            let received = content.len();
            self.io.reply(&Reply::new(
                250,
                "2.0.0",
                format!("{size} octets received ({received} in total)"),
            ));
            return Ok(Next::Continue);
        }
        let mut transaction = self.transaction.take().expect("checked above");
        let (content, within) = transaction.bdat.take().expect("set above");
        let reply = if !within {
            Reply::message_too_big()
        } else if let Some(violation) = find_bare_line_ending(&content) {
            tracing::warn!(peer = %self.conn.peer, ?violation, "BDAT message with bare CR/LF rejected");
            Reply::bare_line_ending()
        } else {
            self.accept(transaction, content).await
        };
        self.io.reply(&reply);
        Ok(Next::Continue)
    }

    /// Replies with an error and keeps the connection unless too many errors piled up.
    fn refuse(&mut self, reply: Reply) -> Next {
        if self.error(reply) {
            Next::Close
        } else {
            Next::Continue
        }
    }

    /// Hands the message to the shared acceptance path and turns the outcome into
    /// the reply to the end of data.
    async fn accept(&mut self, transaction: Transaction, content: Vec<u8>) -> Reply {
        let helo = self.helo.as_ref().map_or("unknown", |(h, _)| h.as_str());
        // RFC 3848 / RFC 6531 protocol names.
        let protocol = format!(
            "{}{}{}",
            if transaction.smtputf8 {
                "UTF8SMTP"
            } else {
                "ESMTP"
            },
            if self.conn.tls.is_some() { "S" } else { "" },
            if self.user.is_some() { "A" } else { "" }
        );
        let submission = Submission {
            mail_from: transaction.mail_from,
            recipients: transaction.recipients,
            user: self.user.clone(),
            smtputf8: transaction.smtputf8,
            content,
            origin: Origin {
                from: format!("{helo} ([{}])", self.conn.peer.ip()),
                tls: self.conn.tls.clone(),
                protocol,
                source: "smtp",
            },
            submission: self.conn.mode != ListenerMode::Relay || self.user.is_some(),
            may_relay: self.may_relay(),
        };
        match self.ctx.acceptor.accept(submission).await {
            Ok(id) => Reply::queued(id.as_str()),
            Err(AcceptError::NotAuthorized) => Reply::sender_not_authorized(),
            Err(AcceptError::Nul) => Reply::nul_in_data(),
            Err(AcceptError::Signing(e)) => {
                tracing::error!(error = %e, peer = %self.conn.peer, "cannot DKIM-sign; answered 4xx");
                Reply::local_error()
            }
            Err(AcceptError::Store(e)) => {
                tracing::error!(error = %e, peer = %self.conn.peer, "cannot store message; answered 4xx");
                // RFC 3463: a database out of reach is not "mail system full"
                // (X.3.1) but "other mail system status" (X.3.0).
                match e {
                    StoreError::Full(_) | StoreError::Backend(_) => Reply::store_unavailable(),
                    StoreError::Unavailable(_) | StoreError::Conflict(_) => Reply::local_error(),
                }
            }
        }
    }
}
