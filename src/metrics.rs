//! Prometheus metrics (SPEC §9): a small explicit registry, created at start-up and
//! passed to the parts that count (inbound listeners, the acceptance path, the
//! delivery workers). No global statics: each server has its own `Metrics`.
//!
//! Rendered in the Prometheus text exposition format (version 0.0.4) by
//! `GET /metrics`. The destination-domain label is bounded: past
//! [`MAX_DOMAINS`] distinct domains, further ones are counted as `other`.
//!
//! The store's group commit reports into [`CommitStages`] (shared with the store
//! when it is opened): how long each accepted message waited for a batch, for the
//! batch to be written and for the fsync that made it durable, and how many writes
//! each batch held. Together they say whether the disk or the CPU limits acceptance.

use crate::bounce::reputation::DomainReputation;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most distinct `domain` label values kept.
pub const MAX_DOMAINS: usize = 1000;
/// Upper bounds (seconds) of the delivery latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 432000.0,
];
/// Upper bounds (seconds) of the commit stage histograms: 50 µs to 1 s.
const STAGE_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Upper bounds of the batch size histogram (writes per commit).
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Values of the `stage` label, in the order a write goes through them.
const STAGES: [&str; 3] = ["wait", "write", "fsync"];
/// Values of the `source` label.
const SOURCES: [&str; 2] = ["smtp", "http"];

#[derive(Default)]
pub struct Metrics {
    connections_total: AtomicU64,
    connections_open: AtomicI64,
    /// Per source (index into `SOURCES`): accepted, rejected.
    messages: [[AtomicU64; 2]; 2],
    /// (result, domain) → recipients.
    deliveries: Mutex<BTreeMap<(&'static str, String), u64>>,
    latency: Mutex<Histogram<{ LATENCY_BUCKETS.len() }>>,
    commit: Arc<CommitStages>,
}

/// A Prometheus histogram over the upper bounds `bounds`: per-bucket counts (not
/// yet cumulative), count and sum.
struct Histogram<const N: usize> {
    bounds: &'static [f64; N],
    counts: [u64; N],
    count: u64,
    sum: f64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: &'static [f64; N]) -> Histogram<N> {
        Histogram {
            bounds,
            counts: [0; N],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|bound| value <= *bound) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += value;
    }

    /// The `_bucket`, `_sum` and `_count` samples of `name`, with `label` (a name
    /// and a value) on each.
    fn render(&self, out: &mut String, name: &str, label: Option<(&str, &str)>) {
        let (before_le, set) = match label {
            Some((k, v)) => (format!("{k}=\"{v}\","), format!("{{{k}=\"{v}\"}}")),
            None => (String::new(), String::new()),
        };
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{before_le}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{before_le}le=\"+Inf\"}} {}\n{name}_sum{set} {}\n{name}_count{set} {}",
            self.count, self.sum, self.count
        );
    }
}

impl Default for Histogram<{ LATENCY_BUCKETS.len() }> {
    fn default() -> Self {
        Histogram::new(&LATENCY_BUCKETS)
    }
}

/// Where the store's group commit spends an acceptance's time, and how large its
/// batches are. The store observes; [`Metrics::render`] reports.
pub struct CommitStages {
    /// Per acceptance: waiting for a batch to begin, writing the batch, and its
    /// COMMIT (the WAL frames written and fsynced).
    stages: Mutex<[Histogram<{ STAGE_BUCKETS.len() }>; 3]>,
    /// Writes per commit, acceptances or not.
    batch: Mutex<Histogram<{ BATCH_BUCKETS.len() }>>,
}

impl Default for CommitStages {
    fn default() -> Self {
        CommitStages {
            stages: Mutex::new([const { Histogram::new(&STAGE_BUCKETS) }; 3]),
            batch: Mutex::new(Histogram::new(&BATCH_BUCKETS)),
        }
    }
}

impl CommitStages {
    /// One durable batch of `writes` writes, among them acceptances that waited
    /// `accept_waits` each for the batch to begin; the batch took `write` to write
    /// and then `fsync` to become durable.
    pub fn batch(
        &self,
        writes: usize,
        accept_waits: &[Duration],
        write: Duration,
        fsync: Duration,
    ) {
        self.batch
            .lock()
            .expect("metrics lock")
            .observe(writes as f64);
        if accept_waits.is_empty() {
            return;
        }
        let mut stages = self.stages.lock().expect("metrics lock");
        for wait in accept_waits {
            stages[0].observe(wait.as_secs_f64());
            stages[1].observe(write.as_secs_f64());
            stages[2].observe(fsync.as_secs_f64());
        }
    }

    /// The mean of each accept stage and of the batch size, one line each.
    pub fn summary(&self) -> String {
        let mean = |h: &Histogram<{ STAGE_BUCKETS.len() }>| h.sum / h.count.max(1) as f64;
        let stages = self.stages.lock().expect("metrics lock");
        let mut out = String::new();
        for (stage, h) in STAGES.iter().zip(stages.iter()) {
            let _ = writeln!(
                out,
                "{stage:>6}: {:.3} ms mean over {} acceptances",
                mean(h) * 1e3,
                h.count
            );
        }
        let batch = self.batch.lock().expect("metrics lock");
        let _ = writeln!(
            out,
            " batch: {:.1} writes mean over {} commits",
            batch.sum / batch.count.max(1) as f64,
            batch.count
        );
        out
    }

    fn render(&self, out: &mut String) {
        let stages = self.stages.lock().expect("metrics lock");
        for (stage, h) in STAGES.iter().zip(stages.iter()) {
            h.render(out, "outpost_accept_stage_seconds", Some(("stage", stage)));
        }
        drop(stages);
        self.batch
            .lock()
            .expect("metrics lock")
            .render(out, "outpost_store_batch_writes", None);
    }
}

/// Keeps the open-connections gauge up while it lives.
pub struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// What the store's group commit reports into (see [`CommitStages`]).
    pub fn commit_stages(&self) -> Arc<CommitStages> {
        self.commit.clone()
    }

    /// Counts an SMTP connection that got past the connection limits.
    pub fn connection_opened(&self) -> OpenConnection<'_> {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    /// Counts a message accepted or rejected; `source` is `smtp` or `http`.
    pub fn message_outcome(&self, source: &str, accepted: bool) {
        let s = SOURCES.iter().position(|s| *s == source).unwrap_or(0);
        self.messages[s][usize::from(!accepted)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one recipient's delivery attempt outcome (`delivered`, `deferred`,
    /// `bounced`); `latency` (from acceptance) is observed for deliveries.
    pub fn delivery(&self, result: &'static str, domain: &str, latency: Option<Duration>) {
        {
            let mut map = self.deliveries.lock().expect("metrics lock");
            let known = map.contains_key(&(result, domain.to_string()));
            let distinct = map.len();
            let domain = if known || distinct < MAX_DOMAINS {
                domain
            } else {
                "other"
            };
            *map.entry((result, domain.to_string())).or_default() += 1;
        }
        if let Some(latency) = latency {
            self.latency
                .lock()
                .expect("metrics lock")
                .observe(latency.as_secs_f64());
        }
    }

    /// The text exposition, with the gauges read at scrape time: `pending`
    /// recipients in the store, the delivery window's occupancy, and the sending
    /// domains' rates over the last 24 hours (`bounce::reputation`).
    pub fn render(
        &self,
        pending: Option<usize>,
        queue_in_memory: Option<usize>,
        sending_domains: &BTreeMap<String, DomainReputation>,
    ) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            "outpost_smtp_connections_total",
            "counter",
            "SMTP connections accepted.",
        );
        family(
            "outpost_smtp_connections_open",
            "gauge",
            "SMTP connections open now.",
        );
        family(
            "outpost_messages_accepted_total",
            "counter",
            "Messages accepted (stored), by source.",
        );
        family(
            "outpost_messages_rejected_total",
            "counter",
            "Messages refused at the acceptance path, by source.",
        );
        family(
            "outpost_deliveries_total",
            "counter",
            "Recipient delivery outcomes, by result and destination domain.",
        );
        family(
            "outpost_queue_recipients_pending",
            "gauge",
            "Recipients queued or deferred in the store (the queue depth).",
        );
        family(
            "outpost_queue_messages_in_memory",
            "gauge",
            "Messages in delivery's in-memory window.",
        );
        family(
            "outpost_sending_domain_bounce_rate",
            "gauge",
            "Hard bounces (bad mailbox, no such domain) per recipient sent over the last 24 hours, by sending domain.",
        );
        family(
            "outpost_sending_domain_complaint_rate",
            "gauge",
            "Feedback-loop complaints per recipient delivered over the last 24 hours, by sending domain.",
        );
        family(
            "outpost_sending_domain_paused",
            "gauge",
            "1 while sending from the domain is paused (deliverability.pause_on_*, outpost domain pause).",
        );
        family(
            "outpost_delivery_latency_seconds",
            "histogram",
            "Time from acceptance to delivery, per delivered recipient.",
        );
        family(
            "outpost_accept_stage_seconds",
            "histogram",
            "Time an accepted message spent in each stage of the store's group commit: waiting for a batch, writing the batch, and making it durable (the large bodies' spool file written and fsynced, if any, then the COMMIT: the WAL frames written and fsynced).",
        );
        family(
            "outpost_store_batch_writes",
            "histogram",
            "Writes per store commit (group commit batch size).",
        );
        // The HELP/TYPE lines above are grouped for reading; samples follow.
        let _ = writeln!(
            out,
            "outpost_smtp_connections_total {}",
            self.connections_total.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "outpost_smtp_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        for (i, source) in SOURCES.iter().enumerate() {
            for (j, name) in ["accepted", "rejected"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "outpost_messages_{name}_total{{source=\"{source}\"}} {}",
                    self.messages[i][j].load(Ordering::Relaxed)
                );
            }
        }
        for ((result, domain), n) in self.deliveries.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "outpost_deliveries_total{{result=\"{result}\",domain=\"{}\"}} {n}",
                escape_label(domain)
            );
        }
        if let Some(n) = pending {
            let _ = writeln!(out, "outpost_queue_recipients_pending {n}");
        }
        if let Some(n) = queue_in_memory {
            let _ = writeln!(out, "outpost_queue_messages_in_memory {n}");
        }
        for (domain, r) in sending_domains {
            let domain = escape_label(domain);
            let paused = u8::from(r.paused_since.is_some());
            let _ = writeln!(
                out,
                "outpost_sending_domain_bounce_rate{{domain=\"{domain}\"}} {}\n\
                 outpost_sending_domain_complaint_rate{{domain=\"{domain}\"}} {}\n\
                 outpost_sending_domain_paused{{domain=\"{domain}\"}} {paused}",
                r.bounce_rate, r.complaint_rate
            );
        }
        self.latency.lock().expect("metrics lock").render(
            &mut out,
            "outpost_delivery_latency_seconds",
            None,
        );
        self.commit.render(&mut out);
        out
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        drop(m.connection_opened());
        let _open = m.connection_opened();
        m.message_outcome("http", true);
        m.message_outcome("smtp", false);
        m.delivery("delivered", "x.example", Some(Duration::from_secs(2)));
        m.delivery("bounced", "y.\"example", None);
        let ms = Duration::from_millis;
        m.commit_stages().batch(3, &[ms(2), ms(30)], ms(1), ms(4));
        let text = m.render(Some(7), Some(3), &BTreeMap::new());
        for line in [
            "outpost_smtp_connections_total 2",
            "outpost_smtp_connections_open 1",
            "outpost_messages_accepted_total{source=\"http\"} 1",
            "outpost_messages_rejected_total{source=\"smtp\"} 1",
            "outpost_deliveries_total{result=\"delivered\",domain=\"x.example\"} 1",
            "outpost_deliveries_total{result=\"bounced\",domain=\"y.\\\"example\"} 1",
            "outpost_queue_recipients_pending 7",
            "outpost_queue_messages_in_memory 3",
            "outpost_delivery_latency_seconds_bucket{le=\"1\"} 0",
            "outpost_delivery_latency_seconds_bucket{le=\"5\"} 1",
            "outpost_delivery_latency_seconds_bucket{le=\"+Inf\"} 1",
            "outpost_delivery_latency_seconds_count 1",
            "outpost_accept_stage_seconds_bucket{stage=\"wait\",le=\"0.0025\"} 1",
            "outpost_accept_stage_seconds_bucket{stage=\"wait\",le=\"0.05\"} 2",
            "outpost_accept_stage_seconds_count{stage=\"wait\"} 2",
            "outpost_accept_stage_seconds_bucket{stage=\"write\",le=\"0.0005\"} 0",
            "outpost_accept_stage_seconds_bucket{stage=\"write\",le=\"0.001\"} 2",
            "outpost_accept_stage_seconds_bucket{stage=\"fsync\",le=\"0.005\"} 2",
            "outpost_store_batch_writes_bucket{le=\"2\"} 0",
            "outpost_store_batch_writes_bucket{le=\"4\"} 1",
            "outpost_store_batch_writes_sum 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
