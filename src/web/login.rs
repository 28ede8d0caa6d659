//! `/login` and `POST /logout`.

use super::session::{self, LOGIN_COOKIE, Posted, cookie, field, random_token};
use super::{Ctx, WebContext, WebError, templates};
use crate::auth::LoginOutcome;
use axum::Router;
use axum::extract::{ConnectInfo, Query, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

pub fn routes() -> Router<Arc<WebContext>> {
    Router::new()
        .route("/login", get(form).post(submit))
        .route("/logout", post(logout))
}

/// Only a local path may be the target after sign-in (no open redirect).
fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

/// The login page with a fresh double-submit token.
fn login_page(
    ctx: &WebContext,
    status: StatusCode,
    next: &str,
    username: &str,
    error: Option<&str>,
) -> Response {
    let token = random_token();
    let html = templates::render_bare(
        "login.html",
        minijinja::context! { csrf => token, next => safe_next(next), username, error },
    );
    (
        status,
        [(
            header::SET_COOKIE,
            ctx.sessions.cookie(LOGIN_COOKIE, &token, Some(3600)),
        )],
        Html(html),
    )
        .into_response()
}

async fn form(ctx: Ctx, Query(query): Query<HashMap<String, String>>) -> Response {
    let next = query.get("next").map_or("/", String::as_str);
    login_page(&ctx, StatusCode::OK, next, "", None)
}

async fn submit(
    ctx: Ctx,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, WebError> {
    let fields = session::form_fields(request).await?;
    let (username, password, next) = (
        field(&fields, "username"),
        field(&fields, "password"),
        field(&fields, "next"),
    );
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || field(&fields, "csrf") != expected {
        return Err(WebError::Forbidden(
            "This sign-in form did not come from this dashboard (or cookies are off). Reload the page and try again.".into(),
        ));
    }
    let refuse = |status, text: &str| login_page(&ctx, status, next, username, Some(text));
    // The one login gate of SMTP AUTH and the API: same throttle, same outcomes.
    Ok(
        match ctx
            .api
            .login
            .check(peer.ip(), Some(username), password)
            .await
        {
            LoginOutcome::Ok(principal) => {
                let user = principal.user;
                tracing::info!(user = %user.name, ip = %peer.ip(), "dashboard sign-in");
                let session = ctx.sessions.start(&user.name);
                let clear = ctx.sessions.cookie(LOGIN_COOKIE, "", Some(0));
                let mut response = Redirect::to(safe_next(next)).into_response();
                let headers = response.headers_mut();
                headers.append(
                    header::SET_COOKIE,
                    session.parse().expect("cookie is ASCII"),
                );
                headers.append(header::SET_COOKIE, clear.parse().expect("cookie is ASCII"));
                response
            }
            LoginOutcome::Locked(_) => refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed sign-ins from your address. Wait a few minutes, then try again.",
            ),
            LoginOutcome::Unavailable(_) => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is unavailable right now (the store did not answer). Try again in a moment.",
            ),
            LoginOutcome::Wrong => refuse(StatusCode::UNAUTHORIZED, "Wrong user name or password."),
        },
    )
}

async fn logout(ctx: Ctx, posted: Posted) -> Response {
    let clear = ctx.sessions.end(&posted.viewer.token);
    let mut response = Redirect::to("/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, clear.parse().expect("cookie is ASCII"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(safe_next("/messages?q=x"), "/messages?q=x");
        assert_eq!(safe_next("//evil.example/"), "/");
        assert_eq!(safe_next("https://evil.example/"), "/");
        assert_eq!(safe_next("/\\evil.example"), "/");
    }
}
