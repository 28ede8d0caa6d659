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

pub use connections::ConnectionLimiter;
pub use listener::{BindError, BoundListener, bind, serve_listener};

use crate::auth::AuthThrottle;
use crate::config::Config;
use crate::dkim::DkimSigners;
use crate::queue::QueueHandle;
use crate::store::Store;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// What every session shares.
pub struct InboundContext {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub tls: TlsAcceptor,
    pub throttle: AuthThrottle,
    pub connections: ConnectionLimiter,
    /// Delivery, when it runs: committed messages are handed to it directly while
    /// its in-memory window has room; otherwise its store scan finds them.
    pub queue: Option<QueueHandle>,
    /// An argon2 hash verified when a user does not exist, so that the reply time
    /// does not reveal which user names are valid.
    pub dummy_password_hash: String,
    /// DKIM keys of the registered sending domains, signed with at acceptance.
    pub dkim: DkimSigners,
}

impl InboundContext {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        tls: TlsAcceptor,
        queue: Option<QueueHandle>,
    ) -> InboundContext {
        InboundContext {
            throttle: AuthThrottle::new(config.auth.max_failures, config.auth.lockout.get()),
            connections: ConnectionLimiter::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            ),
            dkim: DkimSigners::new(store.clone()),
            config,
            store,
            tls,
            queue,
            dummy_password_hash: crate::auth::password::hash(&crate::auth::password::generate()),
        }
    }
}
