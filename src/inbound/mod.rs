//! Inbound SMTP: listeners (relay / submission / submissions), TLS, and the session
//! state machine, with one file per verb family.
//!
//! Invariants:
//! - no open relay: a recipient outside Outpost's own domains is accepted only from an
//!   authenticated user, or on a `relay` listener from `relay.trusted_networks`;
//! - AUTH only over TLS;
//! - `250` after DATA/BDAT only once the store has committed the message;
//! - every wait has a timeout and every buffer a limit; a client over a limit gets a
//!   reply, never a hang.
//!
//! Inbound knows nothing about delivery: it hands accepted messages to the store and
//! hands them to the queue, never calling into delivery itself.

mod auth;
mod connections;
mod data;
mod ehlo;
mod io;
mod listener;
mod mail;
mod session;
#[cfg(test)]
mod tests;

pub use connections::ConnectionLimiter;
pub use listener::{BindError, BoundListener, bind, serve_listener};

use crate::accept::Acceptor;
use crate::auth::LoginGate;
use crate::config::Config;
use crate::store::Store;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// What every session shares.
pub struct InboundContext {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub tls: TlsAcceptor,
    /// Shared with the HTTP API: one failure budget for both.
    pub login: Arc<LoginGate>,
    pub connections: ConnectionLimiter,
    /// The shared acceptance path (checks, added headers, commit, hand-off to the
    /// queue).
    pub acceptor: Acceptor,
    /// Becomes true when the server stops (SIGTERM/SIGINT): listeners stop
    /// accepting, and sessions close once no transaction is open.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

impl InboundContext {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        tls: TlsAcceptor,
        acceptor: Acceptor,
        login: Arc<LoginGate>,
    ) -> InboundContext {
        InboundContext {
            login,
            connections: ConnectionLimiter::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            ),
            config,
            store,
            tls,
            acceptor,
            shutdown: tokio::sync::watch::Sender::new(false),
        }
    }
}
