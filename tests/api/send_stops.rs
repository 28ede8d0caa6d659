//! `outpost send` stops at once, with one line saying why, on an error that every
//! row would meet: the API unreachable, wrong credentials, a template error.

use super::*;

const ROWS: usize = 500;

struct Campaign {
    dir: TempDir,
}

impl Campaign {
    fn new(text_template: &str) -> Campaign {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = String::from("email,first_name\n");
        for i in 0..ROWS {
            rows.push_str(&format!("user{i}@list.example,Name{i}\n"));
        }
        std::fs::write(dir.path().join("list.csv"), rows).unwrap();
        std::fs::write(dir.path().join("body.txt"), text_template).unwrap();
        Campaign { dir }
    }

    async fn send(&self, api: &str, password: &str) -> (bool, String, String) {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"));
        cmd.args(["send", "--from", "news@alice.example", "--to-csv"])
            .arg(self.dir.path().join("list.csv"))
            .args(["--subject", "Hi {{ first_name }}", "--text"])
            .arg(self.dir.path().join("body.txt"))
            .args(["--api", api, "--user", ALICE.0, "--batch-size", "50"])
            .env("OUTPOST_PASSWORD", password)
            .env("NO_COLOR", "1");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Stopped: non-zero exit, no row rejected one by one, every row counted as not sent.
fn assert_stopped(result: &(bool, String, String), why: &str) {
    let (ok, stdout, stderr) = result;
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("accepted: 0, rejected: 0, not sent: {ROWS} (")),
        "{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("row "),
        "no row-by-row rejection: {stdout}"
    );
    let stops: Vec<&str> = stderr.lines().filter(|l| l.contains("stopped:")).collect();
    assert_eq!(stops.len(), 1, "{stderr}");
    assert!(stops[0].contains(why), "{stderr}");
}

#[tokio::test]
async fn send_stops_when_the_api_is_unreachable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let result = Campaign::new("Hello {{ first_name }}\n")
        .send(&url, ALICE.1)
        .await;
    assert_stopped(&result, "cannot reach the API");
    assert!(result.2.contains("onnection refused"), "{}", result.2);
}

#[tokio::test]
async fn send_stops_on_wrong_credentials_and_on_a_template_error() {
    let server = Server::start(Options::default()).await;
    let campaign = Campaign::new("Hello {{ first_name }}\n");
    assert_stopped(&campaign.send(&server.url(""), "wrong").await, "401");

    let typo = Campaign::new("Hello {{ frist_name }}\n");
    let result = typo.send(&server.url(""), ALICE.1).await;
    assert_stopped(&result, "frist_name");
    assert!(result.2.contains("user0@list.example"), "{}", result.2);
    assert!(
        server
            .running
            .store
            .queued_messages(10)
            .await
            .unwrap()
            .is_empty(),
        "nothing was sent"
    );
}
