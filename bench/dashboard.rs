//! How fast the dashboard answers with many messages stored.
//!
//!     cargo run --release --example dashboard_bench -- [MESSAGES] [DATA_DIR]
//!
//! Generates MESSAGES (default 1,000,000) messages through the store (enqueue and
//! one recorded attempt each, as delivery would: 90% delivered, 5% bounced, 5%
//! deferred), spread over the last 7 days and 10 sending domains, 1-2 recipients
//! each. Then it starts the server on that data directory (delivery paused), signs
//! in over HTTP as an admin and as a user of one domain, and times whole page
//! requests (server-side rendering included): the overview for 1 h / 24 h / 7 d,
//! a search by recipient, by subject words, by a sending domain (100,000
//! matches), the first page of messages, the bounced ones, the queued ones (there
//! are none) and a message page. Prints the median and p95 of 20 requests each,
//! after a warm-up. With DATA_DIR given, a run stopped during generation resumes
//! there, and one that finished measures again without generating.

use outpost::config::Config;
use outpost::smtp::Mailbox;
use outpost::store::{
    AccountStore, AttemptPath, NewMessage, NewRecipient, QueueId, QueueStore, RecipientStatus,
    RecipientUpdate, SqliteStore, UserRecord,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DOMAINS: usize = 10;
const PROVIDERS: [&str; 5] = [
    "gmail-smtp-in.l.google.com",
    "example-com.mail.protection.outlook.com",
    "mx1.mail.yahoo.com",
    "mx.gmx.net",
    "mx00.ionos.de",
];
const CONCURRENCY: usize = 2048;
const REPS: usize = 20;

fn id_at(ms: i64, n: u64) -> QueueId {
    format!("{:012X}{:08X}", ms, n as u32)
        .parse()
        .expect("well-formed id")
}

/// Messages already stored in the database of `dir`.
fn stored(dir: &std::path::Path) -> u64 {
    rusqlite::Connection::open(dir.join("outpost.db"))
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get::<_, i64>(0)))
        .map_or(0, |n| n as u64)
}

/// Stores messages `from..total` (a stopped run resumes where it stopped).
async fn generate(store: Arc<SqliteStore>, from: u64, total: u64) {
    let now = chrono::Utc::now().timestamp_millis();
    let week = 7 * 24 * 3_600_000i64;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in from..total {
        if tasks.len() >= CONCURRENCY {
            tasks.join_next().await.expect("a task").expect("task ran");
        }
        let store = store.clone();
        tasks.spawn(async move {
            let at = now - week + (week * n as i64) / total as i64;
            let domain = format!("d{}.example", n as usize % DOMAINS);
            let rcpts: Vec<String> = (0..1 + n % 2)
                .map(|r| format!("user{}@dest{}.example", n * 2 + r, n % 1000))
                .collect();
            let content = format!(
                "From: news@{domain}\r\nTo: {}\r\nSubject: Weekly digest {n}\r\n\r\nhello\r\n",
                rcpts[0]
            );
            let id = id_at(at, n);
            store
                .enqueue(NewMessage {
                    id: id.clone(),
                    mail_from: Mailbox::parse(&format!("news@{domain}")),
                    recipients: rcpts
                        .iter()
                        .map(|a| NewRecipient {
                            address: Mailbox::parse(a).expect("an address"),
                            local: false,
                        })
                        .collect(),
                    auth_user: Some("bench".into()),
                    smtputf8: false,
                    content: Arc::new(content.into_bytes()),
                    received_at: at,
                    first_attempt_at: at,
                    claimed_by: None,
                })
                .await
                .expect("enqueue");
            let (status, reply, class) = match n % 20 {
                0 => (
                    RecipientStatus::Bounced,
                    "550 5.1.1 User unknown",
                    Some("bad-mailbox".to_string()),
                ),
                1 => (RecipientStatus::Deferred, "451 4.2.0 Try later", None),
                _ => (RecipientStatus::Delivered, "250 2.0.0 OK", None),
            };
            let updates = (0..rcpts.len())
                .map(|idx| RecipientUpdate {
                    idx,
                    status,
                    next_attempt: if status == RecipientStatus::Deferred {
                        now + 3_600_000
                    } else {
                        0
                    },
                    reply: reply.into(),
                    class: class.clone(),
                    attempted: true,
                    path: AttemptPath {
                        mx_host: Some(PROVIDERS[n as usize % PROVIDERS.len()].into()),
                        tls: Some("TLS 1.3".into()),
                    },
                })
                .collect();
            store
                .record_attempt(&id, updates, now)
                .await
                .expect("record");
        });
        if n > 0 && n % 100_000 == 0 {
            eprintln!(
                "{n} messages stored ({:.0}/s)",
                n as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task ran");
    }
    eprintln!(
        "{} messages generated in {:.1} s",
        total - from,
        started.elapsed().as_secs_f64()
    );
}

/// Signs in; the session cookie.
async fn sign_in(http: &reqwest::Client, base: &str, user: &str, password: &str) -> String {
    let form = http
        .get(format!("{base}/login"))
        .send()
        .await
        .expect("login page");
    let login_cookie = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .find_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
        .expect("login cookie");
    let token = login_cookie
        .split_once('=')
        .expect("cookie pair")
        .1
        .to_string();
    let resp = http
        .post(format!("{base}/login"))
        .header("cookie", &login_cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("username", user),
            ("password", password),
            ("next", "/"),
        ])
        .send()
        .await
        .expect("sign in");
    assert_eq!(resp.status(), 303, "sign-in failed");
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("outpost_session="))
        .and_then(|c| c.split(';').next())
        .expect("session cookie")
        .to_string()
}

async fn time_page(http: &reqwest::Client, base: &str, cookie: &str, path: &str, expect: &str) {
    let mut times = Vec::new();
    for i in 0..REPS + 2 {
        let start = Instant::now();
        let resp = http
            .get(format!("{base}{path}"))
            .header("cookie", cookie)
            .send()
            .await
            .expect("page");
        let status = resp.status();
        let body = resp.text().await.expect("body");
        let took = start.elapsed();
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(expect), "{path}: {expect:?} not on the page");
        if i >= 2 {
            times.push(took);
        }
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{path:<48} median {:>7.1} ms   p95 {:>7.1} ms",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 95 / 100])
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let total: u64 = args
        .get(1)
        .map_or(1_000_000, |a| a.parse().expect("MESSAGES"));
    let keep = args.get(2).map(std::path::PathBuf::from);
    let temp = tempfile_dir();
    let dir = keep.clone().unwrap_or_else(|| temp.clone());
    let fresh = !dir.join("outpost.db").exists();
    let already = stored(&dir);
    {
        let store = SqliteStore::open(&dir, 256).expect("store");
        if fresh {
            for (name, admin, domains) in [
                ("root", true, vec!["root.example".to_string()]),
                ("bench", false, vec!["d3.example".to_string()]),
            ] {
                store
                    .add_user(UserRecord {
                        name: name.into(),
                        password_hash: outpost::auth::password::hash("bench-password"),
                        admin,
                        domains,
                    })
                    .await
                    .expect("user");
            }
        }
        if already < total {
            // Writes were in flight when a run stopped: skip past them.
            let from = if already == 0 {
                0
            } else {
                already + 2 * CONCURRENCY as u64
            };
            generate(store.clone(), from, total).await;
        }
    }
    let total = stored(&dir);
    let text = format!(
        "hostname = \"bench.test\"\ndata_dir = \"{}\"\n[http]\naddr = \"127.0.0.1:0\"\n[delivery]\npaused = true\n",
        dir.display()
    );
    let config = Config::from_toml(&text).expect("config");
    let running = outpost::server::start(Arc::new(config))
        .await
        .expect("server");
    let base = format!("http://{}", running.http_addr);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let some_id = running
        .store
        .search_messages(outpost::store::MessageQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("search")
        .pop()
        .expect("a message")
        .id;
    for (who, sees) in [("root", "all domains"), ("bench", "d3.example only")] {
        println!("-- signed in as {who} ({sees}), {total} messages stored");
        let cookie = sign_in(&http, &base, who, "bench-password").await;
        time_page(&http, &base, &cookie, "/?period=1h", "Overview").await;
        time_page(&http, &base, &cookie, "/?period=24h", "Overview").await;
        time_page(&http, &base, &cookie, "/?period=7d", "Overview").await;
        let rcpt = "user123406@dest703.example"; // message 61703 (d3.example)
        time_page(&http, &base, &cookie, &format!("/messages?q={rcpt}"), rcpt).await;
        time_page(
            &http,
            &base,
            &cookie,
            "/messages?q=digest+61703",
            "Weekly digest 61703",
        )
        .await;
        // A word 100,000 messages hold (the sending domain of 10%).
        time_page(
            &http,
            &base,
            &cookie,
            "/messages?q=d3.example",
            "Weekly digest",
        )
        .await;
        time_page(&http, &base, &cookie, "/messages", "Messages").await;
        // Bounced: 5% of the messages (all of d0.example, none of the user's);
        // queued: none, the filter's worst case without an index.
        for status in ["bounced", "queued"] {
            let path = format!("/messages?status={status}");
            time_page(&http, &base, &cookie, &path, "Messages").await;
        }
        if who == "root" {
            time_page(
                &http,
                &base,
                &cookie,
                &format!("/messages/{some_id}"),
                "Weekly digest",
            )
            .await;
        }
    }
    drop(running);
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("outpost-dashboard-bench-{}", std::process::id()))
}
