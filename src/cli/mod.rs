//! The command handlers of the `outpost` binary and their human output (`--json`
//! for scripts).

pub mod bounce;
