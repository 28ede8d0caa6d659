//! The harness every black-box test binary shares (each binary includes it with
//! `#[path = "../support/mod.rs"] mod support;`):
//!
//! - [`common`]: an in-process server on ephemeral 127.0.0.1 ports and a raw SMTP
//!   client for the protocol corners real clients never produce;
//! - [`fakes`]: a scripted SMTP sink and a DNS server built from zone text;
//! - [`server_process`]: the real `outpost` binary as a child process (kill -9);
//! - [`delivery`]: a relay delivering to fakes, and its checks;
//! - [`hardening`]: servers configured for the attack and fault suites, and the
//!   leak accounting (fds, tasks, memory) of the fault suite.

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

pub mod common;
pub mod delivery;
pub mod fakes;
pub mod hardening;
pub mod server_process;
