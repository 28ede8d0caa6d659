//! Delivery (SPEC §4): routing, per-recipient outcomes, traffic shaping and interop
//! with a real MTA, against the fakes in `tests/support/fakes/` (whose own
//! behaviour is proved here too). Destination faults run in their own binary,
//! `tests/delivery_faults.rs`, because they count the whole process's file
//! descriptors and memory.

#[path = "../support/mod.rs"]
mod support;

mod fakes_selftest;
mod interop;
mod outcomes;
mod routing;
mod shaping;
