//! `GET /healthz` (the store answers) and `GET /metrics` (Prometheus text format).
//! Neither needs credentials: bind the API to a private address, or filter these
//! paths at a proxy, if they must not be public.

use super::{ApiContext, ApiError, Ctx};
use crate::bounce::reputation;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<ApiContext>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
}

/// Liveness and store readiness.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = super::ErrorBody)))]
pub(super) async fn healthz(ctx: Ctx) -> Result<Json<Health>, ApiError> {
    ctx.store.events(i64::MAX - 1, 1).await?;
    Ok(Json(Health { status: "ok" }))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub(super) async fn metrics(ctx: Ctx) -> impl IntoResponse {
    let in_memory = ctx.acceptor.queue.as_ref().map(|q| q.in_memory());
    let pending = match ctx.store.pending_recipients().await {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::error!(error = %e, "metrics: cannot count pending recipients");
            None
        }
    };
    let now = chrono::Utc::now().timestamp_millis();
    let sending_domains = reputation::last_day(ctx.store.as_ref(), None, now)
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "metrics: cannot read the sending domains' rates");
            Default::default()
        });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctx.metrics.render(pending, in_memory, &sending_domains),
    )
}
