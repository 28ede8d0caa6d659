//! `GET /v1/openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` annotations and the request/response types.

use super::{ApiContext, events, health, messages, stats, suppressions, unsubscribe};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Outpost HTTP API", description = "Send mail, follow its delivery, manage suppressions. See docs/api.md."),
    paths(
        messages::send, messages::send_raw, messages::status,
        events::events, suppressions::list, suppressions::add, suppressions::remove,
        stats::stats, unsubscribe::confirm, unsubscribe::unsubscribe, health::healthz, health::metrics,
    ),
    components(schemas(super::compose::Personalized)),
    modifiers(&BasicAuth),
)]
pub struct ApiDoc;

struct BasicAuth;

impl Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

pub(super) fn routes() -> Router<Arc<ApiContext>> {
    Router::new().route(
        "/v1/openapi.json",
        get(|| async { Json(ApiDoc::openapi()) }),
    )
}
