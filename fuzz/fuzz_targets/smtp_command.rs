//! Checks live in `outpost::fuzzing::smtp_command`, shared with `tests/fuzz_seeds.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| outpost::fuzzing::smtp_command(data));
