//! What the core knows about one connected peer (no channels, no sockets: the driver keeps
//! those under the same key), its download rate meter, and the addresses learnt from the
//! tracker.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::admit::Admission;
use crate::wire::BLOCK_SIZE;

use super::{INITIAL_PIPELINE_BLOCKS, MIN_PIPELINE_BLOCKS, REJECT_WINDOW};

/// Download rate from one peer: bytes per second, smoothed over windows of 200 ms or more.
pub(crate) struct RateMeter {
    window_start: Instant,
    window_bytes: u64,
    pub(crate) rate: Option<f64>,
}

impl RateMeter {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            window_bytes: 0,
            rate: None,
        }
    }

    pub(crate) fn add(&mut self, n: u64, now: Instant) {
        self.window_bytes += n;
        let dt = now
            .saturating_duration_since(self.window_start)
            .as_secs_f64();
        if dt >= 0.2 {
            let sample = self.window_bytes as f64 / dt;
            self.rate = Some(match self.rate {
                Some(r) if dt < 2.0 => 0.5 * r + 0.5 * sample,
                // First sample, or the link sat idle: start afresh.
                _ => sample,
            });
            self.window_start = now;
            self.window_bytes = 0;
        }
    }

    /// Blocks to keep in flight for a queue of `queue_time`.
    pub(crate) fn pipeline(&self, queue_time: Duration, max: usize) -> usize {
        let want = match self.rate {
            None => INITIAL_PIPELINE_BLOCKS,
            Some(r) => (r * queue_time.as_secs_f64() / BLOCK_SIZE as f64).ceil() as usize,
        };
        want.clamp(MIN_PIPELINE_BLOCKS, max.max(MIN_PIPELINE_BLOCKS))
    }
}

/// One connected peer, as the policy sees it.
pub(crate) struct PeerState {
    pub(crate) addr: SocketAddr,
    pub(crate) peer_id: [u8; 20],
    pub(crate) has: Vec<bool>,
    pub(crate) has_count: u32,
    /// Pieces the peer has that we lack.
    pub(crate) useful: u32,
    pub(crate) choked_us: bool,
    pub(crate) am_interested: bool,
    pub(crate) fast: bool,
    pub(crate) inflight: HashMap<(u32, u32), Instant>,
    /// Pieces this peer refused us (Fast REJECT), and when.
    pub(crate) rejected: HashMap<u32, Instant>,
    /// A seed that refuses pieces others can pass on: a blockswarm seeder. It is asked
    /// only for pieces no other peer has (outside the end game).
    pub(crate) rationing: Option<Instant>,
    /// Pieces this peer suggested (a rationing seed names pieces nobody has yet).
    pub(crate) suggested: VecDeque<u32>,
    pub(crate) downloaded_from: u64,
    /// When it last sent us a block we asked for.
    pub(crate) last_block: Option<Instant>,
    pub(crate) rate: RateMeter,
    pub(crate) outgoing: bool,
    /// Which incoming blocks we asked this peer for; strikes for the others.
    pub(crate) admit: Admission,
    /// The id it wants for `bs_zstd` messages (0: it takes plain blocks only).
    pub(crate) zstd_id: u8,
    /// Behind our switch ([`Hello::local`](super::Hello)).
    pub(crate) local: bool,
}

impl PeerState {
    pub(crate) fn new(
        addr: SocketAddr,
        peer_id: [u8; 20],
        fast: bool,
        outgoing: bool,
        pieces: usize,
        now: Instant,
    ) -> Self {
        Self {
            addr,
            peer_id,
            has: vec![false; pieces],
            has_count: 0,
            useful: 0,
            choked_us: true,
            am_interested: false,
            fast,
            inflight: HashMap::new(),
            rejected: HashMap::new(),
            rationing: None,
            suggested: VecDeque::new(),
            downloaded_from: 0,
            last_block: None,
            rate: RateMeter::new(now),
            outgoing,
            admit: Admission::default(),
            zstd_id: 0,
            local: true,
        }
    }

    /// A seed that refused us something lately: it has pieces nobody else has to send
    /// first. One that stopped refusing (its copy is out, its link is free) is asked for
    /// anything again.
    pub(crate) fn is_rationing(&self, now: Instant) -> bool {
        self.rationing
            .is_some_and(|t| now.saturating_duration_since(t) < REJECT_WINDOW)
    }

    /// True while this peer refused piece `i` recently.
    pub(crate) fn refused(&self, i: u32, now: Instant) -> bool {
        self.rejected
            .get(&i)
            .is_some_and(|&t| now.saturating_duration_since(t) < REJECT_WINDOW)
    }

    /// We stop waiting for a requested block (its late answer is dropped without blame).
    pub(crate) fn give_up(&mut self, index: u32, begin: u32) -> bool {
        let had = self.inflight.remove(&(index, begin)).is_some();
        if had {
            self.admit.released(index, begin);
        }
        had
    }
}

/// A peer listen address learnt from the tracker.
#[derive(Default)]
pub(crate) struct Known {
    pub(crate) last_dial: Option<Instant>,
    /// Who answered there last time: not redialed while that peer is connected either way.
    pub(crate) peer_id: Option<[u8; 20]>,
}

/// A short name for a peer's client: the Azureus-style `-XX1234-` tag, else hex.
pub fn client_name(peer_id: &[u8; 20]) -> String {
    if peer_id[0] == b'-' && peer_id[7] == b'-' {
        String::from_utf8_lossy(&peer_id[1..7]).into_owned()
    } else {
        hex::encode(&peer_id[..4])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_follows_the_measured_rate_within_bounds() {
        let q = Duration::from_millis(500);
        let mut m = RateMeter::new(Instant::now());
        assert_eq!(m.pipeline(q, 64), INITIAL_PIPELINE_BLOCKS);
        // 1 MiB/s for half a second: 512 KiB queued = 32 blocks.
        m.rate = Some(1024.0 * 1024.0);
        assert_eq!(m.pipeline(q, 64), 32);
        assert_eq!(m.pipeline(q, 16), 16, "capped by pipeline_blocks");
        m.rate = Some(1000.0);
        assert_eq!(
            m.pipeline(q, 64),
            MIN_PIPELINE_BLOCKS,
            "never below the floor"
        );
        m.rate = Some(1e12);
        assert_eq!(m.pipeline(q, 64), 64);
    }

    #[test]
    fn rate_meter_measures_bytes_per_second() {
        let t0 = Instant::now();
        let mut m = RateMeter::new(t0);
        m.add(500_000, t0 + Duration::from_millis(500));
        assert_eq!(m.rate, Some(1_000_000.0));
        // The next window is averaged with the last.
        m.add(1_500_000, t0 + Duration::from_millis(1000));
        assert_eq!(m.rate, Some(2_000_000.0));
        // Under 200 ms: no sample yet.
        m.add(1_000_000, t0 + Duration::from_millis(1100));
        assert_eq!(m.rate, Some(2_000_000.0));
        // After an idle gap the old rate is dropped, not averaged in.
        m.add(0, t0 + Duration::from_millis(5000));
        assert_eq!(m.rate, Some(250_000.0));
    }
}
