//! A TCP relay between a client and a server on loopback that a test can cut
//! and restore: cut, it closes every connection through it and turns new ones
//! away (accepted and closed at once: to a client, a server that is down);
//! restored, it relays again. What lies behind it (the machine's shared
//! PostgreSQL server, say) is never stopped. Stops when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct CuttableLink {
    addr: SocketAddr,
    /// True while cut; each relayed connection watches it.
    cut: Arc<watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttableLink {
    /// Relays connections to 127.0.0.1:0 on to `target`.
    pub async fn start(target: SocketAddr) -> CuttableLink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the link");
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(watch::Sender::new(false));
        let accept = tokio::spawn({
            let cut = cut.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *cut.borrow() {
                        drop(client);
                        continue;
                    }
                    tokio::spawn(relay(client, target, cut.subscribe()));
                }
            }
        });
        CuttableLink { addr, cut, accept }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every connection through the link and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for CuttableLink {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.accept.abort();
    }
}

/// Relays one connection until either side closes it or the link is cut.
async fn relay(mut client: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.wait_for(|cut| *cut) => {}
    }
    // Dropping both streams closes them: each side sees its peer go away.
}
