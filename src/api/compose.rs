//! Composing messages from a `POST /v1/messages` request: validation of every
//! field, per-recipient templates (minijinja), and the MIME message (mail-builder).
//!
//! Templates: when any recipient is given as an object (`{"email", "vars"}`),
//! `subject`, `text` and `html` are minijinja templates rendered for each recipient
//! with its `vars` plus `email`. Undefined variables are errors (strict undefined),
//! and values are HTML-escaped in `html`, not in `text` or `subject`. Otherwise the
//! strings are used as they are.
//!
//! Shared by the server and by `outpost send --dry-run`, which renders the first
//! message without a server.

use crate::smtp::{Mailbox, find_bare_line_ending};
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Header fields Outpost writes itself; a request may not set them in `headers`
/// (`Date` and `Message-ID` would otherwise appear twice, RFC 5322 §3.6).
const MANAGED_HEADERS: [&str; 14] = [
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "received",
];

/// `POST /v1/messages`: one message per recipient.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// `addr@domain` or `Display Name <addr@domain>`; the domain must be one of the
    /// user's.
    pub from: String,
    /// Recipients: addresses, or objects with template variables.
    pub to: Vec<Recipient>,
    pub subject: String,
    /// Plain-text body (at least one of `text` and `html`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// HTML body; with `text`, the message is `multipart/alternative`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Extra header fields (`X-Campaign: spring`); no CR/LF, no managed fields.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// A recipient: a bare address or an address with template variables.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Recipient {
    Address(String),
    Personalized(Personalized),
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Personalized {
    pub email: String,
    /// Template variables for this recipient.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub vars: serde_json::Map<String, serde_json::Value>,
}

impl Recipient {
    pub fn email(&self) -> &str {
        match self {
            Recipient::Address(a) => a,
            Recipient::Personalized(p) => &p.email,
        }
    }
}

/// A field of the request that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ComposeError {
    pub field: String,
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> ComposeError {
    ComposeError {
        field: field.into(),
        message: message.into(),
    }
}

/// A validated request, ready to produce each recipient's message.
pub struct Compose<'a> {
    request: &'a SendRequest,
    from_name: Option<String>,
    pub from: Mailbox,
    reply_to: Option<Mailbox>,
    pub recipients: Vec<Mailbox>,
    /// Present when the request uses templates.
    templates: Option<Environment<'a>>,
}

/// Parses an address as the API accepts it: `local@domain`, no display name, no
/// source route, no characters that would need quoting in a header.
pub fn parse_address(field: &str, text: &str) -> Result<Mailbox, ComposeError> {
    let bad = |why: &str| {
        error(
            field,
            format!("{text:?} is not a valid email address: {why}"),
        )
    };
    if text.is_empty() {
        return Err(bad("empty"));
    }
    if text
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || "<>()[],;:\\\"".contains(c))
    {
        return Err(bad("contains a character not allowed in an address"));
    }
    if text.starts_with('@') || text.matches('@').count() != 1 {
        return Err(bad("needs exactly one @"));
    }
    Mailbox::parse(text).ok_or_else(|| bad("bad local part or domain"))
}

/// `addr` or `Name <addr>`.
fn parse_named(field: &str, text: &str) -> Result<(Option<String>, Mailbox), ComposeError> {
    match text
        .trim_end()
        .strip_suffix('>')
        .and_then(|t| t.rsplit_once('<'))
    {
        Some((name, addr)) => {
            let name = name.trim().trim_matches('"').trim();
            if name.chars().any(|c| c.is_control() || c == '"') {
                return Err(error(
                    field,
                    "the display name has control characters or quotes",
                ));
            }
            let mailbox = parse_address(field, addr.trim())?;
            Ok(((!name.is_empty()).then(|| name.to_string()), mailbox))
        }
        None => Ok((None, parse_address(field, text.trim())?)),
    }
}

/// A header field name is printable ASCII without `:` (RFC 5322 §2.2).
fn check_header(name: &str, value: &str) -> Result<(), ComposeError> {
    let field = format!("headers.{name}");
    if name.is_empty()
        || name.len() > 76
        || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
    {
        return Err(error(field, "not a valid header field name"));
    }
    if MANAGED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(error(field, "this header field is set by Outpost"));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(error(
            field,
            "header values may not contain CR, LF or control characters",
        ));
    }
    Ok(())
}

/// CRLF line endings whatever the client sent (`\n` or `\r\n`).
pub(super) fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

impl<'a> Compose<'a> {
    /// Validates everything that does not depend on the recipient.
    pub fn new(request: &'a SendRequest, max_recipients: usize) -> Result<Self, ComposeError> {
        let (from_name, from) = parse_named("from", &request.from)?;
        let reply_to = request
            .reply_to
            .as_deref()
            .map(|r| parse_address("reply_to", r))
            .transpose()?;
        if request.to.is_empty() {
            return Err(error("to", "at least one recipient is needed"));
        }
        if request.to.len() > max_recipients {
            return Err(error(
                "to",
                format!(
                    "{} recipients; at most {max_recipients} per request (limits.max_recipients)",
                    request.to.len()
                ),
            ));
        }
        let recipients = request
            .to
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = match r {
                    Recipient::Address(_) => format!("to[{i}]"),
                    Recipient::Personalized(_) => format!("to[{i}].email"),
                };
                parse_address(&field, r.email())
            })
            .collect::<Result<Vec<_>, _>>()?;
        if request.text.is_none() && request.html.is_none() {
            return Err(error("text", "give `text`, `html`, or both"));
        }
        for (name, value) in &request.headers {
            check_header(name, value)?;
        }
        if request.subject.contains(['\r', '\n']) {
            return Err(error("subject", "the subject may not contain CR or LF"));
        }
        let templated = request
            .to
            .iter()
            .any(|r| matches!(r, Recipient::Personalized(_)));
        let templates = if templated {
            let mut env = Environment::new();
            env.set_undefined_behavior(UndefinedBehavior::Strict);
            // The name's extension selects auto-escaping: HTML only for `html`.
            let sources = [
                ("subject", "subject.txt", Some(&request.subject)),
                ("text", "text.txt", request.text.as_ref()),
                ("html", "html.html", request.html.as_ref()),
            ];
            for (field, name, source) in sources {
                if let Some(source) = source {
                    env.add_template(name, source)
                        .map_err(|e| error(field, format!("template error: {e}")))?;
                }
            }
            Some(env)
        } else {
            None
        };
        Ok(Compose {
            request,
            from_name,
            from,
            reply_to,
            recipients,
            templates,
        })
    }

    /// Whether any address needs SMTPUTF8.
    pub fn needs_smtputf8(&self, index: usize) -> bool {
        !self.from.is_ascii() || !self.recipients[index].is_ascii()
    }

    fn render(&self, index: usize, name: &str, source: &'a str) -> Result<String, ComposeError> {
        let Some(env) = &self.templates else {
            return Ok(source.to_string());
        };
        let mut vars = match &self.request.to[index] {
            Recipient::Personalized(p) => p.vars.clone(),
            Recipient::Address(_) => serde_json::Map::new(),
        };
        vars.entry("email")
            .or_insert_with(|| self.request.to[index].email().into());
        let field = format!("to[{index}].vars");
        // `subject.txt` is our name for the template; the user knows the field.
        let part = name.split('.').next().unwrap_or(name);
        let template = env
            .get_template(name)
            .map_err(|e| error(field.clone(), format!("{part}: {e}")))?;
        template.render(&vars).map_err(|e| {
            let recipient = self.request.to[index].email();
            let mut missing: Vec<String> = template
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| !vars.contains_key(v))
                .collect();
            if e.kind() == minijinja::ErrorKind::UndefinedError && !missing.is_empty() {
                missing.sort();
                let defined: Vec<&str> = vars.keys().map(String::as_str).collect();
                error(
                    field,
                    format!(
                        "the {part} uses {}, not defined for recipient {recipient} (its vars: {})",
                        missing.join(", "),
                        defined.join(", ")
                    ),
                )
            } else {
                error(field, format!("{part} for recipient {recipient}: {e}"))
            }
        })
    }

    /// The message for recipient `index`, with `extra` header fields (e.g.
    /// `List-Unsubscribe`) and the given `Message-ID` (without angle brackets).
    pub fn message(
        &self,
        index: usize,
        message_id: &str,
        extra: &[(&'static str, String)],
    ) -> Result<Vec<u8>, ComposeError> {
        let subject = self.render(index, "subject.txt", &self.request.subject)?;
        if subject.contains(['\r', '\n']) {
            return Err(error(
                format!("to[{index}].vars"),
                "the rendered subject contains CR or LF",
            ));
        }
        let from = Address::new_address(self.from_name.clone(), self.from.to_string());
        let mut builder = MessageBuilder::new()
            .from(from)
            .to(Address::new_address(
                None::<String>,
                self.recipients[index].to_string(),
            ))
            .subject(subject)
            .message_id(MessageId::new(message_id.to_string()));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(Address::new_address(None::<String>, reply_to.to_string()));
        }
        for (name, value) in &self.request.headers {
            builder = builder.header(name.clone(), Raw::new(value.clone()));
        }
        for (name, value) in extra {
            builder = builder.header(*name, Raw::new(value.clone()));
        }
        if let Some(text) = &self.request.text {
            builder = builder.text_body(crlf(&self.render(index, "text.txt", text)?));
        }
        if let Some(html) = &self.request.html {
            builder = builder.html_body(crlf(&self.render(index, "html.html", html)?));
        }
        let bytes = builder
            .write_to_vec()
            .map_err(|e| error("text", format!("cannot build the message: {e}")))?;
        if find_bare_line_ending(&bytes).is_some() {
            return Err(error("text", "the body has a bare CR"));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(to: serde_json::Value, extra: serde_json::Value) -> SendRequest {
        let mut v = serde_json::json!({
            "from": "Alice <alice@a.example>",
            "to": to,
            "subject": "Hi {{ name }}",
            "text": "Dear {{ name }},\nbye",
            "html": "<p>{{ name }}</p>",
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn personalized_multipart_alternative_with_escaping() {
        use mail_parser::MimeHeaders;
        let req = request(
            serde_json::json!([{"email": "b@b.example", "vars": {"name": "<Bob>"}}]),
            serde_json::json!({"headers": {"X-Tag": "t1"}}),
        );
        let c = Compose::new(&req, 10).unwrap();
        let bytes = c
            .message(
                0,
                "id.1@relay.test",
                &[("List-Unsubscribe", "<https://u>".into())],
            )
            .unwrap();
        let parsed = mail_parser::MessageParser::new().parse(&bytes).unwrap();
        assert_eq!(parsed.subject(), Some("Hi <Bob>"));
        assert_eq!(
            parsed.body_text(0).unwrap().trim_end(),
            "Dear <Bob>,\r\nbye"
        );
        assert!(parsed.body_html(0).unwrap().contains("<p>&lt;Bob&gt;</p>"));
        assert!(
            parsed
                .content_type()
                .is_some_and(|ct| ct.subtype() == Some("alternative"))
        );
        assert_eq!(parsed.message_id(), Some("id.1@relay.test"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("X-Tag: t1\r\n"));
        assert!(text.contains("List-Unsubscribe: <https://u>\r\n"));
        assert!(find_bare_line_ending(&bytes).is_none());
    }

    #[test]
    fn plain_addresses_are_not_templates() {
        let req = request(serde_json::json!(["b@b.example"]), serde_json::json!({}));
        let c = Compose::new(&req, 10).unwrap();
        let bytes = c.message(0, "x@y", &[]).unwrap();
        let parsed = mail_parser::MessageParser::new().parse(&bytes).unwrap();
        assert_eq!(parsed.subject(), Some("Hi {{ name }}"));
    }

    #[test]
    fn an_undefined_variable_is_named_with_the_recipient() {
        // A plain address in a templated request has only `email`.
        let req = request(
            serde_json::json!(["plain@b.example", {"email": "ann@b.example", "vars": {"name": "Ann"}}]),
            serde_json::json!({}),
        );
        let c = Compose::new(&req, 10).unwrap();
        let e = c.message(0, "x@y", &[]).unwrap_err();
        assert_eq!(e.field, "to[0].vars");
        assert_eq!(
            e.message,
            "the subject uses name, not defined for recipient plain@b.example (its vars: email)"
        );
        assert!(c.message(1, "x@y", &[]).is_ok());
        // `default` is how a template serves both kinds of recipient.
        let req = request(
            serde_json::json!(["plain@b.example"]),
            serde_json::json!({"subject": "Hi {{ name | default('there') }}", "to": ["plain@b.example", {"email": "c@b.example"}],
                "text": "x", "html": "y"}),
        );
        assert!(
            Compose::new(&req, 10)
                .unwrap()
                .message(0, "x@y", &[])
                .is_ok()
        );
    }

    #[test]
    fn errors_name_the_field() {
        let field = |to: serde_json::Value, extra: serde_json::Value| {
            let req = request(to, extra);
            match Compose::new(&req, 2) {
                Err(e) => e.field,
                Ok(c) => c.message(0, "x@y", &[]).unwrap_err().field,
            }
        };
        let one = serde_json::json!(["b@b.example"]);
        assert_eq!(
            field(serde_json::json!(["nope"]), serde_json::json!({})),
            "to[0]"
        );
        assert_eq!(
            field(
                serde_json::json!(["a@b.example", "b@b.example", "c@b.example"]),
                serde_json::json!({})
            ),
            "to"
        );
        assert_eq!(field(one.clone(), serde_json::json!({"from": "x"})), "from");
        assert_eq!(
            field(
                one.clone(),
                serde_json::json!({"headers": {"X-A": "a\r\nBcc: x@y.example"}})
            ),
            "headers.X-A"
        );
        assert_eq!(
            field(
                one.clone(),
                serde_json::json!({"headers": {"Bad Name": "a"}})
            ),
            "headers.Bad Name"
        );
        assert_eq!(
            field(one.clone(), serde_json::json!({"headers": {"From": "a"}})),
            "headers.From"
        );
        // Caught by the api_json fuzz check: both appeared twice in the message.
        for name in ["Message-ID", "date"] {
            assert_eq!(
                field(
                    one.clone(),
                    serde_json::json!({"headers": {name: "<x@y.example>"}})
                ),
                format!("headers.{name}")
            );
        }
        assert_eq!(
            field(one.clone(), serde_json::json!({"subject": "a\nb"})),
            "subject"
        );
        assert_eq!(
            field(
                serde_json::json!([{"email": "b@b.example", "vars": {}}]),
                serde_json::json!({})
            ),
            "to[0].vars"
        );
        assert_eq!(
            field(
                serde_json::json!([{"email": "b@b.example"}]),
                serde_json::json!({"text": "{% if %}"})
            ),
            "text"
        );
    }
}
