//! `/domains`: add a sending domain (DKIM keys are generated), the DNS records to
//! publish, the live check, remove. A user may add only the domains an admin
//! granted it; an admin may add any.

use super::session::{Posted, Viewer};
use super::{Ctx, Flash, WebContext, WebError, page, sees, time};
use crate::diagnose::records::{self as check, ThisServer};
use crate::dkim::records;
use crate::store::{SendingDomain, StoreError};
use axum::Router;
use axum::extract::Query;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Value, context};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub fn routes() -> Router<Arc<WebContext>> {
    Router::new()
        .route("/domains", get(show).post(add))
        .route("/domains/remove", post(remove))
}

/// Longest wait for the live check's DNS lookups.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

async fn live_check(ctx: &WebContext, domain: &SendingDomain) -> Vec<Value> {
    let config = &ctx.api.config;
    let resolver = match crate::dns::HickoryResolver::new(&config.dns.nameservers) {
        Ok(r) => r,
        Err(e) => return vec![finding("dns", "error", &format!("no resolver: {e}"), None)],
    };
    let server = ThisServer {
        hostname: &config.hostname,
        bounce_domain: config.bounce_domain(),
    };
    match tokio::time::timeout(CHECK_TIMEOUT, check::check(&resolver, domain, &server)).await {
        Ok(report) => report
            .findings
            .iter()
            .map(|f| {
                let severity = match f.severity {
                    check::Severity::Ok => "ok",
                    check::Severity::Warning => "warning",
                    check::Severity::Error => "error",
                };
                finding(f.record, severity, &f.message, f.fix.as_deref())
            })
            .collect(),
        Err(_) => vec![finding(
            "dns",
            "error",
            "the DNS lookups timed out; try again",
            None,
        )],
    }
}

fn finding(record: &str, severity: &str, message: &str, fix: Option<&str>) -> Value {
    context! { record, severity, message, fix }
}

async fn show(
    ctx: Ctx,
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, WebError> {
    let config = &ctx.api.config;
    let all = ctx.api.store.domains().await?;
    let mine: Vec<&SendingDomain> = all.iter().filter(|d| sees(&viewer.user, &d.name)).collect();
    let addable: Vec<&String> = viewer
        .user
        .domains
        .iter()
        .filter(|g| !all.iter().any(|d| &d.name == *g))
        .collect();
    let check = query.get("check").map(String::as_str);
    let mut domains = Vec::new();
    for d in mine {
        // Without the server's addresses the SPF suggestion's a: term still covers
        // it; looking them up would make every page view wait on DNS.
        let records: Vec<Value> =
            records::records(d, &config.hostname, &[], config.bounce_domain())
                .iter()
                .map(Value::from_serialize)
                .collect();
        let findings = if check == Some(d.name.as_str()) {
            live_check(&ctx, d).await
        } else {
            Vec::new()
        };
        let keys: Vec<String> = d
            .keys
            .iter()
            .map(|k| format!("{} ({})", k.selector, k.algorithm.as_str()))
            .collect();
        domains.push(
            context! { name => d.name, created => time(d.created_at), keys, records, findings },
        );
    }
    Ok(page(
        &viewer,
        "domains.html",
        "domains",
        context! { domains, addable },
    ))
}

async fn add(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    let user = &posted.viewer.user;
    let name = crate::smtp::Domain::parse(posted.get("domain"))
        .map(|d| d.to_string().to_ascii_lowercase())
        .ok_or_else(|| {
            WebError::BadRequest(format!("{:?} is not a domain name", posted.get("domain")))
        })?;
    if !sees(user, &name) {
        return Err(WebError::Forbidden(format!(
            "{name} is not one of your domains; an administrator can grant it to you."
        )));
    }
    let record = crate::dkim::generate(&name, posted.get("ed25519") == "1", chrono::Utc::now())
        .map_err(|e| WebError::Unavailable(e.to_string()))?;
    let flash = match ctx.api.store.add_domain(record).await {
        Ok(()) => {
            tracing::info!(user = %user.name, domain = %name, "dashboard: sending domain added");
            Flash::ok(format!(
                "{name} added with a new DKIM key: publish its records below."
            ))
        }
        Err(StoreError::Conflict(_)) => Flash::error(format!("{name} is already registered.")),
        Err(e) => return Err(e.into()),
    };
    posted.flash(&ctx, flash);
    Ok(Redirect::to(&format!("/domains#{name}")).into_response())
}

async fn remove(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    let name = posted.get("domain").to_ascii_lowercase();
    if !sees(&posted.viewer.user, &name) || !ctx.api.store.remove_domain(&name).await? {
        return Err(WebError::NotFound);
    }
    tracing::info!(user = %posted.viewer.user.name, domain = %name, "dashboard: sending domain removed");
    posted.flash(
        &ctx,
        Flash::ok(format!("{name} removed; its mail is no longer signed.")),
    );
    Ok(Redirect::to("/domains").into_response())
}
