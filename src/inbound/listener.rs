//! Listeners: binding with clear errors, the accept loop, connection limits, and the
//! TLS hand-offs (implicit TLS on `submissions`, STARTTLS elsewhere).

use super::InboundContext;
use super::session::{ConnectionInfo, Session, SessionEnd};
use crate::config::{ListenerConfig, ListenerMode};
use crate::smtp::Reply;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a client may take to complete a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({mode:?}): {reason}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub mode: ListenerMode,
    pub reason: String,
}

pub struct BoundListener {
    pub listener: TcpListener,
    pub mode: ListenerMode,
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
}

/// Binds one listener; the error says why and what to do about it.
pub async fn bind(config: &ListenerConfig) -> Result<BoundListener, BindError> {
    let err = |reason: String| BindError {
        addr: config.addr,
        mode: config.mode,
        reason,
    };
    let listener = TcpListener::bind(config.addr).await.map_err(|e| {
        err(match e.kind() {
            std::io::ErrorKind::PermissionDenied => format!(
                "{e}; ports below 1024 need root or CAP_NET_BIND_SERVICE \
                 (e.g. `setcap cap_net_bind_service=+ep $(which outpost)`), or configure [[listeners]] with higher ports"
            ),
            std::io::ErrorKind::AddrInUse => {
                format!("{e}; another program (another mail server?) is listening on this port")
            }
            _ => e.to_string(),
        })
    })?;
    let addr = listener.local_addr().map_err(|e| err(e.to_string()))?;
    Ok(BoundListener {
        listener,
        mode: config.mode,
        addr,
    })
}

/// Accepts connections until the server shuts down (the socket closes then, so
/// new clients are refused by the kernel, not left waiting) or the task is dropped.
pub async fn serve_listener(ctx: Arc<InboundContext>, bound: BoundListener) {
    let mut shutdown = ctx.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = bound.listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::error!(error = %e, addr = %bound.addr, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let mode = bound.mode;
        tokio::spawn(async move { handle_connection(ctx, stream, peer, mode).await });
    }
}

async fn handle_connection(
    ctx: Arc<InboundContext>,
    mut stream: TcpStream,
    peer: SocketAddr,
    mode: ListenerMode,
) {
    let Some(_slot) = ctx.connections.acquire(peer.ip()) else {
        tracing::warn!(%peer, "connection refused: connection limit reached");
        let _ = stream
            .write_all(&Reply::too_many_connections().to_wire())
            .await;
        return;
    };
    let _open = ctx.acceptor.metrics.connection_opened();
    let conn = ConnectionInfo {
        peer,
        mode,
        tls: None,
    };
    if mode == ListenerMode::Submissions {
        // RFC 8314: TLS from the first byte.
        if let Some((tls_stream, conn)) = handshake(&ctx, stream, conn).await {
            Box::pin(run(&ctx, tls_stream, conn, true)).await;
        }
        return;
    }
    if let SessionEnd::StartTls(stream) = run(&ctx, stream, conn.clone(), true).await
        && let Some((tls_stream, conn)) = handshake(&ctx, stream, conn).await
    {
        // RFC 3207 §4.2: the session starts over; no greeting is sent.
        // Boxed: a plaintext session's task need not hold room for a TLS one.
        Box::pin(run(&ctx, tls_stream, conn, false)).await;
    }
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &InboundContext,
    stream: S,
    conn: ConnectionInfo,
    greet: bool,
) -> SessionEnd<S> {
    let mut session = Session::new(ctx, conn, stream);
    if greet {
        session.greet();
    }
    session.run().await
}

async fn handshake(
    ctx: &InboundContext,
    stream: TcpStream,
    mut conn: ConnectionInfo,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, ConnectionInfo)> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, ctx.tls.accept(stream)).await {
        Ok(Ok(tls)) => {
            let (_, state) = tls.get_ref();
            let version = state
                .protocol_version()
                .map_or("unknown".into(), |v| format!("{v:?}"));
            let cipher = state
                .negotiated_cipher_suite()
                .map_or("unknown".into(), |c| format!("{:?}", c.suite()));
            conn.tls = Some(format!("version={version} cipher={cipher}"));
            Some((tls, conn))
        }
        Ok(Err(e)) => {
            tracing::info!(peer = %conn.peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(peer = %conn.peer, "TLS handshake timed out");
            None
        }
    }
}
