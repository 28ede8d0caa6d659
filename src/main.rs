//! The `outpost` command line: parses arguments, loads the configuration, and calls
//! the library. Nothing else lives here.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use outpost::auth::password;
use outpost::config::Config;
use outpost::store::{QueueId, SqliteStore, Store, UserRecord};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "outpost", version, about = "Self-hosted SMTP relay")]
struct Cli {
    /// Configuration file (TOML). Without it, built-in defaults are used.
    #[arg(long, global = true, env = "OUTPOST_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve,
    /// Manage sending users.
    #[command(subcommand)]
    User(UserCommand),
    /// Inspect and manage the queue.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Bulk send from a CSV file through the HTTP API, with a progress bar.
    Send(SendArgs),
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("body").required(true).multiple(true).args(["text", "html"]))]
struct SendArgs {
    /// Sender address (`addr` or `Name <addr>`), in one of the user's domains.
    #[arg(long)]
    from: String,
    /// Recipients: a CSV file whose header row names the template variables; one
    /// column must be `email`.
    #[arg(long)]
    to_csv: PathBuf,
    /// Subject (a template).
    #[arg(long)]
    subject: String,
    /// File with the plain-text body (a template).
    #[arg(long)]
    text: Option<PathBuf>,
    /// File with the HTML body (a template; values are HTML-escaped).
    #[arg(long)]
    html: Option<PathBuf>,
    /// Base URL of the HTTP API. Default: http://[http] addr of the configuration.
    #[arg(long)]
    api: Option<String>,
    /// API user (the SMTP user name).
    #[arg(long, env = "OUTPOST_USER")]
    user: Option<String>,
    /// Read the password from standard input (else $OUTPOST_PASSWORD).
    #[arg(long)]
    password_stdin: bool,
    /// Recipients per request.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Print the first recipient's message and send nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum UserCommand {
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

#[derive(Subcommand)]
enum QueueCommand {
    /// Messages with recipients still to be delivered.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One message's envelope and per-recipient state.
    Show { id: String },
    /// Make deferred recipients due now: of one message, or of all with --all.
    Retry {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Remove a message from the queue.
    Delete { id: String },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = Arc::new(match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    });
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs piped to files, journald or tests stay plain.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(config).await,
            Command::User(cmd) => user(&config, cmd).await,
            Command::Queue(cmd) => queue(&config, cmd).await,
            Command::Send(args) => send(&config, args).await,
        }
    })
}

async fn serve(config: Arc<Config>) -> Result<()> {
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

fn open_store(config: &Config) -> Result<Arc<SqliteStore>> {
    SqliteStore::open(&config.data_dir, config.store.max_batch)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))
}

fn read_or_generate_password(from_stdin: bool) -> Result<(String, bool)> {
    if !from_stdin {
        return Ok((password::generate(), true));
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read the password from standard input")?;
    let password = text.trim_end_matches(['\r', '\n']).to_string();
    if password.len() < 8 {
        bail!("the password must have at least 8 characters");
    }
    Ok((password, false))
}

async fn user(config: &Config, cmd: UserCommand) -> Result<()> {
    let store = open_store(config)?;
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
            for u in store.users().await? {
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

async fn queue(config: &Config, cmd: QueueCommand) -> Result<()> {
    let store = open_store(config)?;
    let parse_id = |id: &str| id.parse::<QueueId>().map_err(anyhow::Error::msg);
    match cmd {
        QueueCommand::List { limit } => {
            let messages = store.queued_messages(limit).await?;
            for m in &messages {
                let pending = m.recipients.iter().filter(|r| !r.status.is_final()).count();
                let received = chrono::DateTime::from_timestamp_millis(m.received_at)
                    .map_or_else(String::new, |t| t.to_rfc3339());
                println!(
                    "{}\t{}\t<{}>\t{} bytes\t{}/{} pending",
                    m.id,
                    received,
                    m.mail_from,
                    m.size,
                    pending,
                    m.recipients.len()
                );
            }
            println!("{} message(s)", messages.len());
        }
        QueueCommand::Show { id } => {
            let id = parse_id(&id)?;
            let Some(m) = store.message(&id).await? else {
                bail!("no message {id}");
            };
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
        QueueCommand::Retry { id, all } => {
            let id = match (id, all) {
                (Some(id), false) => Some(parse_id(&id)?),
                (None, true) => None,
                _ => bail!("name a queue id, or use --all"),
            };
            let now = chrono::Utc::now().timestamp_millis();
            let changed = store.retry_now(id.as_ref(), now).await?;
            if changed == 0 && id.is_some() {
                bail!("no pending recipients in that message");
            }
            println!(
                "{changed} recipient(s) will be retried within a second by the running server"
            );
        }
        QueueCommand::Delete { id } => {
            let id = parse_id(&id)?;
            if !store.delete_message(&id).await? {
                bail!("no message {id}");
            }
            println!("message {id} deleted");
        }
    }
    Ok(())
}

async fn send(config: &Config, args: SendArgs) -> Result<()> {
    let read = |path: &Option<PathBuf>| -> Result<Option<String>> {
        path.as_ref()
            .map(|p| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            })
            .transpose()
    };
    let campaign = outpost::send::Campaign {
        from: args.from,
        subject: args.subject,
        text: read(&args.text)?,
        html: read(&args.html)?,
        rows: outpost::send::read_csv(&args.to_csv)?,
    };
    if args.dry_run {
        print!("{}", campaign.dry_run()?);
        eprintln!(
            "dry run: {} recipient(s) in the file; nothing sent",
            campaign.rows.len()
        );
        return Ok(());
    }
    let Some(user) = args.user else {
        bail!("give --user (or OUTPOST_USER)");
    };
    let password = if args.password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the password from standard input")?;
        text.trim_end_matches(['\r', '\n']).to_string()
    } else {
        std::env::var("OUTPOST_PASSWORD")
            .context("give --password-stdin or set OUTPOST_PASSWORD")?
    };
    let url = args.api.unwrap_or_else(|| {
        let addr = config.http.addr;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        format!("http://{host}:{}", addr.port())
    });
    let api = outpost::send::Api {
        url,
        user,
        password,
        batch_size: args.batch_size,
    };
    let summary = campaign.send(&api).await?;
    println!("accepted: {}", summary.accepted);
    println!("rejected: {}", summary.rejected.len());
    for (row, email, reason) in &summary.rejected {
        println!("  row {row} <{email}>: {reason}");
    }
    if !summary.rejected.is_empty() {
        bail!("{} recipient(s) rejected", summary.rejected.len());
    }
    Ok(())
}
