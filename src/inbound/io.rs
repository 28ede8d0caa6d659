//! Buffered SMTP I/O for one connection: bounded line reads, DATA/BDAT reads, and
//! replies batched until the client's pipelined input is used up (RFC 2920 §3.2:
//! the server flushes before it waits for more input).

use crate::smtp::{DataReceiver, DataStatus, Reply};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::Instant;

const READ_BUFFER: usize = 8 * 1024;
/// How long closing may take (the last replies and the TLS close_notify).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the connection cannot go on.
#[derive(Debug)]
pub enum IoEnd {
    Closed,
    Timeout,
    Error(std::io::Error),
}

pub enum Line {
    /// A complete line, terminator included.
    Complete(Vec<u8>),
    /// Longer than the limit; the rest of it up to its LF was discarded.
    TooLong,
}

pub struct SmtpIo<S> {
    reader: BufReader<S>,
    out: Vec<u8>,
    /// Bound on sending replies to a client that does not read.
    write_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpIo<S> {
    pub fn new(stream: S, write_timeout: Duration) -> SmtpIo<S> {
        SmtpIo {
            reader: BufReader::with_capacity(READ_BUFFER, stream),
            out: Vec::with_capacity(1024),
            write_timeout,
        }
    }

    /// Queues a reply; it is sent before the next read that would block.
    pub fn reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    /// Queues raw reply bytes (AUTH challenges).
    pub fn reply_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    pub async fn flush(&mut self) -> Result<(), IoEnd> {
        if !self.out.is_empty() {
            let (stream, out) = (self.reader.get_mut(), &self.out);
            tokio::time::timeout(self.write_timeout, async {
                stream.write_all(out).await?;
                stream.flush().await
            })
            .await
            .map_err(|_| IoEnd::Timeout)?
            .map_err(IoEnd::Error)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends pending replies and closes the write side; over TLS this sends the
    /// close_notify alert first (RFC 8446 §6.1), so the client can tell a clean close
    /// from a truncated connection.
    pub async fn close(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            self.flush().await?;
            self.reader.get_mut().shutdown().await.map_err(IoEnd::Error)
        })
        .await;
    }

    /// The stream without its read buffer: whatever the client pipelined is dropped
    /// (STARTTLS, RFC 3207 §4.2 and CVE-2011-0411).
    pub fn into_stream_discarding_input(self) -> S {
        self.reader.into_inner()
    }

    async fn fill(&mut self, deadline: Instant) -> Result<&[u8], IoEnd> {
        if self.reader.buffer().is_empty() {
            self.flush().await?;
        }
        match tokio::time::timeout_at(deadline, self.reader.fill_buf()).await {
            Err(_) => Err(IoEnd::Timeout),
            Ok(Err(e)) => Err(IoEnd::Error(e)),
            Ok(Ok([])) => Err(IoEnd::Closed),
            Ok(Ok(buf)) => Ok(buf),
        }
    }

    /// Reads one line of at most `max` octets. The timeout covers the whole line, so
    /// a client cannot hold the session by trickling a byte at a time.
    pub async fn read_line(&mut self, max: usize, timeout: Duration) -> Result<Line, IoEnd> {
        let deadline = Instant::now() + timeout;
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let buf = self.fill(deadline).await?;
            let (take, done) = match memchr::memchr(b'\n', buf) {
                Some(pos) => (pos + 1, true),
                None => (buf.len(), false),
            };
            if line.len() + take > max {
                too_long = true;
            }
            if !too_long {
                line.extend_from_slice(&buf[..take]);
            }
            self.reader.consume(take);
            if done {
                return Ok(if too_long {
                    Line::TooLong
                } else {
                    Line::Complete(line)
                });
            }
        }
    }

    /// Reads DATA content up to `<CRLF>.<CRLF>` into `content`.
    pub async fn read_data(
        &mut self,
        receiver: &mut DataReceiver,
        content: &mut Vec<u8>,
        timeout: Duration,
    ) -> Result<(), IoEnd> {
        loop {
            // RFC 5321 §4.5.3.2: message data is timed per read, not as a whole.
            let buf = self.fill(Instant::now() + timeout).await?;
            let (consumed, status) = receiver.ingest(buf, content);
            self.reader.consume(consumed);
            if status == DataStatus::Done {
                return Ok(());
            }
        }
    }

    /// Reads exactly `size` octets of a BDAT chunk; octets past `limit` total content
    /// are read and dropped. Returns false when the content went over the limit.
    pub async fn read_chunk(
        &mut self,
        mut size: usize,
        content: &mut Vec<u8>,
        limit: usize,
        timeout: Duration,
    ) -> Result<bool, IoEnd> {
        let mut within_limit = true;
        while size > 0 {
            // RFC 5321 §4.5.3.2: message data is timed per read, not as a whole.
            let buf = self.fill(Instant::now() + timeout).await?;
            let take = buf.len().min(size);
            if content.len() + take <= limit && within_limit {
                content.extend_from_slice(&buf[..take]);
            } else {
                within_limit = false;
            }
            self.reader.consume(take);
            size -= take;
        }
        Ok(within_limit)
    }
}
