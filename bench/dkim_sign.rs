//! Time to DKIM-sign one message with `DkimSigners::sign`, the call acceptance
//! makes (RSA-2048 and Ed25519 keys, as `outpost domain add --ed25519` makes them),
//! for messages of 1 KB, 10 KB and 100 KB of text. Signing is on the acceptance
//! path: this isolates it from the store and the network that `compare.sh` measures
//! with it.
//!
//!     cargo run --release --example dkim_sign [-- ROUNDS]
//!
//! Output: one `size=... us_per_message=...` line per size (median of 5 rounds of
//! ROUNDS messages, default 300).

use outpost::dkim::DkimSigners;
use outpost::store::{SqliteStore, Store};
use std::sync::Arc;
use std::time::Instant;

const SIZES: [usize; 3] = [1024, 10 * 1024, 100 * 1024];
const REPEATS: usize = 5;

/// A plain text message of about `size` bytes, with the header fields of API mail.
fn message(size: usize) -> Vec<u8> {
    let mut out = b"Received: from api ([127.0.0.1])\r\n\tby relay.test (Outpost) with HTTP id X;\r\n\tWed, 2 Dec 2026 01:00:00 +0000\r\n\
From: News <news@bench.example>\r\nTo: <reader@example.net>\r\nSubject: The weekly letter\r\n\
Date: Wed, 2 Dec 2026 01:00:00 +0000\r\nMessage-ID: <0123456789ABCDEF0123.01234567@relay.test>\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
List-Unsubscribe: <https://relay.test/u/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA>,\r\n <mailto:unsubscribe+AAAAAAAAAAAAAAAAAAAAAAAA@relay.test>\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
        .to_vec();
    let line = b"The quick brown fox jumps over the lazy dog, and then  some\twhite space. \r\n";
    while out.len() < size {
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"\r\n \r\n");
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(300, |n| n.parse().expect("ROUNDS is a number"));
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store: Arc<dyn Store> = SqliteStore::open(dir.path(), 64).expect("the store opens");
    let domain = outpost::dkim::generate("bench.example", true, chrono::Utc::now())
        .expect("keys are generated");
    store.add_domain(domain).await.expect("the domain is added");
    let signers = DkimSigners::new(store);
    for size in SIZES {
        let message = message(size);
        let mut rounds_us = Vec::new();
        for _ in 0..REPEATS {
            let start = Instant::now();
            for _ in 0..rounds {
                let fields = signers.sign(&message).await.expect("signed");
                assert!(fields.is_some());
            }
            rounds_us.push(start.elapsed().as_secs_f64() * 1e6 / rounds as f64);
        }
        rounds_us.sort_by(f64::total_cmp);
        println!(
            "size={} us_per_message={:.1}",
            message.len(),
            rounds_us[REPEATS / 2]
        );
    }
}
