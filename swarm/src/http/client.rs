//! The client, on hyper's HTTP/1 connection over a socket of ours (bound to `bind_ip` when
//! given): one GET or POST per connection, only a 200 accepted, the body at most
//! [`MAX_BODY`]. Time is allowed in proportion to size: `timeout` bounds each step (connect,
//! the response head, every next piece of the body), and the whole exchange takes at most
//! `timeout` plus the body's length at [`MIN_RATE`] (a 37 MB manifest to 30 receivers at
//! once is not cut off by a fixed limit; a server that drips is).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::error::Elapsed;
use tokio::time::Instant;

use super::{Url, MAX_BODY};
use crate::SwarmError;

/// The slowest transfer allowed once a response has begun (bytes per second).
pub const MIN_RATE: u64 = 256 * 1024;

/// `GET url`; returns the body of a 200 response. Connects from `bind_ip` when given.
pub async fn get(
    url: &str,
    bind_ip: Option<IpAddr>,
    timeout: Duration,
) -> Result<Vec<u8>, SwarmError> {
    request(url, None, bind_ip, timeout).await
}

/// `POST url` with `body` (`content_type`); returns the body of a 200 response.
pub async fn post(
    url: &str,
    content_type: &str,
    body: &[u8],
    bind_ip: Option<IpAddr>,
    timeout: Duration,
) -> Result<Vec<u8>, SwarmError> {
    request(url, Some((content_type, body)), bind_ip, timeout).await
}

fn err(url: &Url, what: impl std::fmt::Display) -> SwarmError {
    SwarmError::Http(format!("{url}: {what}"))
}

async fn connect(u: &Url, bind_ip: Option<IpAddr>) -> Result<TcpStream, SwarmError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((u.host.as_str(), u.port))
        .await
        .map_err(|e| SwarmError::Http(format!("cannot resolve {}: {e}", u.host)))?
        .collect();
    let mut last_err = None;
    for a in addrs {
        let sock = if a.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = bind_ip {
            if ip.is_ipv4() == a.is_ipv4() {
                sock.bind(SocketAddr::new(ip, 0))?;
            }
        }
        match sock.connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last_err = Some(e),
        }
    }
    Err(SwarmError::Http(format!(
        "cannot connect to {}: {}",
        u.authority(),
        last_err.map_or("no address".into(), |e| e.to_string())
    )))
}

/// GET, or POST with `body` = (content type, bytes).
async fn request(
    url: &str,
    body: Option<(&str, &[u8])>,
    bind_ip: Option<IpAddr>,
    timeout: Duration,
) -> Result<Vec<u8>, SwarmError> {
    let u = Url::parse(url)?;
    let started = Instant::now();
    let stream = tokio::time::timeout(timeout, connect(&u, bind_ip))
        .await
        .map_err(timed_out(&u, timeout, "connecting"))??;
    exchange(stream, &u, body, timeout, started).await
}

/// A timeout error naming the step.
fn timed_out(u: &Url, timeout: Duration, what: &'static str) -> impl FnOnce(Elapsed) -> SwarmError {
    let u = u.clone();
    move |_| err(&u, format!("timed out after {timeout:?} ({what})"))
}

/// What our client makes of `response`, the bytes a server sent for `GET url` (read off an
/// in-memory connection, on a runtime of its own): for fuzz tests of the client.
#[doc(hidden)]
pub fn read_response(response: &[u8], url: &str) -> Result<Vec<u8>, SwarmError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let response = response.to_vec();
        tokio::spawn(async move {
            // The request first, as a server would: a response written and the connection
            // shut before the client sent its request made hyper cancel it (found by the
            // http_request fuzz target), whatever the response was.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && server.read_exact(&mut byte).await.is_ok() {
                head.push(byte[0]);
            }
            let _ = server.write_all(&response).await;
            let _ = server.shutdown().await;
            // Held open until the client is done with it.
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink).await;
        });
        let u = Url::parse(url)?;
        exchange(client, &u, None, Duration::from_secs(1), Instant::now()).await
    })
}

/// The request and its response over `io`.
async fn exchange<IO>(
    io: IO,
    u: &Url,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
    started: Instant,
) -> Result<Vec<u8>, SwarmError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let u = u.clone();
    let step = |what| timed_out(&u, timeout, what);
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .handshake::<_, Full<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| err(&u, e))?;
    // The connection is driven beside us; it ends when the response is dropped.
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let _stop = AbortOnDrop(driver);

    let mut req = hyper::Request::builder()
        .method(if body.is_some() { "POST" } else { "GET" })
        .uri(u.target.as_str());
    let h = req.headers_mut().expect("a fresh builder");
    h.insert(
        HOST,
        HeaderValue::from_str(&u.authority()).map_err(|e| err(&u, e))?,
    );
    h.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("blockswarm/", env!("CARGO_PKG_VERSION"))),
    );
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    let payload = match body {
        Some((ct, b)) => {
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_str(ct).map_err(|e| err(&u, e))?,
            );
            Bytes::copy_from_slice(b)
        }
        None => Bytes::new(),
    };
    let req = req
        .body(Full::new(payload))
        .map_err(|e| err(&u, format!("bad request: {e}")))?;
    let resp = tokio::time::timeout(timeout, sender.send_request(req))
        .await
        .map_err(step("waiting for the response"))?
        .map_err(|e| err(&u, e))?;
    let status = resp.status();
    if status != hyper::StatusCode::OK {
        return Err(SwarmError::HttpStatus {
            url: u.to_string(),
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("").to_string(),
        });
    }
    let declared = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(err(
            &u,
            format!("body of {} bytes is over {MAX_BODY}", declared.unwrap_or(0)),
        ));
    }
    let size = declared.unwrap_or(MAX_BODY as u64);
    let deadline = started + timeout + Duration::from_secs(size / MIN_RATE);
    let mut body = resp.into_body();
    // Grown as bytes arrive: a declared length reserves at most 1 MiB up front.
    let mut out = Vec::with_capacity(declared.unwrap_or(0).min(1 << 20) as usize);
    loop {
        let next = (Instant::now() + timeout).min(deadline);
        let frame = tokio::time::timeout_at(next, body.frame())
            .await
            .map_err(step("reading the body"))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| err(&u, format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_BODY {
                return Err(err(&u, format!("body is over {MAX_BODY} bytes")));
            }
            out.extend_from_slice(&data);
        }
    }
    if declared.is_some_and(|n| n != out.len() as u64) {
        return Err(err(
            &u,
            format!(
                "body is {} bytes, Content-Length said {} (connection cut?)",
                out.len(),
                declared.unwrap_or(0)
            ),
        ));
    }
    Ok(out)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
