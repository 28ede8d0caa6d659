//! `outpost domain`: sending domains, their DKIM keys, the DNS records to publish
//! and the check of what is published.

use super::{domain_name, existing_store, local_time, open_store, resolver};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use outpost::config::Config;
use outpost::diagnose::records::{self, Severity};
use outpost::dns::Resolver;
use outpost::store::{DomainPause, SendingDomain, Store};

#[derive(Subcommand)]
pub enum DomainCommand {
    /// Register a sending domain and generate its DKIM key (RSA-2048).
    Add {
        domain: String,
        /// Also generate an Ed25519 key; messages are then signed with both.
        #[arg(long)]
        ed25519: bool,
    },
    /// Registered domains and their DKIM selectors.
    List,
    /// Unregister a domain and delete its keys; its mail is no longer signed.
    Remove { domain: String },
    /// The DNS records to publish for a domain.
    Dns {
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// Look up a domain's published records and say what to change.
    Check {
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop sending from a domain: its mail waits in the queue until it is resumed.
    Pause {
        domain: String,
        /// Why, shown with the queued mail's status and in the event.
        #[arg(long, default_value = "paused by the operator")]
        reason: String,
    },
    /// Send from a paused domain again (paused by hand or for its bounce or
    /// complaint rate); its queued mail is due at once.
    Resume { domain: String },
}

async fn registered(store: &dyn Store, name: &str) -> Result<SendingDomain> {
    let name = domain_name(name)?;
    store
        .domains()
        .await?
        .into_iter()
        .find(|d| d.name == name)
        .with_context(|| format!("{name} is not registered (outpost domain add {name})"))
}

/// The return-path host of `domain`, where its bounces come back (the host of
/// the envelope senders Outpost gives its mail, `bounce::return_path`).
fn bounce_domain<'a>(config: &'a Config, domain: &str) -> &'a str {
    outpost::bounce::return_path::host_for(&config.relay.local_domains, domain)
}

pub async fn run(config: &Config, cmd: DomainCommand) -> Result<()> {
    let store = match cmd {
        DomainCommand::Add { .. } => open_store(config).await?,
        _ => existing_store(config).await?,
    };
    if matches!(cmd, DomainCommand::Dns { .. } | DomainCommand::Check { .. })
        && let Some(problem) = config.hostname_problem()
    {
        eprintln!("warning: {problem}");
    }
    match cmd {
        DomainCommand::Add { domain, ed25519 } => {
            let name = domain_name(&domain)?;
            let record = outpost::dkim::generate(&name, ed25519, chrono::Utc::now())?;
            let selectors: Vec<String> = record
                .keys
                .iter()
                .map(|k| format!("{} ({})", k.selector, k.algorithm.as_str()))
                .collect();
            store.add_domain(record).await?;
            println!(
                "domain {name} added; DKIM selector(s): {}",
                selectors.join(", ")
            );
            println!("publish its records: outpost domain dns {name}");
        }
        DomainCommand::List => {
            let domains = store.domains().await?;
            if domains.is_empty() {
                println!("no sending domains (add one: outpost domain add DOMAIN)");
            }
            let paused = store.paused_domains().await?;
            for d in &domains {
                let selectors: Vec<String> = d
                    .keys
                    .iter()
                    .map(|k| format!("{}:{}", k.algorithm.as_str(), k.selector))
                    .collect();
                let state = paused
                    .iter()
                    .find(|p| p.domain == d.name)
                    .map_or_else(String::new, |p| {
                        format!("\tPAUSED since {}: {}", local_time(p.since), p.reason)
                    });
                println!("{}\t{}{state}", d.name, selectors.join(","));
            }
            // A domain need not be registered to send (or to be paused).
            for p in paused
                .iter()
                .filter(|p| !domains.iter().any(|d| d.name == p.domain))
            {
                println!(
                    "{}\t(not registered)\tPAUSED since {}: {}",
                    p.domain,
                    local_time(p.since),
                    p.reason
                );
            }
        }
        DomainCommand::Pause { domain, reason } => {
            let name = domain_name(&domain)?;
            let pause = DomainPause {
                domain: name.clone(),
                since: chrono::Utc::now().timestamp_millis(),
                reason,
            };
            if !store.pause_domain(pause).await? {
                bail!("{name} is paused already (outpost domain list says why)");
            }
            println!(
                "sending from {name} paused; its mail waits in the queue (outpost domain resume {name})"
            );
        }
        DomainCommand::Resume { domain } => {
            let name = domain_name(&domain)?;
            if !store
                .resume_domain(&name, chrono::Utc::now().timestamp_millis())
                .await?
            {
                bail!("{name} is not paused");
            }
            println!("sending from {name} resumed; its queued mail is due now");
        }
        DomainCommand::Remove { domain } => {
            let name = domain_name(&domain)?;
            if !store.remove_domain(&name).await? {
                bail!("{name} is not registered");
            }
            println!("domain {name} removed; its mail is no longer signed");
        }
        DomainCommand::Dns { domain, json } => {
            let record = registered(store.as_ref(), &domain).await?;
            // The server's addresses make the SPF suggestion exact; without them the
            // a: term still covers it.
            let ips = match resolver(config) {
                Ok(r) => tokio::time::timeout(
                    std::time::Duration::from_secs(3),
                    r.addresses(&config.hostname),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            let to_publish = outpost::dkim::records::records(
                &record,
                &config.hostname,
                &ips,
                bounce_domain(config, &record.name),
            );
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "records": to_publish }))?
                );
            } else {
                for r in &to_publish {
                    println!("; {}\n{}", r.purpose, r.zone_line());
                }
            }
        }
        DomainCommand::Check { domain, json } => {
            let record = registered(store.as_ref(), &domain).await?;
            let resolver = resolver(config)?;
            let server = records::ThisServer {
                hostname: &config.hostname,
                bounce_domain: bounce_domain(config, &record.name),
            };
            let report = records::check(&resolver, &record, &server).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for f in &report.findings {
                    let mark = match f.severity {
                        Severity::Ok => "ok  ",
                        Severity::Warning => "warn",
                        Severity::Error => "FAIL",
                    };
                    println!("{mark} {:<11} {}", f.record, f.message);
                    if let Some(fix) = &f.fix {
                        println!("     {:<11} -> {fix}", "");
                    }
                }
            }
            if report.has_errors() {
                bail!("{}: some records need changing", report.domain);
            }
        }
    }
    Ok(())
}
