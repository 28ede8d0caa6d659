//! Test doubles for the delivery engine's black-box tests: a DNS server that
//! serves zone text (`fakes::dns::FakeDns`) and a scriptable SMTP destination
//! (`fakes::sink::SmtpSink`), and a TCP link to a real server that a test can
//! cut and restore (`fakes::cut::CuttableLink`). All listen on loopback only and
//! stop when dropped.
//!
//! Part of the shared harness (`tests/support/`). `tests/delivery/fakes_selftest.rs`
//! shows every feature in use.

pub mod cut;
pub mod dns;
pub mod sink;
