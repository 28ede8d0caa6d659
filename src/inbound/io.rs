//! Buffered SMTP I/O for one connection: bounded line reads, DATA/BDAT reads, and
//! replies batched until the client's pipelined input is used up (RFC 2920 §3.2:
//! the server flushes before it waits for more input).

use crate::smtp::{DataReceiver, DataStatus, Reply};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

const READ_BUFFER: usize = 64 * 1024;
/// How long closing the connection may take (a peer that does not read).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

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
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpIo<S> {
    pub fn new(stream: S) -> SmtpIo<S> {
        SmtpIo {
            reader: BufReader::with_capacity(READ_BUFFER, stream),
            out: Vec::with_capacity(1024),
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
            let stream = self.reader.get_mut();
            stream.write_all(&self.out).await.map_err(IoEnd::Error)?;
            stream.flush().await.map_err(IoEnd::Error)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends what is queued, then closes the write side: on TLS that sends the
    /// close_notify alert (RFC 8446 §6.1), so clients see a clean end, not a
    /// truncation. Errors are ignored: the connection is over either way.
    pub async fn close(&mut self) {
        if self.flush().await.is_ok() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.reader.get_mut().shutdown()).await;
        }
    }

    /// The stream without its read buffer: whatever the client pipelined is dropped
    /// (STARTTLS, RFC 3207 §4.2 and CVE-2011-0411).
    pub fn into_stream_discarding_input(self) -> S {
        self.reader.into_inner()
    }

    async fn fill(&mut self, timeout: Duration) -> Result<&[u8], IoEnd> {
        if self.reader.buffer().is_empty() {
            self.flush().await?;
        }
        match tokio::time::timeout(timeout, self.reader.fill_buf()).await {
            Err(_) => Err(IoEnd::Timeout),
            Ok(Err(e)) => Err(IoEnd::Error(e)),
            Ok(Ok([])) => Err(IoEnd::Closed),
            Ok(Ok(buf)) => Ok(buf),
        }
    }

    /// Reads one line of at most `max` octets.
    pub async fn read_line(&mut self, max: usize, timeout: Duration) -> Result<Line, IoEnd> {
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let buf = self.fill(timeout).await?;
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
            let buf = self.fill(timeout).await?;
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
            let buf = self.fill(timeout).await?;
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
