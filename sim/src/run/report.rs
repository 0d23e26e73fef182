//! What a run measured.

use super::Sim;
use crate::topology::{addr_of, Role};
use crate::Ns;

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Completion times of the receivers that finished, as ratios to bytes / rate, sorted.
    pub ratios: Vec<f64>,
    /// Receivers killed on purpose.
    pub died: usize,
    /// Receivers neither finished nor killed when the run stopped.
    pub stuck: usize,
    /// Bytes of blocks the seeders sent, in copies of the image.
    pub seeder_copies: f64,
    /// Bytes over switch uplinks (both ways), in copies of the image per switch that has
    /// receivers and no seeder (the least that must cross); None with one switch.
    pub uplink: Option<f64>,
    /// Requests sent to a peer that did not have the piece (must be 0).
    pub bad_requests: u64,
    /// (banner, banned) pairs where the banned node is honest (must be empty).
    pub honest_banned: Vec<(usize, usize)>,
    /// Liars banned by at least one receiver.
    pub liars_banned: usize,
    /// Pieces that failed their check at a receiver.
    pub hash_failures: u64,
    /// Events processed.
    pub events: u64,
}

impl Report {
    /// The ratio at quantile `q` (0..=1) of the finished receivers.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.ratios.is_empty() {
            return f64::NAN;
        }
        let i = ((self.ratios.len() - 1) as f64 * q).round() as usize;
        self.ratios[i]
    }
}

impl Sim {
    pub(super) fn report(&self, dying: &[usize], ideal: Ns) -> Report {
        let mut ratios: Vec<f64> = self
            .nodes
            .iter()
            .filter_map(|n| n.done_at)
            .map(|t| t as f64 / ideal as f64)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let died = dying.iter().filter(|&&d| !self.nodes[d].alive).count();
        let stuck = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Receiver && n.alive && n.done_at.is_none())
            .count();
        let mut honest_banned = Vec::new();
        let mut liars_banned = 0;
        for j in 0..self.nodes.len() {
            let ip = addr_of(j).ip();
            let by: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].core.is_banned(ip))
                .collect();
            if self.nodes[j].role == Role::Liar {
                liars_banned += (!by.is_empty()) as usize;
            } else {
                honest_banned.extend(by.into_iter().map(|i| (i, j)));
            }
        }
        let switches_needing: usize = (0..self.p.switches)
            .filter(|&s| {
                let has = |r: Role| {
                    (0..self.nodes.len())
                        .any(|i| self.nodes[i].role == r && self.p.switch_of(i) == s)
                };
                has(Role::Receiver) && !has(Role::Seeder)
            })
            .count();
        let uplink_bytes: u64 = self.hops.iter().filter(|h| h.uplink).map(|h| h.bytes).sum();
        let bytes = self.p.bytes as f64;
        Report {
            ratios,
            died,
            stuck,
            seeder_copies: self.seeder_block_bytes as f64 / bytes,
            uplink: (self.p.switches > 1 && switches_needing > 0)
                .then(|| uplink_bytes as f64 / (switches_needing as f64 * bytes)),
            bad_requests: self.bad_requests,
            honest_banned,
            liars_banned,
            hash_failures: self.hash_failures,
            events: self.processed,
        }
    }
}
