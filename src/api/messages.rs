//! `POST /v1/messages`, `POST /v1/messages/raw`, `GET /v1/messages/{id}`.
//!
//! Sending composes every recipient's message first and accepts them only when all
//! are valid, so a bad recipient or template refuses the whole request. Each
//! message then goes through the same acceptance path as SMTP
//! (`crate::accept`): the same sender authorization, added headers, durable
//! commit and hand-off to the queue; the answer comes after every commit. Commits
//! are separate, so one can fail while others are stored: the answer is then
//! `207` and says which recipients were stored and which were not, so a client
//! retries only those (a total failure would make it send the others twice).
//! Acceptances run in tasks of their own: a client that goes away does not cut
//! one off between its commit and the hand-off to the queue.
//!
//! Every message from `POST /v1/messages` is bulk mail in the sense of RFC 8058:
//! one message per recipient, each with its own `List-Unsubscribe` link.
//! `POST /v1/messages/raw` sends the message as given, without those fields.

use super::compose::{Compose, SendRequest, crlf, parse_address};
use super::{ApiContext, ApiError, Caller, Ctx, JsonBody};
use crate::accept::{AcceptError, Origin, Submission, message_id};
use crate::bounce::status_of;
use crate::config::Config;
use crate::smtp::{Mailbox, find_bare_line_ending};
use crate::store::{MessageSummary, NewRecipient, QueueId};
use crate::unsubscribe::{UnsubscribeKey, Unsubscription};
use axum::extract::{ConnectInfo, Path};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<ApiContext>> {
    Router::new()
        .route("/v1/messages", post(send))
        .route("/v1/messages/raw", post(send_raw))
        .route("/v1/messages/{id}", get(status))
}

/// One accepted message.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    /// The queue id (`GET /v1/messages/{id}`).
    pub id: String,
    pub to: Vec<String>,
}

/// A recipient whose message was not stored.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Failed {
    /// Its place in the request's `to` (0-based).
    pub index: usize,
    pub to: Vec<String>,
    /// The HTTP status a request for this recipient alone would have got (`503`:
    /// temporary, send it again).
    pub status: u16,
    pub error: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SendResponse {
    /// The stored messages, in request order.
    pub messages: Vec<Accepted>,
    /// Recipients whose message was not stored (only in a `207` answer; empty
    /// otherwise).
    #[serde(default)]
    pub failed: Vec<Failed>,
}

/// `POST /v1/messages/raw`: a complete RFC 5322 message and its envelope.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    /// The message, headers and body; `\n` line endings become CRLF.
    pub message: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecipientView {
    pub address: String,
    /// `queued`, `deferred`, `delivered`, `bounced`, `suppressed` or `local`.
    pub status: String,
    pub attempts: u32,
    /// Unix ms of the next attempt, for queued and deferred recipients.
    pub next_attempt: Option<i64>,
    pub last_reply: Option<String>,
    /// The last reply's enhanced status code (`5.1.1`), or its class's (`2.0.0`)
    /// when it has none; null without a reply.
    pub enhanced_code: Option<String>,
    /// Bounce class of the last failed attempt, when it was classified.
    pub bounce_class: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub id: String,
    pub mail_from: String,
    pub user: Option<String>,
    pub size: usize,
    /// Unix ms.
    pub received_at: i64,
    pub recipients: Vec<RecipientView>,
}

impl From<MessageSummary> for MessageView {
    /// The one view of a message's state, for the API and `outpost queue show --json`.
    fn from(summary: MessageSummary) -> MessageView {
        let recipients = summary
            .recipients
            .into_iter()
            .map(|r| RecipientView {
                enhanced_code: r.last_reply.as_deref().and_then(status_of),
                bounce_class: r.last_class,
                next_attempt: (!r.status.is_final()).then_some(r.next_attempt),
                address: r.address,
                status: r.status.as_str().to_string(),
                attempts: r.attempts,
                last_reply: r.last_reply,
            })
            .collect();
        MessageView {
            id: summary.id.to_string(),
            mail_from: summary.mail_from,
            user: summary.auth_user,
            size: summary.size,
            received_at: summary.received_at,
            recipients,
        }
    }
}

fn origin(peer: SocketAddr) -> Origin {
    Origin {
        from: format!("api ([{}])", peer.ip()),
        tls: None,
        protocol: "HTTP".into(),
        source: "http",
    }
}

impl ApiContext {
    /// Accepts every submission concurrently (they share group commits); one result
    /// per submission, in order. Each runs in a task that finishes even when this
    /// future is dropped (the client went away).
    async fn accept_all(
        &self,
        submissions: Vec<(QueueId, Submission)>,
    ) -> Vec<Result<QueueId, ApiError>> {
        let tasks: Vec<_> = submissions
            .into_iter()
            .map(|(id, submission)| {
                let acceptor = self.acceptor.clone();
                tokio::spawn(async move { acceptor.accept_as(id, submission).await })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(match task.await {
                Ok(result) => result.map_err(accept_error),
                Err(e) => Err(ApiError::Unavailable(e.to_string())),
            });
        }
        results
    }
}

fn accept_error(e: AcceptError) -> ApiError {
    match e {
        AcceptError::NotAuthorized => ApiError::Forbidden {
            field: "from".into(),
            message: "the From: header is missing or not in your domains".into(),
        },
        AcceptError::Nul => ApiError::invalid("message", "NUL octets are not allowed in a message"),
        AcceptError::Signing(e) => ApiError::Unavailable(e),
        AcceptError::Store(e) => e.into(),
    }
}

/// The envelope recipient for `mailbox`, marked local when its domain is one of ours.
fn recipient(config: &Config, mailbox: &Mailbox) -> NewRecipient {
    NewRecipient {
        address: mailbox.clone(),
        local: config.relay.is_local(mailbox.domain()),
    }
}

fn check_size(config: &Config, field: String, size: usize) -> Result<(), ApiError> {
    let max = config.limits.max_message_size;
    if size > max {
        return Err(ApiError::TooLarge {
            field: Some(field),
            message: format!(
                "the message would be {size} bytes; the limit is {max} (limits.max_message_size)"
            ),
        });
    }
    Ok(())
}

fn forbidden_sender(field: &str, domain: &str) -> ApiError {
    ApiError::Forbidden {
        field: field.into(),
        message: format!("you may not send as {domain}: the domain is not granted to your user"),
    }
}

/// Send a message to each recipient, personalized when recipients carry `vars`.
#[utoipa::path(post, path = "/v1/messages", tag = "messages", request_body = SendRequest,
    security(("basic" = [])),
    responses(
        (status = 202, description = "Accepted: one id per recipient", body = SendResponse),
        (status = 207, description = "Partly accepted: `messages` were stored, the \
            recipients in `failed` were not (each with its status and reason); send only \
            those again", body = SendResponse),
        (status = 400, description = "Malformed JSON or unknown field", body = super::ErrorBody),
        (status = 401, description = "Wrong or missing credentials", body = super::ErrorBody),
        (status = 403, description = "Sender domain not granted", body = super::ErrorBody),
        (status = 413, description = "Too large", body = super::ErrorBody),
        (status = 422, description = "Invalid field", body = super::ErrorBody),
        (status = 503, description = "Nothing was stored (temporary): send it again",
            body = super::ErrorBody),
    ))]
pub(super) async fn send(
    ctx: Ctx,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    JsonBody(request): JsonBody<SendRequest>,
) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    let result = compose_all(&ctx.config, &ctx.unsubscribe, &caller, &request, peer);
    let submissions = match result {
        Ok(s) => s,
        Err(e) => {
            ctx.metrics.message_outcome("http", false);
            return Err(e);
        }
    };
    let to: Vec<String> = submissions
        .iter()
        .map(|(_, s)| s.recipients[0].address.to_string())
        .collect();
    let mut messages = Vec::new();
    let mut failed = Vec::new();
    let mut first_error = None;
    for (index, (result, to)) in ctx
        .accept_all(submissions)
        .await
        .into_iter()
        .zip(to)
        .enumerate()
    {
        match result {
            Ok(id) => messages.push(Accepted {
                id: id.to_string(),
                to: vec![to],
            }),
            Err(e) => {
                failed.push(Failed {
                    index,
                    to: vec![to],
                    status: e.status().as_u16(),
                    error: e.to_string(),
                });
                first_error.get_or_insert(e);
            }
        }
    }
    let status = match first_error {
        // Nothing stored: the request failed as a whole.
        Some(e) if messages.is_empty() => return Err(e),
        Some(_) => StatusCode::MULTI_STATUS,
        None => StatusCode::ACCEPTED,
    };
    Ok((status, Json(SendResponse { messages, failed })))
}

/// Validates the request and builds every recipient's message.
pub(crate) fn compose_all(
    config: &Config,
    unsubscribe: &UnsubscribeKey,
    caller: &Caller,
    request: &SendRequest,
    peer: SocketAddr,
) -> Result<Vec<(QueueId, Submission)>, ApiError> {
    let compose = Compose::new(request, config.limits.max_recipients)
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    let domain = compose.from.domain().as_str();
    if !caller.0.may_send_as(domain) {
        return Err(forbidden_sender("from", domain));
    }
    let public_url = config
        .http
        .public_url
        .clone()
        .unwrap_or_else(|| format!("https://{}", config.hostname));
    let mut out = Vec::with_capacity(compose.recipients.len());
    for (i, rcpt) in compose.recipients.iter().enumerate() {
        let id = QueueId::generate();
        let unsubscription = Unsubscription {
            domain: domain.to_string(),
            address: rcpt.to_string(),
            user: caller.0.name.clone(),
        };
        let headers = unsubscribe.headers(&unsubscription, &public_url, &config.hostname);
        let content = compose
            .message(i, &message_id(&id, &config.hostname), &headers)
            .map_err(|e| ApiError::invalid(e.field, e.message))?;
        check_size(config, format!("to[{i}]"), content.len())?;
        out.push((
            id,
            Submission {
                mail_from: Some(compose.from.clone()),
                recipients: vec![recipient(config, rcpt)],
                user: Some(caller.0.clone()),
                smtputf8: compose.needs_smtputf8(i),
                content,
                origin: origin(peer),
                submission: true,
                may_relay: true,
            },
        ));
    }
    Ok(out)
}

/// Send a complete RFC 5322 message to the given envelope.
#[utoipa::path(post, path = "/v1/messages/raw", tag = "messages", request_body = RawRequest,
    security(("basic" = [])),
    responses(
        (status = 202, description = "Accepted", body = SendResponse),
        (status = 400, description = "Malformed JSON or unknown field", body = super::ErrorBody),
        (status = 401, description = "Wrong or missing credentials", body = super::ErrorBody),
        (status = 403, description = "Sender domain not granted", body = super::ErrorBody),
        (status = 413, description = "Too large", body = super::ErrorBody),
        (status = 422, description = "Invalid field", body = super::ErrorBody),
    ))]
pub(super) async fn send_raw(
    ctx: Ctx,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    caller: Caller,
    JsonBody(request): JsonBody<RawRequest>,
) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    let submission = raw_submission(&ctx.config, &caller, &request, peer)?;
    let to = submission
        .recipients
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    let [result] = ctx
        .accept_all(vec![(QueueId::generate(), submission)])
        .await
        .try_into()
        .expect("one result per submission");
    let id = result.map_err(|e| match e {
        ApiError::Forbidden { message, .. } => ApiError::Forbidden {
            field: "message".into(),
            message,
        },
        other => other,
    })?;
    let messages = vec![Accepted {
        id: id.to_string(),
        to,
    }];
    Ok((
        StatusCode::ACCEPTED,
        Json(SendResponse {
            messages,
            failed: Vec::new(),
        }),
    ))
}

/// Validates a raw request into the submission it asks for.
pub(crate) fn raw_submission(
    config: &Config,
    caller: &Caller,
    request: &RawRequest,
    peer: SocketAddr,
) -> Result<Submission, ApiError> {
    let limits = &config.limits;
    let mail_from = parse_address("mail_from", &request.mail_from)
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    if !caller.0.may_send_as(mail_from.domain().as_str()) {
        return Err(forbidden_sender("mail_from", mail_from.domain().as_str()));
    }
    if request.rcpt_to.is_empty() || request.rcpt_to.len() > limits.max_recipients {
        return Err(ApiError::invalid(
            "rcpt_to",
            format!(
                "give 1 to {} recipients (limits.max_recipients)",
                limits.max_recipients
            ),
        ));
    }
    let rcpts = request
        .rcpt_to
        .iter()
        .enumerate()
        .map(|(i, r)| parse_address(&format!("rcpt_to[{i}]"), r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    let content = crlf(&request.message).into_bytes();
    if find_bare_line_ending(&content).is_some() {
        return Err(ApiError::invalid("message", "the message has a bare CR"));
    }
    if !content.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(ApiError::invalid(
            "message",
            "the message needs a header block and an empty line before the body",
        ));
    }
    check_size(config, "message".into(), content.len())?;
    let smtputf8 = !mail_from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii());
    let submission = Submission {
        mail_from: Some(mail_from),
        recipients: rcpts.iter().map(|r| recipient(config, r)).collect(),
        user: Some(caller.0.clone()),
        smtputf8,
        content,
        origin: origin(peer),
        submission: true,
        may_relay: true,
    };
    Ok(submission)
}

/// Per-recipient status of one message.
#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages",
    params(("id" = String, Path, description = "Queue id")),
    security(("basic" = [])),
    responses(
        (status = 200, body = MessageView),
        (status = 401, body = super::ErrorBody),
        (status = 404, description = "No such message (or another tenant's)", body = super::ErrorBody),
    ))]
pub(super) async fn status(
    ctx: Ctx,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    let id: QueueId = id.parse().map_err(|_| ApiError::NotFound)?;
    let summary = ctx
        .store
        .message(&id)
        .await?
        .filter(|m| caller.owns(m.auth_user.as_deref()))
        .ok_or(ApiError::NotFound)?;
    Ok(Json(MessageView::from(summary)))
}
