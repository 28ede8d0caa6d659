//! `outpost check` exit codes, for scripts and monitoring (the plugin convention):
//! 0 all ok, 1 warnings, 2 a port failing or unreachable, 3 the check could not run.

use super::support::server_process::Process;
use super::{outpost, text};

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn check_exit_codes_tell_warning_from_failure() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("outpost.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"relay.test\"\ndata_dir = \"{}\"\n\
             [[listeners]]\naddr = \"127.0.0.1:0\"\nmode = \"relay\"\n\
             [http]\naddr = \"127.0.0.1:0\"\n[delivery]\npaused = true\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let server = Process::start(&config);
    let live = server.addr.port().to_string();
    let closed = closed_port().to_string();
    let tool = tempfile::tempdir().unwrap();

    // A live Outpost with its self-signed certificate: works, with a warning.
    let out = outpost(tool.path(), None, &["check", "127.0.0.1", "--port", &live]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let out = outpost(
        tool.path(),
        None,
        &["check", "127.0.0.1", "--port", &closed],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // The worst port decides.
    let out = outpost(
        tool.path(),
        None,
        &["check", "127.0.0.1", "--port", &live, "--port", &closed],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
