//! `/suppressions`: search, add, remove, import and export CSV. Validation is the
//! API's (`api::new_suppression`), so both accept the same addresses.

use super::session::{Posted, Viewer};
use super::{Ctx, Flash, WebContext, WebError, page, time, url_encode};
use crate::api::{AddSuppression, ApiError, Caller, new_suppression};
use crate::auth::AuthenticatedUser;
use crate::store::{Store, Suppression};
use axum::Router;
use axum::extract::Query;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Value, context};
use std::collections::HashMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<WebContext>> {
    Router::new()
        .route("/suppressions", get(show).post(add))
        .route("/suppressions/remove", post(remove))
        .route("/suppressions/import", post(import))
        .route("/suppressions.csv", get(export))
}

const PAGE: usize = 100;
/// Most suppressions a search looks through (a substring search has no index).
const SEARCHED: usize = 20_000;
/// Most lines of one import; the form body limit bounds it too.
const MAX_IMPORT: usize = 100_000;

/// The sending domains whose lists `user` manages, in order.
fn lists(user: &AuthenticatedUser, all: Vec<String>) -> Vec<String> {
    let mut domains = if user.admin {
        all
    } else {
        user.domains.clone()
    };
    domains.sort();
    domains.dedup();
    domains
}

/// Suppressions of `user`'s lists after the cursor, `limit` at most.
async fn page_of(
    store: &dyn Store,
    user: &AuthenticatedUser,
    mut after: Option<(String, String)>,
    limit: usize,
) -> Result<Vec<Suppression>, WebError> {
    if user.admin {
        return Ok(store.suppressions(None, after, limit).await?);
    }
    let mut found = Vec::new();
    for d in lists(user, Vec::new()) {
        if found.len() == limit {
            break;
        }
        if after.as_ref().is_some_and(|(cd, _)| d < *cd) {
            continue;
        }
        let cursor = after.take().filter(|(cd, _)| *cd == d);
        found.extend(
            store
                .suppressions(Some(&d), cursor, limit - found.len())
                .await?,
        );
    }
    Ok(found)
}

async fn show(
    ctx: Ctx,
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, WebError> {
    let store = ctx.api.store.as_ref();
    let q = query.get("q").map_or("", |q| q.trim()).to_lowercase();
    let after = query
        .get("after")
        .and_then(|a| a.split_once(' '))
        .map(|(d, a)| (d.to_string(), a.to_string()));
    let mut found = Vec::new();
    let mut cursor = after;
    let mut scanned = 0;
    loop {
        let batch = page_of(store, &viewer.user, cursor.clone(), 1000).await?;
        let full = batch.len() == 1000;
        scanned += batch.len();
        cursor = batch.last().map(|s| (s.domain.clone(), s.address.clone()));
        found.extend(
            batch
                .into_iter()
                .filter(|s| q.is_empty() || s.address.contains(&q)),
        );
        if found.len() > PAGE || !full || scanned >= SEARCHED {
            break;
        }
    }
    let next = (found.len() > PAGE).then(|| {
        let last = &found[PAGE - 1];
        format!(
            "/suppressions?q={}&after={}",
            url_encode(&q),
            url_encode(&format!("{} {}", last.domain, last.address))
        )
    });
    let suppressions: Vec<Value> = found
        .iter()
        .take(PAGE)
        .map(|s| context! { domain => s.domain, address => s.address, reason => s.reason, created => time(s.created_at) })
        .collect();
    let all = store.domains().await?.into_iter().map(|d| d.name).collect();
    Ok(page(
        &viewer,
        "suppressions.html",
        "suppressions",
        context! { q, suppressions, next, domains => lists(&viewer.user, all) },
    ))
}

fn invalid(e: ApiError) -> WebError {
    match e {
        ApiError::Forbidden { message, .. } => WebError::Forbidden(message),
        other => WebError::BadRequest(other.to_string()),
    }
}

async fn add(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    let caller = Caller(posted.viewer.user.clone());
    let suppression = new_suppression(
        &caller,
        AddSuppression {
            domain: posted.get("domain").into(),
            address: posted.get("address").into(),
            reason: None,
        },
        chrono::Utc::now().timestamp_millis(),
    )
    .map_err(invalid)?;
    let added = ctx.api.store.add_suppression(suppression.clone()).await?;
    let text = if added {
        format!(
            "{} will no longer be mailed from {}.",
            suppression.address, suppression.domain
        )
    } else {
        format!(
            "{} was already suppressed for {}.",
            suppression.address, suppression.domain
        )
    };
    posted.flash(&ctx, Flash::ok(text));
    Ok(Redirect::to("/suppressions").into_response())
}

async fn remove(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    let (domain, address) = (posted.get("domain").to_lowercase(), posted.get("address"));
    if !super::sees(&posted.viewer.user, &domain)
        || !ctx.api.store.remove_suppression(&domain, address).await?
    {
        return Err(WebError::NotFound);
    }
    posted.flash(
        &ctx,
        Flash::ok(format!("{address} may be mailed from {domain} again.")),
    );
    Ok(Redirect::to("/suppressions").into_response())
}

async fn import(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    let caller = Caller(posted.viewer.user.clone());
    let now = chrono::Utc::now().timestamp_millis();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(posted.get("csv").as_bytes());
    let (mut added, mut present, mut errors) = (0usize, 0usize, Vec::new());
    for (line, record) in reader.records().enumerate().take(MAX_IMPORT) {
        let record = record.map_err(|e| WebError::BadRequest(format!("line {}: {e}", line + 1)))?;
        let (domain, address) = (record.get(0).unwrap_or(""), record.get(1).unwrap_or(""));
        // A header line as the export writes it.
        if line == 0 && domain == "domain" && address == "address" {
            continue;
        }
        let body = AddSuppression {
            domain: domain.into(),
            address: address.into(),
            reason: record.get(2).filter(|r| !r.is_empty()).map(Into::into),
        };
        match new_suppression(&caller, body, now) {
            Ok(s) => {
                if ctx.api.store.add_suppression(s).await? {
                    added += 1;
                } else {
                    present += 1;
                }
            }
            Err(e) => errors.push(format!("line {}: {e}", line + 1)),
        }
    }
    let mut text = format!("{added} address(es) added, {present} already suppressed.");
    let flash = if errors.is_empty() {
        Flash::ok(text)
    } else {
        text.push_str(&format!(
            " {} line(s) refused: {}",
            errors.len(),
            errors
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
        Flash::error(text)
    };
    posted.flash(&ctx, flash);
    Ok(Redirect::to("/suppressions").into_response())
}

async fn export(ctx: Ctx, viewer: Viewer) -> Result<Response, WebError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let csv_error = |e: csv::Error| WebError::Unavailable(e.to_string());
    writer
        .write_record(["domain", "address", "reason", "created_at"])
        .map_err(csv_error)?;
    let mut cursor = None;
    loop {
        let batch = page_of(ctx.api.store.as_ref(), &viewer.user, cursor, 1000).await?;
        for s in &batch {
            writer
                .write_record([&s.domain, &s.address, &s.reason, &time(s.created_at)])
                .map_err(csv_error)?;
        }
        if batch.len() < 1000 {
            break;
        }
        cursor = batch.last().map(|s| (s.domain.clone(), s.address.clone()));
    }
    let body = writer
        .into_inner()
        .map_err(|e| WebError::Unavailable(e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"suppressions.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_manage_their_granted_lists_admins_all() {
        let user = AuthenticatedUser {
            name: "u".into(),
            admin: false,
            domains: vec!["b.test".into(), "a.test".into()],
        };
        assert_eq!(
            lists(&user, vec!["z.test".into()]),
            vec!["a.test", "b.test"]
        );
        let admin = AuthenticatedUser {
            admin: true,
            ..user
        };
        assert_eq!(
            lists(&admin, vec!["z.test".into(), "c.test".into()]),
            vec!["c.test", "z.test"]
        );
    }
}
