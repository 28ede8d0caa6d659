//! `outpost queue`: list, show, summarize, retry and delete queued mail.

use super::{existing_store, local_time};
use anyhow::Result;
use anyhow::bail;
use clap::Subcommand;
use outpost::api::MessageView;
use outpost::config::Config;
use outpost::store::{MessageSummary, QueueId};
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Subcommand)]
pub enum QueueCommand {
    /// Messages with recipients still to be delivered, with each recipient's last
    /// reply and next attempt (like `mailq`).
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One message's envelope and per-recipient state.
    Show {
        id: String,
        /// The fields of the API's `GET /v1/messages/{id}`, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pending recipients by destination domain and age (like `qshape`).
    Summary {
        /// Most messages read.
        #[arg(long, default_value_t = 1_000_000)]
        limit: usize,
    },
    /// Make deferred recipients due now: of one message, or of all with --all.
    Retry {
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Remove a message from the queue.
    Delete { id: String },
}

pub async fn run(config: &Config, cmd: QueueCommand) -> Result<()> {
    let store = existing_store(config).await?;
    let parse_id = |id: &str| id.parse::<QueueId>().map_err(anyhow::Error::msg);
    let now = chrono::Utc::now().timestamp_millis();
    match cmd {
        QueueCommand::List { limit } => {
            let messages = store.queued_messages(limit).await?;
            for m in &messages {
                println!(
                    "{}  {:>9}  {}  <{}>",
                    m.id,
                    m.size,
                    local_time(m.received_at),
                    m.mail_from
                );
                for r in m.recipients.iter().filter(|r| !r.status.is_final()) {
                    let why = r.last_reply.as_deref().unwrap_or("not tried yet");
                    println!(
                        "    ({why}; {}, next attempt {})",
                        attempts(r.attempts),
                        relative(r.next_attempt, now)
                    );
                    println!("    {}", r.address);
                }
            }
            if messages.len() == limit {
                println!("-- first {limit} message(s) shown (--limit N for more)");
            } else {
                println!("-- {} message(s) in the queue", messages.len());
            }
        }
        QueueCommand::Show { id, json } => {
            let id = parse_id(&id)?;
            let Some(m) = store.message(&id).await? else {
                bail!("no message {id}");
            };
            let view = MessageView::from(m);
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_message(&view, now);
            }
        }
        QueueCommand::Summary { limit } => {
            let messages = store.queued_messages(limit).await?;
            print!("{}", summary(&messages, now));
            if messages.len() == limit {
                println!("-- only the first {limit} message(s) counted (--limit N)");
            }
        }
        QueueCommand::Retry { id, all } => {
            let id = match (id, all) {
                (Some(id), false) => Some(parse_id(&id)?),
                (None, true) => None,
                _ => bail!("name a queue id, or use --all"),
            };
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

fn print_message(m: &MessageView, now: i64) {
    println!("message   {}", m.id);
    println!("from      <{}>", m.mail_from);
    if let Some(user) = &m.user {
        println!("user      {user}");
    }
    println!("size      {} bytes", m.size);
    println!(
        "received  {} ({})",
        local_time(m.received_at),
        relative(m.received_at, now)
    );
    for r in &m.recipients {
        println!(
            "to        {}: {}, {}",
            r.address,
            r.status,
            attempts(r.attempts)
        );
        if let Some(reply) = &r.last_reply {
            let class = r
                .bounce_class
                .as_deref()
                .map_or(String::new(), |c| format!(" [{c}]"));
            println!("            last reply: {reply}{class}");
        }
        if let Some(next) = r.next_attempt {
            println!("            next attempt {}", relative(next, now));
        }
    }
}

/// Age buckets of the summary in minutes, qshape's: each twice the one before.
const AGE_BUCKETS: [i64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// Pending recipients by destination domain (most first) and by the age of their
/// message, one column per bucket of [`AGE_BUCKETS`] and the last for older.
fn summary(messages: &[MessageSummary], now: i64) -> String {
    let mut by_domain: BTreeMap<String, [u64; AGE_BUCKETS.len() + 1]> = BTreeMap::new();
    for m in messages {
        let age_minutes = (now - m.received_at).max(0) / 60_000;
        let bucket = AGE_BUCKETS
            .iter()
            .position(|limit| age_minutes < *limit)
            .unwrap_or(AGE_BUCKETS.len());
        for r in m.recipients.iter().filter(|r| !r.status.is_final()) {
            let domain = r
                .address
                .rsplit_once('@')
                .map_or(String::new(), |(_, d)| d.to_ascii_lowercase());
            by_domain.entry(domain).or_default()[bucket] += 1;
        }
    }
    let mut rows: Vec<(String, u64, [u64; AGE_BUCKETS.len() + 1])> = by_domain
        .into_iter()
        .map(|(domain, counts)| (domain, counts.iter().sum(), counts))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut totals = [0u64; AGE_BUCKETS.len() + 1];
    for (_, _, counts) in &rows {
        for (total, n) in totals.iter_mut().zip(counts) {
            *total += n;
        }
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(6);
    let mut header = format!("{:>width$} {:>6}", "", "total");
    for limit in AGE_BUCKETS {
        let _ = write!(header, " {:>5}", format!("<{limit}"));
    }
    let _ = write!(
        header,
        " {:>5}",
        format!("{}+", AGE_BUCKETS[AGE_BUCKETS.len() - 1])
    );
    let mut out = String::new();
    let _ = writeln!(out, "pending recipients by destination and age in minutes");
    let _ = writeln!(out, "{header}");
    let mut line = |name: &str, total: u64, counts: &[u64]| {
        let _ = write!(out, "{name:>width$} {total:>6}");
        for n in counts {
            let _ = write!(out, " {n:>5}");
        }
        out.push('\n');
    };
    line("TOTAL", totals.iter().sum(), &totals);
    for (domain, total, counts) in &rows {
        line(domain, *total, counts);
    }
    out
}

fn attempts(n: u32) -> String {
    match n {
        0 => "no attempt yet".into(),
        1 => "1 attempt".into(),
        n => format!("{n} attempts"),
    }
}

/// Unix ms relative to `now`: `in 4m`, `2h 5m ago`, `now`.
fn relative(ms: i64, now: i64) -> String {
    let seconds = (ms - now) / 1000;
    let span = |s: i64| match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    };
    match seconds {
        0 => "now".into(),
        s if s > 0 => format!("in {}", span(s)),
        s => format!("{} ago", span(-s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost::store::{RecipientState, RecipientStatus};

    fn queued(
        id: &str,
        age_minutes: i64,
        rcpts: &[(&str, RecipientStatus)],
        now: i64,
    ) -> MessageSummary {
        MessageSummary {
            id: id.parse().unwrap(),
            mail_from: "a@b.example".into(),
            auth_user: None,
            smtputf8: false,
            size: 10,
            received_at: now - age_minutes * 60_000,
            recipients: rcpts
                .iter()
                .map(|(address, status)| RecipientState {
                    address: (*address).into(),
                    status: *status,
                    attempts: 1,
                    next_attempt: now,
                    last_reply: None,
                    last_class: None,
                    last_attempt: None,
                })
                .collect(),
        }
    }

    #[test]
    fn summary_counts_pending_recipients_by_domain_and_age() {
        let now = 1_000_000_000_000;
        let messages = [
            queued(
                "0123456789ABCDEF0001",
                1,
                &[
                    ("x@slow.example", RecipientStatus::Deferred),
                    ("y@slow.example", RecipientStatus::Delivered),
                ],
                now,
            ),
            queued(
                "0123456789ABCDEF0002",
                30,
                &[
                    ("z@slow.example", RecipientStatus::Deferred),
                    ("w@Other.example", RecipientStatus::Queued),
                ],
                now,
            ),
            queued(
                "0123456789ABCDEF0003",
                5000,
                &[("v@other.example", RecipientStatus::Deferred)],
                now,
            ),
        ];
        let text = summary(&messages, now);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            [
                "TOTAL", "4", "1", "0", "0", "2", "0", "0", "0", "0", "0", "1"
            ],
            "{text}"
        );
        assert_eq!(
            rows[1],
            [
                "other.example",
                "2",
                "0",
                "0",
                "0",
                "1",
                "0",
                "0",
                "0",
                "0",
                "0",
                "1"
            ],
            "{text}"
        );
        assert_eq!(
            rows[2],
            [
                "slow.example",
                "2",
                "1",
                "0",
                "0",
                "1",
                "0",
                "0",
                "0",
                "0",
                "0",
                "0"
            ],
            "{text}"
        );
    }

    #[test]
    fn relative_times_read_like_a_person_would_say_them() {
        assert_eq!(relative(10_000 + 240_000, 10_000), "in 4m");
        assert_eq!(relative(10_000, 10_000 + 7_500_000), "2h 5m ago");
        assert_eq!(relative(10_000, 10_000), "now");
    }
}
