//! blockswarm's swarm engine: BitTorrent v1 (BEP 3) with the Fast extension (BEP 6), tuned
//! for a LAN where one seeder feeds a room of receivers that trade pieces among themselves.
//!
//! Built on librqbit's building blocks (`librqbit-peer-protocol` for messages and handshake,
//! `librqbit-core` for piece/block arithmetic, `librqbit-bencode` for tracker replies); the
//! session logic (picking, end game, seed mode, HAVE broadcasting) is ours.
#![forbid(unsafe_code)]

pub mod admit;
pub mod allow;
pub mod backlog;
pub mod conn_limit;
pub mod engine;
pub mod failure_report;
pub mod gate;
pub mod http;
pub mod locality;
pub mod machine_report;
pub mod proto;
pub mod servable;
pub mod storage;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
pub mod tracker;
pub mod wire;
pub mod zblock;
pub mod zimage;

pub use engine::{new_peer_id, CorruptPiece, PeerStats, Stats, Swarm, SwarmOptions, TorrentInfo};
pub use storage::{DeviceStorage, PackedFileStorage, Storage};

/// The runtime a node (seeder or receiver) runs on. One thread does all the networking:
/// cheaper than a thread pool when a machine runs many peers (the bench runs 17 on 2 cores),
/// and plenty for one LAN link. Disk reads, writes and hashing run on tokio's blocking pool.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Errors of the swarm engine, the tracker and the HTTP helpers.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("peer is banned")]
    Banned,
    #[error("closed to make room for a new connection (idle at the connection cap)")]
    Evicted,
    #[error("configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("http: {0}")]
    Http(String),
    /// The server answered, with another status than 200.
    #[error("http: {url} answered {status} {reason}")]
    HttpStatus {
        url: String,
        status: u16,
        reason: String,
    },
    #[error("tracker: {0}")]
    Tracker(String),
}
