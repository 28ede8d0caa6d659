//! The command handlers of the `outpost` binary and their human output (`--json`
//! for scripts). `main.rs` parses the command line and calls one of these; the
//! relay itself lives in the library, which knows nothing of this module (so the
//! HTTP client and the progress bar of `outpost send` are the CLI's dependencies,
//! not the relay's).

pub mod bounce;
pub mod check;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod keys;
pub mod queue;
pub mod send;
pub mod serve;
pub mod stats;
pub mod store;
pub mod suppress;
pub mod user;

use anyhow::{Context, Result, bail};
use outpost::config::Config;
use outpost::config::StoreLocation;
use outpost::dns::HickoryResolver;
use outpost::store::{PostgresStore, SqliteStore, Store};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// The configured store, created when there is none (for the commands that add
/// something). A new SQLite store is announced with its full path, so one created
/// in the wrong directory is noticed at once; a PostgreSQL database gets its
/// tables the first time any command or node opens it.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    if let StoreLocation::Postgres(url) = config.store.location() {
        let store = PostgresStore::open(&url, config.store.max_batch).await;
        return Ok(store.context(POSTGRES_FAILED)?);
    }
    let database = SqliteStore::database_path(&config.data_dir);
    let existed = database.exists();
    let store = SqliteStore::open(&config.data_dir, config.store.max_batch)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    if !existed {
        eprintln!("created a new store: {}", shown(&database));
    } else {
        say_which_store(config);
    }
    Ok(store)
}

/// The existing configured store, for the commands that read or change what is
/// there: they never create a store (a `queue list` run in the wrong directory,
/// or on the wrong database, must say so, not report an empty queue).
pub async fn existing_store(config: &Config) -> Result<Arc<dyn Store>> {
    if let StoreLocation::Postgres(url) = config.store.location() {
        let store = PostgresStore::open_existing(&url, config.store.max_batch).await;
        return Ok(store.context(POSTGRES_FAILED)?);
    }
    let database = SqliteStore::database_path(&config.data_dir);
    if !database.exists() {
        let hint = if config.data_dir.is_relative() {
            "; data_dir is relative to the current directory: run the command where the \
             relay runs, or give it the relay's configuration (--config FILE or OUTPOST_CONFIG)"
        } else {
            ""
        };
        bail!(
            "no Outpost store in {} (looked for {}){hint}",
            shown(&config.data_dir),
            shown(&database)
        );
    }
    say_which_store(config);
    Ok(SqliteStore::open(&config.data_dir, config.store.max_batch)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?)
}

/// The URL is never named in messages: it may hold a password.
const POSTGRES_FAILED: &str = "cannot open the PostgreSQL store of [store] url";

/// Names the store used when the configuration does not make it obvious (a data
/// directory relative to wherever the command runs). On stderr, so the output
/// stays what scripts parse.
fn say_which_store(config: &Config) {
    if config.data_dir.is_relative() {
        eprintln!(
            "store: {}",
            shown(&SqliteStore::database_path(&config.data_dir))
        );
    }
}

/// A path as the user can find it again: absolute.
fn shown(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// A secret (password) from standard input, without its line ending.
/// Unix ms as local time, to the second.
pub fn local_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(String::new, |t| {
        t.with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    })
}

pub fn read_secret_from_stdin() -> Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the password from standard input")?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

pub fn domain_name(text: &str) -> Result<String> {
    Ok(outpost::smtp::Domain::parse(text)
        .with_context(|| format!("{text:?} is not a domain name"))?
        .to_string()
        .to_ascii_lowercase())
}

pub fn resolver(config: &Config) -> Result<HickoryResolver> {
    HickoryResolver::new(&config.dns.nameservers).map_err(anyhow::Error::msg)
}
