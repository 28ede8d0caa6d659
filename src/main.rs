//! The `outpost` command line: parses arguments, loads the configuration, and calls
//! the library. Nothing else lives here.

mod cli;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use outpost::auth::password;
use outpost::config::Config;
use outpost::dkim::check::Severity;
use outpost::dns::{HickoryResolver, Resolver};
use outpost::outbound::probe::{self, Port, ProbeLimits};
use outpost::store::{QueueId, SendingDomain, SqliteStore, Store, Suppression, UserRecord};
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
    /// Sending domains: DKIM keys, the DNS records to publish, and their check.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// The suppression list: addresses a sending domain does not mail.
    #[command(subcommand)]
    Suppress(SuppressCommand),
    /// Probe a mail server's ports: banner, extensions, TLS, certificate, AUTH.
    Check {
        host: String,
        /// Port to probe (repeatable); TLS is implicit on 465. Default: 25, 465, 587 and 2525.
        #[arg(long = "port")]
        ports: Vec<u16>,
        /// Port to probe with implicit TLS, whatever its number (repeatable).
        #[arg(long = "tls-port")]
        tls_ports: Vec<u16>,
        #[arg(long)]
        json: bool,
    },
    /// Bulk send from a CSV file through the HTTP API, with a progress bar.
    Send(SendArgs),
    /// What Outpost makes of a failure reply or a bounce email.
    #[command(subcommand)]
    Bounce(cli::bounce::BounceCommand),
}

#[derive(Subcommand)]
enum DomainCommand {
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
}

#[derive(Subcommand)]
enum SuppressCommand {
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
            Command::Domain(cmd) => domain(&config, cmd).await,
            Command::Suppress(cmd) => suppress(&config, cmd).await,
            Command::Bounce(cmd) => cli::bounce::run(cmd),
            Command::Check {
                host,
                ports,
                tls_ports,
                json,
            } => check(&config, &host, ports, tls_ports, json).await,
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

fn domain_name(text: &str) -> Result<String> {
    Ok(outpost::smtp::Domain::parse(text)
        .with_context(|| format!("{text:?} is not a domain name"))?
        .to_string()
        .to_ascii_lowercase())
}

async fn registered(store: &SqliteStore, name: &str) -> Result<SendingDomain> {
    let name = domain_name(name)?;
    store
        .domains()
        .await?
        .into_iter()
        .find(|d| d.name == name)
        .with_context(|| format!("{name} is not registered (outpost domain add {name})"))
}

fn resolver(config: &Config) -> Result<HickoryResolver> {
    HickoryResolver::new(&config.dns.nameservers).map_err(anyhow::Error::msg)
}

/// Where bounces go: Outpost's first local domain (the hostname by default).
fn bounce_domain(config: &Config) -> &str {
    config
        .relay
        .local_domains
        .first()
        .map_or(config.hostname.as_str(), String::as_str)
}

async fn domain(config: &Config, cmd: DomainCommand) -> Result<()> {
    let store = open_store(config)?;
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
            for d in store.domains().await? {
                let selectors: Vec<String> = d
                    .keys
                    .iter()
                    .map(|k| format!("{}:{}", k.algorithm.as_str(), k.selector))
                    .collect();
                println!("{}\t{}", d.name, selectors.join(","));
            }
        }
        DomainCommand::Remove { domain } => {
            let name = domain_name(&domain)?;
            if !store.remove_domain(&name).await? {
                bail!("{name} is not registered");
            }
            println!("domain {name} removed; its mail is no longer signed");
        }
        DomainCommand::Dns { domain, json } => {
            let record = registered(&store, &domain).await?;
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
            let records = outpost::dkim::records::records(
                &record,
                &config.hostname,
                &ips,
                bounce_domain(config),
            );
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "records": records }))?
                );
            } else {
                for r in &records {
                    println!("; {}\n{}", r.purpose, r.zone_line());
                }
            }
        }
        DomainCommand::Check { domain, json } => {
            let record = registered(&store, &domain).await?;
            let resolver = resolver(config)?;
            let server = outpost::dkim::check::ThisServer {
                hostname: &config.hostname,
                bounce_domain: bounce_domain(config),
            };
            let report = outpost::dkim::check::check(&resolver, &record, &server).await;
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

async fn suppress(config: &Config, cmd: SuppressCommand) -> Result<()> {
    let store = open_store(config)?;
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

async fn check(
    config: &Config,
    host: &str,
    ports: Vec<u16>,
    tls_ports: Vec<u16>,
    json: bool,
) -> Result<()> {
    let mut ports: Vec<Port> = ports.into_iter().map(Port::by_convention).collect();
    ports.extend(tls_ports.into_iter().map(|number| Port {
        number,
        implicit_tls: true,
    }));
    if ports.is_empty() {
        ports = probe::DEFAULT_PORTS.map(Port::by_convention).to_vec();
    }
    let reports = probe::probe(host, &ports, &config.hostname, ProbeLimits::default()).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "host": host, "ports": reports }))?
        );
    } else {
        for r in &reports {
            println!("port {}: {:?}", r.port, r.verdict);
            if let Some(banner) = &r.banner {
                println!("  banner:     {banner}");
            }
            if r.reachable {
                println!("  extensions: {}", r.extensions.join(" "));
                println!(
                    "  tls:        {}{}",
                    r.tls,
                    r.tls_version
                        .as_deref()
                        .map_or(String::new(), |v| format!(" ({v})"))
                );
            }
            if let Some(c) = &r.certificate {
                println!(
                    "  cert:       {} (issuer {}), expires {} ({} days), {}",
                    c.subject,
                    c.issuer,
                    c.not_after,
                    c.days_left,
                    c.problem.as_deref().unwrap_or("valid")
                );
            }
            if !r.auth.is_empty() {
                println!(
                    "  auth:       {}{}",
                    r.auth.join(" "),
                    if r.auth_before_tls {
                        " (before TLS)"
                    } else {
                        ""
                    }
                );
            }
            if let Some(size) = r.size {
                println!("  size:       {size}");
            }
            for f in &r.findings {
                println!("  finding:    {f}");
            }
        }
    }
    Ok(())
}
