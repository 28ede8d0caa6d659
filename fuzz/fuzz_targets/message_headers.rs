//! Checks live in `outpost::fuzzing::message_headers`, shared with `tests/fuzz_seeds.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| outpost::fuzzing::message_headers(data));
