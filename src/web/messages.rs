//! `/messages` (search, paginated) and `/messages/{id}` (each recipient's
//! timeline).

use super::session::Viewer;
use super::{Ctx, Period, WebContext, WebError, page, sees, time, url_encode};
use crate::store::{MessageQuery, QueueId, RecipientStatus};
use axum::Router;
use axum::extract::{Path, Query};
use axum::response::Response;
use axum::routing::get;
use minijinja::{Value, context};
use std::collections::HashMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<WebContext>> {
    Router::new()
        .route("/messages", get(list))
        .route("/messages/{id}", get(show))
}

const PAGE: usize = 50;
const STATUSES: [&str; 5] = ["queued", "deferred", "delivered", "bounced", "suppressed"];

/// `12345` → `12.1 KB`.
fn size(bytes: usize) -> String {
    match bytes {
        b if b < 1024 => format!("{b} bytes"),
        b if b < 1024 * 1024 => format!("{:.1} KB", b as f64 / 1024.0),
        b => format!("{:.1} MB", b as f64 / (1024.0 * 1024.0)),
    }
}

async fn list(
    ctx: Ctx,
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, WebError> {
    let param = |k: &str| query.get(k).map(|v| v.trim()).unwrap_or("");
    let (q, status, period_key) = (param("q"), param("status"), param("period"));
    let period = match period_key {
        "" | "all" => None,
        key => Some(Period::parse(Some(key))),
    };
    let now = chrono::Utc::now().timestamp_millis();
    let rows = ctx
        .api
        .store
        .search_messages(MessageQuery {
            text: (!q.is_empty()).then(|| q.to_string()),
            status: RecipientStatus::parse(status),
            since: period.map(|p| now - p.hours() * 3_600_000),
            before: param("before").parse::<QueueId>().ok(),
            domains: viewer.user.domain_scope(),
            limit: PAGE + 1,
        })
        .await?;
    let next = (rows.len() > PAGE).then(|| {
        format!(
            "/messages?q={}&status={}&period={}&before={}",
            url_encode(q),
            url_encode(status),
            url_encode(period_key),
            rows[PAGE - 1].id
        )
    });
    let messages: Vec<Value> = rows
        .iter()
        .take(PAGE)
        .map(|m| {
            context! {
                id => m.id.as_str(), received => time(m.received_at), mail_from => m.mail_from,
                first_recipient => m.first_recipient, recipients => m.recipients,
                subject => m.subject, statuses => m.statuses,
            }
        })
        .collect();
    let mut periods = vec![context! { key => "all", label => "Any time" }];
    periods.extend(Period::choices());
    Ok(page(
        &viewer,
        "messages.html",
        "messages",
        context! {
            query => context! { q, status, period => if period_key.is_empty() { "all" } else { period_key } },
            statuses => STATUSES, periods, messages, next,
            searched => !q.is_empty() || !status.is_empty(),
        },
    ))
}

async fn show(ctx: Ctx, viewer: Viewer, Path(id): Path<String>) -> Result<Response, WebError> {
    let id: QueueId = id.parse().map_err(|_| WebError::NotFound)?;
    let details = ctx
        .api
        .store
        .message_details(&id)
        .await?
        .filter(|d| sees(&viewer.user, &d.sending_domain))
        .ok_or(WebError::NotFound)?;
    let m = &details.summary;
    let recipients: Vec<Value> = m
        .recipients
        .iter()
        .enumerate()
        .map(|(idx, r)| {
            let attempts: Vec<Value> = details
                .attempts
                .iter()
                .filter(|a| a.idx == idx)
                .map(|a| {
                    context! {
                        at => time(a.at), status => a.status.as_str(), mx_host => a.mx_host,
                        tls => a.tls, reply => a.reply, attempted => a.attempted,
                    }
                })
                .collect();
            context! {
                address => r.address, status => r.status.as_str(), attempts,
                last_reply => r.last_reply, next_attempt => time(r.next_attempt),
            }
        })
        .collect();
    let pending = m.recipients.iter().any(|r| !r.status.is_final());
    let bounce_report = (m.needs_bounce_report() && !pending).then(|| {
        if details.content_kept {
            format!("A bounce report to {} is being sent.", m.mail_from)
        } else {
            format!("A bounce report was sent to {}.", m.mail_from)
        }
    });
    Ok(page(
        &viewer,
        "message.html",
        "messages",
        context! {
            message => context! {
                id => m.id.as_str(), subject => details.subject, mail_from => if m.mail_from.is_empty() { "<>" } else { m.mail_from.as_str() },
                received => time(m.received_at), protocol => details.protocol, user => m.auth_user,
                size => size(m.size), dkim_signed => details.dkim_signed,
            },
            recipients, bounce_report,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(size(512), "512 bytes");
        assert_eq!(size(12_345), "12.1 KB");
        assert_eq!(size(3 * 1024 * 1024), "3.0 MB");
    }
}
