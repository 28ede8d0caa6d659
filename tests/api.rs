//! Black-box tests of the HTTP API (SPEC §5.5, §6, §7 `outpost send`) through the
//! real server: ephemeral loopback ports, delivery to an `SmtpSink` through a
//! `[[routes]] domain = "*"`, requests with reqwest. Waits are for conditions with
//! deadlines, never fixed sleeps.

#[path = "fakes/mod.rs"]
mod fakes;

use fakes::sink::SmtpSink;
use outpost::config::Config;
use outpost::server::Running;
use outpost::store::UserRecord;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(20);
const ALICE: (&str, &str) = ("alice", "alice-password-1");
const BOB: (&str, &str) = ("bob", "bob-password-22");
const ROOT: (&str, &str) = ("root", "root-password-333");
const MAX_RECIPIENTS: usize = 5;
const MAX_MESSAGE_SIZE: usize = 100_000;

struct Server {
    running: Running,
    _dir: TempDir,
    http: reqwest::Client,
}

#[derive(Default)]
struct Options<'a> {
    sink: Option<&'a SmtpSink>,
    webhook: Option<String>,
    max_recipients: Option<usize>,
}

impl Server {
    async fn start(options: Options<'_>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let delivery = match options.sink {
            Some(sink) => format!(
                "[delivery]\nretry = [\"1s\"]\n[[routes]]\ndomain = \"*\"\nto = \"{}\"\ntls = \"none\"\n",
                sink.addr()
            ),
            None => "[delivery]\npaused = true\n".into(),
        };
        let webhook = options.webhook.map_or(String::new(), |url| {
            format!("[[webhooks]]\nurl = \"{url}\"\nsecret = \"hook-secret\"\n")
        });
        let text = format!(
            r#"
hostname = "relay.test"
data_dir = "{dir}"
[[listeners]]
addr = "127.0.0.1:0"
mode = "relay"
[auth]
max_failures = 3
[limits]
max_recipients = {max_recipients}
max_message_size = {MAX_MESSAGE_SIZE}
[http]
addr = "127.0.0.1:0"
public_url = "https://relay.test"
{delivery}
{webhook}
"#,
            dir = dir.path().display(),
            max_recipients = options.max_recipients.unwrap_or(MAX_RECIPIENTS),
        );
        let config = Config::from_toml(&text).expect("test configuration is valid");
        let running = outpost::server::start(Arc::new(config)).await.unwrap();
        for ((name, password), domain, admin) in [
            (ALICE, "alice.example", false),
            (BOB, "bob.example", false),
            (ROOT, "root.example", true),
        ] {
            running
                .store
                .add_user(UserRecord {
                    name: name.into(),
                    password_hash: outpost::auth::password::hash(password),
                    admin,
                    domains: vec![domain.into()],
                })
                .await
                .unwrap();
        }
        Server {
            running,
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        who: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some((u, p)) = who {
            req = req.basic_auth(u, Some(p));
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = tokio::time::timeout(DEADLINE, req.send())
            .await
            .expect("request within the deadline")
            .expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str, who: (&str, &str)) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(who), None).await
    }

    async fn post(&self, path: &str, who: (&str, &str), body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(who), Some(body))
            .await
    }

    /// Sends and returns the ids, asserting 202.
    async fn send(&self, who: (&str, &str), body: Value) -> Vec<String> {
        let (status, resp) = self.post("/v1/messages", who, body).await;
        assert_eq!(status, 202, "{resp}");
        resp["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every event `who` may see, paging `limit` at a time.
    async fn all_events(&self, who: (&str, &str), limit: usize) -> Vec<Value> {
        let (mut after, mut out) = (0, Vec::new());
        loop {
            let (status, page) = self
                .get(&format!("/v1/events?after={after}&limit={limit}"), who)
                .await;
            assert_eq!(status, 200, "{page}");
            let events = page["events"].as_array().unwrap().clone();
            assert!(events.len() <= limit);
            let next = page["next"].as_i64().unwrap();
            if events.is_empty() && next == after {
                return out;
            }
            after = next;
            out.extend(events);
        }
    }

    /// Polls the message's status until `done` holds for it.
    async fn wait_status(
        &self,
        who: (&str, &str),
        id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (status, view) = self.get(&format!("/v1/messages/{id}"), who).await;
            assert_eq!(status, 200, "{view}");
            if done(&view) {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "status never reached: {view}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The unfolded value of header field `name` (RFC 5322 §2.2.3).
fn header(text: &str, name: &str) -> Option<String> {
    let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", "\t");
    let prefix = format!("{name}: ");
    unfolded
        .split("\r\n")
        .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string))
}

#[tokio::test]
async fn send_personalized_then_follow_status_events_and_metrics() {
    let sink = SmtpSink::start_default().await;
    let server = Server::start(Options {
        sink: Some(&sink),
        ..Options::default()
    })
    .await;
    let ids = server
        .send(
            ALICE,
            json!({
                "from": "Alice <news@alice.example>",
                "to": [
                    {"email": "ann@one.example", "vars": {"name": "Ann"}},
                    {"email": "ben@two.example", "vars": {"name": "<Ben>"}},
                ],
                "subject": "Hello {{ name }}",
                "text": "Hi {{ name }},\nsee you.",
                "html": "<p>Hi {{ name }}</p>",
                "headers": {"X-Campaign": "spring"},
                "reply_to": "help@alice.example",
            }),
        )
        .await;
    assert_eq!(ids.len(), 2);
    let received = sink.wait_for_messages(2, DEADLINE).await;
    for (rcpt, name, html) in [
        ("ann@one.example", "Ann", "<p>Hi Ann</p>"),
        ("ben@two.example", "<Ben>", "<p>Hi &lt;Ben&gt;</p>"),
    ] {
        let m = received.iter().find(|m| m.rcpt_to == [rcpt]).unwrap();
        assert_eq!(m.mail_from, "news@alice.example");
        let parsed = mail_parser::MessageParser::new().parse(&m.data).unwrap();
        assert_eq!(parsed.subject(), Some(format!("Hello {name}").as_str()));
        assert!(
            parsed
                .body_text(0)
                .unwrap()
                .contains(&format!("Hi {name},"))
        );
        assert!(parsed.body_html(0).unwrap().contains(html), "{}", m.text());
        let text = m.text();
        assert!(text.contains("multipart/alternative"), "{text}");
        assert_eq!(header(&text, "X-Campaign").as_deref(), Some("spring"));
        assert!(header(&text, "Received").is_some_and(|r| r.starts_with("from api ([127.0.0.1])")));
        let unsubscribe = header(&text, "List-Unsubscribe").unwrap();
        assert!(
            unsubscribe.starts_with("<https://relay.test/u/"),
            "{unsubscribe}"
        );
        assert!(
            unsubscribe.contains(">, <mailto:unsubscribe+"),
            "{unsubscribe}"
        );
        assert_eq!(
            header(&text, "List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        assert!(header(&text, "Date").is_some());
        let id = ids
            .iter()
            .find(|id| parsed.message_id().unwrap().starts_with(id.as_str()))
            .expect("Message-ID carries the queue id");
        let view = server
            .wait_status(ALICE, id, |v| v["recipients"][0]["status"] == "delivered")
            .await;
        assert_eq!(view["recipients"][0]["address"], rcpt);
        assert_eq!(view["recipients"][0]["attempts"], 1);
        assert_eq!(view["recipients"][0]["enhanced_code"], "2.0.0");
        assert!(
            view["recipients"][0]["last_reply"]
                .as_str()
                .unwrap()
                .starts_with("250")
        );
    }

    // Raw messages go through as they are.
    let raw = "From: <raw@alice.example>\nTo: <carl@three.example>\nSubject: raw\n\nraw body\n";
    let (status, resp) = server
        .post(
            "/v1/messages/raw",
            ALICE,
            json!({"message": raw, "mail_from": "raw@alice.example", "rcpt_to": ["carl@three.example"]}),
        )
        .await;
    assert_eq!(status, 202, "{resp}");
    let received = sink.wait_for_messages(3, DEADLINE).await;
    let m = received
        .iter()
        .find(|m| m.rcpt_to == ["carl@three.example"])
        .unwrap();
    assert!(
        m.text().ends_with("Subject: raw\r\n\r\nraw body\r\n"),
        "{}",
        m.text()
    );
    let raw_id = resp["messages"][0]["id"].as_str().unwrap().to_string();
    server
        .wait_status(ALICE, &raw_id, |v| {
            v["recipients"][0]["status"] == "delivered"
        })
        .await;

    // The event log, paged one by one, holds every acceptance and delivery.
    let events = server.all_events(ALICE, 1).await;
    let kinds = |kind: &str| events.iter().filter(|e| e["event"] == kind).count();
    assert_eq!(
        (kinds("accepted"), kinds("delivered")),
        (3, 3),
        "{events:?}"
    );
    let ids_seen: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(
        ids_seen.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {ids_seen:?}"
    );
    let delivered = events.iter().find(|e| e["event"] == "delivered").unwrap();
    assert_eq!(delivered["enhanced_code"], "2.0.0");
    assert_eq!(delivered["user"], "alice");
    assert!(delivered["time"].as_str().unwrap().contains('T'));
    assert_eq!(server.all_events(ALICE, 1000).await.len(), events.len());

    let (status, stats) = server.get("/v1/stats?windows=1h", ALICE).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["windows"][0]["counts"]["delivered"], 3, "{stats}");
    assert_eq!(
        stats["windows"][0]["by_domain"]["one.example"]["delivered"],
        1
    );

    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "outpost_messages_accepted_total{source=\"http\"} 3",
        "outpost_deliveries_total{result=\"delivered\",domain=\"one.example\"} 1",
        "outpost_delivery_latency_seconds_count 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    let (status, health) = server
        .call(reqwest::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, doc) = server
        .call(reqwest::Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/messages"]["post"].is_object(), "{doc}");
}

#[tokio::test]
async fn one_click_unsubscribe_suppresses_and_forged_tokens_do_nothing() {
    let server = Server::start(Options::default()).await;
    let ids = server
        .send(
            ALICE,
            json!({"from": "news@alice.example", "to": ["Dan@four.example"], "subject": "s", "text": "t"}),
        )
        .await;
    let id: outpost::store::QueueId = ids[0].parse().unwrap();
    let content = server
        .running
        .store
        .message_content(&id)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(content).unwrap();
    let link = header(&text, "List-Unsubscribe").unwrap();
    let path = link
        .strip_prefix("<https://relay.test")
        .and_then(|l| l.split('>').next())
        .unwrap()
        .to_string();
    let token = path.strip_prefix("/u/").unwrap();

    // Altered payload (another address) and altered signature: 404, nothing stored.
    let (payload, tag) = token.split_once('.').unwrap();
    let mut bytes = payload.as_bytes().to_vec();
    bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
    let forged = [
        format!("/u/{}.{tag}", String::from_utf8(bytes).unwrap()),
        format!("/u/{payload}.{}", tag.chars().rev().collect::<String>()),
        "/u/nonsense".to_string(),
    ];
    for path in &forged {
        for method in [reqwest::Method::POST, reqwest::Method::GET] {
            let (status, _) = server.call(method, path, None, None).await;
            assert_eq!(status, 404, "{path}");
        }
    }
    let (_, list) = server.get("/v1/suppressions", ALICE).await;
    assert_eq!(list["suppressions"].as_array().unwrap().len(), 0, "{list}");

    // Opening the link (GET) shows a form and changes nothing.
    let (status, page) = server.call(reqwest::Method::GET, &path, None, None).await;
    assert_eq!(status, 200);
    assert!(
        page.as_str().unwrap().contains("<form method=\"post\">"),
        "{page}"
    );
    let (_, list) = server.get("/v1/suppressions", ALICE).await;
    assert_eq!(list["suppressions"].as_array().unwrap().len(), 0, "{list}");

    let (status, _) = server.call(reqwest::Method::POST, &path, None, None).await;
    assert_eq!(status, 200);
    let (_, list) = server.get("/v1/suppressions", ALICE).await;
    let list = list["suppressions"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["domain"], "alice.example");
    assert_eq!(list[0]["address"], "dan@four.example");
    assert_eq!(list[0]["reason"], "unsubscribe");
    let unsubscribed = |events: Vec<Value>| {
        events
            .iter()
            .filter(|e| e["event"] == "unsubscribed")
            .count()
    };
    assert_eq!(unsubscribed(server.all_events(ALICE, 100).await), 1);
    assert_eq!(unsubscribed(server.all_events(BOB, 100).await), 0);
    // A second click changes nothing.
    let (status, _) = server.call(reqwest::Method::POST, &path, None, None).await;
    assert_eq!(status, 200);
    assert_eq!(unsubscribed(server.all_events(ALICE, 100).await), 1);
}

/// What the test webhook receiver saw: (signature header, body).
type Hits = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[tokio::test]
async fn webhook_batches_are_signed_and_retried_after_a_500() {
    let hits: Hits = Arc::default();
    let notify = Arc::new(tokio::sync::Notify::new());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let (hits, notify) = (hits.clone(), notify.clone());
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                let signature = headers
                    .get("x-outpost-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let n = {
                    let mut hits = hits.lock().unwrap();
                    hits.push((signature, body.to_vec()));
                    hits.len()
                };
                notify.notify_waiters();
                if n == 1 {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let server = Server::start(Options {
        webhook: Some(url),
        ..Options::default()
    })
    .await;
    let ids = server
        .send(
            ALICE,
            json!({"from": "a@alice.example", "to": ["x@five.example"], "subject": "s", "text": "t"}),
        )
        .await;
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        let waiting = notify.notified();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        if hits.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::timeout_at(end, waiting)
            .await
            .expect("the webhook was retried within the deadline");
    }
    let hits = hits.lock().unwrap().clone();
    assert_eq!(
        hits[0].1, hits[1].1,
        "the failed batch is sent again, unchanged"
    );
    for (signature, body) in &hits {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").unwrap();
        mac.update(body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(signature, &expected);
    }
    let events: Vec<Value> = serde_json::from_slice(&hits[1].1).unwrap();
    assert_eq!(events[0]["event"], "accepted");
    assert_eq!(events[0]["message_id"], ids[0].as_str());
    assert_eq!(events[0]["recipient"], "x@five.example");
}

#[tokio::test]
async fn tenants_see_only_their_own() {
    let server = Server::start(Options::default()).await;
    let ids = server
        .send(
            ALICE,
            json!({"from": "a@alice.example", "to": ["y@six.example"], "subject": "s", "text": "t"}),
        )
        .await;
    let path = format!("/v1/messages/{}", ids[0]);
    assert_eq!(server.get(&path, ALICE).await.0, 200);
    assert_eq!(
        server.get(&path, ROOT).await.0,
        200,
        "admins see everything"
    );
    assert_eq!(server.get(&path, BOB).await.0, 404);
    assert_eq!(server.get(&path, ("alice", "wrong")).await.0, 401);
    assert_eq!(server.get(&path, ("nobody", "wrong")).await.0, 401);
    let (status, _) = server.call(reqwest::Method::GET, &path, None, None).await;
    assert_eq!(status, 401);
    assert_eq!(server.all_events(ALICE, 10).await.len(), 1);
    assert_eq!(server.all_events(ROOT, 10).await.len(), 1);
    assert!(server.all_events(BOB, 10).await.is_empty());

    let (status, err) = server
        .post(
            "/v1/messages",
            BOB,
            json!({"from": "b@alice.example", "to": ["y@six.example"], "subject": "s", "text": "t"}),
        )
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (403, Some("from")),
        "{err}"
    );
    let add = |domain: &str, address: &str| json!({"domain": domain, "address": address});
    let (status, _) = server
        .post(
            "/v1/suppressions",
            ALICE,
            add("alice.example", "q@x.example"),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = server
        .post(
            "/v1/suppressions",
            ALICE,
            add("alice.example", "q@x.example"),
        )
        .await;
    assert_eq!(status, 200, "already there");
    let (status, err) = server
        .post("/v1/suppressions", BOB, add("alice.example", "r@x.example"))
        .await;
    assert_eq!((status, err["field"].as_str()), (403, Some("domain")));
    let count = |v: Value| v["suppressions"].as_array().unwrap().len();
    assert_eq!(count(server.get("/v1/suppressions", BOB).await.1), 0);
    assert_eq!(count(server.get("/v1/suppressions", ROOT).await.1), 1);
    let remove = "/v1/suppressions?domain=alice.example&address=q@x.example";
    let (status, _) = server
        .call(reqwest::Method::DELETE, remove, Some(BOB), None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .call(reqwest::Method::DELETE, remove, Some(ALICE), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = server
        .call(reqwest::Method::DELETE, remove, Some(ALICE), None)
        .await;
    assert_eq!(status, 404);

    // Repeated failures from one address lock it out, even with the right password.
    for _ in 0..3 {
        assert_eq!(server.get(&path, ("alice", "guess")).await.0, 401);
    }
    let (status, err) = server.get(&path, ALICE).await;
    assert_eq!(status, 429, "{err}");
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named() {
    let server = Server::start(Options::default()).await;
    let ok =
        json!({"from": "a@alice.example", "to": ["y@six.example"], "subject": "s", "text": "t"});
    let with = |key: &str, value: Value| {
        let mut v = ok.clone();
        v[key] = value;
        v
    };
    let big = "x".repeat(MAX_MESSAGE_SIZE + 1);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "unknown field",
            with("bcc", json!(["z@x.example"])),
            400,
            "bcc",
        ),
        ("wrong type", with("to", json!(5)), 400, "to"),
        (
            "invalid address",
            with("to", json!(["not-an-address"])),
            422,
            "to[0]",
        ),
        (
            "invalid sender",
            with("from", json!("a@@alice.example")),
            422,
            "from",
        ),
        (
            "address object without email",
            with("to", json!([{"vars": {}}])),
            400,
            "to[0]",
        ),
        (
            "CRLF in a header value",
            with("headers", json!({"X-A": "a\r\nBcc: z@x.example"})),
            422,
            "headers.X-A",
        ),
        (
            "CRLF in a header name",
            with("headers", json!({"X-A\r\nBcc": "z"})),
            422,
            "headers.X-A\r\nBcc",
        ),
        (
            "managed header",
            with("headers", json!({"Content-Type": "text/html"})),
            422,
            "headers.Content-Type",
        ),
        (
            "CR in the subject",
            with("subject", json!("a\rb")),
            422,
            "subject",
        ),
        (
            "undefined template variable",
            {
                let mut v = with("to", json!([{"email": "y@six.example", "vars": {}}]));
                v["subject"] = json!("Hi {{ name }}");
                v
            },
            422,
            "to[0].vars",
        ),
        (
            "template syntax",
            {
                let mut v = with("to", json!([{"email": "y@six.example", "vars": {"a": 1}}]));
                v["text"] = json!("{% for %}");
                v
            },
            422,
            "text",
        ),
        (
            "too many recipients",
            with(
                "to",
                json!(
                    (0..=MAX_RECIPIENTS)
                        .map(|i| format!("r{i}@x.example"))
                        .collect::<Vec<_>>()
                ),
            ),
            422,
            "to",
        ),
        (
            "no body",
            {
                let mut v = ok.clone();
                v.as_object_mut().unwrap().remove("text");
                v
            },
            422,
            "text",
        ),
        ("too large", with("text", json!(big)), 413, ""),
    ];
    for (what, body, status, field) in cases {
        let (got, err) = server.post("/v1/messages", ALICE, body).await;
        assert_eq!(got, status, "{what}: {err}");
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {err}"
        );
        if !field.is_empty() {
            assert_eq!(err["field"].as_str(), Some(field), "{what}: {err}");
        }
    }
    let malformed = server
        .http
        .post(server.url("/v1/messages"))
        .basic_auth(ALICE.0, Some(ALICE.1))
        .header("content-type", "application/json")
        .body("{\"from\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let err: Value = malformed.json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("invalid JSON"),
        "{err}"
    );

    let raw = |message: &str, mail_from: &str, rcpt: Value| json!({"message": message, "mail_from": mail_from, "rcpt_to": rcpt});
    let good = "From: a@alice.example\r\nSubject: s\r\n\r\nbody\r\n";
    let raw_cases = vec![
        (
            "raw: bad recipient",
            raw(good, "a@alice.example", json!(["x"])),
            422,
            "rcpt_to[0]",
        ),
        (
            "raw: no recipient",
            raw(good, "a@alice.example", json!([])),
            422,
            "rcpt_to",
        ),
        (
            "raw: envelope sender not granted",
            raw(good, "a@bob.example", json!(["y@six.example"])),
            403,
            "mail_from",
        ),
        (
            "raw: From: not granted",
            raw(
                "From: a@bob.example\r\n\r\nb\r\n",
                "a@alice.example",
                json!(["y@six.example"]),
            ),
            403,
            "message",
        ),
        (
            "raw: bare CR",
            raw(
                "From: a@alice.example\r\n\r\na\rb\r\n",
                "a@alice.example",
                json!(["y@six.example"]),
            ),
            422,
            "message",
        ),
    ];
    for (what, body, status, field) in raw_cases {
        let (got, err) = server.post("/v1/messages/raw", ALICE, body).await;
        assert_eq!(
            (got, err["field"].as_str()),
            (status, Some(field)),
            "{what}: {err}"
        );
    }
    let (status, err) = server.get("/v1/events?limit=0", ALICE).await;
    assert_eq!((status, err["field"].as_str()), (422, Some("limit")));
    let (status, _) = server.get("/v1/events?after=x", ALICE).await;
    assert_eq!(status, 400);
    let (status, _) = server.get("/v1/messages/not-an-id", ALICE).await;
    assert_eq!(status, 404);
    server
        .running
        .store
        .queued_messages(10)
        .await
        .unwrap()
        .is_empty()
        .then_some(())
        .expect("nothing was accepted");
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("outpost_messages_accepted_total{source=\"http\"} 0")
            && metrics.contains("outpost_queue_recipients_pending 0\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn outpost_send_bulk_sends_a_1000_row_csv() {
    let server = Server::start(Options {
        max_recipients: Some(1000),
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("list.csv");
    let mut rows = String::from("email,first_name\n");
    for i in 0..1000 {
        rows.push_str(&format!("user{i}@list.example,Name{i}\n"));
    }
    rows.push_str("not an address,Broken\n");
    std::fs::write(&csv, rows).unwrap();
    let body = dir.path().join("body.txt");
    std::fs::write(&body, "Hello {{ first_name }}!\n").unwrap();
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.args(["send", "--from", "news@alice.example", "--to-csv"])
            .arg(&csv)
            .args(["--subject", "Hi {{ first_name }}", "--text"])
            .arg(&body)
            .args([
                "--api",
                &server.url(""),
                "--user",
                "alice",
                "--batch-size",
                "250",
            ])
            .args(extra)
            .env("OUTPOST_PASSWORD", ALICE.1)
            .env("NO_COLOR", "1");
        cmd
    };
    let dry = tokio::task::spawn_blocking({
        let mut cmd = run(&["--dry-run"]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let printed = String::from_utf8_lossy(&dry.stdout);
    assert!(printed.contains("Subject: Hi Name0\r\n"), "{printed}");
    assert!(printed.contains("Hello Name0!"), "{printed}");
    assert!(
        server
            .running
            .store
            .queued_messages(10)
            .await
            .unwrap()
            .is_empty()
    );

    let out = tokio::task::spawn_blocking({
        let mut cmd = run(&[]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a rejected row makes the exit status non-zero"
    );
    assert!(
        stdout.contains("accepted: 1000\n"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("rejected: 1\n"), "{stdout}");
    assert!(stdout.contains("row 1002 <not an address>:"), "{stdout}");
    let queued = server.running.store.queued_messages(2000).await.unwrap();
    assert_eq!(queued.len(), 1000);
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "outpost_queue_recipients_pending 1000"),
        "{metrics}"
    );
    let m = queued
        .iter()
        .find(|m| m.recipients[0].address == "user777@list.example")
        .unwrap();
    let content = server
        .running
        .store
        .message_content(&m.id)
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&content);
    assert!(text.contains("Subject: Hi Name777\r\n"), "{text}");
    assert!(text.contains("Hello Name777!"), "{text}");

    let wrong = tokio::task::spawn_blocking({
        let mut cmd = run(&[]);
        cmd.env("OUTPOST_PASSWORD", "wrong");
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
}

#[tokio::test]
async fn a_bounce_shows_in_status_and_events() {
    let sink = SmtpSink::builder()
        .rcpt_reply("nobody", "550 5.1.1 User unknown")
        .start()
        .await;
    let server = Server::start(Options {
        sink: Some(&sink),
        ..Options::default()
    })
    .await;
    let ids = server
        .send(
            ALICE,
            json!({"from": "a@alice.example", "to": ["nobody@seven.example"], "subject": "s", "text": "t"}),
        )
        .await;
    let view = server
        .wait_status(ALICE, &ids[0], |v| {
            v["recipients"][0]["status"] == "bounced"
        })
        .await;
    let rcpt = &view["recipients"][0];
    assert_eq!(rcpt["enhanced_code"], "5.1.1", "{view}");
    assert!(
        rcpt["last_reply"]
            .as_str()
            .unwrap()
            .contains("User unknown")
    );
    assert_eq!(rcpt["next_attempt"], Value::Null);
    let events = server.all_events(ALICE, 10).await;
    let bounced = events
        .iter()
        .find(|e| e["event"] == "bounced")
        .expect("a bounced event");
    assert_eq!(bounced["message_id"], ids[0].as_str());
    assert_eq!(bounced["enhanced_code"], "5.1.1");
}

/// Reads one SMTP reply (all its lines) and returns its last line.
async fn smtp_reply(reader: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> String {
    use tokio::io::AsyncBufReadExt;
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(DEADLINE, reader.read_line(&mut line))
            .await
            .expect("an SMTP reply within the deadline")
            .unwrap();
        assert!(n > 0, "connection closed");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.trim_end().to_string();
        }
    }
}

#[tokio::test]
async fn mail_to_the_unsubscribe_mailto_suppresses() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(Options::default()).await;
    let ids = server
        .send(
            BOB,
            json!({"from": "news@bob.example", "to": ["erin@eight.example"], "subject": "s", "text": "t"}),
        )
        .await;
    let id: outpost::store::QueueId = ids[0].parse().unwrap();
    let content = server
        .running
        .store
        .message_content(&id)
        .await
        .unwrap()
        .unwrap();
    let link = header(&String::from_utf8(content).unwrap(), "List-Unsubscribe").unwrap();
    let mailto = link
        .split("<mailto:")
        .nth(1)
        .and_then(|m| m.strip_suffix('>'))
        .unwrap()
        .to_string();
    assert!(
        mailto.starts_with("unsubscribe+") && mailto.ends_with("@relay.test"),
        "{mailto}"
    );

    let relay = server
        .running
        .addr(outpost::config::ListenerMode::Relay)
        .unwrap();
    let stream = tokio::net::TcpStream::connect(relay).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    assert!(smtp_reply(&mut read).await.starts_with("220"));
    // A forged token is accepted as local mail but unsubscribes nobody.
    let forged = mailto.replacen("unsubscribe+", "unsubscribe+x", 1);
    for (rcpt, n) in [(forged.as_str(), 0), (mailto.as_str(), 1)] {
        for (command, code) in [
            ("EHLO client.test".to_string(), "250"),
            ("MAIL FROM:<erin@eight.example>".to_string(), "250"),
            (format!("RCPT TO:<{rcpt}>"), "250"),
            ("DATA".to_string(), "354"),
            (
                "From: erin@eight.example\r\nSubject: unsubscribe\r\n\r\n.".to_string(),
                "250",
            ),
        ] {
            write
                .write_all(format!("{command}\r\n").as_bytes())
                .await
                .unwrap();
            let reply = smtp_reply(&mut read).await;
            assert!(reply.starts_with(code), "{command}: {reply}");
        }
        let (_, list) = server.get("/v1/suppressions", BOB).await;
        let list = list["suppressions"].as_array().unwrap().clone();
        assert_eq!(list.len(), n, "{list:?}");
    }
    let (_, list) = server.get("/v1/suppressions", BOB).await;
    assert_eq!(list["suppressions"][0]["address"], "erin@eight.example");
    assert_eq!(list["suppressions"][0]["domain"], "bob.example");
    let events = server.all_events(BOB, 100).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "unsubscribed")
            .count(),
        1
    );
}
