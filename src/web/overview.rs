//! Overview (`/`): the period's counts and rates, the hourly chart, top
//! destinations and bounce classes, the queue now. Everything comes from the
//! hourly counters (`DashboardStore::counters`), never from scanning messages.

use super::chart::{self, Bar};
use super::session::Viewer;
use super::{Ctx, Period, WebContext, WebError, page, sees, time};
use crate::store::CounterRow;
use axum::Router;
use axum::extract::Query;
use axum::response::Response;
use axum::routing::get;
use minijinja::{Value, context};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub fn routes() -> Router<Arc<WebContext>> {
    Router::new().route("/", get(overview))
}

const OUTCOMES: [(&str, &str); 7] = [
    ("accepted", "Accepted"),
    ("delivered", "Delivered"),
    ("deferred", "Deferred"),
    ("bounced", "Bounced"),
    ("suppressed", "Suppressed"),
    ("unsubscribed", "Unsubscribed"),
    ("complained", "Complaints"),
];
const TOP: usize = 10;

/// `part` of `whole` as a percentage with one decimal, or a dash when `whole` is 0.
pub fn rate(part: i64, whole: i64) -> String {
    if whole <= 0 {
        "–".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// The sums the page shows, from the counters of the period.
#[derive(Debug, Default, PartialEq)]
pub struct Totals {
    pub by_outcome: HashMap<String, i64>,
    pub bars: Vec<Bar>,
    /// Provider → (delivered, deferred, bounced), busiest first.
    pub providers: Vec<(String, [i64; 3])>,
    /// Bounce class → count, most first.
    pub bounce_classes: Vec<(String, i64)>,
}

pub fn totals(rows: &[CounterRow], first_hour: i64, last_hour: i64) -> Totals {
    let mut by_outcome: HashMap<String, i64> = HashMap::new();
    let mut bars: BTreeMap<i64, Bar> = (first_hour..=last_hour)
        .map(|hour| {
            (
                hour,
                Bar {
                    hour,
                    ..Bar::default()
                },
            )
        })
        .collect();
    let mut providers: HashMap<&str, [i64; 3]> = HashMap::new();
    let mut classes: HashMap<&str, i64> = HashMap::new();
    for row in rows
        .iter()
        .filter(|r| r.hour >= first_hour && r.hour <= last_hour)
    {
        *by_outcome.entry(row.outcome.clone()).or_default() += row.count;
        let bar = bars.entry(row.hour).or_default();
        let slot = match row.outcome.as_str() {
            "delivered" => {
                bar.delivered += row.count;
                0
            }
            "deferred" => {
                bar.deferred += row.count;
                1
            }
            "bounced" => {
                bar.bounced += row.count;
                *classes.entry(row.class.as_str()).or_default() += row.count;
                2
            }
            _ => continue,
        };
        if !row.provider.is_empty() {
            providers.entry(row.provider.as_str()).or_default()[slot] += row.count;
        }
    }
    let mut providers: Vec<(String, [i64; 3])> = providers
        .into_iter()
        .map(|(p, c)| (p.to_string(), c))
        .collect();
    providers.sort_by(|a, b| {
        b.1.iter()
            .sum::<i64>()
            .cmp(&a.1.iter().sum())
            .then(a.0.cmp(&b.0))
    });
    providers.truncate(TOP);
    let mut bounce_classes: Vec<(String, i64)> = classes
        .into_iter()
        .map(|(c, n)| (if c.is_empty() { "unclassified" } else { c }.to_string(), n))
        .collect();
    bounce_classes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    bounce_classes.truncate(TOP);
    Totals {
        by_outcome,
        bars: bars.into_values().collect(),
        providers,
        bounce_classes,
    }
}

async fn overview(
    ctx: Ctx,
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, WebError> {
    let period = Period::parse(query.get("period").map(String::as_str));
    let store = &ctx.api.store;
    let now_hour = chrono::Utc::now().timestamp_millis() / 3_600_000;
    let first_hour = now_hour - period.hours() + 1;
    let scope = viewer.user.domain_scope();
    let rows = store.counters(scope.clone(), first_hour).await?;
    let examples = store.bounce_examples(scope.clone()).await?;
    let queue_size = store.pending_count(scope).await?;
    let has_domains = store
        .domains()
        .await?
        .iter()
        .any(|d| sees(&viewer.user, &d.name));
    let t = totals(&rows, first_hour, now_hour);
    let count = |k: &str| t.by_outcome.get(k).copied().unwrap_or(0);
    let accepted = count("accepted");
    let stats: Vec<Value> = OUTCOMES
        .iter()
        .map(|(key, label)| {
            let value = count(key);
            let sub = match *key {
                "delivered" => format!("{} of accepted", rate(value, accepted)),
                "bounced" => format!("{} bounce rate", rate(value, accepted)),
                _ => String::new(),
            };
            context! { key, label, value, sub }
        })
        .collect();
    let providers: Vec<Value> = t
        .providers
        .iter()
        .map(|(name, [delivered, deferred, bounced])| {
            let total = delivered + deferred + bounced;
            context! { name, total, delivered_rate => rate(*delivered, total), deferred_rate => rate(*deferred, total) }
        })
        .collect();
    let bounce_classes: Vec<Value> = t
        .bounce_classes
        .iter()
        .map(|(class, count)| {
            let example = examples
                .iter()
                .filter(|e| &e.class == class || (class == "unclassified" && e.class.is_empty()))
                .max_by_key(|e| e.at)
                .map_or("", |e| e.reply.as_str());
            context! { class, count, example }
        })
        .collect();
    let suspended = suspended(&ctx);
    let paused: Vec<Value> = store
        .paused_domains()
        .await?
        .into_iter()
        .filter(|p| sees(&viewer.user, &p.domain))
        .map(|p| context! { domain => p.domain, since => time(p.since), reason => p.reason })
        .collect();
    Ok(page(
        &viewer,
        "overview.html",
        "overview",
        context! {
            period => period.key(), periods => Period::choices(), has_domains, stats,
            chart => chart::hourly(&t.bars), providers, bounce_classes, queue_size, suspended,
            paused,
        },
    ))
}

/// Destinations delivery has suspended (after failures or a "slow down" reply).
pub fn suspended(ctx: &WebContext) -> Vec<Value> {
    let Some(queue) = &ctx.api.acceptor.queue else {
        return Vec::new();
    };
    queue
        .suspended()
        .into_iter()
        .map(
            |s| context! { destination => s.destination, until => time(s.until), reply => s.reply },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(hour: i64, provider: &str, outcome: &str, class: &str, count: i64) -> CounterRow {
        CounterRow {
            hour,
            sending_domain: "a.example".into(),
            provider: provider.into(),
            outcome: outcome.into(),
            class: class.into(),
            count,
        }
    }

    #[test]
    fn counters_add_up_by_outcome_hour_provider_and_class() {
        let rows = [
            row(9, "", "accepted", "", 100),
            row(10, "", "accepted", "", 5),
            row(10, "google.com", "delivered", "", 3),
            row(10, "google.com", "deferred", "", 1),
            row(11, "outlook.com", "bounced", "bad-mailbox", 2),
            row(11, "google.com", "bounced", "bad-mailbox", 1),
            row(11, "google.com", "bounced", "", 1),
        ];
        let t = totals(&rows, 10, 12);
        assert_eq!(t.by_outcome["accepted"], 5, "hour 9 is outside");
        assert_eq!(t.bars.len(), 3);
        assert_eq!((t.bars[0].delivered, t.bars[0].deferred), (3, 1));
        assert_eq!(t.bars[1].bounced, 4);
        assert_eq!(
            t.bars[2],
            Bar {
                hour: 12,
                ..Bar::default()
            }
        );
        assert_eq!(t.providers[0], ("google.com".to_string(), [3, 1, 2]));
        assert_eq!(t.providers[1], ("outlook.com".to_string(), [0, 0, 2]));
        assert_eq!(
            t.bounce_classes,
            vec![("bad-mailbox".into(), 3), ("unclassified".into(), 1)]
        );
    }

    #[test]
    fn rates_guard_against_zero() {
        assert_eq!(rate(1, 3), "33.3%");
        assert_eq!(rate(0, 0), "–");
    }
}
