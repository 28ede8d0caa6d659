//! Test doubles for the black-box tests: a DNS server that serves zone text
//! (`fakes::dns::FakeDns`), a scriptable SMTP destination
//! (`fakes::sink::SmtpSink`), a TCP link to a real server that a test can cut
//! and restore (`fakes::cut::CuttableLink`) and a webhook endpoint
//! (`fakes::webhook::Receiver`). All listen on loopback only and stop when
//! dropped.
//!
//! Part of the shared harness (`tests/support/`). `tests/delivery/fakes_selftest.rs`
//! shows every feature in use.

pub mod cut;
pub mod dns;
pub mod sink;
pub mod webhook;
