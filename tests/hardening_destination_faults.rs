//! Destination faults with delivery on: a refused connection, a destination that
//! resets in the middle of DATA, one that closes instead of answering the end of
//! data, one that never answers it (with `delivery.timeout = "2s"`), and a storm of
//! `421` replies. In each case the mail is deferred, then delivered once the
//! destination is healthy (`retry = ["1s"]`), and nothing leaks: every connection
//! to the destination is closed again, and the test process (server included) holds
//! no more file descriptors than before, give or take a few.

mod common;
#[path = "fakes/mod.rs"]
mod fakes;
mod hardening;

use common::*;
use fakes::sink::{SinkBuilder, SmtpSink};
use outpost::config::ListenerMode;
use outpost::store::RecipientStatus;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

const RCPT: &str = "rcpt@dest.example";
const DELIVERY: &str = "retry = [\"1s\"]\ntimeout = \"2s\"\nidle_timeout = \"300ms\"";
/// A fault scenario must settle within this.
const SETTLE: Duration = Duration::from_secs(20);
/// File descriptors the process may gain over a scenario (SQLite files opened
/// lazily, a pooled connection being torn down).
const FD_TOLERANCE: usize = 6;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Nothing listens on the destination port at first.
    Refused,
    ResetDuringData,
    DisconnectAfterData,
    StallAfterData,
    /// `421` to MAIL three times (the sink closes after each).
    Storm421,
}

fn sink_for(fault: Fault, bind: SocketAddr) -> SinkBuilder {
    let sink = SmtpSink::builder().bind(bind);
    match fault {
        Fault::Refused => sink,
        Fault::ResetDuringData => sink.reset_during_data().faults_only_first(2),
        Fault::DisconnectAfterData => sink.disconnect_after_data().faults_only_first(2),
        Fault::StallAfterData => sink.stall_after_data().faults_only_first(1),
        Fault::Storm421 => sink.mail_replies(["421 4.7.0 Try again later"; 3]),
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

async fn status_of(server: &Server, id: &outpost::store::QueueId) -> (RecipientStatus, u32) {
    let summary = server.summary(id).await;
    (summary.recipients[0].status, summary.recipients[0].attempts)
}

async fn scenario(fault: Fault) {
    // A port for the destination; for `Refused` nothing listens there yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let early_sink = match fault {
        Fault::Refused => None,
        _ => Some(sink_for(fault, port).start().await),
    };
    let server = hardening::delivering_server(port, DELIVERY).await;
    let fds_before = open_fds();

    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    let content = message(CLIENT_SENDER, RCPT, &format!("fault {fault:?}\r\n"));
    let id = client.deliver(CLIENT_SENDER, &[RCPT], &content).await;
    client.quit().await;

    // Until the destination is healthy the mail waits, deferred.
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, attempts) = status_of(&server, &id).await;
        if status == RecipientStatus::Deferred && attempts >= 1 {
            break;
        }
        assert!(
            status != RecipientStatus::Bounced,
            "{fault:?}: a temporary fault bounced the message"
        );
        assert!(
            Instant::now() < deadline,
            "{fault:?}: never deferred (status {status:?}, {attempts} attempts)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sink = match early_sink {
        Some(sink) => sink,
        None => sink_for(fault, port).start().await,
    };
    let elapsed = hardening::wait_until_settled(&server, SETTLE).await;
    let (status, attempts) = status_of(&server, &id).await;
    assert_eq!(status, RecipientStatus::Delivered, "{fault:?}");
    let messages = sink.wait_for_messages(1, DEADLINE).await;
    assert!(
        messages.iter().all(|m| m.rcpt_to == [RCPT]),
        "{fault:?}: {messages:?}"
    );
    // No connection to the destination stays open: the stalled one was given up,
    // pooled ones are closed after `idle_timeout`.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.active_connections() > 0 {
        assert!(
            Instant::now() < deadline,
            "{fault:?}: {} connection(s) to the destination still open",
            sink.active_connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.running.active_connections() > 0 {
        assert!(Instant::now() < deadline, "{fault:?}: inbound slot held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fds_after = open_fds();
    println!(
        "{fault:?}: delivered after {attempts} attempts ({:.1}s to settle), \
         {} connections to the destination, fds {fds_before} -> {fds_after}",
        elapsed.as_secs_f64(),
        sink.connections()
    );
    assert!(
        fds_after <= fds_before + FD_TOLERANCE,
        "{fault:?}: file descriptors grew from {fds_before} to {fds_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_destination_faults_are_deferred_then_delivered_without_leaks() {
    // Sequential, so the file descriptor counts belong to one scenario each.
    for fault in [
        Fault::Refused,
        Fault::ResetDuringData,
        Fault::DisconnectAfterData,
        Fault::StallAfterData,
        Fault::Storm421,
    ] {
        scenario(fault).await;
    }
}
