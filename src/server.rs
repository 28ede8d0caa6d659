//! Start-up: open the store, load or create the TLS certificate and the unsubscribe
//! key, bind every listener and the HTTP API (all before serving, so a port that
//! cannot be bound stops start-up), then serve and start the webhook tasks.

use crate::accept::Acceptor;
use crate::api::{self, ApiContext};
use crate::auth::LoginGate;
use crate::config::StoreLocation;
use crate::config::{Config, ListenerMode};
use crate::dns::HickoryResolver;
use crate::inbound::{self, InboundContext};
use crate::metrics::CommitStages;
use crate::metrics::Metrics;
use crate::queue::{self, QueueHandle};
use crate::store::{PostgresStore, SqliteStore, Store, StoreError};
use crate::tls::{self, CertificateSource, ServerCertificate, TlsError};
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
    /// The certificate in use, to reload from its files (SIGHUP).
    pub server_certificate: Arc<ServerCertificate>,
    connections: inbound::ConnectionLimiter,
    /// Set once: listeners stop accepting, idle sessions close (`inbound`).
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The SMTP listeners and the HTTP API: they end only on shutdown (or panic).
    serving: JoinSet<()>,
    /// Background work (webhooks), aborted on shutdown.
    tasks: JoinSet<()>,
}

/// What a graceful stop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Sessions still open when the grace period ended (closed then).
    pub cut_off: usize,
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

    /// Waits until a listener or the HTTP API stops (only on shutdown or a panic).
    pub async fn wait(&mut self) {
        self.serving.join_next().await;
    }

    /// Stops gracefully: no new connections (listeners close, the HTTP API stops
    /// accepting), sessions between transactions get `421` and close, sessions in
    /// a transaction finish it (and get `421` after it) within `grace`; whatever
    /// is still open then is closed without an answer, so nothing unanswered was
    /// acknowledged. Delivery in flight is simply stopped: the store makes it
    /// again after the restart (at least once).
    pub async fn shutdown(mut self, grace: std::time::Duration) -> Stopped {
        self.shutdown.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        let open = self.connections.active();
        tracing::info!(
            sessions = open,
            grace_seconds = grace.as_secs_f64(),
            "stopped accepting connections; waiting for sessions to finish"
        );
        // Sessions hold a connection slot until they end; the count falls to zero
        // as they do. Polled: the limiter is a plain counter.
        while self.connections.active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = tokio::time::timeout_at(deadline, async {
            while self.serving.join_next().await.is_some() {}
        })
        .await;
        self.serving.abort_all();
        self.tasks.abort_all();
        let cut_off = self.connections.active();
        if cut_off > 0 {
            tracing::warn!(
                sessions = cut_off,
                "grace period over: closing sessions still open (nothing they sent was acknowledged)"
            );
        } else {
            tracing::info!("every session finished");
        }
        Stopped { cut_off }
    }
}

/// Opens the store `[store] url` names (SQLite in `data_dir` by default), its
/// group commit reporting into `stages`.
pub async fn open_store(
    config: &Config,
    stages: Arc<CommitStages>,
) -> Result<Arc<dyn Store>, StoreError> {
    let max_batch = config.store.max_batch;
    Ok(match config.store.location() {
        StoreLocation::Sqlite => SqliteStore::open_measured(&config.data_dir, max_batch, stages)?,
        StoreLocation::Postgres(url) => {
            let timeout = config.store.timeout.get();
            let store = PostgresStore::open_measured(&url, max_batch, timeout, stages).await?;
            // Names must differ between nodes: a node restarting voids the claims
            // under its name.
            tracing::info!(
                node = %config.server.node_name,
                lease = ?config.store.lease.get(),
                "store: PostgreSQL, shared by the nodes of a cluster (docs/cluster.md)"
            );
            store
        }
    })
}

/// Opens the store and starts delivery (unless `delivery.paused`) and every listener.
pub async fn start(config: Arc<Config>) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::default());
    let store = open_store(&config, metrics.commit_stages()).await?;
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
            Arc::new(UnsubscribeKey::load(store.as_ref(), &config.data_dir).await?),
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
    let (tls_config, certificate, server_certificate) = tls::server_config(
        config.tls.cert.as_deref(),
        config.tls.key.as_deref(),
        &config.data_dir,
        &config.hostname,
    )?;
    match &certificate {
        CertificateSource::SelfSignedGenerated(path) => {
            tracing::warn!(path = %path.display(), "no [tls] certificate configured: generated a self-signed certificate; receivers and clients do not trust it: configure tls.cert and tls.key for production")
        }
        CertificateSource::SelfSignedExisting(path) => {
            tracing::warn!(path = %path.display(), "no [tls] certificate configured: using the self-signed certificate; receivers and clients do not trust it: configure tls.cert and tls.key for production")
        }
        CertificateSource::Configured(_) => {}
    }
    if let Some(problem) = config.hostname_problem() {
        tracing::warn!("{problem}");
    }
    let unsubscribe = Arc::new(UnsubscribeKey::load(store.as_ref(), &config.data_dir).await?);
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
    let shutdown = ctx.shutdown.clone();
    let mut serving = JoinSet::new();
    let mut listeners = Vec::new();
    for b in bound {
        tracing::info!(addr = %b.addr, mode = %b.mode.as_str(), "listening");
        listeners.push((b.mode, b.addr));
        serving.spawn(inbound::serve_listener(ctx.clone(), b));
    }
    tracing::info!(http_addr = %http_addr, "HTTP API listening");
    let api = Arc::new(ApiContext::new(acceptor, login));
    let mut stop_http = shutdown.subscribe();
    serving.spawn(api::serve(http, api.clone(), async move {
        let _ = stop_http.wait_for(|stop| *stop).await;
    }));
    let mut tasks = JoinSet::new();
    crate::webhooks::start(
        &config.webhooks,
        &config.data_dir,
        crate::webhooks::Holder {
            node: config.server.node_name.clone(),
            lease: config.store.lease.get(),
        },
        store.clone(),
        api.webhook_log.clone(),
        &mut tasks,
    );
    Ok(Running {
        listeners,
        http_addr,
        store,
        certificate,
        server_certificate,
        connections,
        shutdown,
        serving,
        tasks,
    })
}
