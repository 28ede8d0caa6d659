//! `outpost serve` as a child process, for the tests that need the real binary
//! (crash and restart tests, the queue CLI against a running server).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long the server may take to log its relay listener.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// `outpost serve` as a child process, stderr collected; SIGKILLed when dropped.
pub struct Process {
    child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `outpost --config CONFIG serve` and waits for its relay listener.
    pub fn start(config: &Path) -> Process {
        Process::start_with_env(config, &[])
    }

    /// [`Process::start`] with more environment variables (`LD_PRELOAD`, ...).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
            .arg("--config")
            .arg(config)
            .arg("serve")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("OUTPOST_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn outpost serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            // Reads stderr to its end so the server never blocks on a full pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line.clone());
                    log.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + STARTUP_DEADLINE;
        let addr = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(addr) = relay_listener(&line) {
                        break addr;
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "serve did not log its relay listener ({e:?}); log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        };
        Process { child, addr, log }
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }

    #[allow(dead_code)] // not every test reads the log
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Process {
    /// Sends a signal (`TERM`, `HUP`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits until a log line contains `text`; panics with the log after `deadline`.
    pub fn wait_for_log(&self, text: &str, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            assert!(
                Instant::now() < end,
                "no log line with {text:?} within {deadline:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; panics with the log after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "the server did not exit within {deadline:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The HTTP API's address, from the start-up log (waited for).
    pub fn http_addr(&self) -> SocketAddr {
        let line = self.wait_for_log("HTTP API listening", STARTUP_DEADLINE);
        line.split_whitespace()
            .find_map(|word| word.strip_prefix("http_addr=")?.parse().ok())
            .unwrap_or_else(|| panic!("no http_addr in {line:?}"))
    }

    /// The address of the first listener in `mode` (`relay`, `submissions`, ...),
    /// from the start-up log.
    pub fn listener(&self, mode: &str) -> Option<SocketAddr> {
        let suffix = format!(" mode={mode}");
        self.log.lock().unwrap().iter().find_map(|line| {
            let rest = &line[line.find("listening addr=")? + "listening addr=".len()..];
            let (addr, tail) = rest.split_once(' ')?;
            (format!(" {tail}").trim_end() == suffix).then(|| addr.parse().ok())?
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `... listening addr=127.0.0.1:PORT mode=relay` → the address.
pub fn relay_listener(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening addr=")? + "listening addr=".len()..];
    let (addr, mode) = rest.split_once(' ')?;
    (mode.trim() == "mode=relay").then(|| addr.parse().ok())?
}
