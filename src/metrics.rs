//! Prometheus metrics (SPEC §9): a small explicit registry, created at start-up and
//! passed to the parts that count (inbound listeners, the acceptance path, the
//! delivery workers). No global statics: each server has its own `Metrics`.
//!
//! Rendered in the Prometheus text exposition format (version 0.0.4) by
//! `GET /metrics`. The destination-domain label is bounded: past
//! [`MAX_DOMAINS`] distinct domains, further ones are counted as `other`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Most distinct `domain` label values kept.
pub const MAX_DOMAINS: usize = 1000;
/// Upper bounds (seconds) of the delivery latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 432000.0,
];
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
    latency: Mutex<Histogram>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Keeps the open-connections gauge up while it lives.
pub struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
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
            let seconds = latency.as_secs_f64();
            let mut h = self.latency.lock().expect("metrics lock");
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
    }

    /// The text exposition, with the queue gauges read at scrape time:
    /// `pending` recipients in the store and the delivery window's occupancy.
    pub fn render(&self, pending: Option<usize>, queue_in_memory: Option<usize>) -> String {
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
            "outpost_delivery_latency_seconds",
            "histogram",
            "Time from acceptance to delivery, per delivered recipient.",
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
        let h = self.latency.lock().expect("metrics lock");
        for (bound, n) in LATENCY_BUCKETS.iter().zip(h.counts) {
            let _ = writeln!(
                out,
                "outpost_delivery_latency_seconds_bucket{{le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "outpost_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {}\noutpost_delivery_latency_seconds_sum {}\noutpost_delivery_latency_seconds_count {}",
            h.count, h.sum, h.count
        );
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
        let text = m.render(Some(7), Some(3));
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
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
