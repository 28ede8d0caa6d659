//! Deliverability (SPEC §5): the DNS record checks of `outpost domain check`, the
//! port probe of `outpost check`, DKIM signing and sender policy on relayed mail,
//! and Outpost's DKIM signatures checked by an independent verifier (dkimpy).

#[path = "../support/mod.rs"]
mod support;

mod checks;
mod relay;
mod verifiers;
