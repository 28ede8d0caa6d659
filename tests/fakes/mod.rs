//! Test doubles for the delivery engine's black-box tests: a DNS server that
//! serves zone text (`fakes::dns::FakeDns`) and a scriptable SMTP destination
//! (`fakes::sink::SmtpSink`). Both listen on loopback only and stop when dropped.
//!
//! Include from an integration test with
//! `#[path = "fakes/mod.rs"] mod fakes;`. `tests/fakes_selftest.rs` shows
//! every feature in use.

// A shared test-support module: each test binary uses only part of it.
#![allow(dead_code)]

pub mod dns;
pub mod sink;
