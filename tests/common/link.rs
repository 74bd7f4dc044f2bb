//! A TCP link to a real service that a test can pause, cut and restore: what
//! a stalled server, a network partition or a restart looks like to a client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    /// Connections stay open but no byte moves, as with a stopped process.
    Paused,
    /// Open connections are dropped and new ones refused.
    Cut,
}

pub struct Link {
    addr: SocketAddr,
    target: String,
    state: watch::Sender<State>,
    refused: Arc<AtomicUsize>,
}

/// Moves bytes one way while the link is up; holds them while it is paused.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut state: watch::Receiver<State>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            _ = state.wait_for(|s| *s == State::Cut) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match state.wait_for(|s| *s != State::Paused).await.map(|s| *s) {
            Ok(State::Up) => {}
            _ => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Link {
    /// Starts forwarding a local port to `target` (`host:port`).
    pub async fn to(target: &str) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a link");
        let addr = listener.local_addr().expect("link address");
        let (state, watching) = watch::channel(State::Up);
        let forward_to = target.to_owned();
        let refused = Arc::new(AtomicUsize::new(0));
        let refusing = refused.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *watching.borrow() == State::Cut {
                    refusing.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let watching = watching.clone();
                let forward_to = forward_to.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&forward_to).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, watching.clone()),
                        pump(out_read, in_write, watching)
                    );
                });
            }
        });
        Link {
            addr,
            target: target.to_owned(),
            state,
            refused,
        }
    }

    /// `url` with the target's `host:port` replaced by this link's.
    pub fn route(&self, url: &str) -> String {
        assert!(
            url.contains(&self.target),
            "{url} does not go to {}",
            self.target
        );
        url.replacen(&self.target, &self.addr.to_string(), 1)
    }

    /// Holds every byte until [`Link::restore`]; connections stay open.
    pub fn pause(&self) {
        self.state.send_replace(State::Paused);
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.state.send_replace(State::Cut);
    }

    /// Connections refused while the link was cut, so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn restore(&self) {
        self.state.send_replace(State::Up);
    }
}
