//! Running Outpost as an operator does: the command line in a directory without a
//! store, `outpost check`'s exit codes for monitoring, and the process's life under
//! a service manager (SIGTERM with transactions in flight, SIGHUP with a renewed
//! certificate). Everything runs the real `outpost` binary.

#[path = "../support/mod.rs"]
mod support;

mod check_exit;
mod cluster;
mod lifecycle;
mod logs;
mod migrate;
mod outage;
mod postgres;
mod readonly;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `outpost ARGS` in `dir` with no configuration but `config` (if given).
pub fn outpost(dir: &Path, config: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost"));
    cmd.current_dir(dir)
        .env_remove("OUTPOST_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null());
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.args(args).output().expect("run outpost")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
