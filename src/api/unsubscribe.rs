//! `GET|POST /u/{token}`: the HTTPS side of one-click unsubscribe (RFC 8058).
//! Tokens and the suppression they make are `crate::unsubscribe`'s.

use super::{ApiContext, ApiError, Ctx};
use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<ApiContext>> {
    Router::new().route("/u/{token}", get(confirm).post(unsubscribe))
}

/// A link opened in a browser shows a button that POSTs; the GET itself changes
/// nothing, so link scanners and prefetchers cannot unsubscribe anyone (RFC 8058 §4).
#[utoipa::path(get, path = "/u/{token}", tag = "unsubscribe",
    params(("token" = String, Path, description = "Token from the List-Unsubscribe link")),
    responses(
        (status = 200, description = "A page with an unsubscribe button", content_type = "text/html"),
        (status = 404, description = "Unknown or altered token", body = super::ErrorBody),
    ))]
pub(super) async fn confirm(ctx: Ctx, Path(token): Path<String>) -> Result<Html<String>, ApiError> {
    let u = ctx.unsubscribe.verify(&token).ok_or(ApiError::NotFound)?;
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    Ok(Html(format!(
        "<!doctype html><meta charset=\"utf-8\"><title>Unsubscribe</title>\n\
         <p>Stop mail from {domain} to {address}?</p>\n\
         <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\">Unsubscribe</button></form>\n",
        domain = escape(&u.domain),
        address = escape(&u.address),
    )))
}

/// One-click unsubscribe: suppresses the address for the sending domain at once.
#[utoipa::path(post, path = "/u/{token}", tag = "unsubscribe",
    params(("token" = String, Path, description = "Token from the List-Unsubscribe link")),
    responses(
        (status = 200, description = "Unsubscribed (also when it already was)"),
        (status = 404, description = "Unknown or altered token", body = super::ErrorBody),
    ))]
pub(super) async fn unsubscribe(
    ctx: Ctx,
    Path(token): Path<String>,
) -> Result<(StatusCode, &'static str), ApiError> {
    let Some(u) = ctx.unsubscribe.verify(&token) else {
        tracing::warn!("unsubscribe with an invalid token refused");
        return Err(ApiError::NotFound);
    };
    crate::unsubscribe::apply(ctx.store.as_ref(), &u).await?;
    Ok((StatusCode::OK, "unsubscribed\n"))
}
