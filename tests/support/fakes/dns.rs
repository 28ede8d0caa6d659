//! `FakeDns`: a real, authoritative-looking DNS server on `127.0.0.1` that
//! serves records given as zone text. UDP and TCP listen on the same ephemeral
//! port, so a resolver configured with UDP (and TCP fallback on truncation)
//! works unchanged.
//!
//! # Zone text
//!
//! One record per line; blank lines and lines whose first non-blank character
//! is `;` or `#` are ignored (a `;` after the data starts a comment too,
//! except inside a quoted TXT string):
//!
//! ```text
//! <name> [<ttl>] <TYPE> <data...>
//! ```
//!
//! * `name`: a domain name, case-insensitive; the trailing dot is optional
//!   (every name is absolute).
//! * `ttl`: optional, seconds; default 0 so that resolvers do not cache and a
//!   `set_zone` is seen by the very next lookup.
//! * `TYPE` and data:
//!   - `A 127.0.0.1`, `AAAA ::1`
//!   - `MX <preference> <exchange>` — `MX 0 .` is a null MX (RFC 7505)
//!   - `TXT "one string" "another"` — each quoted string (escapes `\"` and
//!     `\\`) is one value; a value longer than 255 bytes is split into
//!     255-byte character-strings, as publishers do for DKIM keys. Unquoted
//!     data is taken as one value (the rest of the line, trimmed).
//!   - `CNAME <target>`, `PTR <target>`, `NS <target>`
//!   - `SERVFAIL` (pseudo-type, no data): every query for that name gets
//!     SERVFAIL.
//!   - `TIMEOUT` (pseudo-type, no data): queries for that name are counted
//!     but never answered.
//!
//! Answers: a name with no line at all gets NXDOMAIN; a present name without
//! records of the asked type gets NOERROR with an empty answer (NODATA). Both
//! negative answers carry an SOA (TTL 0, minimum 0) in the authority section
//! so resolvers see a proper negative answer and do not cache it. A CNAME is
//! followed inside the zone (up to 8 hops). Several lines with the same name
//! and type form one RRset, answered in file order. Wildcards are not
//! supported.
//!
//! Over UDP a response larger than the client's EDNS payload size (512 bytes
//! without EDNS) is truncated (TC bit) so the client retries over TCP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// A DNS server for tests. Stops (both sockets, all connections) when dropped.
pub struct FakeDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    zone: RwLock<Zone>,
    queries: AtomicUsize,
    log: Mutex<Vec<String>>,
}

impl FakeDns {
    /// Parses `zone` (see the module docs; panics on a malformed line, naming
    /// it) and starts serving on `127.0.0.1:<ephemeral>` over UDP and TCP.
    pub async fn start(zone: &str) -> FakeDns {
        let zone = Zone::parse(zone).unwrap_or_else(|e| panic!("FakeDns zone: {e}"));
        let shared = Arc::new(Shared {
            zone: RwLock::new(zone),
            queries: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        });
        // Bind UDP first on an ephemeral port, then TCP on the same port; in
        // the rare case that port is taken for TCP, try again.
        let mut last_err = None;
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
            let addr = udp.local_addr().expect("UDP local addr");
            match TcpListener::bind(addr).await {
                Ok(tcp) => {
                    let tasks = vec![
                        tokio::spawn(serve_udp(udp, shared.clone())),
                        tokio::spawn(serve_tcp(tcp, shared.clone())),
                    ];
                    return FakeDns {
                        addr,
                        shared,
                        tasks,
                    };
                }
                Err(e) => last_err = Some(e),
            }
        }
        panic!("FakeDns: no port free for both UDP and TCP: {last_err:?}");
    }

    /// The address (UDP and TCP) to point a resolver at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces all records at once; the next query sees the new zone.
    /// Panics on a malformed line.
    pub fn set_zone(&self, zone: &str) {
        let zone = Zone::parse(zone).unwrap_or_else(|e| panic!("FakeDns zone: {e}"));
        *self.shared.zone.write().expect("zone lock") = zone;
    }

    /// How many DNS messages were received (UDP and TCP, answered or not).
    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }

    /// Every question received, in order, as `"<TYPE> <name>"` with the name
    /// lowercased and without its trailing dot, e.g. `"MX example.test"`.
    pub fn query_log(&self) -> Vec<String> {
        self.shared.log.lock().expect("log lock").clone()
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some(response) = shared.respond(&buf[..len], Transport::Udp) else {
            continue;
        };
        // A lost reply is what UDP does; the client retries.
        let _ = socket.send_to(&response, peer).await;
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    // Connection tasks live in this set, so aborting this task ends them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve_tcp_connection(stream, shared.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// RFC 1035 §4.2.2: each message is preceded by a two-byte length.
async fn serve_tcp_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        if stream.read_exact(&mut msg).await.is_err() {
            return;
        }
        let Some(response) = shared.respond(&msg, Transport::Tcp) else {
            continue;
        };
        let Ok(rlen) = u16::try_from(response.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(response.len() + 2);
        out.extend_from_slice(&rlen.to_be_bytes());
        out.extend_from_slice(&response);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Udp,
    Tcp,
}

impl Shared {
    /// Builds the wire response to one request, or `None` to stay silent.
    fn respond(&self, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        let request = Message::from_vec(request).ok()?;
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            response.set_edns(edns);
        }
        let Some(query) = request.queries.first().cloned() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response.to_vec().ok();
        };
        self.log.lock().expect("log lock").push(format!(
            "{} {}",
            query.query_type(),
            key(query.name())
        ));
        response.add_query(query.clone());
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return response.to_vec().ok();
        }

        let outcome = self.zone.read().expect("zone lock").answer(&query);
        match outcome {
            Answer::Silent => return None,
            Answer::ServFail => response.metadata.response_code = ResponseCode::ServFail,
            Answer::Records { code, answers } => {
                response.metadata.response_code = code;
                let negative = answers.iter().all(|r| r.record_type() == RecordType::CNAME);
                response.add_answers(answers);
                if negative {
                    response.add_authority(soa_for(query.name()));
                }
            }
        }

        let bytes = response.to_vec().ok()?;
        if transport == Transport::Udp {
            // RFC 6891 §6.2.5: never below 512.
            let limit = request
                .edns
                .as_ref()
                .map_or(512, |e| usize::from(e.max_payload().max(512)));
            if bytes.len() > limit {
                return response.truncate().to_vec().ok();
            }
        }
        Some(bytes)
    }
}

/// An SOA for negative answers, owned by the top-level label of the name.
fn soa_for(name: &Name) -> Record {
    let tld = key(name)
        .rsplit('.')
        .next()
        .filter(|s| !s.is_empty())
        .map(|s| format!("{s}."))
        .unwrap_or_else(|| ".".to_string());
    let owner = Name::from_ascii(&tld).unwrap_or_else(|_| Name::root());
    let soa = SOA::new(
        Name::from_ascii("ns.fakedns.invalid.").expect("static name"),
        Name::from_ascii("hostmaster.fakedns.invalid.").expect("static name"),
        1,
        3600,
        600,
        86400,
        0,
    );
    Record::from_rdata(owner, 0, RData::SOA(soa))
}

/// Lowercase, no trailing dot: the form names are stored and logged in.
fn key(name: &Name) -> String {
    let s = name.to_ascii().to_ascii_lowercase();
    s.trim_end_matches('.').to_string()
}

fn key_str(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

enum Entry {
    Record { ttl: u32, data: RData },
    ServFail,
    Timeout,
}

/// Parsed zone text: entries per lowercased name, in file order.
#[derive(Default)]
struct Zone {
    names: HashMap<String, Vec<Entry>>,
}

enum Answer {
    Silent,
    ServFail,
    Records {
        code: ResponseCode,
        answers: Vec<Record>,
    },
}

impl Zone {
    fn parse(text: &str) -> Result<Zone, String> {
        let mut zone = Zone::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let (name, entry) =
                parse_line(line).map_err(|e| format!("line {}: {e}: {raw:?}", i + 1))?;
            zone.names.entry(name).or_default().push(entry);
        }
        Ok(zone)
    }

    fn answer(&self, query: &Query) -> Answer {
        let qtype = query.query_type();
        let mut name = query.name().clone();
        let mut answers = Vec::new();
        for _hop in 0..8 {
            let Some(entries) = self.names.get(&key(&name)) else {
                return Answer::Records {
                    code: ResponseCode::NXDomain,
                    answers,
                };
            };
            if entries.iter().any(|e| matches!(e, Entry::Timeout)) {
                return Answer::Silent;
            }
            if entries.iter().any(|e| matches!(e, Entry::ServFail)) {
                return Answer::ServFail;
            }
            let records = entries.iter().filter_map(|e| match e {
                Entry::Record { ttl, data } => Some((*ttl, data)),
                _ => None,
            });
            // RFC 1034 §3.6.2: a CNAME owner has no other data; follow it
            // unless the CNAME itself is asked for.
            let cname = records.clone().find_map(|(ttl, d)| match d {
                RData::CNAME(c) => Some((ttl, c.0.clone())),
                _ => None,
            });
            if let Some((ttl, target)) = cname
                && qtype != RecordType::CNAME
                && qtype != RecordType::ANY
            {
                answers.push(Record::from_rdata(
                    name.clone(),
                    ttl,
                    RData::CNAME(CNAME(target.clone())),
                ));
                name = target;
                continue;
            }
            for (ttl, data) in records {
                if qtype == RecordType::ANY || data.record_type() == qtype {
                    answers.push(Record::from_rdata(name.clone(), ttl, data.clone()));
                }
            }
            return Answer::Records {
                code: ResponseCode::NoError,
                answers,
            };
        }
        Answer::ServFail
    }
}

fn parse_line(line: &str) -> Result<(String, Entry), String> {
    let (name, rest) = split_word(line);
    if name.is_empty() {
        return Err("missing name".into());
    }
    let owner = key_str(name);
    let (mut word, mut rest) = split_word(rest);
    let mut ttl = 0u32;
    if let Ok(t) = word.parse::<u32>() {
        ttl = t;
        (word, rest) = split_word(rest);
    }
    let rtype = word.to_ascii_uppercase();
    if rtype != "TXT" {
        // Outside TXT strings, `;` starts a comment.
        rest = rest.split(';').next().unwrap_or("").trim();
    }
    let data = match rtype.as_str() {
        "SERVFAIL" | "TIMEOUT" if !rest.is_empty() => {
            return Err(format!("{rtype} takes no data"));
        }
        "SERVFAIL" => return Ok((owner, Entry::ServFail)),
        "TIMEOUT" => return Ok((owner, Entry::Timeout)),
        "A" => RData::A(A(rest
            .parse()
            .map_err(|e| format!("bad IPv4 address: {e}"))?)),
        "AAAA" => RData::AAAA(AAAA(
            rest.parse().map_err(|e| format!("bad IPv6 address: {e}"))?,
        )),
        "MX" => {
            let (pref, exchange) = split_word(rest);
            let pref: u16 = pref
                .parse()
                .map_err(|e| format!("bad MX preference: {e}"))?;
            RData::MX(MX::new(pref, parse_name(exchange)?))
        }
        "CNAME" => RData::CNAME(CNAME(parse_name(rest)?)),
        "PTR" => RData::PTR(PTR(parse_name(rest)?)),
        "NS" => RData::NS(NS(parse_name(rest)?)),
        "TXT" => RData::TXT(parse_txt(rest)?),
        other => return Err(format!("unsupported type {other:?}")),
    };
    Ok((owner, Entry::Record { ttl, data }))
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

fn parse_name(s: &str) -> Result<Name, String> {
    let s = s.trim();
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(format!("expected one domain name, got {s:?}"));
    }
    if s == "." {
        return Ok(Name::root());
    }
    let fqdn = if s.ends_with('.') {
        s.to_string()
    } else {
        format!("{s}.")
    };
    Name::from_ascii(&fqdn).map_err(|e| format!("bad name {s:?}: {e}"))
}

/// TXT data: quoted strings (each one value), or the bare rest of the line.
/// Each value is cut into 255-byte character-strings (RFC 1035 §3.3.14).
fn parse_txt(rest: &str) -> Result<TXT, String> {
    let mut values: Vec<Vec<u8>> = Vec::new();
    let rest = rest.trim();
    if !rest.starts_with('"') {
        let bare = rest.split(';').next().unwrap_or("").trim();
        values.push(bare.as_bytes().to_vec());
    } else {
        let mut chars = rest.chars();
        loop {
            match chars.by_ref().find(|c| !c.is_whitespace()) {
                None | Some(';') => break,
                Some('"') => {}
                Some(c) => return Err(format!("unexpected {c:?} outside a TXT string")),
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated TXT string".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err("dangling backslash".into()),
                    },
                    Some(c) => value.push(c),
                }
            }
            values.push(value.into_bytes());
        }
    }
    let mut chunks: Vec<&[u8]> = Vec::new();
    for value in &values {
        if value.is_empty() {
            chunks.push(&[]);
        }
        chunks.extend(value.chunks(255));
    }
    Ok(TXT::from_bytes(chunks))
}
