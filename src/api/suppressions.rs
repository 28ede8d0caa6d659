//! `GET|POST|DELETE /v1/suppressions`: the per-sending-domain suppression list
//! (SPEC §5.4). A user sees and edits the lists of its own domains; an admin, all.

use super::compose::parse_address;
use super::{ApiContext, ApiError, Caller, Ctx, JsonBody, QueryParams};
use crate::smtp::Domain;
use crate::store::Suppression;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<ApiContext>> {
    Router::new().route("/v1/suppressions", get(list).post(add).delete(remove))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuppressionView {
    pub domain: String,
    pub address: String,
    pub reason: String,
    /// Unix ms.
    pub created_at: i64,
}

impl From<Suppression> for SuppressionView {
    fn from(s: Suppression) -> Self {
        SuppressionView {
            domain: s.domain,
            address: s.address,
            reason: s.reason,
            created_at: s.created_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this sending domain.
    pub domain: Option<String>,
    /// Cursor: continue after this (domain, address) pair (`next` of the last page).
    pub after_domain: Option<String>,
    pub after_address: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuppressionPage {
    pub suppressions: Vec<SuppressionView>,
    /// Pass as `after_domain`/`after_address` for the next page; null at the end.
    pub next: Option<SuppressionCursor>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuppressionCursor {
    pub domain: String,
    pub address: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSuppression {
    /// The sending domain whose list the address goes on.
    pub domain: String,
    pub address: String,
    /// Default `manual`.
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    pub domain: String,
    pub address: String,
}

/// The lower-cased domain, if the caller may manage its list.
fn managed_domain(caller: &Caller, domain: &str) -> Result<String, ApiError> {
    let domain = Domain::parse(domain)
        .ok_or_else(|| ApiError::invalid("domain", format!("{domain:?} is not a domain")))?;
    if !caller.0.admin && !caller.0.may_send_as(domain.as_str()) {
        return Err(ApiError::Forbidden {
            field: "domain".into(),
            message: format!("{domain} is not one of your domains"),
        });
    }
    Ok(domain.to_string())
}

/// Suppressions, ordered by domain and address, paged.
#[utoipa::path(get, path = "/v1/suppressions", tag = "suppressions", params(ListQuery),
    security(("basic" = [])),
    responses((status = 200, body = SuppressionPage), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody), (status = 403, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub(super) async fn list(
    ctx: Ctx,
    caller: Caller,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<SuppressionPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let after = match (q.after_domain, q.after_address) {
        (Some(d), Some(a)) => Some((d.to_lowercase(), a.to_lowercase())),
        (None, None) => None,
        _ => {
            return Err(ApiError::invalid(
                "after_domain",
                "after_domain and after_address go together",
            ));
        }
    };
    let domain = q
        .domain
        .as_deref()
        .map(|d| managed_domain(&caller, d))
        .transpose()?;
    let mut found = Vec::new();
    if caller.0.admin || domain.is_some() {
        found = ctx
            .store
            .suppressions(domain.as_deref(), after, limit)
            .await?;
    } else {
        // A user's lists, domain by domain in order, from the cursor on.
        let mut domains = caller.0.domains.clone();
        domains.sort();
        let mut cursor = after;
        for d in domains {
            if found.len() == limit {
                break;
            }
            if cursor.as_ref().is_some_and(|(cd, _)| d < *cd) {
                continue;
            }
            let page = ctx
                .store
                .suppressions(Some(&d), cursor.take(), limit - found.len())
                .await?;
            found.extend(page);
        }
    }
    let next = (found.len() == limit).then(|| {
        let last = found.last().expect("limit is at least 1");
        SuppressionCursor {
            domain: last.domain.clone(),
            address: last.address.clone(),
        }
    });
    Ok(Json(SuppressionPage {
        suppressions: found.into_iter().map(Into::into).collect(),
        next,
    }))
}

/// Adds an address to a domain's suppression list.
#[utoipa::path(post, path = "/v1/suppressions", tag = "suppressions", request_body = AddSuppression,
    security(("basic" = [])),
    responses((status = 201, description = "Added", body = SuppressionView),
        (status = 200, description = "Already suppressed", body = SuppressionView),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 422, body = super::ErrorBody)))]
pub(super) async fn add(
    ctx: Ctx,
    caller: Caller,
    JsonBody(body): JsonBody<AddSuppression>,
) -> Result<(StatusCode, Json<SuppressionView>), ApiError> {
    let suppression = new_suppression(&caller, body, chrono::Utc::now().timestamp_millis())?;
    let added = ctx.store.add_suppression(suppression.clone()).await?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let current = ctx
        .store
        .suppression(&suppression.domain, &suppression.address)
        .await?
        .unwrap_or(suppression);
    Ok((status, Json(current.into())))
}

/// Validates an `AddSuppression` body into the suppression it asks for.
pub(crate) fn new_suppression(
    caller: &Caller,
    body: AddSuppression,
    now: i64,
) -> Result<Suppression, ApiError> {
    let domain = managed_domain(caller, &body.domain)?;
    let address = parse_address("address", &body.address)
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    let reason = body.reason.unwrap_or_else(|| "manual".into());
    if reason.is_empty() || reason.len() > 1000 || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "reason",
            "1 to 1000 characters, no control characters",
        ));
    }
    Ok(Suppression {
        domain,
        address: address.to_string().to_lowercase(),
        reason,
        created_at: now,
    })
}

/// Removes an address from a domain's suppression list.
#[utoipa::path(delete, path = "/v1/suppressions", tag = "suppressions", params(RemoveQuery),
    security(("basic" = [])),
    responses((status = 204, description = "Removed"),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody)))]
pub(super) async fn remove(
    ctx: Ctx,
    caller: Caller,
    QueryParams(q): QueryParams<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    let domain = managed_domain(&caller, &q.domain)?;
    if ctx.store.remove_suppression(&domain, &q.address).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
