//! Inbound: the SMTP server as clients meet it (SPEC §1, §2): commands, message
//! content, limits, relay policy, TLS and AUTH (with logins at volume and API keys,
//! over SMTP and HTTP), and the attacks on each (abuse from
//! one address, the open-relay matrix, SMTP smuggling).

#[path = "../support/mod.rs"]
mod support;

mod abuse;
mod auth_volume;
mod commands;
mod data;
mod limits;
mod open_relay;
mod policy;
mod smuggling;
mod tls_auth;
