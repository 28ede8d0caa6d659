//! `outpost serve`: run the relay until interrupted.

use anyhow::{Context, Result, bail};
use outpost::config::Config;
use std::sync::Arc;

pub async fn run(config: Arc<Config>) -> Result<()> {
    let running = outpost::server::start(config.clone())
        .await
        .context("start-up failed")?;
    tracing::info!(hostname = %config.hostname, data_dir = %config.data_dir.display(), "Outpost is running");
    tokio::select! {
        _ = running.wait() => bail!("listeners stopped unexpectedly"),
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; stopping");
            Ok(())
        }
    }
}
