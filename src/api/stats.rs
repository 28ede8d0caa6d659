//! `GET /v1/stats?windows=1h,24h,7d`: event counts by kind and by recipient
//! domain over the last hour, day and week (or the windows asked for), computed
//! from the event log; and each sending domain's bounce and complaint rates over
//! the last 24 hours with its pause (`bounce::reputation`).
//!
//! The first event of a window is found by binary search over event ids (ids grow
//! with time), so only the window itself is read, up to [`MAX_SCAN`] events; a
//! window with more says `truncated`.

use super::events::scan_events;
use super::{ApiContext, ApiError, Caller, Ctx, QueryParams};
use crate::bounce::reputation::{self, DomainReputation};
use crate::config::Duration;
use crate::smtp::Mailbox;
use crate::store::{DomainScope, Store};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most events read per window.
const MAX_SCAN: usize = 1_000_000;

pub(super) fn routes() -> Router<Arc<ApiContext>> {
    Router::new().route("/v1/stats", get(stats))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// Comma-separated durations (`30m`, `1h`, `7d`); default `1h,24h,7d`.
    pub windows: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Window {
    /// The window as asked for (`24h`).
    pub window: String,
    /// Start of the window, unix ms.
    pub since: i64,
    /// Events by kind (`accepted`, `delivered`, `deferred`, `bounced`, ...).
    pub counts: BTreeMap<String, u64>,
    /// Events by recipient domain, then by kind.
    pub by_domain: BTreeMap<String, BTreeMap<String, u64>>,
    /// True when the window held more events than were counted.
    pub truncated: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stats {
    pub windows: Vec<Window>,
    /// Each sending domain's reputation over the last 24 hours (the current hour
    /// and the 23 before it), by domain; paused domains are listed even idle.
    pub sending_domains: BTreeMap<String, DomainReputation>,
}

/// The cursor just before the first event at or after `since`.
async fn cursor_at(store: &dyn Store, since: i64) -> Result<i64, ApiError> {
    let first_at = |after: i64| async move {
        Ok::<_, ApiError>(store.events(after, 1).await?.first().map(|e| e.at))
    };
    // Exponential probe for an id past the end, then binary search.
    let mut hi: i64 = 1;
    while first_at(hi).await?.is_some() {
        hi = hi.saturating_mul(2);
    }
    let mut lo: i64 = 0;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match first_at(mid).await? {
            Some(at) if at < since => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// Event counts over time windows.
#[utoipa::path(get, path = "/v1/stats", tag = "stats", params(StatsQuery),
    security(("basic" = [])),
    responses((status = 200, body = Stats), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub(super) async fn stats(
    ctx: Ctx,
    caller: Caller,
    QueryParams(q): QueryParams<StatsQuery>,
) -> Result<Json<Stats>, ApiError> {
    let spec = q.windows.unwrap_or_else(|| DEFAULT_WINDOWS.into());
    Ok(Json(
        compute(
            ctx.store.as_ref(),
            &spec,
            |user| caller.owns(user),
            caller.0.domain_scope(),
        )
        .await?,
    ))
}

/// The windows of `GET /v1/stats` and `outpost stats` when none are asked for.
pub const DEFAULT_WINDOWS: &str = "1h,24h,7d";

/// Event counts over the windows of `spec` (`1h,24h`), counting the events of the
/// users `visible` accepts, and the reputation of the sending domains in `scope`:
/// the one computation behind `GET /v1/stats` and `outpost stats`, so both give
/// the same numbers.
pub async fn compute(
    store: &dyn Store,
    spec: &str,
    visible: impl Fn(Option<&str>) -> bool,
    scope: DomainScope,
) -> Result<Stats, ApiError> {
    let windows = spec
        .split(',')
        .map(|w| {
            let w = w.trim();
            w.parse::<Duration>()
                .map(|d| (w.to_string(), d))
                .map_err(|e| ApiError::invalid("windows", format!("{w:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if windows.len() > 10 {
        return Err(ApiError::invalid("windows", "at most 10 windows"));
    }
    let now = chrono::Utc::now().timestamp_millis();
    let mut out = Vec::new();
    for (name, duration) in windows {
        let since = now.saturating_sub(duration.get().as_millis().min(i64::MAX as u128) as i64);
        let start = cursor_at(store, since).await?;
        let (events, _) = scan_events(store, start, MAX_SCAN, MAX_SCAN, |e| {
            e.at >= since && visible(e.user.as_deref())
        })
        .await?;
        let mut window = Window {
            window: name,
            since,
            counts: BTreeMap::new(),
            by_domain: BTreeMap::new(),
            truncated: events.len() == MAX_SCAN,
        };
        for e in events {
            let kind = e.kind.as_str().to_string();
            *window.counts.entry(kind.clone()).or_default() += 1;
            let domain = e
                .recipient
                .as_deref()
                .and_then(Mailbox::parse)
                .map_or(String::new(), |m| m.domain().to_string());
            *window
                .by_domain
                .entry(domain)
                .or_default()
                .entry(kind)
                .or_default() += 1;
        }
        out.push(window);
    }
    Ok(Stats {
        windows: out,
        sending_domains: reputation::last_day(store, scope, now).await?,
    })
}
