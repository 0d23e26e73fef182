//! Figures for status reports: the core's own, with the driver's byte counters filled in.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::zblock::ZStats;

use super::peer::client_name;
use super::Core;

/// Per-peer figures for status reports.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStats {
    pub addr: String,
    pub peer_id: String,
    pub client: String,
    pub pieces: u32,
    pub complete: bool,
    pub uploaded_to: u64,
    pub downloaded_from: u64,
    pub fast: bool,
    /// Pieces it has that we lack.
    pub useful: u32,
    /// Time since it last sent us a block we asked for (None: never).
    pub since_block: Option<Duration>,
    /// It accepts zstd-compressed blocks (`bs_zstd`).
    pub zstd: bool,
}

/// Swarm-wide figures.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub pieces_have: u32,
    pub pieces_total: u32,
    pub bytes_have: u64,
    pub bytes_total: u64,
    pub uploaded: u64,
    pub downloaded: u64,
    pub hash_failures: u64,
    /// Pieces refused to peers because they could not be read from storage.
    pub unreadable_pieces: Vec<u32>,
    /// Pieces hashed by this node (received, found on resume, or checked on first serve).
    pub pieces_verified: u32,
    /// Compressed traffic (`bs_zstd`).
    pub zstd: ZStats,
    pub peers: Vec<PeerStats>,
}

impl Core {
    /// Current figures; the driver's counters: `uploaded` (all peers), `uploaded_to` (by
    /// connection key) and `zstd`.
    pub fn stats(
        &self,
        now: Instant,
        uploaded: u64,
        uploaded_to: impl Fn(u64) -> u64,
        zstd: ZStats,
    ) -> Stats {
        let n = self.have.len() as u32;
        Stats {
            pieces_have: self.have_count,
            pieces_total: n,
            bytes_have: self.bytes_have,
            bytes_total: self.lengths.total_length(),
            uploaded,
            downloaded: self.downloaded,
            hash_failures: self.hash_failures,
            unreadable_pieces: self.servable.unreadable_pieces(),
            pieces_verified: self.servable.verified_count() as u32,
            zstd,
            peers: self
                .peers
                .iter()
                .map(|(&k, p)| PeerStats {
                    addr: p.addr.to_string(),
                    peer_id: hex::encode(p.peer_id),
                    client: client_name(&p.peer_id),
                    pieces: p.has_count,
                    complete: p.has_count == n,
                    uploaded_to: uploaded_to(k),
                    downloaded_from: p.downloaded_from,
                    fast: p.fast,
                    useful: p.useful,
                    since_block: p.last_block.map(|t| now.saturating_duration_since(t)),
                    zstd: p.zstd_id != 0,
                })
                .collect(),
        }
    }
}
