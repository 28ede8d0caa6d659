//! `outpost send`: bulk sending from a CSV file through the HTTP API.
//!
//! The CSV's header row names the template variables; one column must be
//! `email`. Rows go to `POST /v1/messages` in batches as personalized recipients
//! (`{"email", "vars"}`), so the server renders and checks every message. A batch
//! refused because of one recipient (`field: "to[i]..."`) is sent again without
//! it, so one bad row costs only itself; a batch partly stored (`207`) is sent
//! again with only the rows that were not. An error that would hit every row (the
//! API unreachable, wrong credentials, a sender domain that is not the user's, a
//! template error that names no recipient) stops the run at once, with what was
//! sent until then. `--dry-run` renders the first message locally
//! with the same code the server uses, and sends nothing.

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use outpost::api::{Compose, Personalized, Recipient, SendRequest};
use outpost::config::Config;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("body").required(true).multiple(true).args(["text", "html"]))]
pub struct SendArgs {
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

pub async fn run(config: &Config, args: SendArgs) -> Result<()> {
    let read = |path: &Option<PathBuf>| -> Result<Option<String>> {
        path.as_ref()
            .map(|p| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            })
            .transpose()
    };
    let campaign = Campaign {
        from: args.from,
        subject: args.subject,
        text: read(&args.text)?,
        html: read(&args.html)?,
        rows: read_csv(&args.to_csv)?,
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
        super::read_secret_from_stdin()?
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
    let api = Api {
        url,
        user,
        password,
        batch_size: args.batch_size,
    };
    let summary = campaign.send(&api).await;
    println!(
        "accepted: {}, rejected: {}, not sent: {} ({:.0} rows/s)",
        summary.accepted,
        summary.rejected.len(),
        campaign.rows.len() - summary.accepted - summary.rejected.len(),
        summary.rate()
    );
    for (row, email, reason) in &summary.rejected {
        println!("  row {row} <{email}>: {reason}");
    }
    if let Some(reason) = summary.stopped {
        bail!("stopped: {reason}");
    }
    if !summary.rejected.is_empty() {
        bail!("{} recipient(s) rejected", summary.rejected.len());
    }
    Ok(())
}

/// Attempts for a batch that fails for a reason that may pass (5xx, network).
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Csv(String),
    #[error("{0}")]
    Template(String),
}

/// What to send.
pub struct Campaign {
    pub from: String,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub rows: Vec<Recipient>,
}

/// Where and as whom.
pub struct Api {
    pub url: String,
    pub user: String,
    pub password: String,
    pub batch_size: usize,
}

#[derive(Debug)]
pub struct Summary {
    pub accepted: usize,
    /// (row number in the file, counting the header as row 1; address; reason).
    pub rejected: Vec<(usize, String, String)>,
    /// Why the run stopped before the end: an error that every row would meet.
    pub stopped: Option<String>,
    started: std::time::Instant,
}

impl Summary {
    /// Rows handled (accepted or rejected) per second.
    pub fn rate(&self) -> f64 {
        (self.accepted + self.rejected.len()) as f64
            / self.started.elapsed().as_secs_f64().max(0.001)
    }
}

/// Reads the recipients: one per data row, every column a template variable.
pub fn read_csv(path: &Path) -> Result<Vec<Recipient>, SendError> {
    let err = |e: csv::Error| SendError::Csv(format!("{}: {e}", path.display()));
    let mut reader = csv::Reader::from_path(path).map_err(err)?;
    let headers = reader.headers().map_err(err)?.clone();
    let Some(email) = headers.iter().position(|h| h.trim() == "email") else {
        return Err(SendError::Csv(format!(
            "{}: the header row has no `email` column",
            path.display()
        )));
    };
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(err)?;
        let vars = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.trim().to_string(), serde_json::Value::from(v)))
            .collect();
        rows.push(Recipient::Personalized(Personalized {
            email: record.get(email).unwrap_or_default().trim().to_string(),
            vars,
        }));
    }
    Ok(rows)
}

impl Campaign {
    fn request(&self, to: Vec<Recipient>) -> SendRequest {
        SendRequest {
            from: self.from.clone(),
            to,
            subject: self.subject.clone(),
            text: self.text.clone(),
            html: self.html.clone(),
            headers: Default::default(),
            reply_to: None,
        }
    }

    /// The first recipient's message as the server would build it (without the
    /// server's `Received:` and `List-Unsubscribe` fields).
    pub fn dry_run(&self) -> Result<String, SendError> {
        let first = self
            .rows
            .first()
            .ok_or_else(|| SendError::Csv("the CSV file has no data rows".into()))?;
        let request = self.request(vec![first.clone()]);
        let compose = Compose::new(&request, 1).map_err(|e| SendError::Template(e.to_string()))?;
        let bytes = compose
            .message(0, "dry-run@outpost.invalid", &[])
            .map_err(|e| SendError::Template(e.to_string()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Sends every row in batches, showing progress; returns what was accepted, what
    /// was rejected and why, and why the run stopped early if it did.
    pub async fn send(&self, api: &Api) -> Summary {
        let mut summary = Summary {
            accepted: 0,
            rejected: Vec::new(),
            stopped: None,
            started: std::time::Instant::now(),
        };
        // A template error found in the first row would be found in every row.
        if let Err(e) = self.dry_run() {
            summary.stopped = Some(e.to_string());
            return summary;
        }
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                summary.stopped = Some(format!("cannot make an HTTP client: {e}"));
                return summary;
            }
        };
        let progress = ProgressBar::new(self.rows.len() as u64);
        progress.set_style(
            // `per_sec:0`: the rate rounded to whole rows.
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} rows  {per_sec:0}  eta {eta}  {msg}",
            )
            .expect("static template"),
        );
        let numbered: Vec<(usize, &Recipient)> = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| (i + 2, r))
            .collect();
        'batches: for chunk in numbered.chunks(api.batch_size.max(1)) {
            let mut batch = chunk.to_vec();
            let mut attempt = 0;
            while !batch.is_empty() {
                let request = self.request(batch.iter().map(|(_, r)| (*r).clone()).collect());
                let url = format!("{}/v1/messages", api.url.trim_end_matches('/'));
                let result = client
                    .post(&url)
                    .basic_auth(&api.user, Some(&api.password))
                    .json(&request)
                    .send()
                    .await;
                let (status, body) = match result {
                    Ok(r) => {
                        let status = r.status();
                        (
                            status,
                            r.json::<serde_json::Value>().await.unwrap_or_default(),
                        )
                    }
                    Err(e) => {
                        attempt += 1;
                        if attempt >= ATTEMPTS {
                            summary.stopped = Some(format!(
                                "cannot reach the API at {url}: {}",
                                error_chain(&e)
                            ));
                            break 'batches;
                        }
                        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                        continue;
                    }
                };
                let reason = body["error"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_string();
                if status.is_success() {
                    // A 207 lists the rows whose message was not stored: only those
                    // are sent again (when the failure may pass) or rejected.
                    let failed = stored_all_but(&body, batch.len());
                    summary.accepted += batch.len() - failed.len();
                    let mut again = Vec::new();
                    for (i, status, reason) in failed {
                        if status >= 500 && attempt + 1 < ATTEMPTS {
                            again.push(batch[i]);
                        } else {
                            let (row, r) = batch[i];
                            summary.rejected.push((
                                row,
                                r.email().to_string(),
                                format!("HTTP {status}: {reason}"),
                            ));
                        }
                    }
                    batch = again;
                    if !batch.is_empty() {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                    }
                    continue;
                }
                if matches!(status.as_u16(), 401 | 403) {
                    summary.stopped = Some(format!(
                        "the server refused the run: HTTP {status}: {reason}"
                    ));
                    break 'batches;
                }
                let bad_row = body["field"]
                    .as_str()
                    .and_then(|f| f.strip_prefix("to["))
                    .and_then(|f| f.split(']').next())
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|i| *i < batch.len());
                match bad_row {
                    Some(i) if status.is_client_error() => {
                        let (row, r) = batch.remove(i);
                        summary.rejected.push((row, r.email().to_string(), reason));
                        progress.inc(1);
                    }
                    _ if status.is_server_error() && attempt + 1 < ATTEMPTS => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                    }
                    // The store still failing after the retries: these rows
                    // are rejected (the next batch may fare better).
                    _ if status.is_server_error() => {
                        for (row, r) in batch.drain(..) {
                            let why = format!("HTTP {status}: {reason}");
                            summary.rejected.push((row, r.email().to_string(), why));
                        }
                    }
                    // Not about one row (a template error): every row would get it.
                    _ => {
                        let field = body["field"]
                            .as_str()
                            .map_or(String::new(), |f| format!(" ({f})"));
                        summary.stopped = Some(format!("HTTP {status}: {reason}{field}"));
                        break 'batches;
                    }
                }
            }
            progress.set_position((summary.accepted + summary.rejected.len()) as u64);
            progress.set_message(format!("{} rejected", summary.rejected.len()));
        }
        // The summary is printed on its own line after the bar.
        progress.finish_and_clear();
        summary
    }
}

/// An error with its causes (`connection refused` is usually a cause, not the
/// error itself).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The `failed` entries of a successful answer as (place in the batch, status,
/// reason); each place once, and only places the batch has.
fn stored_all_but(body: &serde_json::Value, batch: usize) -> Vec<(usize, u16, String)> {
    let mut failed: Vec<(usize, u16, String)> = body["failed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            let index = usize::try_from(f["index"].as_u64()?).ok()?;
            let status = u16::try_from(f["status"].as_u64()?).ok()?;
            let reason = f["error"].as_str().unwrap_or("no reason given").to_string();
            (index < batch).then_some((index, status, reason))
        })
        .collect();
    failed.sort_by_key(|(i, ..)| *i);
    failed.dedup_by_key(|(i, ..)| *i);
    failed
}
