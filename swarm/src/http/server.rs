//! The server, on hyper: one request per connection (no keep-alive), within explicit limits:
//! the request head at most `conn_limit::HTTP_MAX_HEAD` bytes, [`MAX_HEADERS`] headers and
//! `conn_limit::HTTP_HEAD_TIMEOUT`; a POST body at most [`MAX_REQUEST_BODY`] bytes within
//! [`BODY_TIMEOUT`]; a connection that moves no byte for [`STALL_TIMEOUT`] is cut, and one
//! whose client takes its response slower than [`MIN_SERVE_RATE`] on the whole (a response of
//! any size gets the time its length takes, a client that reads a byte now and then does
//! not); and the connection counts of `conn_limit::HTTP`. hyper answers a malformed request line or head
//! itself (400, 431) and sends no body to HEAD.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{Method, Request, Response, MAX_REQUEST_BODY};
use crate::allow::AllowList;
use crate::conn_limit::{self, Limiter, Slot};

/// Most request headers read.
pub const MAX_HEADERS: usize = 64;
/// A POST body arrives within this long of its head.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that neither sends nor takes a byte for this long is closed.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A response gets [`STALL_TIMEOUT`] plus its length at this rate (bytes/s) to be taken in
/// all: a client that reads a byte now and then cannot hold its connection for ever.
pub const MIN_SERVE_RATE: u64 = 64 * 1024;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A stream that notes when it last moved a byte (either way).
struct Watched<S> {
    inner: S,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Watched<S> {
    fn moved(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

fn plain(status: u16, why: &str) -> hyper::Response<Body> {
    into_hyper(Response::error(status, why), None)
}

fn into_hyper(r: Response, file: Option<(tokio::fs::File, u64)>) -> hyper::Response<Body> {
    let (len, body) = match file {
        Some((f, len)) => {
            // 64 KiB at a time: bounded memory per connection whatever the file's size.
            let s = tokio_util::io::ReaderStream::with_capacity(f.take(len), 64 * 1024)
                .map(|c| c.map(Frame::data));
            (len, StreamBody::new(s).boxed_unsync())
        }
        None => (r.body.len() as u64, full(r.body)),
    };
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() =
        hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// One request: method and target checked, a POST's body read (bounded), `handler` asked,
/// a file response opened.
async fn answer<F, Fut>(
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
    handler: &F,
) -> hyper::Response<Body>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let method = match *req.method() {
        hyper::Method::GET => Method::Get,
        hyper::Method::HEAD => Method::Head,
        hyper::Method::POST => Method::Post,
        _ => return plain(405, "method not allowed"),
    };
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if !target.starts_with('/') {
        return plain(400, "bad request target");
    }
    let mut r = Request::new(method, &target, peer);
    if method == Method::Post {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
            return plain(413, "request body too large");
        }
        let body = Limited::new(req.into_body(), MAX_REQUEST_BODY).collect();
        r.body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
            Ok(Ok(b)) => b.to_bytes().to_vec(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return plain(413, "request body too large")
            }
            Ok(Err(e)) => return plain(400, &format!("bad request body: {e}")),
            Err(_) => return plain(408, "request body too slow"),
        };
    }
    let resp = handler(r).await;
    let Some(path) = resp.file.clone() else {
        return into_hyper(resp, None);
    };
    let opened = async {
        let f = tokio::fs::File::open(&path).await?;
        let len = f.metadata().await?.len();
        Ok::<_, std::io::Error>((f, len))
    };
    match opened.await {
        Ok(f) => into_hyper(resp, Some(f)),
        Err(e) => {
            warn!("http: cannot open {}: {e}", path.display());
            plain(404, "not found")
        }
    }
}

/// Serves one request on a connection (`s`: a TCP stream, or in fuzz tests an in-memory one)
/// with `handler`, within the limits above; `slot` is told when the head is in, and closes
/// the connection when it is evicted.
#[doc(hidden)]
pub async fn handle_conn<S, F, Fut>(
    s: S,
    peer: SocketAddr,
    handler: Arc<F>,
    slot: &Slot,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Watched {
        inner: s,
        epoch,
        last: last.clone(),
    });
    let ms = |d: Duration| d.as_millis() as u64;
    // Until the response is known: its head, its body, the handler.
    let deadline = Arc::new(AtomicU64::new(ms(conn_limit::HTTP_HEAD_TIMEOUT
        + BODY_TIMEOUT
        + STALL_TIMEOUT)));
    let svc = hyper::service::service_fn(|req| {
        slot.opened();
        let h = handler.clone();
        let deadline = deadline.clone();
        async move {
            let resp = answer(req, peer, &*h).await;
            let len = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let allowed = STALL_TIMEOUT + Duration::from_secs(len / MIN_SERVE_RATE);
            deadline.store(ms(epoch.elapsed() + allowed), Ordering::Relaxed);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(conn_limit::HTTP_HEAD_TIMEOUT)
        .max_buf_size(conn_limit::HTTP_MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(false);
    let conn = b.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    debug!(%peer, "http connection: {e}");
                }
                return Ok(());
            }
            _ = slot.evicted() => {
                debug!(%peer, "http connection closed to make room");
                return Ok(());
            }
            _ = tick.tick() => {
                let idle = epoch.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
                if Duration::from_millis(idle) > STALL_TIMEOUT {
                    debug!(%peer, "http connection stalled for {STALL_TIMEOUT:?}: closed");
                    return Ok(());
                }
                if ms(epoch.elapsed()) > deadline.load(Ordering::Relaxed) {
                    debug!(%peer, "http connection over its time (its response's length at {MIN_SERVE_RATE} B/s): closed");
                    return Ok(());
                }
            }
        }
    }
}

/// The answer to a connection over the limits of `conn_limit::HTTP`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 22\r\nConnection: close\r\nRetry-After: 1\r\n\r\ntoo many connections\r\n";

/// Serves requests on `listener` with `handler` until the task is dropped, within the
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
        let _ = s.set_nodelay(true);
        let h = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_conn(s, peer, h, &slot).await {
                debug!(%peer, "http connection: {e}");
            }
        });
    }
}
