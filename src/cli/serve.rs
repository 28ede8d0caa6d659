//! `outpost serve`: run the relay until SIGTERM or SIGINT; SIGHUP reloads the TLS
//! certificate.

use anyhow::{Context, Result, bail};
use outpost::config::Config;
use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};

pub async fn run(config: Arc<Config>) -> Result<()> {
    // Installed before start-up, so a signal sent as soon as the listeners are up
    // is never the default action (SIGTERM killing with 143, SIGHUP too).
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut running = outpost::server::start(config.clone())
        .await
        .context("start-up failed")?;
    tracing::info!(hostname = %config.hostname, data_dir = %config.data_dir.display(), "Outpost is running");
    let signal_name = loop {
        tokio::select! {
            _ = running.wait() => bail!("listeners stopped unexpectedly"),
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => match running.server_certificate.reload() {
                Ok(path) => tracing::info!(cert = %path.display(), "SIGHUP: TLS certificate reloaded; new connections use it"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: cannot reload the TLS certificate; still using the previous one"),
            },
        }
    };
    let grace = config.server.shutdown_grace.get();
    tracing::info!(
        signal = signal_name,
        "stopping: no new connections; transactions in progress may finish (server.shutdown_grace)"
    );
    let stopped = running.shutdown(grace).await;
    tracing::info!(sessions_cut_off = stopped.cut_off, "Outpost stopped");
    Ok(())
}
