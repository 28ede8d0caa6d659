//! MAIL FROM and RCPT TO: sender authorization and the relay rules (SPEC §1, §2).

use super::session::{Next, Session, Transaction};
use crate::config::ListenerMode;
use crate::smtp::{Mailbox, Reply};
use crate::store::NewRecipient;
use smtp_proto::{MAIL_BODY_BINARYMIME, MAIL_REQUIRETLS, MAIL_SMTPUTF8, MailFrom, RcptTo};
use std::borrow::Cow;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin> Session<'_, S> {
    pub(super) fn mail(&mut self, from: MailFrom<Cow<'_, str>>) -> Next {
        match self.check_mail(&from) {
            Err(reply) => {
                if self.error(reply) {
                    return Next::Close;
                }
            }
            Ok(mail_from) => {
                self.transaction = Some(Transaction {
                    mail_from,
                    smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
                    ..Transaction::default()
                });
                self.io.reply(&Reply::sender_ok());
            }
        }
        Next::Continue
    }

    /// The sender of a new transaction (`None` for `<>`), or the refusal.
    fn check_mail(&self, from: &MailFrom<Cow<'_, str>>) -> Result<Option<Mailbox>, Reply> {
        if self.helo.is_none() {
            return Err(Reply::bad_sequence("Send EHLO/HELO first"));
        }
        if self.transaction.is_some() {
            return Err(Reply::bad_sequence("Nested MAIL command"));
        }
        if self.conn.mode.requires_auth() && self.user.is_none() {
            return Err(Reply::auth_required());
        }
        // We advertise neither BINARYMIME nor REQUIRETLS.
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return Err(Reply::param_not_implemented("BODY=BINARYMIME"));
        }
        if from.flags & MAIL_REQUIRETLS != 0 {
            return Err(Reply::param_not_implemented("REQUIRETLS"));
        }
        if from.size > self.ctx.config.limits.max_message_size {
            return Err(Reply::message_too_big());
        }
        let sender = if from.address.is_empty() {
            None
        } else {
            let mailbox =
                Mailbox::parse(&from.address).ok_or_else(|| Reply::bad_mailbox(&from.address))?;
            if !mailbox.is_ascii() && from.flags & MAIL_SMTPUTF8 == 0 {
                return Err(Reply::smtputf8_required());
            }
            Some(mailbox)
        };
        if let Some(user) = &self.user {
            // A user may send only as its own domains; the null sender has none.
            let allowed = sender
                .as_ref()
                .is_some_and(|s| user.may_send_as(s.domain().as_str()));
            if !allowed {
                tracing::warn!(user = %user.name, from = %from.address, "MAIL FROM not authorized");
                return Err(Reply::sender_not_authorized());
            }
        }
        Ok(sender)
    }

    pub(super) fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>) -> Next {
        match self.check_rcpt(&to) {
            Ok(recipient) => {
                let transaction = self.transaction.as_mut().expect("checked by check_rcpt");
                transaction.recipients.push(recipient);
                self.io.reply(&Reply::recipient_ok());
            }
            Err(reply) => {
                if self.error(reply) {
                    return Next::Close;
                }
            }
        }
        Next::Continue
    }

    fn check_rcpt(&self, to: &RcptTo<Cow<'_, str>>) -> Result<NewRecipient, Reply> {
        let Some(transaction) = &self.transaction else {
            return Err(Reply::bad_sequence("Need MAIL before RCPT"));
        };
        if transaction.bdat.is_some() {
            return Err(Reply::bad_sequence("RCPT not allowed during BDAT"));
        }
        let local_domains = &self.ctx.config.relay.local_domains;
        // RFC 5321 §4.5.1: <postmaster> without a domain must be accepted.
        let mailbox = if to.address.eq_ignore_ascii_case("postmaster") {
            Mailbox::parse(&format!("postmaster@{}", local_domains[0]))
        } else {
            Mailbox::parse(&to.address)
        }
        .ok_or_else(|| Reply::bad_mailbox(&to.address))?;
        if !mailbox.is_ascii() && !transaction.smtputf8 {
            return Err(Reply::smtputf8_required());
        }
        if transaction.recipients.len() >= self.ctx.config.limits.max_recipients {
            return Err(Reply::too_many_recipients());
        }
        let local = self.ctx.config.relay.is_local(mailbox.domain());
        if !local && !self.may_relay() {
            tracing::warn!(peer = %self.conn.peer, rcpt = %mailbox, "relay denied");
            return Err(Reply::relay_denied());
        }
        Ok(NewRecipient {
            address: mailbox,
            local,
        })
    }

    /// SPEC §1: authenticated users relay anywhere; unauthenticated clients only on a
    /// `relay` listener from a trusted network.
    pub(super) fn may_relay(&self) -> bool {
        self.user.is_some()
            || (self.conn.mode == ListenerMode::Relay
                && self
                    .ctx
                    .config
                    .relay
                    .trusted_networks
                    .iter()
                    .any(|net| net.contains(&self.conn.peer.ip())))
    }
}
