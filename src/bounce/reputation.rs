//! Reputation protection: per sending domain, the hard-bounce and complaint rates
//! of the last 24 hours, and the automatic pause of a domain whose rate passes its
//! ceiling (`[deliverability] pause_on_complaint_rate`, `pause_on_bounce_rate`).
//!
//! The mailbox providers judge a sender by what its recipients say: Gmail and
//! Yahoo ask bulk senders to stay under 0.3% complaints, and a high share of
//! unknown addresses marks a list that was bought or never cleaned. Once a domain
//! is past either line, every further message makes it worse, so Outpost stops
//! sending from it (its mail waits in the queue) and says so, until an operator
//! resumes it (`outpost domain resume`).
//!
//! The rates come from the dashboard's hourly counters, which are written in the
//! same commit as each outcome, bounce email and complaint: judging a domain reads
//! at most 24 hours × providers × outcomes rows of it, never its messages.

use crate::config::DeliverabilityConfig;
use crate::store::{CounterRow, DomainPause, DomainScope, Store, StoreResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use tokio::sync::Notify;

/// The rates cover the current hour and the 23 before it.
pub const WINDOW_HOURS: i64 = 24;
const HOUR_MS: i64 = 3_600_000;

/// What one sending domain's mail met over the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DomainReputation {
    /// Recipients delivered (a `250` from the receiving server).
    pub delivered: u64,
    /// Recipients bounced, during delivery or by a bounce email afterwards (a
    /// recipient delivered, then bounced by email, counts in both).
    pub bounced: u64,
    /// Bounces saying the address or its domain does not exist (classes
    /// `bad-mailbox` and `dns`): what a clean list does not produce.
    pub hard_bounces: u64,
    /// Feedback-loop complaints (recipients who pressed "this is spam").
    pub complaints: u64,
    /// `hard_bounces / (delivered + bounced)`; 0 when nothing was sent.
    pub bounce_rate: f64,
    /// `complaints / delivered`; 0 when nothing was delivered.
    pub complaint_rate: f64,
    /// Since when sending from the domain is paused (unix ms); none when it is not.
    pub paused_since: Option<i64>,
    /// Why it is paused.
    pub pause_reason: Option<String>,
}

impl DomainReputation {
    /// Recipients whose delivery was decided: the rates' volume.
    pub fn sent(&self) -> u64 {
        self.delivered + self.bounced
    }

    fn with_rates(mut self) -> Self {
        let ratio = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 / whole as f64
            }
        };
        self.bounce_rate = ratio(self.hard_bounces, self.sent());
        self.complaint_rate = ratio(self.complaints, self.delivered);
        self
    }
}

/// Whether a bounce of `class` says the address is not there at all.
fn is_hard(class: &str) -> bool {
    matches!(class, "bad-mailbox" | "dns")
}

/// The reputation of each sending domain in `rows` (counters of the window).
pub fn from_counters(rows: &[CounterRow]) -> BTreeMap<String, DomainReputation> {
    let mut out: BTreeMap<String, DomainReputation> = BTreeMap::new();
    for row in rows.iter().filter(|r| !r.sending_domain.is_empty()) {
        let count = row.count.max(0) as u64;
        let domain = out.entry(row.sending_domain.clone()).or_default();
        match row.outcome.as_str() {
            "delivered" => domain.delivered += count,
            "bounced" => {
                domain.bounced += count;
                if is_hard(&row.class) {
                    domain.hard_bounces += count;
                }
            }
            "complained" => domain.complaints += count,
            _ => {}
        }
    }
    out.into_iter().map(|(d, r)| (d, r.with_rates())).collect()
}

/// The reputation over the last [`WINDOW_HOURS`] of the sending domains in
/// `scope` that sent anything or are paused, with their pauses.
pub async fn last_day(
    store: &dyn Store,
    scope: DomainScope,
    now: i64,
) -> StoreResult<BTreeMap<String, DomainReputation>> {
    let first_hour = now.div_euclid(HOUR_MS) - (WINDOW_HOURS - 1);
    let rows = store.counters(scope.clone(), first_hour).await?;
    let mut out = from_counters(&rows);
    for pause in store.paused_domains().await? {
        let visible = scope.as_ref().is_none_or(|domains| {
            domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&pause.domain))
        });
        if visible {
            let domain = out.entry(pause.domain).or_default();
            domain.paused_since = Some(pause.since);
            domain.pause_reason = Some(pause.reason);
        }
    }
    Ok(out)
}

/// Why `reputation` calls for a pause under `config`, if it does.
pub fn breach(reputation: &DomainReputation, config: &DeliverabilityConfig) -> Option<String> {
    if reputation.sent() < config.pause_min_volume.max(1) {
        return None;
    }
    let over = |ceiling: f64, rate: f64| ceiling > 0.0 && rate > ceiling;
    if over(config.pause_on_complaint_rate, reputation.complaint_rate) {
        return Some(format!(
            "complaint rate {:.2}% ({} complaints for {} delivered in 24 hours) is over pause_on_complaint_rate {:.2}%",
            100.0 * reputation.complaint_rate,
            reputation.complaints,
            reputation.delivered,
            100.0 * config.pause_on_complaint_rate
        ));
    }
    if over(config.pause_on_bounce_rate, reputation.bounce_rate) {
        return Some(format!(
            "hard bounce rate {:.2}% ({} bad addresses of {} sent in 24 hours) is over pause_on_bounce_rate {:.2}%",
            100.0 * reputation.bounce_rate,
            reputation.hard_bounces,
            reputation.sent(),
            100.0 * config.pause_on_bounce_rate
        ));
    }
    None
}

/// Judges one sending domain at `now` and pauses it when its rates call for it.
/// Returns the pause when this call made it.
pub async fn judge(
    store: &dyn Store,
    config: &DeliverabilityConfig,
    domain: &str,
    now: i64,
) -> StoreResult<Option<DomainPause>> {
    let reputations = last_day(store, Some(vec![domain.to_string()]), now).await?;
    let Some(reputation) = reputations.get(&domain.to_ascii_lowercase()) else {
        return Ok(None);
    };
    if reputation.paused_since.is_some() {
        return Ok(None);
    }
    let Some(reason) = breach(reputation, config) else {
        return Ok(None);
    };
    let pause = DomainPause {
        domain: domain.to_ascii_lowercase(),
        since: now,
        reason,
    };
    if !store.pause_domain(pause.clone()).await? {
        return Ok(None);
    }
    tracing::warn!(domain = %pause.domain, reason = %pause.reason,
        "sending domain paused to protect its reputation; its mail waits in the queue (outpost domain resume {})",
        pause.domain);
    Ok(Some(pause))
}

/// Sending domains whose rates may have changed (a bounce, a complaint), waiting
/// to be judged. Collecting them lets a burst of bounces cost one judgement per
/// domain per round instead of one per bounce.
#[derive(Default)]
pub struct Changed {
    domains: Mutex<BTreeSet<String>>,
    wake: Notify,
}

impl Changed {
    pub fn note(&self, domain: &str) {
        self.domains
            .lock()
            .expect("reputation lock")
            .insert(domain.to_ascii_lowercase());
        self.wake.notify_one();
    }

    /// Waits until a domain is noted, then takes every domain noted so far.
    pub async fn take(&self) -> BTreeSet<String> {
        loop {
            let domains = std::mem::take(&mut *self.domains.lock().expect("reputation lock"));
            if !domains.is_empty() {
                return domains;
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(domain: &str, outcome: &str, class: &str, count: i64) -> CounterRow {
        CounterRow {
            hour: 1,
            sending_domain: domain.into(),
            provider: String::new(),
            outcome: outcome.into(),
            class: class.into(),
            count,
        }
    }

    fn config(min_volume: u64) -> DeliverabilityConfig {
        DeliverabilityConfig {
            pause_min_volume: min_volume,
            ..DeliverabilityConfig::default()
        }
    }

    #[test]
    fn rates_count_hard_bounces_and_complaints_per_domain() {
        let rates = from_counters(&[
            row("a.example", "delivered", "", 990),
            row("a.example", "bounced", "bad-mailbox", 6),
            row("a.example", "bounced", "dns", 2),
            row("a.example", "bounced", "spam-block", 2),
            row("a.example", "complained", "", 3),
            row("a.example", "accepted", "", 1000),
            row("b.example", "deferred", "", 5),
        ]);
        let a = &rates["a.example"];
        assert_eq!(
            (a.delivered, a.bounced, a.hard_bounces, a.complaints),
            (990, 10, 8, 3)
        );
        assert!((a.bounce_rate - 0.008).abs() < 1e-9, "{}", a.bounce_rate);
        assert!((a.complaint_rate - 3.0 / 990.0).abs() < 1e-9);
        assert_eq!(rates["b.example"].bounce_rate, 0.0, "nothing sent, no rate");
    }

    #[test]
    fn a_breach_needs_the_volume_and_a_rate_over_its_ceiling() {
        let rates = |delivered, hard, complaints| {
            from_counters(&[
                row("a", "delivered", "", delivered),
                row("a", "bounced", "bad-mailbox", hard),
                row("a", "complained", "", complaints),
            ])
            .remove("a")
            .unwrap()
        };
        // 3 complaints in 1000 delivered is 0.3%: at the ceiling, not over it.
        assert_eq!(breach(&rates(1000, 0, 3), &config(1000)), None);
        let reason = breach(&rates(1000, 0, 4), &config(1000)).expect("0.4% pauses");
        assert!(reason.contains("complaint rate 0.40%"), "{reason}");
        assert_eq!(
            breach(&rates(100, 0, 4), &config(1000)),
            None,
            "too few sent to judge"
        );
        let reason = breach(&rates(940, 60, 0), &config(1000)).expect("6% hard bounces pause");
        assert!(reason.contains("hard bounce rate 6.00%"), "{reason}");
        let off = DeliverabilityConfig {
            pause_on_complaint_rate: 0.0,
            pause_on_bounce_rate: 0.0,
            ..config(1)
        };
        assert_eq!(breach(&rates(10, 9, 9), &off), None, "0 turns pausing off");
    }
}
