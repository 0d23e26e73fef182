//! HTTP/1.1 for the manifest, the tracker protocol, status reports and the netboot files, on
//! maintained libraries: hyper for the server (`server.rs`) and the client (`client.rs`), the
//! `url` crate for URLs and `percent-encoding` for query strings. What a client may make the
//! server hold is bounded explicitly (head size and time, body size and time, connections:
//! see `conn_limit`), and so is what a server may make our client read.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use crate::SwarmError;

mod client;
mod server;
pub use client::{get, post, read_response};
pub use server::{handle_conn, serve, serve_only};

/// Largest body the client accepts (a manifest of a very fragmented disk is a few tens of MiB).
pub const MAX_BODY: usize = 256 * 1024 * 1024;
/// Largest request body the server reads (a receiver's progress report is well under 4 KiB).
pub const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Everything but RFC 3986's unreserved characters is escaped (query values, path segments).
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A parsed `http://host:port/path?query` URL (by the `url` crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// A name or an address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with '/', as sent in the request line.
    pub target: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, SwarmError> {
        let u = url::Url::parse(s).map_err(|e| SwarmError::Http(format!("{s:?}: {e}")))?;
        if u.scheme() != "http" {
            return Err(SwarmError::Http(format!(
                "{s:?}: only http:// URLs are supported"
            )));
        }
        let host = match u.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            _ => return Err(SwarmError::Http(format!("{s:?}: no host"))),
        };
        Ok(Url {
            host,
            port: u.port_or_known_default().unwrap_or(80),
            target: u[url::Position::BeforePath..url::Position::AfterQuery].to_string(),
        })
    }

    /// `host:port` as a Host header or an address (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.target)
    }
}

/// Percent-encodes bytes for a query string or a path segment (everything but RFC 3986
/// unreserved characters): a name with `+`, space, `#`, `?` or `%` survives the round trip.
pub fn percent_encode(b: &[u8]) -> String {
    percent_encoding::percent_encode(b, ESCAPED).to_string()
}

/// Decodes a query component: `%XX` escapes and '+' (space); a malformed escape stays as is.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus).collect()
}

/// Decodes a path: `%XX` escapes only ('+' is a plus in a path).
pub fn path_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

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
    /// The decoded path.
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, Vec<u8>)>,
    pub peer: SocketAddr,
    /// The body (POST only; at most [`MAX_REQUEST_BODY`] bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// A request for `target` (path and query, as in a request line) from `peer`, no body.
    pub fn new(method: Method, target: &str, peer: SocketAddr) -> Request {
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
        Request {
            method,
            path: path_decode(path),
            query,
            peer,
            body: Vec::new(),
        }
    }

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
    /// Shared, not copied, per response (a manifest of tens of MiB to 30 receivers).
    pub body: Bytes,
    /// Instead of `body`: a file streamed from disk (its length at the time of the request).
    pub file: Option<PathBuf>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            file: None,
        }
    }

    pub fn ok(content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self::new(200, content_type, body)
    }

    /// A 200 whose body is the file at `path`, streamed (bounded memory per connection).
    pub fn file(content_type: &'static str, path: PathBuf) -> Self {
        Self {
            file: Some(path),
            ..Self::ok(content_type, Bytes::new())
        }
    }

    /// A plain-text error (`why` and a newline).
    pub fn error(status: u16, why: &str) -> Self {
        Self::new(status, "text/plain", format!("{why}\n"))
    }

    pub fn forbidden(why: &str) -> Self {
        Self::error(403, why)
    }

    pub fn not_found() -> Self {
        Self::error(404, "not found")
    }
}

#[cfg(test)]
mod tests;
