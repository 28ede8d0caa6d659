//! Property test: Outpost's DKIM signatures verify with an independent
//! implementation of RFC 6376, dkimpy (run as `tests/deliverability/dkimpy.py`).
//!
//! Thousands of generated messages (`generate_message`: From domains of 1 to 5
//! labels of 1 to 63 characters, selectors of every length, every mix of Cc,
//! Reply-To, List-Unsubscribe, folded and long fields, 8-bit and UTF-8 text, long
//! lines, multipart with attachments, bodies ending in every mix of spaces, tabs and
//! empty lines, empty bodies) are signed by `DkimSigners::sign`, the function
//! acceptance calls, with an RSA and an Ed25519 key each, and every signature must
//! pass. The seed is random unless `DKIM_TEST_SEED` is set, and printed on failure;
//! `DKIM_TEST_CASES` changes the number of messages.
//!
//! Needs python3 with dkimpy and PyNaCl (.ci/run installs them).

use outpost::dkim::DkimSigners;
use outpost::store::{DkimKeyRecord, SendingDomain, SqliteStore, Store};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

const DEFAULT_CASES: usize = 2000;
/// Sending domains the messages are spread over (each with its own selectors).
const DOMAINS: usize = 150;
/// Failures shown in full.
const SHOWN: usize = 5;

/// SplitMix64: small, seedable, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `range`.
    fn range(&mut self, range: std::ops::RangeInclusive<usize>) -> usize {
        range.start() + (self.next() % (range.end() - range.start() + 1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0..=items.len() - 1)]
    }
}

fn pick_bytes(rng: &mut Rng, items: &[&'static [u8]]) -> &'static [u8] {
    items[rng.range(0..=items.len() - 1)]
}

/// A DNS label of `len` characters: letters, digits, inner hyphens.
fn label(rng: &mut Rng, len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|i| {
            if i > 0 && i + 1 < len && rng.chance(10) {
                '-'
            } else {
                *rng.pick(CHARS) as char
            }
        })
        .collect()
}

/// 1 to 5 labels of 1 to 63 characters, at most 253 in all.
fn domain_name(rng: &mut Rng, index: usize) -> String {
    let labels = 1 + index % 5;
    let mut name: Vec<String> = (0..labels)
        .map(|i| {
            // Each length is met: the first label walks through 1..=63.
            let len = if i == 0 {
                1 + index % 63
            } else {
                rng.range(1..=63)
            };
            label(rng, len)
        })
        .collect();
    while name.join(".").len() > 253 {
        name.pop();
    }
    // Unique: two short random names may be equal.
    name[0] = format!("{}{index}", &name[0][..name[0].len().min(58)]);
    name.join(".")
}

/// Selectors of every length from 1 to 63, sometimes of two labels.
fn selector(rng: &mut Rng, index: usize) -> String {
    let len = 1 + index % 63;
    if len > 3 && rng.chance(20) {
        let first = rng.range(1..=len - 2);
        format!("{}.{}", label(rng, first), label(rng, len - first - 1))
    } else {
        label(rng, len)
    }
}

const LEADING_SPACE: [&[u8]; 3] = [b" ", b"\t", b"  \t"];
const TRAILING_SPACE: [&[u8]; 3] = [b" ", b"\t", b" \t  "];
/// What bodies end with, in any number and order.
const ENDINGS: [&[u8]; 6] = [b" ", b"\t", b"\r\n", b"\r\n", b" \r\n", b"\t\r\n"];

const WORDS: &[&str] = &[
    "hello",
    "the",
    "newsletter",
    "Grüße",
    "naïve",
    "日本語",
    "ünïcödé",
    "a",
    "x",
    "price:",
    "<b>",
    "=?utf-8?q?x?=",
    "reply",
    "Ωmega",
    "end.",
    "--",
    "100%",
];

/// Text in words separated by runs of spaces and tabs; UTF-8 or 8-bit.
fn text(rng: &mut Rng, words: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..words {
        if i > 0 {
            match rng.range(0..=8) {
                0 => out.extend_from_slice(b"  "),
                1 => out.push(b'\t'),
                2 => out.extend_from_slice(b" \t "),
                _ => out.push(b' '),
            }
        }
        if rng.chance(3) {
            // Latin-1 bytes, not UTF-8.
            out.extend_from_slice(&[0xe9, 0x74, 0xe9]);
        } else {
            out.extend_from_slice(rng.pick(WORDS).as_bytes());
        }
    }
    out
}

/// A header field `name: value`, folded at spaces when long or when asked.
fn field(rng: &mut Rng, name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = format!("{name}:").into_bytes();
    if !rng.chance(10) {
        out.push(b' ');
    }
    let fold = value.len() > 70 || rng.chance(15);
    let mut line = out.len();
    for (i, word) in value.split(|&b| b == b' ').enumerate() {
        if i > 0 {
            if fold && line > 40 && rng.chance(70) {
                out.extend_from_slice(if rng.chance(50) { b"\r\n\t" } else { b"\r\n " });
                line = 1;
            } else {
                out.push(b' ');
                line += 1;
            }
        }
        out.extend_from_slice(word);
        line += word.len();
    }
    if rng.chance(5) {
        out.extend_from_slice(b" \t");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn address(rng: &mut Rng, domain: &str) -> String {
    let len = rng.range(1..=20);
    let local = label(rng, len);
    match rng.range(0..=2) {
        0 => format!("{local}@{domain}"),
        1 => format!("\"Name {}\" <{local}@{domain}>", label(rng, 5)),
        _ => format!("=?utf-8?b?w5xsaQ==?= <{local}@{domain}>"),
    }
}

/// A body ending in some mix of spaces, tabs and empty lines (or not).
fn body(rng: &mut Rng) -> (Vec<u8>, Option<String>) {
    let mut content_type = None;
    let mut out = Vec::new();
    match rng.range(0..=8) {
        0 => {}
        1..=4 => {
            for _ in 0..rng.range(1..=12) {
                let words = rng.range(0..=25);
                if rng.chance(10) {
                    out.extend_from_slice(pick_bytes(rng, &LEADING_SPACE));
                }
                out.extend(text(rng, words));
                if rng.chance(15) {
                    out.extend_from_slice(pick_bytes(rng, &TRAILING_SPACE));
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        5 => {
            // Long lines, up to SMTP's 998.
            for _ in 0..rng.range(1..=3) {
                let len = rng.range(100..=998);
                let line: Vec<u8> = (0..len)
                    .map(|i| {
                        if i % 7 == 6 {
                            b' '
                        } else {
                            b'a' + (i % 26) as u8
                        }
                    })
                    .collect();
                out.extend(line);
                out.extend_from_slice(b"\r\n");
            }
        }
        _ => {
            let boundary = format!("b{}", label(rng, 20));
            content_type = Some(format!("multipart/mixed; boundary=\"{boundary}\""));
            out.extend_from_slice(
                format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
                    .as_bytes(),
            );
            let words = rng.range(1..=40);
            out.extend(text(rng, words));
            out.extend_from_slice(b"\r\n \r\n");
            for _ in 0..rng.range(1..=2) {
                out.extend_from_slice(
                    format!("--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"f.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n").as_bytes(),
                );
                for _ in 0..rng.range(1..=20) {
                    let line: String = (0..76)
                        .map(|_| {
                            *rng.pick(
                                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                            ) as char
                        })
                        .collect();
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        }
    }
    // The ending: any mix of spaces, tabs and line breaks; sometimes no final CRLF.
    for _ in 0..rng.range(0..=6) {
        out.extend_from_slice(pick_bytes(rng, &ENDINGS));
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") && rng.chance(50) {
        out.extend_from_slice(b"\r\n");
    }
    (out, content_type)
}

/// One message from `domain`, as acceptance would sign it (CRLF lines, no NUL).
fn generate_message(rng: &mut Rng, domain: &str) -> Vec<u8> {
    let (body, content_type) = body(rng);
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let from = address(rng, domain);
    fields.push(field(rng, "From", from.as_bytes()));
    let to: Vec<String> = (0..rng.range(1..=4))
        .map(|_| address(rng, "rcpt.example"))
        .collect();
    fields.push(field(rng, "To", to.join(", ").as_bytes()));
    let words = rng.range(0..=30);
    let subject = text(rng, words);
    fields.push(field(rng, "Subject", &subject));
    fields.push(field(rng, "Date", b"Wed, 02 Dec 2026 01:00:00 +0000"));
    let message_id = format!("<{}@{domain}>", label(rng, 30));
    fields.push(field(rng, "Message-ID", message_id.as_bytes()));
    fields.push(field(rng, "MIME-Version", b"1.0"));
    let content_type = content_type.unwrap_or_else(|| "text/plain; charset=utf-8".into());
    fields.push(field(rng, "Content-Type", content_type.as_bytes()));
    if rng.chance(50) {
        let cc: Vec<String> = (0..rng.range(1..=6))
            .map(|_| address(rng, "cc.example"))
            .collect();
        fields.push(field(rng, "Cc", cc.join(", ").as_bytes()));
    }
    if rng.chance(50) {
        let reply_to = address(rng, domain);
        fields.push(field(rng, "Reply-To", reply_to.as_bytes()));
    }
    if rng.chance(50) {
        let len = rng.range(20..=120);
        let token = label(rng, len);
        let value = format!("<https://{domain}/u/{token}>, <mailto:unsubscribe+{token}@{domain}>");
        fields.push(field(rng, "List-Unsubscribe", value.as_bytes()));
        fields.push(field(
            rng,
            "List-Unsubscribe-Post",
            b"List-Unsubscribe=One-Click",
        ));
    }
    for _ in 0..rng.range(0..=3) {
        let words = rng.range(1..=60);
        let len = rng.range(1..=30);
        let name = format!("X-{}", label(rng, len));
        let value = text(rng, words);
        fields.push(field(rng, &name, &value));
    }
    // Any order, behind the trace field acceptance adds (which is not signed).
    for i in (1..fields.len()).rev() {
        fields.swap(i, rng.range(0..=i));
    }
    let mut out = b"Received: from client.example ([192.0.2.1])\r\n\tby relay.test (Outpost) with ESMTPSA id X;\r\n\tWed, 2 Dec 2026 01:00:00 +0000\r\n".to_vec();
    out.extend(fields.concat());
    out.extend_from_slice(b"\r\n");
    out.extend(body);
    out
}

/// Per message, per signature: pass, or why not.
type Verdicts = Vec<Vec<(bool, String)>>;

/// dkimpy in a child process, verifying messages while more are signed: they are
/// written to its input as they come, its answers read by a thread.
struct Dkimpy {
    child: std::process::Child,
    input: std::process::ChildStdin,
    answers: std::thread::JoinHandle<Verdicts>,
    sent: usize,
}

impl Dkimpy {
    fn start() -> Dkimpy {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/deliverability/dkimpy.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (with dkimpy and PyNaCl: .ci/run installs them)");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        let answers = std::thread::spawn(move || {
            output
                .lines()
                .map(|line| {
                    let line = line.expect("dkimpy answers");
                    let value: serde_json::Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("dkimpy answered {line:?}: {e}"));
                    value["results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| (r[0].as_bool().unwrap(), r[1].as_str().unwrap().to_string()))
                        .collect()
                })
                .collect()
        });
        Dkimpy {
            child,
            input,
            answers,
            sent: 0,
        }
    }

    /// Verifies `message` with DNS answered from `records`.
    fn send(&mut self, message: &[u8], records: &serde_json::Value) {
        let head = serde_json::json!({"records": records, "size": message.len()});
        writeln!(self.input, "{head}").expect("dkimpy reads its input");
        self.input
            .write_all(message)
            .expect("dkimpy reads its input");
        self.sent += 1;
    }

    /// The verdicts on every message sent, in order.
    fn verdicts(mut self) -> Verdicts {
        drop(self.input);
        let verdicts = self.answers.join().expect("dkimpy's answers are read");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "dkimpy helper exited with {status}");
        assert_eq!(verdicts.len(), self.sent, "dkimpy answered every message");
        verdicts
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signature_verifies_with_dkimpy() {
    let seed = std::env::var("DKIM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand_seed);
    let cases = std::env::var("DKIM_TEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = SqliteStore::open(dir.path(), 64).unwrap();
    // One key pair of each kind, used under every domain and selector: generating
    // an RSA key per domain would take minutes, and keys are not what varies here.
    let keys = outpost::dkim::generate("keys.example", true, chrono::Utc::now()).unwrap();
    let mut domains = Vec::new();
    for index in 0..DOMAINS {
        let name = domain_name(&mut rng, index);
        let domain = SendingDomain {
            name: name.clone(),
            created_at: 0,
            keys: keys
                .keys
                .iter()
                .enumerate()
                .map(|(k, key)| DkimKeyRecord {
                    selector: selector(&mut rng, index * 2 + k),
                    ..key.clone()
                })
                .collect(),
        };
        let records: serde_json::Map<String, serde_json::Value> = domain
            .keys
            .iter()
            .map(|key| {
                (
                    outpost::dkim::records::dkim_name(&name, key),
                    outpost::dkim::records::dkim_value(key).into(),
                )
            })
            .collect();
        store.add_domain(domain).await.unwrap();
        domains.push((name, serde_json::Value::Object(records)));
    }
    let signers = DkimSigners::new(store.clone());

    let mut dkimpy = Dkimpy::start();
    let mut signed = Vec::with_capacity(cases);
    for _ in 0..cases {
        let (domain, records) = rng.pick(&domains).clone();
        let message = generate_message(&mut rng, &domain);
        let fields = signers.sign(&message).await.unwrap().unwrap_or_else(|| {
            panic!(
                "seed {seed}: not signed:\n{}",
                String::from_utf8_lossy(&message)
            )
        });
        let mut delivered = [fields.as_bytes(), &message].concat();
        // As a receiver gets it: SMTP ends the data with a line break
        // (`smtp::dot_stuff` adds one when the content has none).
        if !delivered.ends_with(b"\r\n") {
            delivered.extend_from_slice(b"\r\n");
        }
        dkimpy.send(&delivered, &records);
        signed.push((delivered, records));
    }
    // A changed body must fail, or the verifier proves nothing.
    let (mut tampered, records) = signed[0].clone();
    tampered.extend_from_slice(b"appended\r\n");
    dkimpy.send(&tampered, &records);
    let results = dkimpy.verdicts();
    let tampered = results.last().unwrap();
    assert!(
        tampered.len() == 2 && tampered.iter().all(|(ok, _)| !ok),
        "dkimpy passed a tampered message: {tampered:?}"
    );
    let failures: Vec<(usize, &Vec<(bool, String)>)> = results[..cases]
        .iter()
        .enumerate()
        .filter(|(_, r)| r.len() != 2 || r.iter().any(|(ok, _)| !ok))
        .collect();
    for (i, result) in failures.iter().take(SHOWN) {
        eprintln!(
            "--- case {i} (seed {seed}): {result:?}\n{}",
            String::from_utf8_lossy(&signed[*i].0).escape_debug()
        );
    }
    assert!(
        failures.is_empty(),
        "seed {seed} (DKIM_TEST_SEED={seed} to repeat): {} of {cases} messages have a signature dkimpy does not verify",
        failures.len()
    );
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}
