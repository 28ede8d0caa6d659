//! A TCP relay between a client and a server on loopback that a test can cut,
//! freeze and restore. Cut, it closes every connection through it and turns
//! new ones away (accepted and closed at once: to a client, a server that is
//! down). Frozen, it stops relaying without closing anything, and takes new
//! connections without answering: to a client, a server that hangs (or a
//! network that drops every packet). Restored, it relays new connections again
//! (the frozen ones are closed). What lies behind it (the machine's shared
//! PostgreSQL server, say) is never stopped. Stops when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Open,
    Cut,
    Frozen,
}

pub struct CuttableLink {
    addr: SocketAddr,
    /// Each relayed connection watches it.
    state: Arc<watch::Sender<State>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttableLink {
    /// Relays connections to 127.0.0.1:0 on to `target`.
    pub async fn start(target: SocketAddr) -> CuttableLink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the link");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(watch::Sender::new(State::Open));
        let accept = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let now = *state.borrow();
                    match now {
                        State::Cut => drop(client),
                        State::Frozen => {
                            tokio::spawn(hold(client, state.subscribe()));
                        }
                        State::Open => {
                            tokio::spawn(relay(client, target, state.subscribe()));
                        }
                    }
                }
            }
        });
        CuttableLink {
            addr,
            state,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every connection through the link and refuses new ones.
    pub fn cut(&self) {
        self.state.send_replace(State::Cut);
    }

    /// Stops relaying: connections stay open, nothing goes through.
    pub fn freeze(&self) {
        self.state.send_replace(State::Frozen);
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.state.send_replace(State::Open);
    }
}

impl Drop for CuttableLink {
    fn drop(&mut self) {
        self.state.send_replace(State::Cut);
        self.accept.abort();
    }
}

/// Relays one connection until either side closes it or the link is cut or
/// frozen; a frozen one is held open, silent, until the link changes again.
async fn relay(mut client: TcpStream, target: SocketAddr, mut state: watch::Receiver<State>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let stopped = tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => return,
        stopped = state.wait_for(|s| *s != State::Open) => stopped.map(|s| *s),
    };
    if matches!(stopped, Ok(State::Frozen)) {
        let _ = state.wait_for(|s| *s != State::Frozen).await;
    }
    // Dropping both streams closes them: each side sees its peer go away.
}

/// Holds a connection made while frozen, unanswered, until the link changes.
async fn hold(client: TcpStream, mut state: watch::Receiver<State>) {
    let _ = state.wait_for(|s| *s != State::Frozen).await;
    drop(client);
}
