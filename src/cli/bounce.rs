//! `outpost bounce`: what Outpost makes of a failure reply or of a bounce email,
//! for operators asking "why was this address suppressed?" and for tests.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use outpost::bounce::{self, Stage, Verdict};
use serde::Serialize;
use std::io::BufRead;
use std::path::PathBuf;

/// Longest bounce email read (a bounce returns at most the original message).
const MAX_EMAIL: u64 = 64 * 1024 * 1024;

#[derive(Subcommand)]
pub enum BounceCommand {
    /// Classify an SMTP reply (`550 5.1.1 <a@b>: user unknown`), given as an argument
    /// or one per line on standard input.
    Classify {
        reply: Option<String>,
        /// The command the reply answered: connect, mail, rcpt, data (default: what
        /// the text says, else unknown).
        #[arg(long, default_value = "unknown")]
        stage: Stage,
        #[arg(long)]
        json: bool,
    },
    /// Parse bounce emails (DSNs, non-standard bounces, ARF complaints, auto-replies).
    Parse {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct Classified<'a> {
    reply: &'a str,
    #[serde(flatten)]
    verdict: Verdict,
}

pub fn run(cmd: BounceCommand) -> Result<()> {
    match cmd {
        BounceCommand::Classify { reply, stage, json } => {
            let replies: Vec<String> = match reply {
                Some(reply) => vec![reply],
                None => std::io::stdin()
                    .lock()
                    .lines()
                    .collect::<Result<Vec<_>, _>>()
                    .context("cannot read replies from standard input")?
                    .into_iter()
                    .filter(|l| !l.trim().is_empty())
                    .collect(),
            };
            for reply in &replies {
                let verdict = classify_line(reply, stage)?;
                if json {
                    println!("{}", serde_json::to_string(&Classified { reply, verdict })?);
                } else {
                    println!(
                        "{}\t{}\t{}\t{}",
                        verdict.class,
                        if verdict.suppress { "suppress" } else { "keep" },
                        reply.trim(),
                        verdict.why
                    );
                }
            }
            Ok(())
        }
        BounceCommand::Parse { files, json } => {
            for file in &files {
                let raw = read_limited(file)?;
                let report = bounce::parse(&raw);
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                    continue;
                }
                println!("{}: {}", file.display(), report.kind.as_str());
                for r in &report.recipients {
                    println!(
                        "  {}\t{}\t{}\t{}\t{}",
                        r.address,
                        r.status.as_deref().unwrap_or("-"),
                        r.class,
                        if r.suppress { "suppress" } else { "keep" },
                        r.diagnostic
                    );
                }
            }
            Ok(())
        }
    }
}

fn classify_line(line: &str, stage: Stage) -> Result<Verdict> {
    let Some((code, enhanced, text)) = bounce::parse_reply_line(line) else {
        bail!("{line:?} is not an SMTP reply: it must start with a code such as 550");
    };
    Ok(bounce::classify(code, enhanced, text, stage))
}

fn read_limited(path: &PathBuf) -> Result<Vec<u8>> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut raw = Vec::new();
    file.take(MAX_EMAIL + 1)
        .read_to_end(&mut raw)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if raw.len() as u64 > MAX_EMAIL {
        bail!("{} is larger than {MAX_EMAIL} bytes", path.display());
    }
    Ok(raw)
}
