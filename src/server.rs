//! Start-up: open the store, load or create the TLS certificate, bind every listener
//! (all before serving, so a port that cannot be bound stops start-up), then serve.

use crate::config::{Config, ListenerMode};
use crate::dns::HickoryResolver;
use crate::inbound::{self, InboundContext};
use crate::queue::{self, QueueHandle};
use crate::store::{SqliteStore, Store, StoreError};
use crate::tls::{self, CertificateSource, TlsError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinSet;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Bind(#[from] inbound::BindError),
    #[error("{0}")]
    Dns(String),
}

/// A running server. Dropping it stops the listeners.
pub struct Running {
    pub listeners: Vec<(ListenerMode, SocketAddr)>,
    pub store: Arc<dyn Store>,
    pub certificate: CertificateSource,
    connections: inbound::ConnectionLimiter,
    tasks: JoinSet<()>,
}

impl Running {
    /// The bound address of the first listener in `mode`.
    pub fn addr(&self, mode: ListenerMode) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, a)| *a)
    }

    /// Inbound connections holding a slot right now (all listeners).
    pub fn active_connections(&self) -> usize {
        self.connections.active()
    }

    /// Waits until every listener task ends (they end only when aborted or on panic).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Opens the store and starts delivery (unless `delivery.paused`) and every listener.
pub async fn start(config: Arc<Config>) -> Result<Running, StartError> {
    let store: Arc<dyn Store> = SqliteStore::open(&config.data_dir, config.store.max_batch)?;
    let queue = if config.delivery.paused {
        tracing::warn!("delivery.paused is set: mail is accepted and stored, not delivered");
        None
    } else {
        let resolver = HickoryResolver::new(&config.dns.nameservers).map_err(StartError::Dns)?;
        Some(queue::start(
            config.clone(),
            store.clone(),
            Arc::new(resolver),
        ))
    };
    start_with_store(config, store, queue).await
}

/// Starts the listeners on `store`, handing accepted mail to `queue` if given.
pub async fn start_with_store(
    config: Arc<Config>,
    store: Arc<dyn Store>,
    queue: Option<QueueHandle>,
) -> Result<Running, StartError> {
    let (tls_config, certificate) = tls::server_config(
        config.tls.cert.as_deref(),
        config.tls.key.as_deref(),
        &config.data_dir,
        &config.hostname,
    )?;
    if let CertificateSource::SelfSignedGenerated(path) = &certificate {
        tracing::warn!(path = %path.display(), "no [tls] certificate configured: generated a self-signed certificate; configure tls.cert and tls.key for production");
    }
    let mut bound = Vec::new();
    for listener in &config.listeners {
        bound.push(inbound::bind(listener).await?);
    }
    let ctx = Arc::new(InboundContext::new(
        config.clone(),
        store.clone(),
        tokio_rustls::TlsAcceptor::from(tls_config),
        queue,
    ));
    let connections = ctx.connections.clone();
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    for b in bound {
        tracing::info!(addr = %b.addr, mode = ?b.mode, "listening");
        listeners.push((b.mode, b.addr));
        tasks.spawn(inbound::serve_listener(ctx.clone(), b));
    }
    Ok(Running {
        listeners,
        store,
        certificate,
        connections,
        tasks,
    })
}
