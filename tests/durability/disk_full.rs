//! Disk full: the data directory on a 2 MiB tmpfs (needs root to mount it; fails
//! with the reason otherwise, never a silent skip). Messages are sent until the server answers `452 4.3.1`;
//! it must never answer `250` for a message it did not store, every message it
//! acknowledged must be readable intact, and once space is freed (a filler file
//! deleted) new messages are accepted again.

use crate::support::common;
use crate::support::hardening;

use common::*;
use outpost::config::ListenerMode;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Upper bound on messages sent before the filesystem must be full (2 MiB / 16 KiB
/// is 128).
const MAX_MESSAGES: usize = 400;
const FILLER: usize = 512 * 1024;

/// A tmpfs mounted on a temporary directory; unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount() -> Result<SmallFs, String> {
        let root = std::fs::read_to_string("/proc/self/status")
            .map(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
            .unwrap_or(false);
        if !root {
            return Err("not running as root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "outpost-diskfull"])
            .arg(dir.path())
            .status()
            .map_err(|e| format!("mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed: {status}"));
        }
        Ok(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn body(n: usize) -> String {
    (0..200)
        .map(|i| format!("message {n:04} line {i:03} ......................................................\r\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_gets_452_never_a_false_250_and_recovers() {
    let _alone = crate::alone().await;
    let fs = match SmallFs::mount() {
        Ok(fs) => fs,
        Err(reason) => panic!(
            "the disk-full test cannot run: {reason} (it mounts a tmpfs; run the tests as root, as CI does)"
        ),
    };
    let filler: PathBuf = fs.path().join("filler");
    std::fs::write(&filler, vec![b'x'; FILLER]).expect("write the filler file");
    let data_dir = fs.path().join("data");
    let server = hardening::paused_server_at(&data_dir).await;

    let mut acked = Vec::new();
    let mut full_reply = None;
    let mut client = server.connect(ListenerMode::Relay).await;
    client.ehlo().await;
    for n in 0..MAX_MESSAGES {
        let content = message(CLIENT_SENDER, REMOTE_RCPT, &body(n));
        let reply = client
            .send_mail(CLIENT_SENDER, &[REMOTE_RCPT], &content)
            .await;
        if reply.code == 250 {
            acked.push((reply.queue_id(), content));
            continue;
        }
        full_reply = Some(reply);
        break;
    }
    let full_reply = full_reply
        .unwrap_or_else(|| panic!("{MAX_MESSAGES} messages accepted on a 2 MiB filesystem"));
    full_reply.assert("452 4.3.1");
    assert!(
        !acked.is_empty(),
        "nothing was accepted before the disk filled"
    );

    // Every acknowledged message is there, intact.
    for (id, content) in &acked {
        let stored = server.content(id).await;
        added_headers(&stored, content);
    }
    // A second refusal is a refusal too, not a 250.
    let content = message(CLIENT_SENDER, REMOTE_RCPT, &body(9999));
    let reply = client
        .send_mail(CLIENT_SENDER, &[REMOTE_RCPT], &content)
        .await;
    reply.assert("452 4.3.1");

    // Space comes back: new mail is accepted, on the same session.
    std::fs::remove_file(&filler).expect("delete the filler");
    let content = message(CLIENT_SENDER, REMOTE_RCPT, "after the disk was freed\r\n");
    let id = client
        .deliver(CLIENT_SENDER, &[REMOTE_RCPT], &content)
        .await;
    added_headers(&server.content(&id).await, &content);
    client.quit().await;
    // And through a fresh connection to the store, as after a restart.
    let store = outpost::store::SqliteStore::open(&data_dir, 16).expect("reopen the store");
    for (id, content) in acked.iter().chain([(id, content.clone())].iter()) {
        use outpost::store::QueueStore;
        let stored = store
            .message_content(id)
            .await
            .expect("read after reopening")
            .unwrap_or_else(|| panic!("{id} missing after reopening"));
        added_headers(&stored, content);
    }
    println!(
        "disk full after {} messages: {}; accepted again after freeing {FILLER} bytes",
        acked.len(),
        full_reply
    );
    drop(server);
}
