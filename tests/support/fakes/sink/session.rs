//! The SMTP server side of [`super::SmtpSink`]: accepting connections, one
//! session per connection (greeting, commands, STARTTLS, AUTH, data), and
//! recording into the sink's shared state.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::{AfterData, Command, Config, Match, RcptAttempt, Received, Shared};

pub(super) async fn accept_loop(listener: TcpListener, config: Arc<Config>, shared: Arc<Shared>) {
    // Connection tasks live in this set: aborting this task ends them all.
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let id = shared.update(|s| {
                    let id = s.connections;
                    s.connections += 1;
                    s.active += 1;
                    s.max_concurrent = s.max_concurrent.max(s.active);
                    s.per_connection.push(0);
                    id
                });
                let guard = ActiveGuard(shared.clone());
                sessions.spawn(serve(stream, id, config.clone(), shared.clone(), guard));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// Counts a connection as open until the session ends (or is aborted).
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.update(|s| s.active -= 1);
    }
}

struct Session {
    connection: usize,
    tls: bool,
    helo: Option<String>,
    auth_user: Option<String>,
    txn: Option<Transaction>,
}

struct Transaction {
    index: usize,
    mail_from: String,
    mail_params: Vec<String>,
    rcpt_to: Vec<String>,
}

enum Flow {
    StartTls,
    Close,
}

async fn serve(
    stream: TcpStream,
    connection: usize,
    config: Arc<Config>,
    shared: Arc<Shared>,
    _guard: ActiveGuard,
) {
    let mut reader = BufReader::new(stream);
    let greeting = config
        .greeting
        .clone()
        .unwrap_or_else(|| format!("220 {} ESMTP test sink", config.hostname));
    if reply(&mut reader, &config, &greeting).await.is_err() || !greeting.starts_with('2') {
        return;
    }
    let mut session = Session {
        connection,
        tls: false,
        helo: None,
        auth_user: None,
        txn: None,
    };
    if let Flow::StartTls = run(&mut reader, &mut session, &config, &shared).await {
        let Some(acceptor) = config.acceptor.clone() else {
            return;
        };
        // RFC 3207 §4.2: anything the client pipelined after STARTTLS is
        // discarded with the buffer; the session starts over.
        let tcp = reader.into_inner();
        let Ok(tls) = acceptor.accept(tcp).await else {
            return;
        };
        session.tls = true;
        session.helo = None;
        session.auth_user = None;
        session.txn = None;
        let mut reader = BufReader::new(tls);
        run(&mut reader, &mut session, &config, &shared).await;
    }
}

/// Writes one reply (after the configured delay); `\n` separates lines.
async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    config: &Config,
    text: &str,
) -> std::io::Result<()> {
    if !config.delay.is_zero() {
        tokio::time::sleep(config.delay).await;
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let (code, rest) = line.split_at(line.len().min(3));
        let rest = rest.strip_prefix([' ', '-']).unwrap_or(rest);
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}{rest}\r\n"));
    }
    let stream = io.get_mut();
    stream.write_all(out.as_bytes()).await?;
    stream.flush().await
}

async fn read_line<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    match io.read_until(b'\n', &mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line),
    }
}

/// Runs commands until QUIT, EOF, a 421, or STARTTLS.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    session: &mut Session,
    config: &Config,
    shared: &Shared,
) -> Flow {
    loop {
        let Some(raw) = read_line(io).await else {
            return Flow::Close;
        };
        let line = String::from_utf8_lossy(&raw)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        shared.update(|s| {
            s.commands.push(Command {
                connection: session.connection,
                tls: session.tls,
                line: line.clone(),
            })
        });
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        let answer = match verb.as_str() {
            "EHLO" => {
                session.helo = Some(arg.clone());
                session.txn = None;
                ehlo_reply(config, session, &arg)
            }
            "HELO" => {
                session.helo = Some(arg.clone());
                session.txn = None;
                format!("250 {}", config.hostname)
            }
            "STARTTLS" => {
                if config.acceptor.is_none() || session.tls {
                    "502 5.5.1 STARTTLS not available".into()
                } else {
                    if reply(io, config, "220 2.0.0 Ready to start TLS")
                        .await
                        .is_err()
                    {
                        return Flow::Close;
                    }
                    return Flow::StartTls;
                }
            }
            "AUTH" => match auth(io, session, config, &arg).await {
                Some(answer) => answer,
                None => return Flow::Close,
            },
            "MAIL" => mail(session, config, shared, &arg),
            "RCPT" => rcpt(session, config, shared, &arg),
            "DATA" => {
                if session.txn.is_none() {
                    "503 5.5.1 MAIL first".into()
                } else if session.txn.as_ref().is_some_and(|t| t.rcpt_to.is_empty()) {
                    "554 5.5.1 No valid recipients".into()
                } else {
                    if reply(io, config, "354 Go ahead").await.is_err() {
                        return Flow::Close;
                    }
                    let fault = shared.take_fault(config);
                    if fault && config.after_data == AfterData::ResetDuringData {
                        // Close with the rest of the data unread: the peer gets a reset.
                        let _ = read_line(io).await;
                        return Flow::Close;
                    }
                    let Some(data) = read_data(io).await else {
                        return Flow::Close;
                    };
                    match end_of_data(session, config, shared, data, fault) {
                        Some(answer) => answer,
                        None => {
                            if config.after_data == AfterData::Stall {
                                // Hold the connection until the client gives up.
                                while read_line(io).await.is_some() {}
                            }
                            return Flow::Close;
                        }
                    }
                }
            }
            "RSET" => {
                session.txn = None;
                "250 2.0.0 OK".into()
            }
            "NOOP" => "250 2.0.0 OK".into(),
            "VRFY" => "252 2.1.5 Cannot VRFY user".into(),
            "QUIT" => {
                let _ = reply(io, config, "221 2.0.0 Bye").await;
                return Flow::Close;
            }
            _ => "500 5.5.2 Command not recognized".into(),
        };
        if reply(io, config, &answer).await.is_err() || answer.starts_with("421") {
            return Flow::Close;
        }
    }
}

fn ehlo_reply(config: &Config, session: &Session, arg: &str) -> String {
    let mut lines = vec![format!("250 {} greets {arg}", config.hostname)];
    if config.pipelining {
        lines.push("250 PIPELINING".into());
    }
    if config.eightbitmime {
        lines.push("250 8BITMIME".into());
    }
    if config.smtputf8 {
        lines.push("250 SMTPUTF8".into());
    }
    lines.push(format!("250 SIZE {}", config.size));
    lines.push("250 ENHANCEDSTATUSCODES".into());
    if config.acceptor.is_some() && !session.tls {
        lines.push("250 STARTTLS".into());
    }
    if config.auth.is_some() {
        lines.push("250 AUTH PLAIN LOGIN".into());
    }
    lines.join("\n")
}

/// RFC 4954 with PLAIN (RFC 4616) and LOGIN. `None` when the connection broke.
async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    session: &mut Session,
    config: &Config,
    arg: &str,
) -> Option<String> {
    let Some((user, password)) = &config.auth else {
        return Some("502 5.5.1 AUTH not available".into());
    };
    if session.auth_user.is_some() {
        return Some("503 5.5.1 Already authenticated".into());
    }
    if session.txn.is_some() {
        return Some("503 5.5.1 AUTH not allowed in a transaction".into());
    }
    let (mech, initial) = match arg.split_once(' ') {
        Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_string())),
        None => (arg.to_ascii_uppercase(), None),
    };
    let decode = |s: &str| -> Option<Vec<u8>> {
        if s == "=" {
            Some(Vec::new())
        } else {
            BASE64.decode(s).ok()
        }
    };
    let (given_user, given_password) = match mech.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(i) => i,
                None => challenge(io, config, "334 ").await?,
            };
            if response == "*" {
                return Some("501 5.7.0 Authentication cancelled".into());
            }
            let Some(decoded) = decode(&response) else {
                return Some("501 5.5.2 Bad base64".into());
            };
            let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
            if parts.len() != 3 {
                return Some("501 5.5.2 Bad PLAIN response".into());
            }
            (parts[1].to_vec(), parts[2].to_vec())
        }
        "LOGIN" => {
            let user_b64 = match initial {
                Some(i) => i,
                None => challenge(io, config, "334 VXNlcm5hbWU6").await?,
            };
            let password_b64 = challenge(io, config, "334 UGFzc3dvcmQ6").await?;
            if user_b64 == "*" || password_b64 == "*" {
                return Some("501 5.7.0 Authentication cancelled".into());
            }
            match (decode(&user_b64), decode(&password_b64)) {
                (Some(u), Some(p)) => (u, p),
                _ => return Some("501 5.5.2 Bad base64".into()),
            }
        }
        _ => return Some("504 5.5.4 Unrecognized authentication type".into()),
    };
    if given_user == user.as_bytes() && given_password == password.as_bytes() {
        session.auth_user = Some(user.clone());
        Some("235 2.7.0 Authentication successful".into())
    } else {
        Some("535 5.7.8 Authentication credentials invalid".into())
    }
}

async fn challenge<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    config: &Config,
    text: &str,
) -> Option<String> {
    reply(io, config, text).await.ok()?;
    let line = read_line(io).await?;
    Some(
        String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string(),
    )
}

/// Splits `FROM:<addr> PARAM PARAM` into the address and the parameters.
fn path_and_params(arg: &str, keyword: &str) -> Option<(String, Vec<String>)> {
    let (head, rest) = arg.split_at_checked(keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = rest.trim_start();
    let (path, params) = if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        (inner[..end].to_string(), &inner[end + 1..])
    } else {
        let (p, r) = rest.split_once(' ').unwrap_or((rest, ""));
        (p.to_string(), r)
    };
    let params = params.split_whitespace().map(String::from).collect();
    Some((path, params))
}

fn mail(session: &mut Session, config: &Config, shared: &Shared, arg: &str) -> String {
    if session.helo.is_none() {
        return "503 5.5.1 EHLO first".into();
    }
    if session.txn.is_some() {
        return "503 5.5.1 Nested MAIL".into();
    }
    if config.auth.is_some() && session.auth_user.is_none() {
        return "530 5.7.0 Authentication required".into();
    }
    let Some((from, params)) = path_and_params(arg, "FROM:") else {
        return "501 5.5.4 Syntax: MAIL FROM:<address>".into();
    };
    for param in &params {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let name = name.to_ascii_uppercase();
        let ok = match name.as_str() {
            "BODY" if value.eq_ignore_ascii_case("8BITMIME") => config.eightbitmime,
            "BODY" => value.eq_ignore_ascii_case("7BIT"),
            "SMTPUTF8" => config.smtputf8,
            "SIZE" => match value.parse::<usize>() {
                Ok(n) if n > config.size => {
                    return "552 5.3.4 Message size exceeds fixed limit".into();
                }
                Ok(_) => true,
                Err(_) => false,
            },
            _ => false,
        };
        if !ok {
            return format!("555 5.5.4 Parameter {param} not recognized");
        }
    }
    shared.update(|s| {
        let answer = s
            .mail_replies
            .pop_front()
            .unwrap_or_else(|| config.mail_default.clone());
        if answer.starts_with('2') {
            session.txn = Some(Transaction {
                index: s.transactions,
                mail_from: from,
                mail_params: params,
                rcpt_to: Vec::new(),
            });
            s.transactions += 1;
        }
        answer
    })
}

fn rcpt(session: &mut Session, config: &Config, shared: &Shared, arg: &str) -> String {
    let Some(txn) = session.txn.as_mut() else {
        return "503 5.5.1 MAIL first".into();
    };
    let Some((address, _params)) = path_and_params(arg, "TO:") else {
        return "501 5.5.4 Syntax: RCPT TO:<address>".into();
    };
    let lower = address.to_ascii_lowercase();
    shared.update(|s| {
        let mut answer = None;
        if let Some((n, first)) = &config.rcpt_first_transactions
            && txn.index < *n
        {
            answer = Some(first.clone());
        }
        if answer.is_none() {
            for rule in s.rcpt_rules.iter_mut() {
                let matches = match &rule.matcher {
                    Match::Substring(p) => lower.contains(&p.to_ascii_lowercase()),
                    Match::Exact(a) => lower == a.to_ascii_lowercase(),
                };
                if !matches || rule.remaining == Some(0) {
                    continue;
                }
                if let Some(left) = rule.remaining.as_mut() {
                    *left -= 1;
                }
                answer = Some(rule.reply.clone());
                break;
            }
        }
        let answer = answer.unwrap_or_else(|| "250 2.1.5 Recipient OK".into());
        s.rcpts.push(RcptAttempt {
            connection: session.connection,
            transaction: txn.index,
            address: address.clone(),
            reply: answer.clone(),
        });
        if answer.starts_with('2') {
            txn.rcpt_to.push(address);
        }
        answer
    })
}

/// Reads data lines up to `.CRLF`, undoing dot-stuffing. `None` on EOF.
async fn read_data<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let line = read_line(io).await?;
        if line == b".\r\n" {
            return Some(data);
        }
        // RFC 5321 §4.5.2: drop the first dot of a line that starts with one.
        let line = line.strip_prefix(b".").unwrap_or(&line);
        data.extend_from_slice(line);
    }
}

/// Records the transaction and picks the reply; `None` when configured not to
/// answer.
fn end_of_data(
    session: &mut Session,
    config: &Config,
    shared: &Shared,
    data: Vec<u8>,
    fault: bool,
) -> Option<String> {
    let txn = session.txn.take()?;
    shared.update(|s| {
        let answer = match config.after_data {
            _ if !fault => Some(
                s.data_replies
                    .pop_front()
                    .unwrap_or_else(|| config.data_default.clone()),
            ),
            AfterData::Reply | AfterData::Stall | AfterData::Disconnect => None,
            AfterData::ResetDuringData => unreachable!("handled before the data is read"),
        };
        let received = Received {
            connection: session.connection,
            helo: session.helo.clone().unwrap_or_default(),
            mail_from: txn.mail_from,
            mail_params: txn.mail_params,
            rcpt_to: txn.rcpt_to,
            data,
            tls: session.tls,
            auth_user: session.auth_user.clone(),
            reply: answer.clone().unwrap_or_default(),
        };
        if answer.as_deref().is_some_and(|a| a.starts_with('2')) {
            s.messages.push(received.clone());
            s.per_connection[session.connection] += 1;
        }
        s.attempts.push(received);
        answer
    })
}
