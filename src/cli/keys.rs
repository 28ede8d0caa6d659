//! `outpost key add|list|revoke`: API keys of a user (see `outpost::auth::api_key`).

use super::open_store;
use anyhow::{Result, bail};
use clap::Subcommand;
use outpost::auth::api_key;
use outpost::config::Config;

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Create an API key for USER and print it (once; only its hash is kept). It
    /// works as USER's SMTP AUTH password and as the HTTP API credential (Basic
    /// or `Authorization: Bearer KEY`).
    Add {
        user: String,
        /// A label to tell keys apart in `key list`.
        #[arg(long)]
        name: Option<String>,
        /// Restrict the key to this domain of the user's (repeatable); without
        /// it the key may send as every domain of the user.
        #[arg(long = "domain")]
        domains: Vec<String>,
    },
    /// List keys (of USER, or of everyone): id, user, name, created, last used,
    /// domains. Never the keys themselves.
    List { user: Option<String> },
    /// Delete a key: it stops working at once, on SMTP and HTTP.
    Revoke { id: i64 },
}

pub async fn run(config: &Config, cmd: KeyCommand) -> Result<()> {
    let store = open_store(config).await?;
    match cmd {
        KeyCommand::Add {
            user,
            name,
            domains,
        } => {
            let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
            let now = chrono::Utc::now().timestamp_millis();
            let issued = api_key::issue(&*store, &user, name, &domains, now).await?;
            let scope = if issued.domains.is_empty() {
                format!("every domain of {user}")
            } else {
                issued.domains.join(", ")
            };
            println!("key {} added for {user} (domains: {scope})", issued.id);
            println!("key: {}", issued.key);
            println!("(shown once; only its hash is stored)");
        }
        KeyCommand::List { user } => {
            for k in store.api_keys(user.as_deref()).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.user,
                    k.name.as_deref().unwrap_or("-"),
                    time(k.created_at),
                    k.last_used_at.map_or("never".into(), time),
                    if k.domains.is_empty() {
                        "*".to_string()
                    } else {
                        k.domains.join(",")
                    }
                );
            }
        }
        KeyCommand::Revoke { id } => {
            if !store.revoke_api_key(id).await? {
                bail!("no key {id}");
            }
            println!("key {id} revoked");
        }
    }
    Ok(())
}

fn time(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms).map_or_else(
        || unix_ms.to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}
