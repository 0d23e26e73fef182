//! blockswarm's swarm engine: BitTorrent v1 (BEP 3) with the Fast extension (BEP 6), tuned
//! for a LAN where one seeder feeds a room of receivers that trade pieces among themselves.
//!
//! Built on librqbit's building blocks (`librqbit-peer-protocol` for messages and handshake,
//! `librqbit-core` for piece/block arithmetic, `librqbit-bencode` for tracker replies); the
//! session logic (picking, end game, seed mode, HAVE broadcasting) is ours.
#![forbid(unsafe_code)]

pub mod engine;
pub mod http;
pub mod storage;
pub mod tracker;
pub mod wire;

pub use engine::{new_peer_id, PeerStats, Stats, Swarm, SwarmOptions, TorrentInfo};
pub use storage::{DeviceStorage, PackedFileStorage, Storage};

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
    #[error("configuration: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("http: {0}")]
    Http(String),
    #[error("tracker: {0}")]
    Tracker(String),
}
