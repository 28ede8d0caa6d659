//! Outpost: a self-hosted SMTP relay. See README.md and SPEC.md.

pub mod auth;
pub mod bounce;
pub mod config;
pub mod dkim;
pub mod dns;
pub mod inbound;
pub mod message;
pub mod outbound;
pub mod queue;
pub mod server;
pub mod smtp;
pub mod store;
pub mod tls;
