//! `outpost suppress`: the suppression list of each sending domain.

use super::{domain_name, existing_store, open_store};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use outpost::config::Config;
use outpost::store::Suppression;

#[derive(Subcommand)]
pub enum SuppressCommand {
    /// Suppressed addresses, of one sending domain or all.
    List {
        #[arg(long)]
        domain: Option<String>,
    },
    /// Stop mail from a sending domain to an address.
    Add {
        address: String,
        #[arg(long)]
        domain: String,
    },
    /// Allow mail from a sending domain to an address again.
    Remove {
        address: String,
        #[arg(long)]
        domain: String,
    },
}

pub async fn run(config: &Config, cmd: SuppressCommand) -> Result<()> {
    let store = match cmd {
        SuppressCommand::Add { .. } => open_store(config).await?,
        _ => existing_store(config).await?,
    };
    match cmd {
        SuppressCommand::List { domain } => {
            let domain = domain.as_deref().map(domain_name).transpose()?;
            let mut after = None;
            let mut count = 0;
            loop {
                let page = store
                    .suppressions(domain.as_deref(), after.take(), 1000)
                    .await?;
                let Some(last) = page.last() else { break };
                after = Some((last.domain.clone(), last.address.clone()));
                for s in &page {
                    let at = chrono::DateTime::from_timestamp_millis(s.created_at)
                        .map_or_else(String::new, |t| t.to_rfc3339());
                    println!("{}\t{}\t{}\t{}", s.domain, s.address, at, s.reason);
                }
                count += page.len();
            }
            println!("{count} suppression(s)");
        }
        SuppressCommand::Add { address, domain } => {
            let address = outpost::smtp::Mailbox::parse(&address)
                .with_context(|| format!("{address:?} is not an address"))?
                .to_string();
            let domain = domain_name(&domain)?;
            let added = store
                .add_suppression(Suppression {
                    domain: domain.clone(),
                    address: address.clone(),
                    reason: "manual".into(),
                    created_at: chrono::Utc::now().timestamp_millis(),
                })
                .await?;
            if added {
                println!("{address} suppressed for {domain}");
            } else {
                println!("{address} was already suppressed for {domain}");
            }
        }
        SuppressCommand::Remove { address, domain } => {
            let domain = domain_name(&domain)?;
            if !store.remove_suppression(&domain, &address).await? {
                bail!("{address} is not suppressed for {domain}");
            }
            println!("{address} no longer suppressed for {domain}");
        }
    }
    Ok(())
}
