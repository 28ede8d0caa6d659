//! The command handlers of the `outpost` binary and their human output (`--json`
//! for scripts). `main.rs` parses the command line and calls one of these; the
//! relay itself lives in the library, which knows nothing of this module (so the
//! HTTP client and the progress bar of `outpost send` are the CLI's dependencies,
//! not the relay's).

pub mod bounce;
pub mod check;
pub mod domain;
pub mod keys;
pub mod queue;
pub mod send;
pub mod serve;
pub mod suppress;
pub mod user;

use anyhow::{Context, Result};
use outpost::config::Config;
use outpost::dns::HickoryResolver;
use outpost::store::SqliteStore;
use std::io::Read;
use std::sync::Arc;

pub fn open_store(config: &Config) -> Result<Arc<SqliteStore>> {
    SqliteStore::open(&config.data_dir, config.store.max_batch)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))
}

/// A secret (password) from standard input, without its line ending.
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
