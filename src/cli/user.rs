//! `outpost user`: sending users, their domains and passwords.

use super::{existing_store, open_store};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use outpost::auth::password;
use outpost::config::Config;
use outpost::store::UserRecord;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user; prints a generated password unless --password-stdin.
    Add {
        name: String,
        /// A domain this user may send as (repeatable).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// May use the admin endpoints of the HTTP API.
        #[arg(long)]
        admin: bool,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users and their domains.
    List,
    /// Remove a user.
    Remove { name: String },
    /// Set a new password (generated, or from standard input).
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

fn read_or_generate_password(from_stdin: bool) -> Result<(String, bool)> {
    if !from_stdin {
        return Ok((password::generate(), true));
    }
    let password = super::read_secret_from_stdin()?;
    if password.len() < 8 {
        bail!("the password must have at least 8 characters");
    }
    if outpost::auth::api_key::is_key(&password) {
        bail!(
            "a password cannot begin with {:?} (that marks API keys)",
            outpost::auth::api_key::PREFIX
        );
    }
    Ok((password, false))
}

pub async fn run(config: &Config, cmd: UserCommand) -> Result<()> {
    let store = match cmd {
        UserCommand::Add { .. } => open_store(config).await?,
        _ => existing_store(config).await?,
    };
    match cmd {
        UserCommand::Add {
            name,
            domains,
            admin,
            password_stdin,
        } => {
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
                bail!("user name {name:?} must be non-empty without spaces");
            }
            let mut checked = Vec::new();
            for d in &domains {
                let domain = outpost::smtp::Domain::parse(d)
                    .with_context(|| format!("--domain {d:?} is not a domain name"))?;
                checked.push(domain.to_string());
            }
            let (password, generated) = read_or_generate_password(password_stdin)?;
            store
                .add_user(UserRecord {
                    name: name.clone(),
                    password_hash: password::hash(&password),
                    admin,
                    domains: checked.clone(),
                })
                .await?;
            println!("user {name} added (domains: {})", checked.join(", "));
            if generated {
                println!("password: {password}");
                println!("(shown once; only its hash is stored)");
            }
        }
        UserCommand::List => {
            let users = store.users().await?;
            if users.is_empty() {
                println!("no users (add one: outpost user add NAME --domain DOMAIN)");
            }
            for u in users {
                println!(
                    "{}\t{}\t{}",
                    u.name,
                    if u.admin { "admin" } else { "-" },
                    u.domains.join(",")
                );
            }
        }
        UserCommand::Remove { name } => {
            if !store.remove_user(&name).await? {
                bail!("no user {name:?}");
            }
            println!("user {name} removed");
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            let (password, generated) = read_or_generate_password(password_stdin)?;
            if !store
                .set_password(&name, &password::hash(&password))
                .await?
            {
                bail!("no user {name:?}");
            }
            println!("password of {name} changed");
            if generated {
                println!("password: {password}");
            }
        }
    }
    Ok(())
}
