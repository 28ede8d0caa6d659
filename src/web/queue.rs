//! `/queue`: mail waiting for delivery, grouped by destination domain; retry and
//! delete one, the selected, or all of a destination; suspended destinations.

use super::overview::suspended;
use super::session::{Posted, Viewer};
use super::{Ctx, Flash, WebContext, WebError, domain_of, page, sees, time};
use crate::queue::now_ms;
use crate::store::{PendingRecipient, QueueId};
use axum::Router;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Value, context};
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<WebContext>> {
    Router::new()
        .route("/queue", get(show))
        .route("/queue/action", post(action))
        .route("/queue/retry", post(retry_all))
}

/// Most waiting recipients listed (the rest are still counted on the overview).
const LISTED: usize = 1000;

async fn show(ctx: Ctx, viewer: Viewer) -> Result<Response, WebError> {
    let pending = ctx
        .api
        .store
        .pending(viewer.user.domain_scope(), LISTED)
        .await?;
    let mut groups: BTreeMap<&str, Vec<&PendingRecipient>> = BTreeMap::new();
    for p in &pending {
        groups.entry(p.domain.as_str()).or_default().push(p);
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(domain, list)| {
            let last_reply = list
                .iter()
                .filter_map(|r| r.last_reply.as_deref())
                .next_back()
                .unwrap_or("not tried yet");
            let recipients: Vec<Value> = list
                .iter()
                .map(|r| {
                    context! {
                        message_id => r.message_id.as_str(), address => r.address, attempts => r.attempts,
                        next_attempt => time(r.next_attempt), last_reply => r.last_reply.as_deref().unwrap_or(""),
                    }
                })
                .collect();
            context! { domain, last_reply, recipients }
        })
        .collect();
    Ok(page(
        &viewer,
        "queue.html",
        "queue",
        context! { groups, suspended => suspended(&ctx) },
    ))
}

/// The ids of the pending messages the form names that this user may act on.
async fn targets(
    ctx: &WebContext,
    posted: &Posted,
    action: &str,
) -> Result<Vec<QueueId>, WebError> {
    let user = &posted.viewer.user;
    let named: Vec<&str> = match action.split_once(':') {
        Some((_, one)) => vec![one],
        None if action.ends_with("-selected") => posted.all("id"),
        None => {
            // All of one destination domain, as listed.
            let domain = posted.get("domain");
            let pending = ctx.api.store.pending(user.domain_scope(), LISTED).await?;
            let mut ids: Vec<QueueId> = pending
                .into_iter()
                .filter(|p| p.domain == domain)
                .map(|p| p.message_id)
                .collect();
            ids.dedup();
            return Ok(ids);
        }
    };
    let mut ids = Vec::new();
    for text in named {
        let id: QueueId = text.parse().map_err(|_| WebError::NotFound)?;
        let message = ctx
            .api
            .store
            .message(&id)
            .await?
            .ok_or(WebError::NotFound)?;
        if !sees(user, &domain_of(&message.mail_from)) {
            return Err(WebError::NotFound);
        }
        ids.push(id);
    }
    Ok(ids)
}

async fn action(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    let action = posted.get("action").to_string();
    let ids = targets(&ctx, &posted, &action).await?;
    if ids.is_empty() {
        posted.flash(&ctx, Flash::error("Nothing selected."));
        return Ok(Redirect::to("/queue").into_response());
    }
    let store = &ctx.api.store;
    let text = if action.starts_with("retry") {
        let mut changed = 0;
        for id in &ids {
            changed += store.retry_now(Some(id), now_ms()).await?;
        }
        tracing::info!(user = %posted.viewer.user.name, messages = ids.len(), "dashboard: retry now");
        format!(
            "{changed} recipient(s) of {} message(s) will be tried again now.",
            ids.len()
        )
    } else if action.starts_with("delete") {
        let mut deleted = 0;
        for id in &ids {
            deleted += usize::from(store.delete_message(id).await?);
        }
        tracing::info!(user = %posted.viewer.user.name, messages = deleted, "dashboard: messages deleted");
        format!("{deleted} message(s) deleted.")
    } else {
        return Err(WebError::BadRequest(format!("unknown action {action:?}")));
    };
    posted.flash(&ctx, Flash::ok(text));
    Ok(Redirect::to("/queue").into_response())
}

/// "Retry now" for suspended destinations: every pending recipient of the user's
/// domains becomes due, and delivery lifts its suspensions.
async fn retry_all(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    let store = &ctx.api.store;
    let changed = if posted.viewer.user.admin {
        store.retry_now(None, now_ms()).await?
    } else {
        let pending = store
            .pending(posted.viewer.user.domain_scope(), LISTED)
            .await?;
        let mut ids: Vec<QueueId> = pending.into_iter().map(|p| p.message_id).collect();
        ids.sort();
        ids.dedup();
        let mut changed = 0;
        for id in &ids {
            changed += store.retry_now(Some(id), now_ms()).await?;
        }
        changed
    };
    posted.flash(
        &ctx,
        Flash::ok(format!("{changed} recipient(s) will be tried again now.")),
    );
    Ok(Redirect::to("/queue").into_response())
}
