//! Outpost: a self-hosted SMTP relay. See README.md and SPEC.md.

pub mod accept;
pub mod api;
pub mod auth;
pub mod bounce;
pub mod config;
pub mod diagnose;
pub mod dkim;
pub mod dns;
/// The invariant checks of the fuzz targets, shared with the seed-replay test;
/// test code, so only built with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod inbound;
pub mod message;
pub mod metrics;
pub mod outbound;
pub mod queue;
pub mod server;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod unsubscribe;
pub mod web;
pub mod webhooks;
