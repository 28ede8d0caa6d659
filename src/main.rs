//! The `outpost` command line: parses arguments, sets up logging, and dispatches to
//! the handlers in `cli/`. Nothing else lives here.

mod cli;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use outpost::config::{Config, LogFormat};
use std::io::IsTerminal;
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
    User(cli::user::UserCommand),
    /// API keys: secrets for applications, instead of a user's password.
    #[command(subcommand)]
    Key(cli::keys::KeyCommand),
    /// Inspect and manage the queue.
    #[command(subcommand)]
    Queue(cli::queue::QueueCommand),
    /// Sending domains: DKIM keys, the DNS records to publish, and their check.
    #[command(subcommand)]
    Domain(cli::domain::DomainCommand),
    /// The suppression list: addresses a sending domain does not mail.
    #[command(subcommand)]
    Suppress(cli::suppress::SuppressCommand),
    /// Probe a mail server's ports: banner, extensions, TLS, certificate, AUTH.
    Check(cli::check::CheckArgs),
    /// Bulk send from a CSV file through the HTTP API, with a progress bar.
    Send(cli::send::SendArgs),
    /// What Outpost makes of a failure reply or a bounce email.
    #[command(subcommand)]
    Bounce(cli::bounce::BounceCommand),
    /// Accepted, delivered, deferred and bounced over the last hour, day and week.
    Stats(cli::stats::StatsArgs),
    /// Check the configuration file.
    #[command(subcommand)]
    Config(cli::config::ConfigCommand),
    /// Nodes sharing a PostgreSQL store: their heartbeats and claims.
    #[command(subcommand)]
    Cluster(cli::cluster::ClusterCommand),
    /// The store itself: move a SQLite store into PostgreSQL.
    #[command(subcommand)]
    Store(cli::store::StoreCommand),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = Arc::new(match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(outpost::tls::quiet_client_sni_warnings(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        ))
        .with_writer(std::io::stderr);
    match config.log.format {
        // One object per line, the event's fields at the top level, for log shippers.
        LogFormat::Json => logs.json().flatten_event(true).init(),
        // Colour only on a terminal: logs piped to files, journald or tests stay plain.
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve => cli::serve::run(config).await,
            Command::User(cmd) => cli::user::run(&config, cmd).await,
            Command::Key(cmd) => cli::keys::run(&config, cmd).await,
            Command::Queue(cmd) => cli::queue::run(&config, cmd).await,
            Command::Send(args) => cli::send::run(&config, args).await,
            Command::Domain(cmd) => cli::domain::run(&config, cmd).await,
            Command::Suppress(cmd) => cli::suppress::run(&config, cmd).await,
            Command::Bounce(cmd) => cli::bounce::run(cmd),
            Command::Check(args) => cli::check::run(&config, args).await,
            Command::Stats(args) => cli::stats::run(&config, args).await,
            Command::Config(cmd) => cli::config::run(&config, cli.config.as_deref(), cmd),
            Command::Cluster(cmd) => cli::cluster::run(&config, cmd).await,
            Command::Store(cmd) => cli::store::run(&config, cmd).await,
        }
    })
}
