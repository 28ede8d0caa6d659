//! Sessions and CSRF protection.
//!
//! A session is kept in memory (a restart signs everyone out, which is acceptable
//! for an operator's dashboard and keeps session secrets off disk). The cookie holds
//! a 256-bit random token; the server keeps only its SHA-256, so a memory dump of
//! the session table does not hand out live cookies.
//!
//! CSRF: every session has its own random token, embedded as the hidden field
//! `csrf` in every form; a POST whose token does not match is refused. The cookie
//! is also `SameSite=Strict`, so a cross-site POST arrives without a session at all.
//! The login form, which has no session yet, uses a double-submit token instead (a
//! short-lived cookie that must equal the form field).

use super::{Flash, WebContext, WebError};
use crate::auth::AuthenticatedUser;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SESSION_COOKIE: &str = "outpost_session";
pub const LOGIN_COOKIE: &str = "outpost_login";
/// Most sessions kept at once; past it the least recently used ones are dropped,
/// so a flood of logins cannot grow memory without bound.
const MAX_SESSIONS: usize = 10_000;
/// Largest form body read (a CSV import of suppressions is the big one).
pub const MAX_FORM: usize = 4 * 1024 * 1024;

struct Session {
    user: String,
    csrf: String,
    last_seen: Instant,
    flash: Option<Flash>,
}

pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
    /// Adds `Secure` to the cookies (the public URL is https).
    secure: bool,
}

/// A random 256-bit token, hex.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    pub fn new(idle: Duration, secure: bool) -> Sessions {
        Sessions {
            by_hash: Mutex::new(HashMap::new()),
            idle,
            secure,
        }
    }

    /// Starts a session for `user`; returns the `Set-Cookie` value.
    pub fn start(&self, user: &str) -> String {
        let token = random_token();
        let mut sessions = self.by_hash.lock().expect("sessions lock");
        let now = Instant::now();
        sessions.retain(|_, s| now.duration_since(s.last_seen) < self.idle);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            hash(&token),
            Session {
                user: user.to_string(),
                csrf: random_token(),
                last_seen: now,
                flash: None,
            },
        );
        self.cookie(SESSION_COOKIE, &token, None)
    }

    /// Ends the session of `token`; returns the `Set-Cookie` value that clears it.
    pub fn end(&self, token: &str) -> String {
        self.by_hash
            .lock()
            .expect("sessions lock")
            .remove(&hash(token));
        self.cookie(SESSION_COOKIE, "", Some(0))
    }

    /// The session's user and CSRF token, taking its flash, when it is alive;
    /// refreshes its idle timer.
    fn touch(&self, token: &str) -> Option<(String, String, Option<Flash>)> {
        let mut sessions = self.by_hash.lock().expect("sessions lock");
        let key = hash(token);
        let session = sessions.get_mut(&key)?;
        let now = Instant::now();
        if now.duration_since(session.last_seen) >= self.idle {
            sessions.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some((
            session.user.clone(),
            session.csrf.clone(),
            session.flash.take(),
        ))
    }

    /// Shows `flash` on the session's next page.
    pub fn flash(&self, token: &str, flash: Flash) {
        if let Some(s) = self
            .by_hash
            .lock()
            .expect("sessions lock")
            .get_mut(&hash(token))
        {
            s.flash = Some(flash);
        }
    }

    /// Ends every session of `user` (removed, or its password reset).
    pub fn end_user(&self, user: &str) {
        self.by_hash
            .lock()
            .expect("sessions lock")
            .retain(|_, s| s.user != user);
    }

    /// A `Set-Cookie` value; `max_age` `Some(0)` deletes the cookie.
    pub fn cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> String {
        let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
        if let Some(age) = max_age {
            cookie.push_str(&format!("; Max-Age={age}"));
        }
        if self.secure {
            cookie.push_str("; Secure");
        }
        cookie
    }
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The signed-in user of a dashboard request. Without a live session, a page
/// redirects to `/login`.
pub struct Viewer {
    pub user: AuthenticatedUser,
    pub csrf: String,
    pub flash: Option<Flash>,
    pub token: String,
}

impl FromRequestParts<Arc<WebContext>> for Viewer {
    type Rejection = WebError;

    async fn from_request_parts(
        parts: &mut Parts,
        ctx: &Arc<WebContext>,
    ) -> Result<Self, WebError> {
        let next = parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        let sign_in = || WebError::SignIn { next: next.clone() };
        let token = cookie(&parts.headers, SESSION_COOKIE).ok_or_else(sign_in)?;
        let (name, csrf, flash) = ctx.sessions.touch(token).ok_or_else(sign_in)?;
        // Read again on every request, so a removed user or a changed grant
        // applies at once.
        let user = ctx.api.store.user(&name).await?.ok_or_else(sign_in)?;
        Ok(Viewer {
            user: user.into(),
            csrf,
            flash,
            token: token.to_string(),
        })
    }
}

impl Viewer {
    pub fn require_admin(&self) -> Result<(), WebError> {
        if self.user.admin {
            Ok(())
        } else {
            Err(WebError::NotFound)
        }
    }
}

/// A form POSTed by a signed-in user, with its CSRF token checked: its fields in
/// order (a field may repeat, as the queue's checkboxes do).
pub struct Posted {
    pub viewer: Viewer,
    pub fields: Vec<(String, String)>,
}

impl Posted {
    /// The first value of `name`, trimmed; empty when absent.
    pub fn get(&self, name: &str) -> &str {
        field(&self.fields, name)
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Shows `flash` on the next page.
    pub fn flash(&self, ctx: &WebContext, flash: Flash) {
        ctx.sessions.flash(&self.viewer.token, flash);
    }
}

pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, v)| v.trim())
}

/// Reads an `application/x-www-form-urlencoded` body.
pub async fn form_fields(req: Request) -> Result<Vec<(String, String)>, WebError> {
    let body = axum::body::to_bytes(req.into_body(), MAX_FORM)
        .await
        .map_err(|_| WebError::BadRequest("the form is too large".into()))?;
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}

impl FromRequest<Arc<WebContext>> for Posted {
    type Rejection = WebError;

    async fn from_request(req: Request, ctx: &Arc<WebContext>) -> Result<Self, WebError> {
        let (mut parts, body) = req.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, ctx).await?;
        let fields = form_fields(Request::from_parts(parts, body)).await?;
        if !same(field(&fields, "csrf"), &viewer.csrf) {
            tracing::warn!(user = %viewer.user.name, "dashboard form without a valid CSRF token refused");
            return Err(WebError::Forbidden(
                "This form is out of date or did not come from this dashboard. Reload the page and try again.".into(),
            ));
        }
        Ok(Posted { viewer, fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_end() {
        let sessions = Sessions::new(Duration::from_millis(0), false);
        let cookie = sessions.start("alice");
        let token = cookie
            .strip_prefix("outpost_session=")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        assert!(sessions.touch(&token).is_none(), "idle 0 expires at once");

        let sessions = Sessions::new(Duration::from_secs(60), true);
        let cookie = sessions.start("alice");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(cookie.ends_with("; Secure"));
        let token = cookie.split(';').next().unwrap()["outpost_session=".len()..].to_string();
        let (user, csrf, _) = sessions.touch(&token).unwrap();
        assert_eq!((user.as_str(), csrf.len()), ("alice", 64));
        sessions.end(&token);
        assert!(sessions.touch(&token).is_none());
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; outpost_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
