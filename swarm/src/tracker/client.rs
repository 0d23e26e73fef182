//! The announce client used by receivers (and the seeder's announces to an external
//! tracker): one GET with a compact peer list back (BEP 3, BEP 23); works against
//! opentracker as against our own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use librqbit_bencode::ByteBuf;
use serde::Deserialize;

use crate::failure_report::FailureReport;
use crate::http::{self, percent_encode};
use crate::SwarmError;

/// One announce to send.
#[derive(Debug, Clone)]
pub struct Announce<'a> {
    pub url: &'a str,
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub port: u16,
    pub ip: Option<IpAddr>,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Option<&'static str>,
    /// With `event=stopped`: the receiver failed (`blockswarm_exit`, `blockswarm_error`).
    pub failure: Option<&'a FailureReport>,
}

/// What a tracker answered.
#[derive(Debug, Clone)]
pub struct AnnounceReply {
    pub interval: Duration,
    pub peers: Vec<SocketAddr>,
    /// The blockswarm seeder says every expected receiver is done.
    pub done: bool,
}

#[derive(Deserialize)]
struct ReplyIn<'a> {
    #[serde(rename = "failure reason", borrow, default)]
    failure: Option<ByteBuf<'a>>,
    #[serde(default)]
    interval: Option<u64>,
    #[serde(borrow, default)]
    peers: Option<ByteBuf<'a>>,
    #[serde(rename = "blockswarm done", default)]
    done: Option<u64>,
}

/// Parses a tracker reply (compact peer list).
pub fn parse_reply(body: &[u8]) -> Result<AnnounceReply, SwarmError> {
    blockswarm_manifest::bencode::check(body)
        .map_err(|e| SwarmError::Tracker(format!("unreadable reply: {e}")))?;
    let r: ReplyIn<'_> = librqbit_bencode::from_bytes(body)
        .map_err(|e| SwarmError::Tracker(format!("unreadable reply: {e}")))?;
    if let Some(f) = r.failure {
        return Err(SwarmError::Tracker(format!(
            "tracker refused: {}",
            String::from_utf8_lossy(f.0)
        )));
    }
    let peers = r
        .peers
        .map(|p| {
            p.0.chunks_exact(6)
                .map(|c| {
                    SocketAddr::V4(SocketAddrV4::new(
                        Ipv4Addr::new(c[0], c[1], c[2], c[3]),
                        u16::from_be_bytes([c[4], c[5]]),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(AnnounceReply {
        interval: Duration::from_secs(r.interval.unwrap_or(30).clamp(1, 3600)),
        peers,
        done: r.done == Some(1),
    })
}

/// Sends an announce.
pub async fn announce(
    a: &Announce<'_>,
    bind_ip: Option<IpAddr>,
) -> Result<AnnounceReply, SwarmError> {
    let sep = if a.url.contains('?') { '&' } else { '?' };
    let mut url = format!(
        "{}{sep}info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&compact=1&numwant=200",
        a.url,
        percent_encode(&a.info_hash),
        percent_encode(&a.peer_id),
        a.port,
        a.uploaded,
        a.downloaded,
        a.left
    );
    if let Some(ip) = a.ip {
        url.push_str(&format!("&ip={ip}"));
    }
    if let Some(ev) = a.event {
        url.push_str(&format!("&event={ev}"));
    }
    if let Some(f) = a.failure {
        url.push_str(&f.query());
    }
    let body = http::get(&url, bind_ip, Duration::from_secs(10)).await?;
    parse_reply(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_with_numbers_too_long_for_a_machine_word_is_refused() {
        // The fuzzer's find (tracker_reply): a 20-digit length or integer overflowed the
        // bencode parser's `atoi` and panicked in debug builds.
        let long = b"d8:intervali99999999999999999999999999e5:peers0:e";
        assert!(parse_reply(long).is_err());
        let mut crash = b"d15:-Leng".to_vec();
        crash.extend_from_slice(&[b'6'; 68]);
        crash.extend_from_slice(b"th: 106\r\nCo0e8:completei1e1");
        assert!(parse_reply(&crash).is_err());
        let ok = b"d8:intervali30e5:peers6:\x7f\x00\x00\x01\x1a\xe1e";
        assert_eq!(parse_reply(ok).unwrap().peers.len(), 1);
    }
}
