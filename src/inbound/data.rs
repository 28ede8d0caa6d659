//! DATA and BDAT: receiving the content, the checks at the end of data (line
//! endings, size, the `From:` header), the trace and submission headers, the DKIM
//! signature, and the durable hand-off to the store.

use super::io::IoEnd;
use super::session::{Next, Session, Transaction};
use crate::config::ListenerMode;
use crate::message;
use crate::smtp::{DataReceiver, Reply, find_bare_line_ending};
use crate::store::{NewMessage, QueueId, StoreError};
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
        let reply = if receiver.violation().is_some() {
            tracing::warn!(peer = %self.conn.peer, violation = ?receiver.violation(), "message with bare CR/LF rejected");
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

    /// End-of-data checks, added headers, and the durable commit.
    async fn accept(&mut self, transaction: Transaction, content: Vec<u8>) -> Reply {
        if let Some(user) = &self.user {
            // SPEC §2: the From: header, too, must be in the user's domains.
            let authorized = message::from_domains(&content)
                .is_some_and(|domains| domains.iter().all(|d| user.may_send_as(d)));
            if !authorized {
                tracing::warn!(user = %user.name, "From: header not authorized");
                return Reply::sender_not_authorized();
            }
        }
        let id = QueueId::generate();
        let now = chrono::Utc::now();
        let headers = self.added_headers(&id, &transaction, &content, &now);
        let mut full = Vec::with_capacity(headers.len() + content.len() + 1024);
        full.extend_from_slice(headers.as_bytes());
        full.extend_from_slice(&content);
        // SPEC §5.2: sign once the message is final, before it is committed, so
        // every copy delivered carries the same signature. Only mail from senders
        // who may relay is signed: a stranger writing to our own domains with a
        // forged From: must not obtain our signature.
        let signed = if self.may_relay() {
            self.ctx.dkim.sign(&full).await
        } else {
            Ok(None)
        };
        match signed {
            Ok(Some(signatures)) => {
                full.splice(0..0, signatures.into_bytes());
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, peer = %self.conn.peer, "cannot DKIM-sign; answered 4xx");
                return Reply::local_error();
            }
        }
        let size = full.len();
        let rcpts = transaction.recipients.len();
        // With a place in delivery's window the message goes there directly, and
        // the store's copy is claimed for the lease so no scan takes it twice.
        let reservation = self.ctx.queue.as_ref().and_then(|q| q.try_reserve());
        let received_at = now.timestamp_millis();
        let first_attempt_at = match reservation {
            Some(_) => received_at + crate::queue::CLAIM_LEASE.as_millis() as i64,
            None => received_at,
        };
        let message = NewMessage {
            id: id.clone(),
            mail_from: transaction.mail_from,
            recipients: transaction.recipients,
            auth_user: self.user.as_ref().map(|u| u.name.clone()),
            smtputf8: transaction.smtputf8,
            content: std::sync::Arc::new(full),
            received_at,
            first_attempt_at,
        };
        match self.ctx.store.enqueue(message.clone()).await {
            Ok(()) => {
                tracing::info!(queue_id = %id, peer = %self.conn.peer, from = %message.mail_from, rcpts, size,
                    user = self.user.as_ref().map(|u| u.name.as_str()), tls = self.conn.tls.is_some(), "message accepted");
                if let Some(reservation) = reservation {
                    reservation.submit(&message);
                }
                Reply::queued(id.as_str())
            }
            Err(e) => {
                tracing::error!(error = %e, peer = %self.conn.peer, "cannot store message; answered 4xx");
                match e {
                    StoreError::Full(_) | StoreError::Backend(_) => Reply::store_unavailable(),
                    StoreError::Conflict(_) => Reply::local_error(),
                }
            }
        }
    }

    /// `Received:` always (RFC 5321 §4.4); `Date:` and `Message-ID:` when a submitted
    /// message lacks them (RFC 6409 §8).
    fn added_headers(
        &self,
        id: &QueueId,
        transaction: &Transaction,
        content: &[u8],
        now: &chrono::DateTime<chrono::Utc>,
    ) -> String {
        let hostname = &self.ctx.config.hostname;
        let date = now.to_rfc2822();
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
        let tls = self
            .conn
            .tls
            .as_ref()
            .map_or(String::new(), |t| format!("\r\n\t({t})"));
        let recipient = match transaction.recipients.as_slice() {
            [only] => format!("\r\n\tfor <{}>", only.address),
            _ => String::new(),
        };
        let mut headers = format!(
            "Received: from {helo} ([{ip}]){tls}\r\n\tby {hostname} (Outpost) with {protocol} id {id}{recipient};\r\n\t{date}\r\n",
            ip = self.conn.peer.ip(),
        );
        let submission = self.conn.mode != ListenerMode::Relay || self.user.is_some();
        if submission {
            let block = message::header_block(content);
            if !message::has_header(block, "Date") {
                headers.push_str(&format!("Date: {date}\r\n"));
            }
            if !message::has_header(block, "Message-ID") {
                headers.push_str(&format!(
                    "Message-ID: <{id}.{:08x}@{hostname}>\r\n",
                    rand::random::<u32>()
                ));
            }
        }
        headers
    }
}
