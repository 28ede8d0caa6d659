//! `/webhooks` (admins only: an endpoint receives every tenant's events): the
//! configured endpoints, how far each has acknowledged the event log, the recent
//! POSTs with their status, and "send a test event".

use super::session::{Posted, Viewer};
use super::{Ctx, Flash, WebContext, WebError, page, time};
use crate::store::Store;
use axum::Router;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Value, context};
use std::sync::Arc;

pub fn routes() -> Router<Arc<WebContext>> {
    Router::new()
        .route("/webhooks", get(show))
        .route("/webhooks/test", post(test))
}

/// The newest event id (0 for an empty log), to tell how far behind an endpoint is.
async fn newest_event(store: &dyn Store, from: i64) -> Result<i64, WebError> {
    let mut newest = from;
    // Pages forward from the slowest cursor; bounded so a long backlog costs
    // a few reads, then is reported as "at least".
    for _ in 0..10 {
        let page = store.events(newest, 1000).await?;
        match page.last() {
            Some(e) => newest = e.id,
            None => break,
        }
    }
    Ok(newest)
}

async fn show(ctx: Ctx, viewer: Viewer) -> Result<Response, WebError> {
    viewer.require_admin()?;
    let config = &ctx.api.config;
    let mut cursors = Vec::with_capacity(config.webhooks.len());
    for hook in &config.webhooks {
        let (cursor, holder) = crate::webhooks::cursor(ctx.api.store.as_ref(), &hook.url).await?;
        cursors.push((hook.url.clone(), cursor, holder));
    }
    let slowest = cursors.iter().map(|(_, c, _)| *c).min().unwrap_or(0);
    let newest = if cursors.is_empty() {
        0
    } else {
        newest_event(ctx.api.store.as_ref(), slowest).await?
    };
    let endpoints: Vec<Value> = cursors
        .iter()
        .map(|(url, cursor, holder)| context! { url, cursor, holder, behind => newest - cursor })
        .collect();
    let deliveries: Vec<Value> = ctx
        .api
        .webhook_log
        .recent()
        .into_iter()
        .map(|d| context! { at => time(d.at), url => d.url, events => d.events, status => d.status, ok => d.ok })
        .collect();
    Ok(page(
        &viewer,
        "webhooks.html",
        "webhooks",
        context! { endpoints, deliveries },
    ))
}

async fn test(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    posted.viewer.require_admin()?;
    let url = posted.get("url");
    let hook = ctx
        .api
        .config
        .webhooks
        .iter()
        .find(|h| h.url == url)
        .ok_or(WebError::NotFound)?;
    let flash = match crate::webhooks::send_test(hook, &ctx.api.webhook_log).await {
        Ok(status) => Flash::ok(format!("Test event sent: {url} answered {status}.")),
        Err(reason) => Flash::error(format!("Test event to {url} failed: {reason}.")),
    };
    posted.flash(&ctx, flash);
    Ok(Redirect::to("/webhooks").into_response())
}
