//! Diagnostics an operator runs by hand: `outpost check HOST` ([`probe`]: a mail
//! server's ports as a sending MTA or a mail client meets them) and `outpost domain
//! check` ([`records`]: what a sending domain publishes in DNS against what this
//! server needs). Both only read: they never change the store or the queue, and every
//! network step has a deadline.

pub mod probe;
pub mod records;
