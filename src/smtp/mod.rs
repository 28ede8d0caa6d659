//! Sans-IO SMTP protocol pieces shared by the inbound server and the outbound client:
//! the reply type, the DATA receiver (dot-unstuffing, end-of-data, bare CR/LF
//! detection), dot-stuffing for sending, and mailbox/domain newtypes.
//!
//! No sockets, no tokio here; everything is a pure function of its input bytes so it
//! can be unit-tested and fuzzed. Command-line parsing is `smtp-proto`'s
//! (`smtp_proto::Request::parse`); its DATA receiver is not used because it lets bare
//! LF through, which SPEC §2 forbids (the 2023 SMTP-smuggling class).
#![forbid(unsafe_code)]

pub mod address;
pub mod data;
pub mod reply;

pub use address::{Domain, Mailbox};
pub use data::{DataReceiver, DataStatus, LineEndingViolation, dot_stuff, find_bare_line_ending};
pub use reply::Reply;
