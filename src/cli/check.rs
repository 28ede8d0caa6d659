//! `outpost check HOST`: probe a mail server's ports and print what was found.
//!
//! The exit status follows the monitoring-plugin convention (Nagios, Icinga,
//! Zabbix agents read it): 0 every port ok, 1 a warning on some port, 2 a port
//! failing or unreachable, 3 the check itself could not run.

use anyhow::Result;
use outpost::config::Config;
use outpost::diagnose::probe::{self, Port, PortReport, ProbeLimits, Verdict};

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

/// Exit status when the check itself could not run (bad resolver configuration...).
const UNKNOWN: i32 = 3;

pub async fn run(config: &Config, args: CheckArgs) -> Result<()> {
    let status = match probe_and_print(config, args).await {
        Ok(reports) => exit_status(&reports),
        Err(e) => {
            eprintln!("Error: {e:#}");
            UNKNOWN
        }
    };
    if status != 0 {
        std::process::exit(status);
    }
    Ok(())
}

/// 0 all ok, 1 warnings, 2 a port failing or unreachable.
fn exit_status(reports: &[PortReport]) -> i32 {
    reports
        .iter()
        .map(|r| match r.verdict {
            Verdict::Ok => 0,
            Verdict::Warning => 1,
            Verdict::Fail | Verdict::Unreachable => 2,
        })
        .max()
        .unwrap_or(0)
}

async fn probe_and_print(config: &Config, args: CheckArgs) -> Result<Vec<PortReport>> {
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
    Ok(reports)
}
