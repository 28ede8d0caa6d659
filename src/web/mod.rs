//! The web dashboard: server-rendered pages on the HTTP listener, beside the JSON
//! API (`/v1`) and one-click unsubscribe (`/u`).
//!
//! One file per page; templates (minijinja, HTML auto-escaped) and the stylesheet
//! are embedded in the binary. Read pages work without JavaScript (`app.js` only
//! adds copy buttons and "select all"). Charts are SVG drawn here.
//!
//! Sign-in goes through the login gate of SMTP AUTH and the API
//! ([`crate::auth::LoginGate`]): one throttle for all three. A session is a random token in an
//! `HttpOnly; SameSite=Strict` cookie (`Secure` when `http.public_url` is https)
//! that expires after `http.session_idle` without a request. Every POST carries the
//! session's CSRF token; a form without it is refused with `403`.
//!
//! Tenants: a user sees the messages, counters, queue, domains and suppressions of
//! its granted sending domains only; another tenant's message answers `404`.
//! Admins see everything and manage users.

mod chart;
mod domains;
mod login;
mod messages;
mod overview;
mod queue;
mod session;
mod suppressions;
mod templates;
mod users;
mod webhooks;

pub use session::Sessions;

use crate::api::ApiContext;
use crate::auth::AuthenticatedUser;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use minijinja::Value;
use serde::Serialize;
use session::Viewer;
use std::sync::Arc;

/// What every page handler shares.
pub struct WebContext {
    pub api: Arc<ApiContext>,
    pub sessions: Sessions,
}

type Ctx = axum::extract::State<Arc<WebContext>>;

/// The dashboard's routes, to merge beside the API's.
pub fn router(api: Arc<ApiContext>) -> Router {
    let secure = api
        .config
        .http
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    let ctx = Arc::new(WebContext {
        sessions: Sessions::new(api.config.http.session_idle.get(), secure),
        api,
    });
    Router::new()
        .route("/assets/style.css", get(style))
        .route("/assets/app.js", get(script))
        .merge(login::routes())
        .merge(overview::routes())
        .merge(messages::routes())
        .merge(queue::routes())
        .merge(domains::routes())
        .merge(suppressions::routes())
        .merge(users::routes())
        .merge(webhooks::routes())
        .with_state(ctx)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// An error answered as an HTML page.
#[derive(Debug)]
pub enum WebError {
    NotFound,
    /// The action is not allowed to this user (or the form lacks the CSRF token).
    Forbidden(String),
    BadRequest(String),
    Unavailable(String),
    /// Not signed in: go to the login page, then back to `next`.
    SignIn {
        next: String,
    },
}

impl From<crate::store::StoreError> for WebError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store error in the dashboard");
        WebError::Unavailable(e.to_string())
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, heading, text) = match self {
            WebError::SignIn { next } => {
                let target = format!("/login?next={}", url_encode(&next));
                return Redirect::to(&target).into_response();
            }
            WebError::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or it is not yours to see.".to_string(),
            ),
            WebError::Forbidden(text) => (StatusCode::FORBIDDEN, "Not allowed", text),
            WebError::BadRequest(text) => (StatusCode::BAD_REQUEST, "Cannot do that", text),
            WebError::Unavailable(text) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Temporarily unavailable",
                format!("The store did not answer ({text}); try again in a moment."),
            ),
        };
        let body = templates::render_bare(
            "error.html",
            minijinja::context! { heading, text, nav => Vec::<Value>::new(), page => "",
            user => minijinja::context! { name => "", admin => false }, csrf => "", flash => () },
        );
        (status, Html(body)).into_response()
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A flash message shown once on the next page.
#[derive(Debug, Clone, Serialize)]
pub struct Flash {
    pub kind: &'static str,
    pub text: String,
    /// Shown in a box to copy (a generated password): only this once.
    pub secret: Option<String>,
}

impl Flash {
    pub fn ok(text: impl Into<String>) -> Flash {
        Flash {
            kind: "ok",
            text: text.into(),
            secret: None,
        }
    }

    pub fn error(text: impl Into<String>) -> Flash {
        Flash {
            kind: "error",
            text: text.into(),
            secret: None,
        }
    }
}

/// Whether `user` may see data of `sending_domain`.
pub fn sees(user: &AuthenticatedUser, sending_domain: &str) -> bool {
    user.admin || user.may_send_as(sending_domain)
}

/// The domain of an address (lower case); empty for the null sender.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Renders a page of the signed-in layout for `viewer`.
pub fn page(viewer: &Viewer, name: &str, page: &str, context: Value) -> Response {
    let mut nav = vec![
        ("overview", "Overview", "/"),
        ("messages", "Messages", "/messages"),
        ("queue", "Queue", "/queue"),
        ("domains", "Domains", "/domains"),
        ("suppressions", "Suppressions", "/suppressions"),
    ];
    if viewer.user.admin {
        nav.push(("webhooks", "Webhooks", "/webhooks"));
        nav.push(("users", "Users", "/users"));
    }
    let nav: Vec<Value> = nav
        .into_iter()
        .map(|(page, label, href)| minijinja::context! { page, label, href })
        .collect();
    let body = templates::render_bare(
        name,
        minijinja::context! {
            page, nav,
            user => minijinja::context! {
                name => viewer.user.name, admin => viewer.user.admin, domains => viewer.user.domains,
            },
            csrf => viewer.csrf,
            flash => viewer.flash,
            ..context
        },
    );
    Html(body).into_response()
}

/// Unix ms as `2026-12-02 01:23 UTC`.
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// The periods the overview and the message search offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
    Week,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Hour, Period::Day, Period::Week];

    pub fn parse(key: Option<&str>) -> Period {
        match key {
            Some("1h") => Period::Hour,
            Some("7d") => Period::Week,
            _ => Period::Day,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Period::Hour => "1h",
            Period::Day => "24h",
            Period::Week => "7d",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Period::Hour => "Last hour",
            Period::Day => "Last 24 hours",
            Period::Week => "Last 7 days",
        }
    }

    pub fn hours(self) -> i64 {
        match self {
            Period::Hour => 1,
            Period::Day => 24,
            Period::Week => 24 * 7,
        }
    }

    pub fn choices() -> Vec<Value> {
        Period::ALL
            .iter()
            .map(|p| minijinja::context! { key => p.key(), label => p.label() })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_urls_are_encoded() {
        assert_eq!(url_encode("/messages?q=a b&x"), "/messages%3Fq%3Da%20b%26x");
    }

    #[test]
    fn periods_parse_with_a_default() {
        assert_eq!(Period::parse(Some("1h")), Period::Hour);
        assert_eq!(Period::parse(Some("7d")).hours(), 168);
        assert_eq!(Period::parse(Some("bogus")), Period::Day);
        assert_eq!(Period::parse(None), Period::Day);
    }
}
