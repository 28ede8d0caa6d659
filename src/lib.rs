//! Outpost: a self-hosted SMTP relay. See README.md and SPEC.md.

pub mod config;
pub mod smtp;
pub mod store;
