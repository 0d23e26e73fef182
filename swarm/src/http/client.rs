//! The client side: one GET or POST per connection, the response read to the end of the
//! connection (at most [`MAX_BODY`] plus a head), only a 200 accepted.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::{find_head_end, Url, MAX_BODY, MAX_HEAD};
use crate::SwarmError;

/// `GET url`; returns the body of a 200 response. Connects from `bind_ip` when given.
pub async fn get(
    url: &str,
    bind_ip: Option<IpAddr>,
    timeout: Duration,
) -> Result<Vec<u8>, SwarmError> {
    let u = Url::parse(url)?;
    tokio::time::timeout(timeout, request(&u, None, bind_ip))
        .await
        .map_err(|_| SwarmError::Http(format!("{url}: timed out after {timeout:?}")))?
}

/// `POST url` with `body` (`content_type`); returns the body of a 200 response.
pub async fn post(
    url: &str,
    content_type: &str,
    body: &[u8],
    bind_ip: Option<IpAddr>,
    timeout: Duration,
) -> Result<Vec<u8>, SwarmError> {
    let u = Url::parse(url)?;
    tokio::time::timeout(timeout, request(&u, Some((content_type, body)), bind_ip))
        .await
        .map_err(|_| SwarmError::Http(format!("{url}: timed out after {timeout:?}")))?
}

/// GET, or POST with `body` = (content type, bytes).
async fn request(
    u: &Url,
    body: Option<(&str, &[u8])>,
    bind_ip: Option<IpAddr>,
) -> Result<Vec<u8>, SwarmError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((u.host.as_str(), u.port))
        .await
        .map_err(|e| SwarmError::Http(format!("cannot resolve {}: {e}", u.host)))?
        .collect();
    let mut last_err = None;
    let mut stream = None;
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
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        SwarmError::Http(format!(
            "cannot connect to {}:{}: {}",
            u.host,
            u.port,
            last_err.map_or("no address".into(), |e| e.to_string())
        ))
    })?;
    let (method, extra) = match body {
        Some((ct, b)) => (
            "POST",
            format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", b.len()),
        ),
        None => ("GET", String::new()),
    };
    let req = format!(
        "{method} {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: blockswarm/{}\r\nAccept-Encoding: identity\r\n{extra}Connection: close\r\n\r\n",
        u.target,
        u.host,
        u.port,
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(req.as_bytes()).await?;
    if let Some((_, b)) = body {
        stream.write_all(b).await?;
    }
    let mut buf = Vec::new();
    let mut limited = (&mut stream).take((MAX_BODY + MAX_HEAD) as u64);
    limited.read_to_end(&mut buf).await?;
    parse_response(buf, &u.to_string_with(&u.target))
}

/// The body of a complete HTTP/1.x response read up to the end of the connection (`buf`): an
/// error unless its status is 200, its transfer encoding (if any) is `identity` and its body
/// has the `Content-Length` (if any). `url` only names the request in errors.
pub fn parse_response(mut buf: Vec<u8>, url: &str) -> Result<Vec<u8>, SwarmError> {
    let head_end = find_head_end(&buf)
        .ok_or_else(|| SwarmError::Http("response has no complete header".into()))?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| SwarmError::Http(format!("bad status line {status_line:?}")))?;
    let mut content_length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim();
            if k == "content-length" {
                content_length = v.parse::<usize>().ok();
            } else if k == "transfer-encoding" && !v.eq_ignore_ascii_case("identity") {
                return Err(SwarmError::Http(format!(
                    "unsupported transfer-encoding {v}"
                )));
            }
        }
    }
    let body = buf.split_off(head_end);
    if status != 200 {
        return Err(SwarmError::Http(format!(
            "GET {url} answered {status_line}"
        )));
    }
    if let Some(cl) = content_length {
        if body.len() != cl {
            return Err(SwarmError::Http(format!(
                "body is {} bytes, Content-Length said {cl} (connection cut?)",
                body.len()
            )));
        }
    }
    Ok(body)
}
