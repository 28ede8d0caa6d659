//! `outpost stats`: the last hour, day and week at a glance, from the store. The
//! numbers are computed by the same code as the API's `GET /v1/stats`, over every
//! user's events (as an admin sees them).

use super::{existing_store, local_time};
use anyhow::Result;
use outpost::api::{DEFAULT_WINDOWS, Window, compute_stats};
use outpost::config::Config;

#[derive(clap::Args)]
pub struct StatsArgs {
    /// Comma-separated windows (`30m,1h,7d`).
    #[arg(long, default_value = DEFAULT_WINDOWS)]
    windows: String,
    /// The API's JSON (`GET /v1/stats`).
    #[arg(long)]
    json: bool,
}

/// The event kinds shown as columns, in the order a message lives them.
const KINDS: [&str; 5] = ["accepted", "delivered", "deferred", "bounced", "suppressed"];

pub async fn run(config: &Config, args: StatsArgs) -> Result<()> {
    let store = existing_store(config).await?;
    let stats = compute_stats(store.as_ref(), &args.windows, |_| true, None)
        .await
        .map_err(|e| anyhow::anyhow!("--windows: {e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    print!("{:<8}", "window");
    for kind in KINDS {
        print!(" {kind:>10}");
    }
    println!("  top deferred/bounced domains");
    for w in &stats.windows {
        print!("{:<8}", w.window);
        for kind in KINDS {
            print!(" {:>10}", w.counts.get(kind).copied().unwrap_or(0));
        }
        println!(
            "  {}{}",
            troubled_domains(w),
            if w.truncated { " (truncated)" } else { "" }
        );
    }
    if !stats.sending_domains.is_empty() {
        println!(
            "\n{:<24} {:>9} {:>8} {:>6} {:>10} {:>8} {:>10}  last 24 hours",
            "sending domain", "delivered", "bounced", "hard", "complaints", "bounce%", "complaint%"
        );
    }
    for (domain, r) in &stats.sending_domains {
        let state = match (&r.paused_since, &r.pause_reason) {
            (Some(since), Some(reason)) => format!("PAUSED since {}: {reason}", local_time(*since)),
            _ => "sending".into(),
        };
        println!(
            "{domain:<24} {:>9} {:>8} {:>6} {:>10} {:>7.2}% {:>9.2}%  {state}",
            r.delivered,
            r.bounced,
            r.hard_bounces,
            r.complaints,
            100.0 * r.bounce_rate,
            100.0 * r.complaint_rate
        );
    }
    Ok(())
}

/// The three domains with the most deferrals and bounces in the window.
fn troubled_domains(w: &Window) -> String {
    let mut troubled: Vec<(&str, u64)> = w
        .by_domain
        .iter()
        .map(|(domain, counts)| {
            let failed = ["deferred", "bounced"]
                .iter()
                .filter_map(|k| counts.get(*k))
                .sum();
            (domain.as_str(), failed)
        })
        .filter(|(_, failed)| *failed > 0)
        .collect();
    troubled.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    troubled
        .iter()
        .take(3)
        .map(|(domain, n)| format!("{domain} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
