//! `GET /v1/events?after=CURSOR&limit=N`: the durable event log, oldest first.
//!
//! The cursor is an event id: pass the `next` of one page as `after` of the next.
//! A page may hold fewer than `limit` events (other tenants' events are skipped,
//! and at most [`MAX_SCAN`] are read per request); only an empty page with
//! `next == after` means the end of the log for now.

use super::{ApiContext, ApiError, Caller, Ctx, QueryParams};
use crate::bounce::status_of;
use crate::store::{Event, Store};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Largest page.
pub const MAX_LIMIT: usize = 1000;
/// Most events read from the store for one request of a non-admin user.
const MAX_SCAN: usize = 10_000;

/// One event as the API and webhooks show it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    /// The event id; also the paging cursor.
    pub id: i64,
    /// `accepted`, `delivered`, `deferred`, `bounced`, `suppressed`, `unsubscribed`,
    /// `complained`; about a whole sending domain: `domain_paused`, `domain_resumed`.
    pub event: String,
    /// Unix ms.
    pub at: i64,
    /// RFC 3339.
    pub time: String,
    pub message_id: Option<String>,
    pub recipient: Option<String>,
    pub user: Option<String>,
    /// The remote server's reply (or ours), when there was one.
    pub reply: Option<String>,
    /// The reply's enhanced status code (`5.1.1`), or its class's (`2.0.0`) when it
    /// has none; null without a reply.
    pub enhanced_code: Option<String>,
    pub bounce_class: Option<String>,
    /// True for a bounce or complaint that came back after delivery (to the
    /// message's return path), rather than a reply during delivery.
    #[serde(rename = "async", default)]
    pub asynchronous: bool,
    /// The sending domain of `domain_paused` and `domain_resumed` (their `reply`
    /// says why); null for events about a recipient.
    #[serde(default)]
    pub domain: Option<String>,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        EventView {
            id: e.id,
            event: e.kind.as_str().to_string(),
            at: e.at,
            time: chrono::DateTime::from_timestamp_millis(e.at)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            message_id: e.message_id.map(|m| m.to_string()),
            recipient: e.recipient,
            user: e.user,
            enhanced_code: e.reply.as_deref().and_then(status_of),
            reply: e.reply,
            bounce_class: e.class,
            asynchronous: e.asynchronous,
            domain: e.domain,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Return events after this cursor (default 0: from the start).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventsPage {
    pub events: Vec<EventView>,
    /// The cursor for the next page.
    pub next: i64,
}

pub(super) fn routes() -> Router<Arc<ApiContext>> {
    Router::new().route("/v1/events", get(events))
}

/// Reads up to `limit` events after `after` that `keep` accepts, scanning at most
/// `max_scan` events; returns them and the cursor after the last one scanned.
pub async fn scan_events(
    store: &dyn Store,
    after: i64,
    limit: usize,
    max_scan: usize,
    keep: impl Fn(&Event) -> bool,
) -> Result<(Vec<Event>, i64), ApiError> {
    let mut cursor = after;
    let mut out = Vec::new();
    let mut scanned = 0;
    while out.len() < limit && scanned < max_scan {
        let batch = store.events(cursor, limit.clamp(100, 1000)).await?;
        let Some(last) = batch.last() else { break };
        let batch_len = batch.len();
        cursor = last.id;
        for e in batch {
            if out.len() == limit {
                // Stop right after the last event returned.
                cursor = out.last().map_or(after, |e: &Event| e.id);
                break;
            }
            if keep(&e) {
                out.push(e);
            }
        }
        scanned += batch_len;
    }
    Ok((out, cursor))
}

/// The event log, oldest first, with cursor paging.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    security(("basic" = [])),
    responses(
        (status = 200, body = EventsPage),
        (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody),
    ))]
pub(super) async fn events(
    ctx: Ctx,
    caller: Caller,
    QueryParams(query): QueryParams<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    if after < 0 {
        return Err(ApiError::invalid("after", "must not be negative"));
    }
    let (events, next) = scan_events(ctx.store.as_ref(), after, limit, MAX_SCAN, |e| {
        caller.sees(e)
    })
    .await?;
    Ok(Json(EventsPage {
        events: events.into_iter().map(EventView::from).collect(),
        next,
    }))
}
