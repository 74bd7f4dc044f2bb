//! loadgen's HTTP client: requests posted to the gateway on connections of
//! its own (hyper's connection API), so the client costs the machine little
//! next to what it measures. HTTP/1.1 sends one request at a time on each
//! connection, opened as needed and kept for the next; HTTP/2 (cleartext,
//! prior knowledge) sends many at once on each of a few.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::LoadgenError;

/// The HTTP version requests are sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

/// A gateway at a base URL, and the connections open to it.
pub struct Gateway {
    /// `host:port`, connected to and sent as `Host` (`:authority`).
    authority: String,
    /// The base URL's path, without a trailing `/`; request paths follow it.
    prefix: String,
    version: Version,
    /// HTTP/1.1 connections not carrying a request now.
    idle: Mutex<Vec<http1::SendRequest<Full<Bytes>>>>,
    /// HTTP/2 connections, each shared by the requests sent on it; one is
    /// opened again when found closed.
    shared: Vec<Mutex<Option<http2::SendRequest<Full<Bytes>>>>>,
    next: AtomicUsize,
}

fn failed(e: impl std::fmt::Display) -> LoadgenError {
    LoadgenError::Http(e.to_string())
}

impl Gateway {
    /// A client of the gateway at `base` (`http://host:port[/path]`);
    /// `connections` is how many HTTP/2 connections requests are spread
    /// over (HTTP/1.1 opens one per request in flight).
    pub fn new(base: &str, version: Version, connections: usize) -> Result<Self, LoadgenError> {
        let uri: Uri = base
            .parse()
            .map_err(|e| failed(format!("the gateway URL {base:?}: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(failed(format!(
                "the gateway URL {base:?}: only http:// is supported"
            )));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| failed(format!("the gateway URL {base:?} names no host")))?;
        let authority = match authority.port() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.host()),
        };
        Ok(Self {
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            version,
            idle: Mutex::new(Vec::new()),
            shared: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// POSTs `body` (JSON) to `path` under `Idempotency-Key: key`; the
    /// answer's status once its body has been read.
    pub async fn post(
        &self,
        path: &str,
        key: &str,
        body: Bytes,
    ) -> Result<StatusCode, LoadgenError> {
        let request = Request::post(match self.version {
            Version::Http1 => format!("{}{path}", self.prefix),
            Version::Http2 => format!("http://{}{}{path}", self.authority, self.prefix),
        })
        .header(header::HOST, &self.authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", key)
        .body(Full::new(body))
        .map_err(failed)?;
        match self.version {
            Version::Http1 => self.post_http1(request).await,
            Version::Http2 => self.post_http2(request).await,
        }
    }

    async fn post_http1(&self, request: Request<Full<Bytes>>) -> Result<StatusCode, LoadgenError> {
        let mut sender = loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match idle {
                // One the gateway closed while idle is dropped.
                Some(mut sender) => {
                    if sender.ready().await.is_ok() {
                        break sender;
                    }
                }
                None => break self.open_http1().await?,
            }
        };
        let response = sender.send_request(request).await.map_err(failed)?;
        let status = response.status();
        response.into_body().collect().await.map_err(failed)?;
        if !sender.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(sender);
        }
        Ok(status)
    }

    async fn post_http2(&self, request: Request<Full<Bytes>>) -> Result<StatusCode, LoadgenError> {
        let slot = &self.shared[self.next.fetch_add(1, Ordering::Relaxed) % self.shared.len()];
        let open = slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned();
        let mut sender = match open {
            Some(sender) => sender,
            None => {
                let sender = self.open_http2().await?;
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender.clone());
                sender
            }
        };
        sender.ready().await.map_err(failed)?;
        let response = sender.send_request(request).await.map_err(failed)?;
        let status = response.status();
        response.into_body().collect().await.map_err(failed)?;
        Ok(status)
    }

    async fn connect(&self) -> Result<TokioIo<TcpStream>, LoadgenError> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| failed(format!("connecting to {}: {e}", self.authority)))?;
        stream.set_nodelay(true)?;
        Ok(TokioIo::new(stream))
    }

    async fn open_http1(&self) -> Result<http1::SendRequest<Full<Bytes>>, LoadgenError> {
        let (sender, connection) = http1::handshake(self.connect().await?)
            .await
            .map_err(failed)?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn open_http2(&self) -> Result<http2::SendRequest<Full<Bytes>>, LoadgenError> {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), self.connect().await?)
            .await
            .map_err(failed)?;
        tokio::spawn(connection);
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gives_the_address_and_the_path_requests_follow() {
        let g = Gateway::new("http://127.0.0.1:8080/", Version::Http1, 1).unwrap();
        assert_eq!(
            (g.authority.as_str(), g.prefix.as_str()),
            ("127.0.0.1:8080", "")
        );
        let g = Gateway::new("http://gw.internal/stampede/", Version::Http2, 8).unwrap();
        assert_eq!(
            (g.authority.as_str(), g.prefix.as_str(), g.shared.len()),
            ("gw.internal:80", "/stampede", 8)
        );
        for bad in ["https://127.0.0.1:8080", "127.0.0.1:8080", "http://"] {
            assert!(Gateway::new(bad, Version::Http1, 1).is_err(), "{bad}");
        }
    }
}
