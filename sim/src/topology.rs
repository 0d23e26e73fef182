//! What is simulated: the room (nodes, switches, rates), its misfortunes (slow links, dying
//! machines, liars), and where each node sits.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::SimError;

/// One simulation's parameters.
#[derive(Debug, Clone)]
pub struct Params {
    /// Receivers.
    pub nodes: usize,
    /// Edge switches (receivers are spread over them in contiguous groups).
    pub switches: usize,
    /// Seeders (each has every piece), spread over the switches.
    pub seeders: usize,
    /// Host link rate, bits per second, each way.
    pub rate_bps: f64,
    /// Switch uplink rate, bits per second, each way.
    pub uplink_bps: f64,
    /// One-way latency per hop.
    pub latency: Duration,
    /// Bytes to deliver (the image's packed length).
    pub bytes: u64,
    /// Piece length (0: as the imager's `auto`: ~1024 pieces, 256 KiB ..= 4 MiB).
    pub piece: u32,
    /// Percent of receivers whose links are 10x slower.
    pub slow_pct: f64,
    /// Percent of receivers killed at a random time during the transfer.
    pub die_pct: f64,
    /// Extra seeds that send corrupt blocks (liars).
    pub liars: usize,
    /// Connections per node at most (`SwarmOptions::max_peers`).
    pub max_peers: usize,
    /// Connections a node opens itself at most (`SwarmOptions::dial_peers`).
    pub dial_peers: usize,
    /// Each switch is a site (`swarm::locality`, on by default as in the seeder and
    /// receiver): the tracker lists the asker's switch, every seeder and `remote_peers`
    /// others, and a node asks peers behind other switches only for pieces no peer behind
    /// its own has. Off: every live peer is listed and counts as local.
    pub locality: bool,
    /// Nodes serve requests piece by piece (`SwarmOptions::order_uploads`).
    pub order_uploads: bool,
    pub remote_peers: usize,
    /// Receivers start at random times within this.
    pub start_spread: Duration,
    /// Hashing rate, bytes per second (a piece is verified this long after it completes).
    pub hash_rate: f64,
    /// A run stops (receivers not done are reported stuck) after this many ideal times.
    pub limit_factor: f64,
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            nodes: 16,
            switches: 1,
            seeders: 1,
            rate_bps: 100e6,
            uplink_bps: 1e9,
            latency: Duration::from_micros(50),
            bytes: 200_000_000,
            piece: 0,
            slow_pct: 0.0,
            die_pct: 0.0,
            liars: 0,
            max_peers: 128,
            dial_peers: 32,
            locality: true,
            order_uploads: true,
            remote_peers: blockswarm_swarm::locality::REMOTE_PEERS,
            start_spread: Duration::from_millis(300),
            hash_rate: 1e9,
            limit_factor: 40.0,
            seed: 1,
        }
    }
}

impl Params {
    pub fn check(&self) -> Result<(), SimError> {
        let bad = |m: &str| Err(SimError::Params(m.to_string()));
        if self.nodes == 0 || self.seeders == 0 || self.switches == 0 {
            return bad("nodes, seeders and switches must be at least 1");
        }
        if self.switches > self.nodes {
            return bad("more switches than receivers");
        }
        if self.rate_bps <= 0.0 || self.uplink_bps <= 0.0 || self.hash_rate <= 0.0 {
            return bad("rates must be positive");
        }
        if self.bytes == 0 {
            return bad("nothing to send");
        }
        if !(0.0..=100.0).contains(&self.slow_pct) || !(0.0..100.0).contains(&self.die_pct) {
            return bad("percentages out of range");
        }
        if self.nodes + self.seeders + self.liars > 1 << 20 {
            return bad("too many nodes");
        }
        Ok(())
    }

    /// The piece length used.
    pub fn piece_length(&self) -> u32 {
        if self.piece != 0 {
            return self.piece;
        }
        blockswarm_manifest::auto_piece_length(self.bytes)
    }

    /// Seconds to send the bytes once at the host link rate (the ratios' unit).
    pub fn ideal_secs(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.rate_bps
    }

    /// All nodes: seeders first, then liars, then receivers.
    pub fn total_nodes(&self) -> usize {
        self.seeders + self.liars + self.nodes
    }

    pub fn role(&self, node: usize) -> Role {
        if node < self.seeders {
            Role::Seeder
        } else if node < self.seeders + self.liars {
            Role::Liar
        } else {
            Role::Receiver
        }
    }

    /// Are nodes `x` and `y` on one site: behind the same switch, or anywhere with sites off
    /// (what `locality::same_site` decides from addresses for the seeder and receivers).
    pub fn same_site(&self, x: usize, y: usize) -> bool {
        !self.locality || self.switch_of(x) == self.switch_of(y)
    }

    /// The edge switch of `node`: receivers in contiguous groups, seeders and liars spread
    /// over the switches.
    pub fn switch_of(&self, node: usize) -> usize {
        match self.role(node) {
            Role::Seeder => node * self.switches / self.seeders,
            Role::Liar => (node - self.seeders) % self.switches,
            Role::Receiver => (node - self.seeders - self.liars) * self.switches / self.nodes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Seeder,
    /// A seed whose blocks are all corrupt.
    Liar,
    Receiver,
}

/// The listen address of `node`.
pub fn addr_of(node: usize) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(0x0a00_0001 + node as u32),
        6881,
    ))
}

/// The node listening at `a`.
pub fn node_of(a: SocketAddr) -> Option<usize> {
    match a {
        SocketAddr::V4(v4) => (u32::from(*v4.ip()))
            .checked_sub(0x0a00_0001)
            .map(|n| n as usize),
        SocketAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_sit_on_switches_and_have_addresses() {
        let p = Params {
            nodes: 100,
            switches: 25,
            seeders: 3,
            ..Params::default()
        };
        assert_eq!(p.switch_of(0), 0);
        assert_eq!(p.switch_of(1), 8);
        assert_eq!(p.switch_of(2), 16);
        assert_eq!(p.switch_of(3), 0);
        assert_eq!(p.switch_of(6), 0);
        assert_eq!(p.switch_of(7), 1);
        assert_eq!(p.switch_of(102), 24);
        for n in [0, 5, 1000] {
            assert_eq!(node_of(addr_of(n)), Some(n));
        }
        assert_eq!(p.piece_length(), 256 << 10);
        assert!((p.ideal_secs() - 16.0).abs() < 1e-9);
    }
}
