//! `outpost store migrate`: moves a single node's SQLite store into a new
//! PostgreSQL store, to run it as a cluster (docs/cluster.md).

use super::shown;
use anyhow::{Context, Result, bail};
use outpost::config::Config;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Copy a stopped node's SQLite store into a new, empty PostgreSQL store: the
    /// queue (contents and recipient states), events, suppressions, users, API
    /// keys, sending domains with their DKIM keys, pauses, dashboard counters,
    /// the unsubscribe link key and webhook positions; and the key's file, if
    /// the node last ran a version that kept it there, into this
    /// configuration's data_dir (the first node started imports it).
    /// Refuses a target that holds any data, and a source a node ran on less
    /// than [store] lease ago. In one transaction: on failure nothing is written.
    Migrate {
        /// The SQLite store: `sqlite:PATH`, PATH being the node's data_dir (or
        /// its outpost.db file).
        #[arg(long, value_name = "sqlite:PATH")]
        from: String,
        /// The PostgreSQL store, as `[store] url` names it.
        #[arg(long, value_name = "postgres://...")]
        to: String,
    },
}

pub async fn run(config: &Config, cmd: StoreCommand) -> Result<()> {
    let StoreCommand::Migrate { from, to } = cmd;
    let Some(path) = from.strip_prefix("sqlite:").filter(|p| !p.is_empty()) else {
        bail!("--from must be sqlite:PATH (the data_dir of the node to migrate)");
    };
    let mut dir = PathBuf::from(path);
    if dir.is_file() {
        dir = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    }
    outpost::store::parse_postgres_url(&to)
        .map_err(|e| anyhow::anyhow!("--to must be a postgres:// URL: {e}"))?;
    let copied = outpost::store::migrate_sqlite_to_postgres(&dir, &to, config.store.lease.get())
        .await
        // The URL is never repeated: it may hold a password.
        .with_context(|| format!("cannot migrate {} to PostgreSQL", shown(&dir)))?;
    for (table, rows) in &copied {
        println!("{table}: {rows} row(s)");
    }
    copy_unsubscribe_key(&dir, &config.data_dir)?;
    println!(
        "-- migrated {} into PostgreSQL; set [store] url on every node and start them",
        shown(&dir)
    );
    Ok(())
}

/// A store last run by a version before the key was kept in the store has it
/// in a file in data_dir: it goes to this configuration's data_dir, whence the
/// first node started imports it into the store, so links signed before still
/// work. (A store run by this version has it in a table, copied with the rest.)
fn copy_unsubscribe_key(from_dir: &Path, to_dir: &Path) -> Result<()> {
    let (from, to) = (
        from_dir.join("unsubscribe.key"),
        to_dir.join("unsubscribe.key"),
    );
    if !from.exists() {
        return Ok(());
    }
    let key = std::fs::read(&from).with_context(|| format!("cannot read {}", shown(&from)))?;
    match std::fs::read(&to) {
        Ok(existing) if existing == key => {}
        Ok(_) => println!(
            "note: {} differs from {}: unsubscribe links sent before the migration verify only \
             with the latter; copy it to every node's data_dir",
            shown(&to),
            shown(&from)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(to_dir)
                .with_context(|| format!("cannot create {}", shown(to_dir)))?;
            // A copy keeps the source's mode (0600).
            std::fs::copy(&from, &to).with_context(|| format!("cannot write {}", shown(&to)))?;
            println!(
                "unsubscribe link key copied to {}: copy it to every node's data_dir",
                shown(&to)
            );
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", shown(&to))),
    }
    Ok(())
}
