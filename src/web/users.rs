//! `/users` (admins only): add a user with a generated password (shown once),
//! reset a password, remove a user; on `/users/edit?name=`, grant and revoke a
//! user's sending domains and make (shown once) and revoke its API keys.
//!
//! The per-user forms carry the user's name as a field, not in the path, so no
//! user name can collide with a route.

use super::session::{Posted, Viewer};
use super::{Ctx, Flash, WebContext, WebError, page, time, url_encode};
use crate::auth::{api_key, password};
use crate::store::{StoreError, UserRecord};
use axum::Router;
use axum::extract::Query;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Value, context};
use std::collections::HashMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<WebContext>> {
    Router::new()
        .route("/users", get(show).post(add))
        .route("/users/remove", post(remove))
        .route("/users/password", post(reset))
        .route("/users/edit", get(edit))
        .route("/users/domains/grant", post(grant))
        .route("/users/domains/revoke", post(revoke))
        .route("/users/keys", post(add_key))
        .route("/users/keys/revoke", post(revoke_key))
}

/// The page of one user's domains and keys.
fn edit_url(name: &str) -> String {
    format!("/users/edit?name={}", url_encode(name))
}

async fn show(ctx: Ctx, viewer: Viewer) -> Result<Response, WebError> {
    viewer.require_admin()?;
    let users: Vec<Value> = ctx
        .api
        .store
        .users()
        .await?
        .into_iter()
        .map(|u| context! { encoded => url_encode(&u.name), name => u.name, admin => u.admin, domains => u.domains })
        .collect();
    Ok(page(&viewer, "users.html", "users", context! { users }))
}

async fn edit(
    ctx: Ctx,
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, WebError> {
    viewer.require_admin()?;
    let name = query.get("name").map_or("", String::as_str);
    let edited = ctx.api.store.user(name).await?.ok_or(WebError::NotFound)?;
    let keys: Vec<Value> = ctx
        .api
        .store
        .api_keys(Some(name))
        .await?
        .into_iter()
        .map(|k| {
            context! {
                id => k.id, name => k.name.unwrap_or_else(|| "-".into()), domains => k.domains,
                created => time(k.created_at),
                last_used => k.last_used_at.map_or_else(|| "never".into(), time),
            }
        })
        .collect();
    Ok(page(
        &viewer,
        "user.html",
        "users",
        context! {
            edited => context! { name => edited.name, admin => edited.admin, domains => edited.domains },
            keys,
        },
    ))
}

/// The items of a comma-separated field.
fn comma_list(text: &str) -> Vec<&str> {
    text.split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect()
}

/// A domain name from a form, lower case.
fn domain_field(text: &str) -> Result<String, WebError> {
    crate::smtp::Domain::parse(text)
        .map(|d| d.to_string().to_ascii_lowercase())
        .ok_or_else(|| WebError::BadRequest(format!("{text:?} is not a domain name")))
}

async fn grant(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    posted.viewer.require_admin()?;
    let (name, domain) = (posted.get("name"), domain_field(posted.get("domain"))?);
    if !ctx.api.store.grant_domain(name, &domain).await? {
        return Err(WebError::NotFound);
    }
    tracing::info!(by = %posted.viewer.user.name, user = %name, %domain, "dashboard: domain granted");
    posted.flash(&ctx, Flash::ok(format!("{name} may now send as {domain}.")));
    Ok(Redirect::to(&edit_url(name)).into_response())
}

async fn revoke(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    posted.viewer.require_admin()?;
    let (name, domain) = (posted.get("name"), domain_field(posted.get("domain"))?);
    if !ctx.api.store.revoke_domain(name, &domain).await? {
        return Err(WebError::NotFound);
    }
    tracing::info!(by = %posted.viewer.user.name, user = %name, %domain, "dashboard: domain revoked");
    posted.flash(
        &ctx,
        Flash::ok(format!("{name} may no longer send as {domain}.")),
    );
    Ok(Redirect::to(&edit_url(name)).into_response())
}

async fn add_key(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    posted.viewer.require_admin()?;
    let name = posted.get("name");
    let label = posted.get("key_name");
    let domains = comma_list(posted.get("key_domains"));
    let now = chrono::Utc::now().timestamp_millis();
    let label = (!label.is_empty()).then(|| label.to_string());
    let issued = match api_key::issue(&*ctx.api.store, name, label, &domains, now).await {
        Ok(issued) => issued,
        Err(api_key::IssueError::NoUser(_)) => return Err(WebError::NotFound),
        Err(api_key::IssueError::Store(e)) => return Err(e.into()),
        Err(e) => return Err(WebError::BadRequest(e.to_string())),
    };
    tracing::info!(by = %posted.viewer.user.name, user = %name, key = issued.id, "dashboard: API key made");
    posted.flash(
        &ctx,
        Flash {
            kind: "ok",
            text: format!(
                "Key {} made for {name}. The key, shown only this once:",
                issued.id
            ),
            secret: Some(issued.key),
        },
    );
    Ok(Redirect::to(&edit_url(name)).into_response())
}

async fn revoke_key(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    posted.viewer.require_admin()?;
    let name = posted.get("name");
    let id: i64 = posted
        .get("id")
        .parse()
        .map_err(|_| WebError::BadRequest("no key id".into()))?;
    // Only a key of the user whose page the form is on.
    let keys = ctx.api.store.api_keys(Some(name)).await?;
    if !keys.iter().any(|k| k.id == id) || !ctx.api.store.revoke_api_key(id).await? {
        return Err(WebError::NotFound);
    }
    tracing::info!(by = %posted.viewer.user.name, user = %name, key = id, "dashboard: API key revoked");
    posted.flash(&ctx, Flash::ok(format!("Key {id} of {name} revoked.")));
    Ok(Redirect::to(&edit_url(name)).into_response())
}

/// A new random password and its argon2id hash (hashed off the async threads).
async fn new_password() -> Result<(String, String), WebError> {
    let clear = password::generate();
    let for_hash = clear.clone();
    let hash = tokio::task::spawn_blocking(move || password::hash(&for_hash))
        .await
        .map_err(|e| WebError::Unavailable(e.to_string()))?;
    Ok((clear, hash))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'@'))
}

async fn add(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    posted.viewer.require_admin()?;
    let name = posted.get("name");
    if !valid_name(name) {
        return Err(WebError::BadRequest(format!(
            "{name:?} is not a user name (letters, digits, . - _ @; at most 64)"
        )));
    }
    let mut domains = Vec::new();
    for d in comma_list(posted.get("domains")) {
        domains.push(domain_field(d)?);
    }
    if domains.is_empty() {
        return Err(WebError::BadRequest("grant at least one domain".into()));
    }
    let (clear, password_hash) = new_password().await?;
    let record = UserRecord {
        name: name.to_string(),
        password_hash,
        admin: posted.get("admin") == "1",
        domains,
    };
    let flash = match ctx.api.store.add_user(record).await {
        Ok(()) => {
            tracing::info!(by = %posted.viewer.user.name, user = %name, "dashboard: user added");
            Flash {
                kind: "ok",
                text: format!("User {name} added. Their password, shown only this once:"),
                secret: Some(clear),
            }
        }
        Err(StoreError::Conflict(_)) => {
            Flash::error(format!("A user named {name} already exists."))
        }
        Err(e) => return Err(e.into()),
    };
    posted.flash(&ctx, flash);
    Ok(Redirect::to("/users").into_response())
}

async fn reset(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    posted.viewer.require_admin()?;
    let name = posted.get("name");
    let (clear, hash) = new_password().await?;
    if !ctx.api.store.set_password(name, &hash).await? {
        return Err(WebError::NotFound);
    }
    if name != posted.viewer.user.name {
        ctx.sessions.end_user(name);
    }
    tracing::info!(by = %posted.viewer.user.name, user = %name, "dashboard: password reset");
    posted.flash(
        &ctx,
        Flash {
            kind: "ok",
            text: format!("New password of {name}, shown only this once:"),
            secret: Some(clear),
        },
    );
    Ok(Redirect::to("/users").into_response())
}

async fn remove(ctx: Ctx, posted: Posted) -> Result<Response, WebError> {
    posted.viewer.require_admin()?;
    let name = posted.get("name");
    if name == posted.viewer.user.name {
        return Err(WebError::BadRequest("you cannot remove yourself".into()));
    }
    if !ctx.api.store.remove_user(name).await? {
        return Err(WebError::NotFound);
    }
    ctx.sessions.end_user(name);
    tracing::info!(by = %posted.viewer.user.name, user = %name, "dashboard: user removed");
    posted.flash(&ctx, Flash::ok(format!("User {name} removed.")));
    Ok(Redirect::to("/users").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_plain() {
        assert!(valid_name("alice.smith-2@corp"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("<script>"));
    }
}
