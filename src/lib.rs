//! Outpost: a self-hosted SMTP relay. See README.md and SPEC.md.

pub mod accept;
pub mod api;
pub mod auth;
pub mod bounce;
pub mod config;
pub mod dkim;
pub mod dns;
#[doc(hidden)]
pub mod fuzzing;
pub mod inbound;
pub mod message;
pub mod metrics;
pub mod outbound;
pub mod queue;
pub mod send;
pub mod server;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod unsubscribe;
pub mod web;
pub mod webhooks;
