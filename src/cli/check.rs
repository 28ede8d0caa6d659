//! `outpost check HOST`: probe a mail server's ports and print what was found.

use anyhow::Result;
use outpost::config::Config;
use outpost::diagnose::probe::{self, Port, ProbeLimits};

#[derive(clap::Args)]
pub struct CheckArgs {
    host: String,
    /// Port to probe (repeatable). TLS is implicit on 465, and found on any port that
    /// stays silent and answers a TLS handshake. Default: 25, 465, 587 and 2525.
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// Port to probe with implicit TLS, whatever its number (repeatable).
    #[arg(long = "tls-port")]
    tls_ports: Vec<u16>,
    #[arg(long)]
    json: bool,
}

pub async fn run(config: &Config, args: CheckArgs) -> Result<()> {
    let CheckArgs {
        host,
        ports,
        tls_ports,
        json,
    } = args;
    let host = host.as_str();
    let mut ports: Vec<Port> = ports.into_iter().map(Port::by_convention).collect();
    ports.extend(tls_ports.into_iter().map(|number| Port {
        number,
        implicit_tls: true,
    }));
    if ports.is_empty() {
        ports = probe::DEFAULT_PORTS.map(Port::by_convention).to_vec();
    }
    let resolver = super::resolver(config)?;
    let reports = probe::probe(
        &resolver,
        host,
        &ports,
        &config.hostname,
        ProbeLimits::default(),
    )
    .await;
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
