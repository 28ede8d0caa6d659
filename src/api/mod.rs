//! The HTTP API (SPEC §6): axum routes, one file per resource, JSON in and out.
//!
//! Every `/v1` route needs the credentials of an SMTP user: HTTP Basic with the
//! user's password or one of its API keys, or `Bearer` with an API key. They are
//! checked by the login gate SMTP AUTH uses too (`crate::auth::LoginGate`), so
//! SMTP and HTTP share one budget of wrong passwords. Tenants are isolated: a user sees only its own
//! messages and events and the suppressions of its own domains; a user created
//! with `--admin` sees everything. Another tenant's resource answers `404`, as if
//! it did not exist.
//!
//! Errors are turned into HTTP statuses here, at one boundary ([`ApiError`]):
//! every error body is `{"error": "...", "field": "..."}` where `field` names the
//! offending input when there is one.
//!
//! Not here: the unauthenticated one-click unsubscribe and health/metrics routes
//! live in their own files; webhooks are a background task (`crate::webhooks`).

mod compose;
mod events;
mod health;
mod messages;
mod openapi;
mod stats;
mod suppressions;
mod unsubscribe;

pub use compose::{Compose, Personalized, Recipient, SendRequest};
pub use events::EventView;
pub use messages::{MessageView, RecipientView};
pub use stats::{DEFAULT_WINDOWS, Stats, Window, compute as compute_stats};
// For the fuzz checks (`crate::fuzzing::api_json`): the handlers' steps from a
// request body to what they would store, without a server.
#[cfg(feature = "fuzzing")]
pub(crate) use messages::{RawRequest, compose_all, raw_submission};
// Also the dashboard's suppression form: one validation for both.
pub(crate) use suppressions::{AddSuppression, new_suppression};

use crate::accept::Acceptor;
use crate::auth::{AuthenticatedUser, Lock, LoginGate, LoginOutcome};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tokio::net::TcpListener;

/// What every request handler shares.
pub struct ApiContext {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub acceptor: Acceptor,
    pub metrics: Arc<Metrics>,
    pub unsubscribe: Arc<crate::unsubscribe::UnsubscribeKey>,
    /// Recent webhook POSTs, shown on the dashboard.
    pub webhook_log: Arc<crate::webhooks::DeliveryLog>,
    /// Shared with SMTP AUTH and the dashboard: one failure budget for all.
    pub login: Arc<LoginGate>,
}

impl ApiContext {
    pub fn new(acceptor: Acceptor, login: Arc<LoginGate>) -> ApiContext {
        ApiContext {
            config: acceptor.config.clone(),
            store: acceptor.store.clone(),
            metrics: acceptor.metrics.clone(),
            unsubscribe: acceptor.unsubscribe.clone(),
            webhook_log: Arc::default(),
            login,
            acceptor,
        }
    }
}

type Ctx = axum::extract::State<Arc<ApiContext>>;

/// An error answered to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request could not be read (malformed JSON, unknown field, wrong type).
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    /// The request was read but a value is not acceptable.
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error("authentication required")]
    Unauthorized,
    /// Too many wrong passwords before (`[auth] max_failures`,
    /// `max_account_failures`).
    #[error("{}", locked_message(.0))]
    LockedOut(Lock),
    /// The user may not act on this (a sender domain not granted to it).
    #[error("{message}")]
    Forbidden { field: String, message: String },
    #[error("not found")]
    NotFound,
    #[error("{message}")]
    TooLarge {
        field: Option<String>,
        message: String,
    },
    /// The store failed; the client may retry.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

fn locked_message(lock: &Lock) -> &'static str {
    match lock {
        Lock::Address => "too many failed logins from your address; try again later",
        Lock::Account => {
            "too many failed logins for this account from new addresses; try again later"
        }
    }
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::LockedOut(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { field, .. } | ApiError::TooLarge { field, .. } => {
                field.as_deref()
            }
            ApiError::Invalid { field, .. } | ApiError::Forbidden { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error in the HTTP API");
        ApiError::Unavailable(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string(), "field": self.field() });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized) {
            let headers = response.headers_mut();
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"outpost\", charset=\"UTF-8\""),
            );
            headers.append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"outpost\""),
            );
        }
        response
    }
}

/// The JSON error body, for the OpenAPI document.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    /// The input the error is about (`to[2].email`, `headers.X-Tag`), when there is one.
    pub field: Option<String>,
}

/// A JSON request body, parsed with errors that name the field (`to[1].vars`).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge {
                    field: None,
                    message: "request body is larger than limits.max_message_size".into(),
                },
                _ => ApiError::BadRequest {
                    field: None,
                    message: e.body_text(),
                },
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A JSON body as [`JsonBody`] reads it.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::BadRequest {
            field: (path != ".").then_some(path),
            message: format!("invalid JSON body: {}", e.inner()),
        }
    })
}

/// A query string, parsed with errors answered as JSON `400`s.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::BadRequest {
                field: None,
                message: e.body_text(),
            })
    }
}

/// The authenticated caller of a `/v1` route.
pub struct Caller(pub AuthenticatedUser);

impl Caller {
    /// Whether this caller may see data of `user` (its own, or anything for admins).
    pub fn owns(&self, user: Option<&str>) -> bool {
        self.0.admin || user == Some(self.0.name.as_str())
    }

    /// Whether this caller may see `event`: one about its own mail, or about a
    /// sending domain granted to it.
    pub fn sees(&self, event: &crate::store::Event) -> bool {
        self.owns(event.user.as_deref())
            || event
                .domain
                .as_deref()
                .is_some_and(|d| self.0.may_send_as(d))
    }
}

impl FromRequestParts<Arc<ApiContext>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        ctx: &Arc<ApiContext>,
    ) -> Result<Self, ApiError> {
        // Without a peer address (a router driven in-process) every caller shares
        // one budget.
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip());
        let (name, secret) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(credentials)
            .ok_or(ApiError::Unauthorized)?;
        // A bearer API key names no user until it is checked.
        let shown = name.as_deref().unwrap_or("-");
        match ctx.login.check(ip, name.as_deref(), &secret).await {
            LoginOutcome::Ok(principal) => Ok(Caller(principal.user)),
            LoginOutcome::Wrong => {
                tracing::warn!(user = %shown, %ip, "HTTP API: authentication failed");
                Err(ApiError::Unauthorized)
            }
            LoginOutcome::Locked(lock) => {
                tracing::warn!(user = %shown, %ip, lock = lock.as_str(), "HTTP API: login refused without a check: too many wrong passwords before");
                Err(ApiError::LockedOut(lock))
            }
            LoginOutcome::Unavailable(reason) => {
                tracing::warn!(user = %shown, %ip, %reason, "HTTP API: login not checked now; answered 503, not counted as a failure");
                Err(ApiError::Unavailable(reason))
            }
        }
    }
}

/// `Basic base64(user:password)` → `(Some(user), password)`; `Bearer KEY` →
/// `(None, KEY)`.
fn credentials(value: &str) -> Option<(Option<String>, String)> {
    let (scheme, param) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let key = param.trim();
        return (!key.is_empty()).then(|| (None, key.to_string()));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(param.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((Some(user.to_string()), password.to_string()))
}

/// Every route, with the request body limit of `limits.max_message_size`.
pub fn router(ctx: Arc<ApiContext>) -> Router {
    let limit = ctx.config.limits.max_message_size;
    Router::new()
        .merge(messages::routes())
        .merge(events::routes())
        .merge(suppressions::routes())
        .merge(stats::routes())
        .merge(unsubscribe::routes())
        .merge(health::routes())
        .merge(openapi::routes())
        .layer(DefaultBodyLimit::max(limit))
        .with_state(ctx.clone())
        .merge(crate::web::router(ctx))
}

/// Serves the API on an already bound listener until the task is dropped.
/// Serves until `stop` completes, then finishes the requests in progress.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ApiContext>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(
        listener,
        router(ctx).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await
    {
        tracing::error!(error = %e, "HTTP API server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_bearer_credentials_are_decoded() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        assert_eq!(
            credentials(&format!("Basic {b64}")),
            Some((Some("alice".into()), "pa:ss".into()))
        );
        assert_eq!(
            credentials("Bearer opk_abc"),
            Some((None, "opk_abc".into()))
        );
        assert_eq!(credentials("Bearer  "), None);
        assert_eq!(credentials(&format!("Digest {b64}")), None);
        assert_eq!(credentials("Basic !!!"), None);
    }
}
