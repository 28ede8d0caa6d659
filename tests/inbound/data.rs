//! Message content: pipelining (RFC 2920), BDAT (RFC 3030), dot-stuffing, the SMTP
//! smuggling class, and the queue id in the 250 reply.

use crate::support::common;

use common::*;
use outpost::config::ListenerMode;
use outpost::store::QueueId;

#[tokio::test]
async fn pipelined_commands_get_their_replies_in_order() {
    let server = Server::start().await;
    let mut client = server.authenticated(ListenerMode::Submission).await;
    let rcpts = ["a@remote.example", "b@remote.example", "c@remote.example"];
    let mut batch = format!("EHLO client.test\r\nMAIL FROM:<{SENDER}>\r\n");
    for rcpt in &rcpts[..2] {
        batch.push_str(&format!("RCPT TO:<{rcpt}>\r\n"));
    }
    // A refused recipient in the middle of the group does not disturb the rest.
    batch.push_str("RCPT TO:<no-domain@>\r\n");
    batch.push_str(&format!("RCPT TO:<{}>\r\nDATA\r\n", rcpts[2]));
    client.send(batch).await;

    let ehlo = client.reply().await;
    assert_eq!(ehlo.code, 250, "{ehlo}");
    assert!(ehlo.has_line("PIPELINING"), "{ehlo}");
    assert!(
        !ehlo.has_line("AUTH PLAIN LOGIN"),
        "AUTH offered again: {ehlo}"
    );
    client.reply().await.assert("250 2.1.0");
    client.reply().await.assert("250 2.1.5");
    client.reply().await.assert("250 2.1.5");
    client.reply().await.assert("553 5.1.3");
    client.reply().await.assert("250 2.1.5");
    client.reply().await.assert("354");

    let original = message(SENDER, "a@remote.example", "pipelined\r\n");
    client.send(dot_stuffed(&original)).await;
    let id = client.reply().await.queue_id();
    client.quit().await;

    let summary = server.summary(&id).await;
    let stored: Vec<&str> = summary
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(stored, rcpts);
    assert_eq!(summary.auth_user.as_deref(), Some(USER));
    added_headers(&server.content(&id).await, &original);
}

#[tokio::test]
async fn bdat_chunks_are_stored_exactly() {
    let server = Server::start().await;
    let mut client = server.authenticated(ListenerMode::Submission).await;
    // No dot-stuffing in BDAT: dot lines, even a lone ".", are plain data.
    let original = message(
        SENDER,
        REMOTE_RCPT,
        ".leading dot\r\n.\r\n..\r\nsplit across chunks\r\nend\r\n",
    );
    let split = original
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("a CRLF")
        + 1;
    // Chunk boundaries inside a CRLF and right after the lone dot line.
    let dot_line = original
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .expect("a dot line")
        + 3;
    let chunks = [
        &original[..split],
        &original[split..dot_line],
        &original[dot_line..],
    ];
    client.begin(SENDER, &[REMOTE_RCPT]).await;
    // All chunks in one write, then an empty LAST chunk (RFC 3030 §2).
    let mut wire = Vec::new();
    for chunk in chunks {
        wire.extend(bdat_wire(chunk, false));
    }
    wire.extend(bdat_wire(b"", true));
    client.send(&wire).await;
    let mut total = 0;
    for chunk in chunks {
        total += chunk.len();
        client.reply().await.assert(&format!(
            "250 2.0.0 {} octets received ({total} in total)",
            chunk.len()
        ));
    }
    let id = client.reply().await.queue_id();
    client.quit().await;

    let added = added_headers(&server.content(&id).await, &original);
    assert_eq!(header_names(&added), ["Received"]);
    assert_eq!(server.queued().await.len(), 1);
}

#[tokio::test]
async fn bdat_without_a_transaction_is_refused_and_its_chunk_consumed() {
    let server = Server::start_with(Options::trusted()).await;
    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    // Were the chunk read as commands, the server would say goodbye.
    let chunk = b"QUIT\r\nQUIT\r\n";
    client.send_bdat(chunk, true).await;
    client.reply().await.assert("503 5.5.1");
    client.expect("NOOP", "250 2.0.0").await;

    // MAIL but no recipient yet: refused too, chunk consumed too.
    client
        .expect(&format!("MAIL FROM:<{CLIENT_SENDER}>"), "250 2.1.0")
        .await;
    client.send_bdat(chunk, false).await;
    client.reply().await.assert("554 5.5.1");
    client.expect("NOOP", "250 2.0.0").await;
    client.quit().await;
    server.assert_nothing_queued().await;
}

#[tokio::test]
async fn dot_stuffing_is_undone_exactly() {
    let server = Server::start_with(Options::trusted()).await;
    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    let cases: [(&[u8], &[u8]); 2] = [
        (
            b"Subject: dots\r\n\r\n.\r\n..\r\n...\r\n.leading\r\n..double\r\n a.b\r\n. \r\nlast\r\n",
            b"Subject: dots\r\n\r\n..\r\n...\r\n....\r\n..leading\r\n...double\r\n a.b\r\n.. \r\nlast\r\n.\r\n",
        ),
        // A dot on the very first line of the data.
        (b".first\r\n", b"..first\r\n.\r\n"),
    ];
    let mut ids = Vec::new();
    for (original, wire) in cases {
        assert_eq!(
            dot_stuffed(original),
            wire,
            "the harness stuffs differently"
        );
        client.begin(CLIENT_SENDER, &[REMOTE_RCPT]).await;
        client.expect("DATA", "354").await;
        // Small writes, so lines and the terminator straddle reads.
        for piece in wire.chunks(3) {
            client.send(piece).await;
        }
        ids.push((client.reply().await.queue_id(), original));
    }
    client.quit().await;
    for (id, original) in ids {
        let added = added_headers(&server.content(&id).await, original);
        assert_eq!(header_names(&added), ["Received"]);
    }
}

#[tokio::test]
async fn bare_cr_or_lf_variants_cannot_smuggle_a_second_message() {
    let server = Server::start_with(Options::trusted()).await;
    for variant in ["\n.\n", "\r.\r", "\r\n.\r", "\n.\r\n", "\r\n.\n"] {
        let mut client = server.connect(ListenerMode::Relay).await;
        client.ehlo().await;
        client.begin(CLIENT_SENDER, &[REMOTE_RCPT]).await;
        client.expect("DATA", "354").await;
        client
            .send(format!(
                "Subject: smuggle\r\n\r\nbody{variant}MAIL FROM:<x@evil.example>\r\n\
                 RCPT TO:<y@remote.example>\r\nDATA\r\nsmuggled\r\n\r\n.\r\n"
            ))
            .await;
        let reply = client.reply().await;
        assert!(reply.is("550 5.5.2"), "variant {variant:?}: {reply}");
        // QUIT's reply comes next and nothing else: one message, one reply.
        client.quit().await;
        let queued = server.queued().await;
        assert!(queued.is_empty(), "variant {variant:?}: stored {queued:?}");
    }

    // A proper message afterwards is the only one in the store.
    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    let original = b"Subject: proper\r\n\r\nfine\r\n";
    let id = client
        .deliver(CLIENT_SENDER, &[REMOTE_RCPT], original)
        .await;
    client.quit().await;
    let queued = server.queued().await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].id, id);
    let content = server.content(&id).await;
    assert!(
        !String::from_utf8_lossy(&content).contains("smuggled"),
        "{}",
        String::from_utf8_lossy(&content)
    );
}

#[tokio::test]
async fn queued_reply_names_the_stored_message() {
    let server = Server::start().await;
    let mut client = server.authenticated(ListenerMode::Submission).await;
    let mut ids: Vec<QueueId> = Vec::new();
    for (rcpt, body) in [
        ("one@remote.example", "first\r\n"),
        ("two@remote.example", "second\r\n"),
    ] {
        let original = message(SENDER, rcpt, body);
        let reply = client.send_mail(SENDER, &[rcpt], &original).await;
        assert_eq!(reply.lines.len(), 1, "{reply}");
        let id = reply.queue_id();
        assert_eq!(reply.last(), format!("250 2.0.0 Ok: queued as {id}"));

        let summary = server.summary(&id).await;
        assert_eq!(summary.id, id);
        assert_eq!(summary.mail_from, SENDER);
        assert_eq!(summary.recipients[0].address, rcpt);
        let content = server.content(&id).await;
        assert_eq!(summary.size, content.len());
        let added = added_headers(&content, &original);
        assert!(added.contains(&format!(" id {id}\r\n")), "{added}");
        ids.push(id);
    }
    client.quit().await;
    assert_ne!(ids[0], ids[1]);
    let queued: Vec<QueueId> = server.queued().await.into_iter().map(|m| m.id).collect();
    assert_eq!(queued, ids);
}
