//! `outpost queue`: list, show, retry and delete queued mail.

use super::open_store;
use anyhow::Result;
use anyhow::bail;
use clap::Subcommand;
use outpost::config::Config;
use outpost::store::{QueueId, QueueStore};

#[derive(Subcommand)]
pub enum QueueCommand {
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

pub async fn run(config: &Config, cmd: QueueCommand) -> Result<()> {
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
