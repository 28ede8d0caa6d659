//! Outpost: a self-hosted SMTP relay. See README.md and SPEC.md.

pub mod auth;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod inbound;
pub mod message;
pub mod server;
pub mod smtp;
pub mod store;
pub mod tls;
