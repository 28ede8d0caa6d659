//! Start-up: open the store, load or create the TLS certificate and the unsubscribe
//! key, bind every listener and the HTTP API (all before serving, so a port that
//! cannot be bound stops start-up), then serve and start the webhook tasks.

use crate::accept::Acceptor;
use crate::api::{self, ApiContext};
use crate::auth::LoginGate;
use crate::config::{Config, ListenerMode};
use crate::dns::HickoryResolver;
use crate::inbound::{self, InboundContext};
use crate::metrics::Metrics;
use crate::queue::{self, QueueHandle};
use crate::store::{SqliteStore, Store, StoreError};
use crate::tls::{self, CertificateSource, TlsError};
use crate::unsubscribe::UnsubscribeKey;
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
    #[error("cannot listen on {addr} (HTTP API, [http] addr): {reason}")]
    HttpBind { addr: SocketAddr, reason: String },
}

/// A running server. Dropping it stops the listeners.
pub struct Running {
    pub listeners: Vec<(ListenerMode, SocketAddr)>,
    /// The bound address of the HTTP API (port 0 resolved).
    pub http_addr: SocketAddr,
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
    let metrics = Arc::new(Metrics::default());
    let store: Arc<dyn Store> = SqliteStore::open_measured(
        &config.data_dir,
        config.store.max_batch,
        metrics.commit_stages(),
    )?;
    let queue = if config.delivery.paused {
        tracing::warn!("delivery.paused is set: mail is accepted and stored, not delivered");
        None
    } else {
        let resolver = HickoryResolver::new(&config.dns.nameservers).map_err(StartError::Dns)?;
        Some(queue::start(
            config.clone(),
            store.clone(),
            Arc::new(resolver),
            metrics.clone(),
            Arc::new(UnsubscribeKey::load_or_create(&config.data_dir)?),
        ))
    };
    start_with_store(config, store, queue, metrics).await
}

/// Starts the SMTP listeners, the HTTP API and the webhook tasks on `store`, handing
/// accepted mail to `queue` if given; `metrics` is shared with the queue.
pub async fn start_with_store(
    config: Arc<Config>,
    store: Arc<dyn Store>,
    queue: Option<QueueHandle>,
    metrics: Arc<Metrics>,
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
    let unsubscribe = Arc::new(UnsubscribeKey::load_or_create(&config.data_dir)?);
    let mut bound = Vec::new();
    for listener in &config.listeners {
        bound.push(inbound::bind(listener).await?);
    }
    let http_addr = config.http.addr;
    let http = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|e| StartError::HttpBind {
            addr: http_addr,
            reason: e.to_string(),
        })?;
    let http_addr = http.local_addr().map_err(|e| StartError::HttpBind {
        addr: http_addr,
        reason: e.to_string(),
    })?;
    let acceptor = Acceptor {
        config: config.clone(),
        store: store.clone(),
        queue,
        metrics,
        unsubscribe,
        dkim: Arc::new(crate::dkim::DkimSigners::new(store.clone())),
    };
    let login = Arc::new(LoginGate::new(store.clone(), &config.auth));
    let ctx = Arc::new(InboundContext::new(
        config.clone(),
        store.clone(),
        tokio_rustls::TlsAcceptor::from(tls_config),
        acceptor.clone(),
        login.clone(),
    ));
    let connections = ctx.connections.clone();
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    for b in bound {
        tracing::info!(addr = %b.addr, mode = ?b.mode, "listening");
        listeners.push((b.mode, b.addr));
        tasks.spawn(inbound::serve_listener(ctx.clone(), b));
    }
    tracing::info!(http_addr = %http_addr, "HTTP API listening");
    let api = Arc::new(ApiContext::new(acceptor, login));
    crate::webhooks::start(
        &config.webhooks,
        &config.data_dir,
        store.clone(),
        api.webhook_log.clone(),
        &mut tasks,
    );
    tasks.spawn(api::serve(http, api));
    Ok(Running {
        listeners,
        http_addr,
        store,
        certificate,
        connections,
        tasks,
    })
}
