//! The SMTP client: one connection to a remote server, over which several messages
//! can be sent (connection reuse). Replies are parsed by `smtp-proto`; this file
//! owns the conversation: greeting, EHLO (HELO fallback), STARTTLS per policy, AUTH
//! for smart hosts, and pipelined transactions (RFC 2920) when the peer offers them.

use super::tls::TlsClient;
use crate::config::TlsPolicy;
use crate::smtp::{Mailbox, dot_stuff};
use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{
    EXT_8BIT_MIME, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse,
};
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio::net::TcpStream;

/// Longest reply we read (all lines together); a peer that sends more is broken.
const MAX_REPLY: usize = 64 * 1024;

/// A reply from the remote server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReply {
    pub code: u16,
    /// Enhanced status code, when the server sent one.
    pub enhanced: Option<[u8; 3]>,
    pub text: String,
}

impl RemoteReply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// A reply made up by Outpost for a failure that has no remote reply.
    pub fn local(code: u16, enhanced: [u8; 3], text: impl Into<String>) -> RemoteReply {
        RemoteReply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// The enhanced code as text, or the class-only default (`5.0.0` / `4.0.0`).
    pub fn status(&self) -> String {
        match self.enhanced {
            Some([a, b, c]) => format!("{a}.{b}.{c}"),
            None => format!("{}.0.0", self.code / 100),
        }
    }
}

impl fmt::Display for RemoteReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.enhanced {
            Some([a, b, c]) => write!(f, "{} {a}.{b}.{c} {}", self.code, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

/// Why a connection or a transaction failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Io(String),
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server refused the session (greeting, EHLO, STARTTLS, AUTH).
    #[error("{stage} refused: {reply}")]
    Refused {
        stage: &'static str,
        reply: RemoteReply,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("malformed reply from the server")]
    Protocol,
}

impl ClientError {
    /// The reply to record for the recipients this error affected.
    pub fn as_reply(&self) -> RemoteReply {
        match self {
            ClientError::Refused { reply, .. } => reply.clone(),
            ClientError::Tls(_) => RemoteReply::local(451, [4, 7, 5], self.to_string()),
            _ => RemoteReply::local(451, [4, 4, 1], self.to_string()),
        }
    }
}

/// One message to send on an open connection.
pub struct Envelope<'a> {
    /// `None` for the null sender.
    pub mail_from: Option<&'a Mailbox>,
    pub recipients: &'a [Mailbox],
    pub smtputf8: bool,
    pub content: &'a [u8],
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How to open a session.
pub struct SessionParams<'a> {
    pub addr: SocketAddr,
    /// Name the server is known by (TLS SNI and verification).
    pub server_name: &'a str,
    pub helo: &'a str,
    pub tls: TlsPolicy,
    pub tls_client: &'a TlsClient,
    pub credentials: Option<(&'a str, &'a str)>,
    pub timeout: Duration,
}

pub struct SmtpClient {
    stream: BufReader<Stream>,
    capabilities: u32,
    timeout: Duration,
    pub addr: SocketAddr,
    pub tls: bool,
}

impl SmtpClient {
    /// Connects, reads the greeting, says EHLO, and applies the TLS policy and AUTH.
    pub async fn connect(params: &SessionParams<'_>) -> Result<SmtpClient, ClientError> {
        let tcp = tokio::time::timeout(params.timeout, TcpStream::connect(params.addr))
            .await
            .map_err(|_| ClientError::Connect {
                addr: params.addr,
                reason: "timed out".into(),
            })?
            .map_err(|e| ClientError::Connect {
                addr: params.addr,
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let mut client = SmtpClient {
            stream: BufReader::new(Stream::Plain(tcp)),
            capabilities: 0,
            timeout: params.timeout,
            addr: params.addr,
            tls: false,
        };
        let greeting = client.read_reply().await?;
        if greeting.code != 220 {
            return Err(ClientError::Refused {
                stage: "greeting",
                reply: greeting,
            });
        }
        client.ehlo(params.helo).await?;
        let offered = client.capabilities & EXT_START_TLS != 0;
        let want_tls = match params.tls {
            TlsPolicy::None => false,
            TlsPolicy::Opportunistic => offered,
            TlsPolicy::Required | TlsPolicy::Verify => {
                if !offered {
                    return Err(ClientError::Tls(
                        "the server does not offer STARTTLS, and TLS is required".into(),
                    ));
                }
                true
            }
        };
        if want_tls {
            client = client.starttls(params).await?;
        }
        if let Some((user, password)) = params.credentials {
            if !client.tls && params.tls != TlsPolicy::None {
                return Err(ClientError::Tls(
                    "refusing to send credentials without TLS".into(),
                ));
            }
            client.auth_plain(user, password).await?;
        }
        Ok(client)
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), ClientError> {
        self.write(format!("EHLO {helo}\r\n").as_bytes()).await?;
        let raw = self.read_reply_bytes().await?;
        match EhloResponse::parse(&mut raw.iter()) {
            Ok(ehlo) => {
                self.capabilities = ehlo.capabilities;
                Ok(())
            }
            Err(_) => {
                // RFC 5321 §3.2: fall back to HELO for servers without ESMTP.
                let reply = parse_reply(&raw)?;
                if reply.code == 421 || reply.code / 100 == 4 {
                    return Err(ClientError::Refused {
                        stage: "EHLO",
                        reply,
                    });
                }
                self.write(format!("HELO {helo}\r\n").as_bytes()).await?;
                let reply = self.read_reply().await?;
                if reply.code != 250 {
                    return Err(ClientError::Refused {
                        stage: "HELO",
                        reply,
                    });
                }
                self.capabilities = 0;
                Ok(())
            }
        }
    }

    async fn starttls(mut self, params: &SessionParams<'_>) -> Result<SmtpClient, ClientError> {
        self.write(b"STARTTLS\r\n").await?;
        let reply = self.read_reply().await?;
        if reply.code != 220 {
            return Err(ClientError::Refused {
                stage: "STARTTLS",
                reply,
            });
        }
        let Stream::Plain(tcp) = self.stream.into_inner() else {
            return Err(ClientError::Tls("TLS is already active".into()));
        };
        let verify = params.tls == TlsPolicy::Verify;
        let tls = tokio::time::timeout(
            params.timeout,
            params.tls_client.connect(params.server_name, tcp, verify),
        )
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| ClientError::Tls(e.to_string()))?;
        let mut client = SmtpClient {
            stream: BufReader::new(Stream::Tls(Box::new(tls))),
            capabilities: 0,
            timeout: self.timeout,
            addr: self.addr,
            tls: true,
        };
        client.ehlo(params.helo).await?;
        Ok(client)
    }

    async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        use base64::Engine;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.write(format!("AUTH PLAIN {token}\r\n").as_bytes())
            .await?;
        let reply = self.read_reply().await?;
        if reply.code != 235 {
            return Err(ClientError::Refused {
                stage: "AUTH",
                reply,
            });
        }
        Ok(())
    }

    /// Sends one message; returns the reply for each recipient, in order. An error
    /// means the connection is unusable and no recipient's fate is known.
    pub async fn send(&mut self, envelope: &Envelope<'_>) -> Result<Vec<RemoteReply>, ClientError> {
        let n = envelope.recipients.len();
        if envelope.smtputf8 && self.capabilities & EXT_SMTP_UTF8 == 0 {
            let reply = RemoteReply::local(
                553,
                [5, 6, 7],
                "the recipient's server does not support SMTPUTF8, which this message needs",
            );
            return Ok(vec![reply; n]);
        }
        let eight_bit = !envelope.content.is_ascii();
        if eight_bit && self.capabilities & EXT_8BIT_MIME == 0 {
            let reply = RemoteReply::local(
                554,
                [5, 6, 3],
                "the recipient's server does not support 8BITMIME, which this message needs",
            );
            return Ok(vec![reply; n]);
        }
        let mut mail = format!(
            "MAIL FROM:<{}>",
            envelope.mail_from.map_or(String::new(), Mailbox::to_string)
        );
        if self.capabilities & EXT_SIZE != 0 {
            mail.push_str(&format!(" SIZE={}", envelope.content.len()));
        }
        if eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if envelope.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let (mail_reply, rcpt_replies, data_reply) = if self.capabilities & EXT_PIPELINING != 0 {
            let mut commands = mail.into_bytes();
            for rcpt in envelope.recipients {
                commands.extend_from_slice(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
            }
            commands.extend_from_slice(b"DATA\r\n");
            self.write(&commands).await?;
            let mail_reply = self.read_reply().await?;
            if closing(&mail_reply) {
                return Ok(vec![mail_reply; n]);
            }
            let mut rcpt_replies = Vec::with_capacity(n);
            for _ in 0..n {
                let reply = self.read_reply().await?;
                if closing(&reply) {
                    return Ok(closed_after(rcpt_replies, reply, n));
                }
                rcpt_replies.push(reply);
            }
            let data_reply = self.read_reply().await?;
            (mail_reply, rcpt_replies, Some(data_reply))
        } else {
            self.write(mail.as_bytes()).await?;
            let mail_reply = self.read_reply().await?;
            if closing(&mail_reply) {
                return Ok(vec![mail_reply; n]);
            }
            let mut rcpt_replies = Vec::with_capacity(n);
            if mail_reply.is_positive() {
                for rcpt in envelope.recipients {
                    self.write(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
                        .await?;
                    let reply = self.read_reply().await?;
                    if closing(&reply) {
                        return Ok(closed_after(rcpt_replies, reply, n));
                    }
                    rcpt_replies.push(reply);
                }
            }
            (mail_reply, rcpt_replies, None)
        };
        if !mail_reply.is_positive() {
            self.reset_after_failure(data_reply.as_ref()).await?;
            return Ok(vec![mail_reply; n]);
        }
        let accepted = rcpt_replies.iter().filter(|r| r.is_positive()).count();
        let data_reply = match data_reply {
            Some(reply) => reply,
            None if accepted > 0 => {
                self.write(b"DATA\r\n").await?;
                self.read_reply().await?
            }
            None => RemoteReply::local(554, [5, 5, 1], "no valid recipients"),
        };
        if closing(&data_reply) {
            return Ok(closed_after(rcpt_replies, data_reply, n));
        }
        if accepted == 0 || data_reply.code != 354 {
            self.reset_after_failure(Some(&data_reply)).await?;
            return Ok(rcpt_replies
                .into_iter()
                .map(|r| {
                    if r.is_positive() {
                        data_reply.clone()
                    } else {
                        r
                    }
                })
                .collect());
        }
        let mut wire = Vec::with_capacity(envelope.content.len() + 64);
        dot_stuff(envelope.content, &mut wire);
        self.write(&wire).await?;
        let final_reply = self.read_reply().await?;
        Ok(rcpt_replies
            .into_iter()
            .map(|r| {
                if r.is_positive() {
                    final_reply.clone()
                } else {
                    r
                }
            })
            .collect())
    }

    /// Ends a failed transaction cleanly so the connection can be reused. If the
    /// server nevertheless said 354, an empty message is ended and its reply ignored.
    async fn reset_after_failure(
        &mut self,
        data_reply: Option<&RemoteReply>,
    ) -> Result<(), ClientError> {
        if data_reply.is_some_and(|r| r.code == 354) {
            self.write(b".\r\n").await?;
            self.read_reply().await?;
        }
        self.write(b"RSET\r\n").await?;
        self.read_reply().await?;
        Ok(())
    }

    pub async fn quit(mut self) {
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.read_reply()).await;
        }
        let _ = self.stream.get_mut().shutdown().await;
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let stream = self.stream.get_mut();
        tokio::time::timeout(self.timeout, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| ClientError::Io(e.to_string()))
    }

    async fn read_reply(&mut self) -> Result<RemoteReply, ClientError> {
        let raw = self.read_reply_bytes().await?;
        parse_reply(&raw)
    }

    async fn read_reply_bytes(&mut self) -> Result<Vec<u8>, ClientError> {
        read_reply_bytes(&mut self.stream, self.timeout).await
    }
}

/// Reads the lines of one (possibly multi-line) reply, each line within `timeout`.
/// The one reply reader of every SMTP client here: delivery and `outpost check`.
pub async fn read_reply_bytes<S: AsyncRead + Unpin>(
    stream: &mut BufReader<S>,
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    let mut raw = Vec::new();
    loop {
        let start = raw.len();
        let read = tokio::time::timeout(
            timeout,
            (&mut *stream)
                .take((MAX_REPLY - start) as u64)
                .read_until(b'\n', &mut raw),
        )
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| ClientError::Io(e.to_string()))?;
        if read == 0 {
            return Err(ClientError::Io("connection closed by the server".into()));
        }
        if !raw.ends_with(b"\n") {
            return Err(ClientError::Protocol);
        }
        let line = &raw[start..];
        if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ClientError::Protocol);
        }
        if line[3] != b'-' {
            return Ok(raw);
        }
    }
}

/// RFC 5321 §3.8: `421` means the server is closing the connection. The
/// transaction is over for every recipient, and nothing more can be read: the
/// reply itself is what they all get (and what tells the queue to back off).
fn closing(reply: &RemoteReply) -> bool {
    reply.code == 421
}

/// The replies for `n` recipients when the server closed with `closed` after
/// answering the first RCPTs with `answered`: a recipient it refused keeps its
/// own reply, every other one gets the closing reply.
fn closed_after(answered: Vec<RemoteReply>, closed: RemoteReply, n: usize) -> Vec<RemoteReply> {
    let mut replies: Vec<RemoteReply> = answered
        .into_iter()
        .map(|r| if r.is_positive() { closed.clone() } else { r })
        .collect();
    replies.resize(n, closed);
    replies
}

pub fn parse_reply(raw: &[u8]) -> Result<RemoteReply, ClientError> {
    let response = ResponseReceiver::default()
        .parse(&mut raw.iter())
        .map_err(|_| ClientError::Protocol)?;
    Ok(RemoteReply {
        code: response.code,
        enhanced: (response.esc[0] != 0).then_some(response.esc),
        text: response.message.trim().replace(['\r', '\n'], " "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_multi_line_replies() {
        let r = parse_reply(b"550 5.1.1 User unknown\r\n").unwrap();
        assert_eq!(
            (r.code, r.enhanced, r.text.as_str()),
            (550, Some([5, 1, 1]), "User unknown")
        );
        assert_eq!(r.to_string(), "550 5.1.1 User unknown");
        let r = parse_reply(b"451-4.3.0 first\r\n451 4.3.0 second\r\n").unwrap();
        assert_eq!(r.code, 451);
        assert!(
            r.text.contains("first") && r.text.contains("second"),
            "{}",
            r.text
        );
        let r = parse_reply(b"250 ok\r\n").unwrap();
        assert_eq!((r.enhanced, r.status()), (None, "2.0.0".to_string()));
    }

    #[test]
    fn a_421_ends_the_transaction_for_every_recipient_not_refused() {
        let ok = parse_reply(b"250 2.1.5 ok\r\n").unwrap();
        let refused = parse_reply(b"550 5.1.1 unknown\r\n").unwrap();
        let closing = parse_reply(b"421 4.7.0 closing\r\n").unwrap();
        assert_eq!(
            closed_after(vec![ok, refused.clone()], closing.clone(), 3),
            vec![closing.clone(), refused, closing]
        );
    }
}
