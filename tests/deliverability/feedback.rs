//! The feedback loop end to end: a running Outpost delivers a message to a sink
//! with its signed return path as envelope sender; bounces, complaints and
//! auto-replies then arrive for that return path over SMTP on the relay port, as
//! they would from the receiving provider.

use crate::relay::{eventually, relay_to, send};
use crate::support::{common, fakes};
use common::{CLIENT_SENDER, Client, HOSTNAME};
use fakes::sink::SmtpSink;
use outpost::config::ListenerMode;
use outpost::server::Running;
use outpost::store::{DomainPause, Event, EventKind, RecipientStatus};
use std::sync::{Arc, Mutex};

const RETURN_PATH_HOST: &str = "bounces.client.example";

/// Webhook bodies received, in order.
#[derive(Clone, Default)]
struct Hooks(Arc<Mutex<Vec<serde_json::Value>>>);

impl Hooks {
    async fn start(&self) -> String {
        let hooks = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let hooks = hooks.clone();
                async move {
                    let value = serde_json::from_slice(&body).unwrap_or_default();
                    hooks.0.lock().unwrap().push(value);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    /// Every event POSTed so far.
    fn events(&self) -> Vec<serde_json::Value> {
        let bodies = self.0.lock().unwrap().clone();
        bodies
            .iter()
            .flat_map(|b| {
                b.get("events")
                    .and_then(|e| e.as_array())
                    .cloned()
                    .or_else(|| b.as_array().cloned())
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// Sends a message to `rcpt`, waits for its delivery, and returns the return path
/// the sink saw as its envelope sender.
async fn delivered(running: &Running, sink: &SmtpSink, rcpt: &str) -> String {
    let id = send(
        running,
        CLIENT_SENDER,
        &[rcpt],
        b"Subject: hi\r\n\r\nhello\r\n",
    )
    .await;
    eventually("delivery", || async {
        let summary = running.store.message(&id).await.unwrap()?;
        (summary.recipients[0].status == RecipientStatus::Delivered).then_some(())
    })
    .await;
    let received = sink
        .messages()
        .into_iter()
        .find(|m| m.rcpt_to == [rcpt])
        .expect("the sink got the message");
    received.mail_from
}

/// Sends `content` to `to` from the null sender on the relay port, as a
/// provider's MTA does; returns the reply to the end of data.
async fn arrives(running: &Running, to: &str, content: &str) {
    let mut client = Client::connect(running.addr(ListenerMode::Relay).unwrap()).await;
    client.expect_greeting().await;
    client.ehlo().await;
    client.deliver("", &[to], content.as_bytes()).await;
    client.quit().await;
}

fn dsn(return_path: &str, rcpt: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.remote.example\r\nTo: {return_path}\r\nSubject: Undelivered Mail Returned to Sender\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
         --b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.example\r\n\r\n\
         Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in local recipient table\r\n\r\n\
         --b1--\r\n"
    )
}

fn arf(return_path: &str, rcpt: &str) -> String {
    format!(
        "From: fbl@isp.example\r\nTo: {return_path}\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"b2\"\r\n\r\n\
         --b2\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n\
         --b2\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: fbl/1.0\r\nVersion: 1\r\n\
         Original-Rcpt-To: <{rcpt}>\r\n\r\n\
         --b2\r\nContent-Type: message/rfc822\r\n\r\nFrom: {CLIENT_SENDER}\r\nTo: {rcpt}\r\nSubject: hi\r\n\r\nhello\r\n--b2--\r\n"
    )
}

fn vacation(return_path: &str) -> String {
    format!(
        "From: someone@remote.example\r\nTo: {return_path}\r\nSubject: Out of office: hi\r\n\
         Auto-Submitted: auto-replied\r\n\r\nI am away; your mail to me will be read later.\r\n"
    )
}

async fn events(running: &Running) -> Vec<Event> {
    running.store.events(0, 1000).await.unwrap()
}

async fn suppressed(running: &Running, address: &str) -> Option<String> {
    running
        .store
        .suppression("client.example", address)
        .await
        .unwrap()
        .map(|s| s.reason)
}

#[tokio::test]
async fn bounces_complaints_and_auto_replies_come_back_to_the_return_path() {
    let sink = SmtpSink::start_default().await;
    let hooks = Hooks::default();
    let url = hooks.start().await;
    let (running, _dir) = relay_to(
        &sink,
        &format!(r#"local_domains = ["{HOSTNAME}", "{RETURN_PATH_HOST}"]"#),
        &format!("[[webhooks]]\nurl = \"{url}\"\nsecret = \"s\""),
    )
    .await;

    // A delivered message, then a DSN for it at its return path.
    let gone = "gone@remote.example";
    let return_path = delivered(&running, &sink, gone).await;
    assert!(
        return_path.starts_with("b-") && return_path.ends_with(&format!("@{RETURN_PATH_HOST}")),
        "the envelope sender is a return path at the sending domain's host: {return_path}"
    );
    arrives(&running, &return_path, &dsn(&return_path, gone)).await;
    let bounced = events(&running)
        .await
        .into_iter()
        .find(|e| e.kind == EventKind::Bounced && e.recipient.as_deref() == Some(gone))
        .expect("a bounced event");
    assert!(bounced.asynchronous);
    assert_eq!(bounced.class.as_deref(), Some("bad-mailbox"));
    let reason = suppressed(&running, gone).await.expect("suppressed");
    assert!(reason.starts_with("bounce: "), "{reason}");
    eventually("the bounced event's webhook", || async {
        hooks
            .events()
            .into_iter()
            .find(|e| e["event"] == "bounced" && e["recipient"] == gone && e["async"] == true)
    })
    .await;

    // A complaint.
    let fan = "fan@remote.example";
    let return_path = delivered(&running, &sink, fan).await;
    arrives(&running, &return_path, &arf(&return_path, fan)).await;
    assert!(
        events(&running)
            .await
            .iter()
            .any(|e| e.kind == EventKind::Complained && e.recipient.as_deref() == Some(fan))
    );
    assert_eq!(
        suppressed(&running, fan).await.as_deref(),
        Some("complaint")
    );

    // An auto-reply: nothing.
    let away = "away@remote.example";
    let return_path = delivered(&running, &sink, away).await;
    let before = events(&running).await.len();
    arrives(&running, &return_path, &vacation(&return_path)).await;
    assert_eq!(suppressed(&running, away).await, None);
    let after = events(&running).await;
    assert!(
        after[before..]
            .iter()
            .all(|e| e.recipient.as_deref() != Some(away) || e.kind == EventKind::Accepted),
        "{:?}",
        &after[before..]
    );

    // A forged bounce: a return path whose signature is wrong suppresses nothing.
    let victim = "victim@remote.example";
    let return_path = delivered(&running, &sink, victim).await;
    let (local, host) = return_path.split_once('@').unwrap();
    let tampered_tag: String = local
        .chars()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                if c == '0' { '1' } else { '0' }
            } else {
                c
            }
        })
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let forged = format!("{tampered_tag}@{host}");
    assert_ne!(forged, return_path);
    arrives(&running, &forged, &dsn(&forged, victim)).await;
    assert_eq!(suppressed(&running, victim).await, None);
    assert!(
        !events(&running)
            .await
            .iter()
            .any(|e| e.kind == EventKind::Bounced && e.recipient.as_deref() == Some(victim))
    );
}

/// What `/metrics` says of `client.example`: (complaint rate, bounce rate, paused).
async fn reputation_metrics(running: &Running) -> (f64, f64, bool) {
    let text = reqwest::get(format!("http://{}/metrics", running.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |name: &str| {
        let prefix = format!("{name}{{domain=\"client.example\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    (
        gauge("outpost_sending_domain_complaint_rate"),
        gauge("outpost_sending_domain_bounce_rate"),
        gauge("outpost_sending_domain_paused") == 1.0,
    )
}

/// Waits for a sending domain to be paused; returns its pause.
async fn paused(running: &Running) -> DomainPause {
    eventually("the domain paused", || async {
        running
            .store
            .paused_domains()
            .await
            .unwrap()
            .into_iter()
            .next()
    })
    .await
}

/// Runs `outpost ARGS` on the relay's store, as an operator would.
fn outpost_command(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let config = data_dir.join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"{HOSTNAME}\"\ndata_dir = \"{}\"\n",
            data_dir.display()
        ),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .output()
        .expect("outpost runs")
}

#[tokio::test]
async fn complaints_past_the_ceiling_pause_the_domain_until_it_is_resumed() {
    let sink = SmtpSink::start_default().await;
    let hooks = Hooks::default();
    let url = hooks.start().await;
    let (running, dir) = relay_to(
        &sink,
        &format!(r#"local_domains = ["{HOSTNAME}", "{RETURN_PATH_HOST}"]"#),
        &format!(
            "[deliverability]\npause_min_volume = 4\npause_on_complaint_rate = 0.3\n\
             [[webhooks]]\nurl = \"{url}\"\nsecret = \"s\""
        ),
    )
    .await;
    let mut return_paths = Vec::new();
    for n in 0..4 {
        let rcpt = format!("reader{n}@remote.example");
        return_paths.push((rcpt.clone(), delivered(&running, &sink, &rcpt).await));
    }
    // One complaint in four deliveries is 25%: under the ceiling. The second makes
    // it 50%, and the pause's reason says which count crossed it.
    for (rcpt, return_path) in &return_paths[..2] {
        arrives(&running, return_path, &arf(return_path, rcpt)).await;
    }
    let pause = paused(&running).await;
    assert_eq!(pause.domain, "client.example");
    assert!(
        pause
            .reason
            .contains("complaint rate 50.00% (2 complaints for 4 delivered"),
        "{}",
        pause.reason
    );
    let (complaint_rate, bounce_rate, paused) = reputation_metrics(&running).await;
    assert_eq!((complaint_rate, bounce_rate, paused), (0.5, 0.0, true));
    let stats = outpost_command(dir.path(), &["stats"]);
    let stats = String::from_utf8_lossy(&stats.stdout);
    let line = stats
        .lines()
        .find(|l| l.starts_with("client.example"))
        .unwrap_or_else(|| panic!("no client.example line in outpost stats:\n{stats}"));
    assert!(
        line.contains("50.00%") && line.contains("PAUSED since") && line.contains("complaint rate"),
        "{line}"
    );
    let hook = eventually("the domain_paused webhook", || async {
        hooks
            .events()
            .into_iter()
            .find(|e| e["event"] == "domain_paused")
    })
    .await;
    assert_eq!(hook["domain"], "client.example");

    // Mail sent meanwhile waits, untried, with the reason as its status.
    let waiting = "later@remote.example";
    let id = send(
        &running,
        CLIENT_SENDER,
        &[waiting],
        b"Subject: next\r\n\r\nhello\r\n",
    )
    .await;
    let reply = eventually("the message deferred for the pause", || async {
        let r = running
            .store
            .message(&id)
            .await
            .unwrap()?
            .recipients
            .remove(0);
        (r.status == RecipientStatus::Deferred).then_some(r.last_reply?)
    })
    .await;
    assert!(
        reply.starts_with("451 4.7.1 sending from client.example is paused: complaint rate"),
        "{reply}"
    );
    assert!(!sink.messages().iter().any(|m| m.rcpt_to == [waiting]));

    // The operator's command, in another process, resumes it: the mail goes now
    // (its next retry would be a minute away).
    let out = outpost_command(dir.path(), &["domain", "resume", "client.example"]);
    assert!(out.status.success(), "{out:?}");
    eventually("the waiting message delivered", || async {
        let r = running
            .store
            .message(&id)
            .await
            .unwrap()?
            .recipients
            .remove(0);
        (r.status == RecipientStatus::Delivered).then_some(())
    })
    .await;
    assert!(!reputation_metrics(&running).await.2, "no longer paused");
    let out = outpost_command(dir.path(), &["domain", "resume", "client.example"]);
    assert!(!out.status.success(), "resuming twice is an error");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("client.example is not paused"),
        "{out:?}"
    );
    assert!(events(&running).await.iter().any(
        |e| e.kind == EventKind::DomainResumed && e.domain.as_deref() == Some("client.example")
    ));
}

#[tokio::test]
async fn hard_bounces_past_the_ceiling_pause_the_domain() {
    let sink = SmtpSink::builder()
        .rcpt_reply(
            "nobody",
            "550 5.1.1 <nobody@remote.example>: Recipient address rejected: User unknown",
        )
        .start()
        .await;
    let (running, _dir) = relay_to(
        &sink,
        "",
        "[deliverability]\npause_min_volume = 3\npause_on_bounce_rate = 0.5",
    )
    .await;
    let id = send(
        &running,
        CLIENT_SENDER,
        &[
            "reader@remote.example",
            "nobody1@remote.example",
            "nobody2@remote.example",
        ],
        b"Subject: list\r\n\r\nhello\r\n",
    )
    .await;
    let pause = paused(&running).await;
    assert!(
        pause
            .reason
            .contains("hard bounce rate 66.67% (2 bad addresses of 3 sent"),
        "{}",
        pause.reason
    );
    let summary = running.store.message(&id).await.unwrap().unwrap();
    assert_eq!(summary.recipients[0].status, RecipientStatus::Delivered);
    let (_, bounce_rate, paused) = reputation_metrics(&running).await;
    assert!(
        paused && (bounce_rate - 2.0 / 3.0).abs() < 1e-9,
        "{bounce_rate}"
    );
}
