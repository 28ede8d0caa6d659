//! `outpost config check`: load the configuration as `serve` would and say what it
//! means, without binding a port or touching the store (systemd's ExecStartPre,
//! and a check after each edit).

use anyhow::Result;
use clap::Subcommand;
use outpost::config::Config;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration; print what it sets up and any warning.
    Check,
}

pub fn run(config: &Config, source: Option<&std::path::Path>, cmd: ConfigCommand) -> Result<()> {
    let ConfigCommand::Check = cmd;
    match source {
        Some(path) => println!("configuration OK: {}", path.display()),
        None => println!("no configuration file: the built-in defaults"),
    }
    println!("hostname  {}", config.hostname);
    println!(
        "data_dir  {}",
        std::path::absolute(&config.data_dir)
            .unwrap_or_else(|_| config.data_dir.clone())
            .display()
    );
    for l in &config.listeners {
        println!("listen    {} ({})", l.addr, l.mode.as_str());
    }
    println!("http      {}", config.http.addr);
    let mut warnings = Vec::new();
    if let Some(problem) = config.hostname_problem() {
        warnings.push(problem);
    }
    for path in [&config.tls.cert, &config.tls.key].into_iter().flatten() {
        if let Err(e) = std::fs::File::open(path) {
            warnings.push(format!(
                "cannot read {}: {e} (serve will not start)",
                path.display()
            ));
        }
    }
    if config.tls.cert.is_none() {
        warnings.push(
            "no [tls] certificate: a self-signed one is used, which clients and receivers do not trust"
                .to_string(),
        );
    }
    for w in &warnings {
        println!("warning: {w}");
    }
    Ok(())
}
