//! `outpost cluster status`: the nodes sharing the store, from their heartbeats
//! and the claims they hold (docs/cluster.md).

use super::{existing_store, local_time};
use anyhow::Result;
use outpost::config::{Config, StoreLocation};

#[derive(clap::Subcommand)]
pub enum ClusterCommand {
    /// The nodes seen (last heartbeat), the recipients each has claimed, the queue's size.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: &Config, cmd: ClusterCommand) -> Result<()> {
    let ClusterCommand::Status { json } = cmd;
    let store = existing_store(config).await?;
    let status = store.cluster_status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    if config.store.location() == StoreLocation::Sqlite {
        println!("single node: the SQLite store in data_dir serves one node at a time");
    }
    let now = outpost::queue::now_ms();
    for node in &status.nodes {
        let seen = if node.last_seen == 0 {
            "no heartbeat".to_string()
        } else {
            let ago = (now - node.last_seen).max(0) / 1000;
            format!("heartbeat {} ({ago}s ago)", local_time(node.last_seen))
        };
        println!("{} {seen}, {} claims", node.name, node.claims);
    }
    println!(
        "-- {} node(s), {} recipient(s) in the queue",
        status.nodes.len(),
        status.pending
    );
    Ok(())
}
