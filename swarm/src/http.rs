//! A deliberately small HTTP/1.1 client (GET, POST: `client.rs`) and server, enough for fetching the manifest,
//! the tracker protocol and a status page on a LAN. No TLS, no keep-alive, no chunking on our
//! side; bodies are capped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::allow::AllowList;
use crate::conn_limit::{self, Limiter, Slot};
use crate::SwarmError;

mod client;
pub use client::{get, parse_response, post};

/// Largest body the client accepts (a manifest of a very fragmented disk is a few tens of MiB).
pub const MAX_BODY: usize = 256 * 1024 * 1024;
const MAX_HEAD: usize = conn_limit::HTTP_MAX_HEAD;

/// A parsed `http://host:port/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with '/'.
    pub target: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, SwarmError> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| SwarmError::Http(format!("{s:?}: only http:// URLs are supported")))?;
        let (authority, target) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| SwarmError::Http(format!("{s:?}: bad IPv6 host")))?;
            (h.to_string(), p.strip_prefix(':').unwrap_or(""))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (authority.to_string(), ""),
            }
        };
        let port = if port.is_empty() {
            80
        } else {
            port.parse()
                .map_err(|_| SwarmError::Http(format!("{s:?}: bad port")))?
        };
        if host.is_empty() {
            return Err(SwarmError::Http(format!("{s:?}: no host")));
        }
        Ok(Url {
            host,
            port,
            target: target.to_string(),
        })
    }

    /// This URL with `path` (starting with '/') in place of its path and query.
    pub fn with_target(&self, target: &str) -> Url {
        Url {
            host: self.host.clone(),
            port: self.port,
            target: target.to_string(),
        }
    }

    pub fn to_string_with(&self, target: &str) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}{}", self.host, self.port, target)
        } else {
            format!("http://{}:{}{}", self.host, self.port, target)
        }
    }
}

/// Percent-encodes bytes for a query string (everything but RFC 3986 unreserved characters).
pub fn percent_encode(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 3);
    for &c in b {
        if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("%{c:02X}"));
        }
    }
    s
}

/// Decodes `%XX` escapes and '+' (space).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hexval(b[i + 1]), hexval(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn hexval(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

pub(crate) fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Largest request body the server reads (a receiver's progress report is well under 4 KiB).
pub const MAX_REQUEST_BODY: usize = 64 * 1024;

/// The request methods the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
}

/// An incoming request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, Vec<u8>)>,
    pub peer: SocketAddr,
    /// The body (POST only; at most [`MAX_REQUEST_BODY`] bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// A GET request for `path` with `query` from `peer` (no body).
    pub fn get(path: &str, query: Vec<(String, Vec<u8>)>, peer: SocketAddr) -> Request {
        Request {
            method: Method::Get,
            path: path.to_string(),
            query,
            peer,
            body: Vec::new(),
        }
    }

    /// First value of query parameter `k`.
    pub fn param(&self, k: &str) -> Option<&[u8]> {
        self.query
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_slice())
    }

    pub fn param_str(&self, k: &str) -> Option<String> {
        self.param(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// A response to send.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(content_type: &'static str, body: Vec<u8>) -> Self {
        Self {
            status: 200,
            content_type,
            body,
        }
    }

    pub fn forbidden(why: &str) -> Self {
        Self {
            status: 403,
            content_type: "text/plain",
            body: format!("{why}\n").into_bytes(),
        }
    }

    pub fn not_found() -> Self {
        Self {
            status: 404,
            content_type: "text/plain",
            body: b"not found\n".to_vec(),
        }
    }
}

/// Parses a request head (request line and headers, as received): `None` unless it is a
/// GET, HEAD or POST request line with a target. A POST's body is read by the caller
/// (see [`content_length`]).
pub fn parse_request(head: &str, peer: SocketAddr) -> Option<Request> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    let method = match parts.next()? {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => return None,
    };
    let target = parts.next()?;
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let query = q
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                String::from_utf8_lossy(&percent_decode(k)).into_owned(),
                percent_decode(v),
            )
        })
        .collect();
    Some(Request {
        method,
        path: String::from_utf8_lossy(&percent_decode(path)).into_owned(),
        query,
        peer,
        body: Vec::new(),
    })
}

/// The `Content-Length` of a request head: `Some(0)` when absent, `None` when malformed or
/// given twice with different values.
pub fn content_length(head: &str) -> Option<usize> {
    let mut len = None;
    for line in head.lines().skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("content-length") {
            let v: usize = v.trim().parse().ok()?;
            if len.is_some_and(|l| l != v) {
                return None;
            }
            len = Some(v);
        }
    }
    Some(len.unwrap_or(0))
}

/// Reads a request head (at most [`MAX_HEAD`] bytes); `None` if the client closed or sent
/// more without ending it.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Option<(Vec<u8>, usize)>> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 2048];
        let room = (MAX_HEAD - buf.len()).min(chunk.len());
        let n = s.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(e) = find_head_end(&buf) {
            return Ok(Some((buf, e)));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
    }
}

/// Serves one request on a connection (`s`: a TCP stream, or in fuzz tests an in-memory one):
/// reads the head (at most `MAX_HEAD` bytes, within `conn_limit::HTTP_HEAD_TIMEOUT`), answers
/// with `handler`'s response, closes. `slot` is told when the head is in.
#[doc(hidden)]
pub async fn handle_conn<S, F, Fut>(
    mut s: S,
    peer: SocketAddr,
    handler: Arc<F>,
    slot: &Slot,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let Ok(head) = tokio::time::timeout(conn_limit::HTTP_HEAD_TIMEOUT, read_head(&mut s)).await
    else {
        debug!(%peer, "http: no request head within {:?}", conn_limit::HTTP_HEAD_TIMEOUT);
        return Ok(());
    };
    let Some((buf, head_end)) = head? else {
        return Ok(());
    };
    slot.opened();
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let bad = |status: u16, why: &str| Response {
        status,
        content_type: "text/plain",
        body: format!("{why}\n").into_bytes(),
    };
    let resp = match parse_request(&head, peer) {
        Some(mut req) if req.method == Method::Post => match content_length(&head) {
            Some(n) if n <= MAX_REQUEST_BODY => {
                // What came in with the head, then the rest (the connection's own timeout
                // bounds the wait).
                let mut body = buf[head_end..].to_vec();
                body.truncate(n);
                let mut rest = vec![0u8; n - body.len()];
                s.read_exact(&mut rest).await?;
                body.extend_from_slice(&rest);
                req.body = body;
                handler(req).await
            }
            Some(_) => bad(413, "request body too large"),
            None => bad(400, "bad content-length"),
        },
        Some(req) => handler(req).await,
        None => bad(400, "bad request"),
    };
    let reason = match resp.status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        413 => "Payload Too Large",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        reason,
        resp.content_type,
        resp.body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&resp.body).await?;
    s.shutdown().await
}

/// The answer to a connection over the limits of `conn_limit::HTTP`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 22\r\nConnection: close\r\nRetry-After: 1\r\n\r\ntoo many connections\r\n";

/// Serves GET requests on `listener` with `handler` until the task is dropped, within the
/// limits of `conn_limit::HTTP`.
pub async fn serve<F, Fut>(listener: TcpListener, handler: Arc<F>)
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    serve_only(listener, AllowList::any(), handler).await
}

/// [`serve`] to clients inside `allow` only: others are closed at once, nothing read.
pub async fn serve_only<F, Fut>(listener: TcpListener, allow: AllowList, handler: Arc<F>)
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    let limiter = Limiter::new(conn_limit::HTTP);
    loop {
        let (s, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                warn!("http accept failed: {e}");
                tokio::time::sleep(conn_limit::ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if !allow.contains(peer.ip()) {
            debug!(%peer, "http connection refused: outside --allow");
            continue;
        }
        let slot = match limiter.admit(peer.ip()).await {
            Ok(slot) => slot,
            Err(why) => {
                debug!(%peer, "http connection refused: {why:?}");
                // Best effort, never waiting: the socket buffer is empty.
                let _ = s.try_write(BUSY);
                continue;
            }
        };
        let h = handler.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = slot.evicted() => debug!(%peer, "http connection closed to make room"),
                r = tokio::time::timeout(conn_limit::HTTP_CONN_TIMEOUT, handle_conn(s, peer, h, &slot)) => {
                    if let Ok(Err(e)) = r {
                        debug!(%peer, "http connection: {e}");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:6880/x.torrent").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("127.0.0.1", 6880, "/x.torrent")
        );
        let u = Url::parse("http://host").unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/"));
        let u = Url::parse("http://[::1]:81/a?b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("::1", 81, "/a?b")
        );
        assert!(Url::parse("https://x/").is_err());
        assert!(Url::parse("http://:80/").is_err());
        assert!(Url::parse("http://h:99999/").is_err());
    }

    #[test]
    fn percent_round_trip() {
        let b: Vec<u8> = (0..=255).collect();
        assert_eq!(percent_decode(&percent_encode(&b)), b);
        assert_eq!(percent_decode("a%2"), b"a%2");
        assert_eq!(percent_decode("%zz"), b"%zz");
    }

    #[tokio::test]
    async fn get_against_our_server() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(
            l,
            Arc::new(|r: Request| async move {
                if r.method == Method::Post {
                    Response::ok("text/plain", r.body)
                } else if r.path == "/hello" {
                    Response::ok(
                        "text/plain",
                        format!("hi {:?}", r.param_str("who")).into_bytes(),
                    )
                } else {
                    Response::not_found()
                }
            }),
        ));
        let body = get(
            &format!("http://{addr}/hello?who=a%20b"),
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(body, b"hi Some(\"a b\")");
        let echo = post(
            &format!("http://{addr}/echo"),
            "application/json",
            b"{\"a\":1}",
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(echo, b"{\"a\":1}");
        assert!(
            get(&format!("http://{addr}/nope"), None, Duration::from_secs(5))
                .await
                .is_err()
        );
    }
}
