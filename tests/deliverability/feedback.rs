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
use outpost::store::{Event, EventKind, RecipientStatus};
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
