//! `/users` (admins only): add a user with a generated password (shown once),
//! reset a password, remove a user; each user's granted domains.

use super::session::{Posted, Viewer};
use super::{Ctx, Flash, WebContext, WebError, page};
use crate::auth::password;
use crate::store::{StoreError, UserRecord};
use axum::Router;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Value, context};
use std::sync::Arc;

pub fn routes() -> Router<Arc<WebContext>> {
    Router::new()
        .route("/users", get(show).post(add))
        .route("/users/remove", post(remove))
        .route("/users/password", post(reset))
}

async fn show(ctx: Ctx, viewer: Viewer) -> Result<Response, WebError> {
    viewer.require_admin()?;
    let users: Vec<Value> = ctx
        .api
        .store
        .users()
        .await?
        .into_iter()
        .map(|u| context! { name => u.name, admin => u.admin, domains => u.domains })
        .collect();
    Ok(page(&viewer, "users.html", "users", context! { users }))
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
    for d in posted
        .get("domains")
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let domain = crate::smtp::Domain::parse(d)
            .ok_or_else(|| WebError::BadRequest(format!("{d:?} is not a domain name")))?;
        domains.push(domain.to_string().to_ascii_lowercase());
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
