//! HTTP-level tests of the web dashboard through the real server: every page's
//! status and key content, sign-in and its throttle, CSRF, tenants, and the
//! actions (suppress, add a domain, retry from the queue, add a user, grant a
//! domain, make and revoke an API key). Requests
//! are made with reqwest, cookies kept by hand, redirects not followed, so each
//! step's answer is what is asserted. Browser tests of the same pages are in
//! tests/e2e/web_dashboard.py.

#[path = "../support/mod.rs"]
mod support;

mod actions;
mod pages;
mod sign_in;
mod users;

use outpost::server::Running;
use outpost::store::UserRecord;
use reqwest::header::{LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use support::fakes::sink::SmtpSink;
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(20);
const ALICE: (&str, &str) = ("alice", "alice-password-1");
const BOB: (&str, &str) = ("bob", "bob-password-22");
const ROOT: (&str, &str) = ("root", "root-password-333");
const MAX_FAILURES: usize = 3;

struct Server {
    running: Running,
    _dir: TempDir,
}

impl Server {
    /// A server delivering everything to `sink`, retrying after `retry`.
    async fn start(sink: &SmtpSink, retry: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
hostname = "relay.test"
data_dir = "{dir}"
[[listeners]]
addr = "127.0.0.1:0"
mode = "relay"
[auth]
max_failures = {MAX_FAILURES}
[http]
addr = "127.0.0.1:0"
public_url = "https://relay.test"
[delivery]
retry = ["{retry}"]
[[routes]]
domain = "*"
to = "{sink}"
tls = "none"
"#,
            dir = dir.path().display(),
            sink = sink.addr(),
        );
        let running = support::common::start_config(&text).await;
        for ((name, password), domains, admin) in [
            (ALICE, vec!["alice.example", "news.alice.example"], false),
            (BOB, vec!["bob.example"], false),
            (ROOT, vec!["root.example"], true),
        ] {
            running
                .store
                .add_user(UserRecord {
                    name: name.into(),
                    password_hash: outpost::auth::password::hash(password),
                    admin,
                    domains: domains.into_iter().map(String::from).collect(),
                })
                .await
                .unwrap();
        }
        Server { running, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    /// Sends through the API as `who`; the queue ids.
    async fn send(&self, who: (&str, &str), body: Value) -> Vec<String> {
        let resp = reqwest::Client::new()
            .post(self.url("/v1/messages"))
            .basic_auth(who.0, Some(who.1))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let body: Value = resp.json().await.unwrap();
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until every recipient of message `id` has a state in `states`.
    async fn wait_states(&self, who: (&str, &str), id: &str, states: &[&str]) -> Value {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            let view: Value = reqwest::Client::new()
                .get(self.url(&format!("/v1/messages/{id}")))
                .basic_auth(who.0, Some(who.1))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let done = view["recipients"].as_array().is_some_and(|rs| {
                rs.iter()
                    .all(|r| states.contains(&r["status"].as_str().unwrap_or("")))
            });
            if done {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "never reached {states:?}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A page as fetched: status, where a redirect goes, body.
struct Page {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Page {
    #[track_caller]
    fn assert_contains(&self, text: &str) -> &Self {
        assert!(
            self.body.contains(text),
            "{text:?} not on the page (status {}):\n{}",
            self.status,
            self.body
        );
        self
    }

    /// The value of the first `name="csrf"` hidden field.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find(r#"name="csrf" value=""#)
            .expect("a CSRF field");
        let rest = &self.body[at + r#"name="csrf" value=""#.len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }

    /// The number shown for a `data-stat` box of the overview.
    fn stat(&self, key: &str) -> i64 {
        let marker = format!(r#"data-stat="{key}"><div class="label">"#);
        let at = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no stat {key}"));
        let rest = &self.body[at..];
        let value = &rest[rest.find(r#"<div class="value">"#).unwrap() + 19..];
        value[..value.find('<').unwrap()].parse().unwrap()
    }
}

/// A browser without JavaScript: keeps cookies, does not follow redirects.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookies: HashMap<String, String>,
    /// Every `Set-Cookie` header seen, whole, for attribute checks.
    set_cookies: Vec<String>,
}

impl Browser {
    fn new(server: &Server) -> Browser {
        Browser {
            base: server.url(""),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
            set_cookies: Vec::new(),
        }
    }

    async fn request(&mut self, req: reqwest::RequestBuilder) -> Page {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let resp = tokio::time::timeout(DEADLINE, req.header("cookie", cookie).send())
            .await
            .expect("answer within the deadline")
            .unwrap();
        for value in resp.headers().get_all(SET_COOKIE) {
            let text = value.to_str().unwrap().to_string();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || text.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.into(), value.into());
            }
            self.set_cookies.push(text);
        }
        Page {
            status: resp.status().as_u16(),
            location: resp
                .headers()
                .get(LOCATION)
                .map(|l| l.to_str().unwrap().to_string()),
            body: resp.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.request(req).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let req = self.http.post(format!("{}{path}", self.base)).form(fields);
        self.request(req).await
    }

    /// Posts a form with the CSRF token of `page_path`'s page added.
    async fn submit(&mut self, page_path: &str, action: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.get(page_path).await.csrf();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all).await
    }

    async fn sign_in(&mut self, who: (&str, &str)) -> Page {
        let form = self.get("/login").await;
        assert_eq!(form.status, 200);
        let csrf = form.csrf();
        self.post(
            "/login",
            &[
                ("csrf", &csrf),
                ("next", "/"),
                ("username", who.0),
                ("password", who.1),
            ],
        )
        .await
    }

    async fn signed_in(server: &Server, who: (&str, &str)) -> Browser {
        let mut browser = Browser::new(server);
        let page = browser.sign_in(who).await;
        assert_eq!(
            (page.status, page.location.as_deref()),
            (303, Some("/")),
            "{}",
            page.body
        );
        browser
    }
}

/// Alice mails a recipient the sink accepts and one it refuses (one message
/// each); their queue ids, in that order.
async fn alice_sends(server: &Server) -> (String, String) {
    let ids = server
        .send(
            ALICE,
            json!({"from": "news@alice.example", "to": ["carol@dest.example", "nobody@dest.example"],
                   "subject": "Spring newsletter", "text": "hello"}),
        )
        .await;
    assert_eq!(ids.len(), 2, "{ids:?}");
    server.wait_states(ALICE, &ids[0], &["delivered"]).await;
    server.wait_states(ALICE, &ids[1], &["bounced"]).await;
    (ids[0].clone(), ids[1].clone())
}
