//! The order our upload serves requests in. Handed straight to the connections' writers,
//! every peer's requests go out side by side: a seeder whose 128 peers each ask for a
//! piece sends a block of each in turn (TCP shares the link between the connections), so
//! all 128 pieces complete together seconds later, and until then its peers have nothing
//! to trade (simulator, N = 300 on 25 switches: the receivers' links 30-50 % busy at
//! t = 5-7 s, then 122 pieces completing in one second). So the writers get a shallow queue
//! ([`UploadOrder::limit`]) and the rest waits here, released piece by piece, so that a
//! piece that started going out is finished before the next starts. Pieces are served in
//! rounds, each peer's first in the first round, its second in the next, and so on (in a
//! round: the (peer, piece) asked for first goes first). So a peer that asks several pieces
//! ahead does not keep the others waiting: plain first-asked order did, on the LAN at N = 4
//! (one receiver got the seeder's whole link for five seconds while it uploaded nothing).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::peer::RateMeter;
use crate::backlog::MAX_QUEUED_REQUESTS;
use crate::wire::Req;

/// The writers' queue at its shallowest, bytes.
pub const MIN_WRITER_BYTES: u64 = 1 << 20;
/// The writers' queue at its deepest, bytes.
pub const MAX_WRITER_BYTES: u64 = 64 << 20;
/// The writers are given this much of our measured upload rate ahead.
pub const WRITER_QUEUE_TIME: Duration = Duration::from_millis(50);
/// Pieces per peer whose rank is remembered (beyond: the oldest is forgotten).
const RANKED_PER_PEER: usize = 64;

/// Where a (peer, piece) waits: its round, then when it was first asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    round: u64,
    first: u64,
}

#[derive(Default)]
struct PeerOrder {
    /// Pieces ranked for it, oldest first, and their ranks.
    ranked: VecDeque<(u32, Rank)>,
    /// The round of its latest piece.
    last_round: Option<u64>,
    /// Its requests held here.
    held: usize,
}

/// Requests waiting for the writers, and the rank of each (peer, piece).
#[derive(Default)]
pub struct UploadOrder {
    /// (rank, arrival) -> (peer key, request).
    held: BTreeMap<(Rank, u64), (u64, Req)>,
    peers: BTreeMap<u64, PeerOrder>,
    /// The round being served (of the last request released).
    round: u64,
    next_first: u64,
    next_seq: u64,
    held_bytes: u64,
    /// Bytes the writers have queued: the driver's last report plus what we released since.
    writers: u64,
    /// Our upload rate, metered from the ticks' byte counts since the first tick, and the
    /// count at the last tick.
    meter: Option<(RateMeter, u64)>,
}

impl UploadOrder {
    /// How many bytes the writers may have queued.
    pub fn limit(&self) -> u64 {
        let rate = self.meter.as_ref().and_then(|(m, _)| m.rate);
        let ahead = rate.unwrap_or(0.0) * WRITER_QUEUE_TIME.as_secs_f64();
        (ahead as u64).clamp(MIN_WRITER_BYTES, MAX_WRITER_BYTES)
    }

    /// Bytes of requests held here.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Bytes queued for our upload in all: the writers' and ours.
    pub fn queued(&self) -> u64 {
        self.writers + self.held_bytes
    }

    /// The driver's count of bytes its writers have queued.
    pub fn writers_report(&mut self, queued: u64) {
        self.writers = queued;
    }

    /// Meters our upload rate from each tick's count of bytes sent so far (a peer's
    /// [`RateMeter`]: windows of 200 ms or more, averaged with the last).
    pub fn tick(&mut self, now: Instant, uploaded: u64) {
        match &mut self.meter {
            None => self.meter = Some((RateMeter::new(now), uploaded)),
            Some((m, last)) => {
                m.add(uploaded.saturating_sub(*last), now);
                *last = uploaded;
            }
        }
    }

    fn rank(&mut self, key: u64, index: u32) -> Rank {
        let p = self.peers.entry(key).or_default();
        if let Some(&(_, r)) = p.ranked.iter().find(|(i, _)| *i == index) {
            return r;
        }
        if p.ranked.len() == RANKED_PER_PEER {
            p.ranked.pop_front();
        }
        let round = p.last_round.map_or(self.round, |l| (l + 1).max(self.round));
        let r = Rank {
            round,
            first: self.next_first,
        };
        self.next_first += 1;
        p.last_round = Some(round);
        p.ranked.push_back((index, r));
        r
    }

    /// A request we will serve: Some(it) to hand to the writers now, None if held here.
    /// Err(it): the peer has [`MAX_QUEUED_REQUESTS`] held already (refuse it).
    pub fn offer(&mut self, key: u64, r: Req) -> Result<Option<Req>, Req> {
        let rank = self.rank(key, r.index);
        let len = r.length as u64;
        if self.held.is_empty() && self.writers + len <= self.limit() {
            self.writers += len;
            return Ok(Some(r));
        }
        let p = self.peers.entry(key).or_default();
        if p.held >= MAX_QUEUED_REQUESTS {
            return Err(r);
        }
        p.held += 1;
        self.held.insert((rank, self.next_seq), (key, r));
        self.next_seq += 1;
        self.held_bytes += len;
        Ok(None)
    }

    /// Requests to hand to the writers now, in order, while they are below [`Self::limit`].
    pub fn release(&mut self) -> Vec<(u64, Req)> {
        let limit = self.limit();
        let mut out = Vec::new();
        while self.writers < limit {
            let Some(((rank, _), (key, r))) = self.held.pop_first() else {
                break;
            };
            self.round = self.round.max(rank.round);
            self.unhold(key, r);
            self.writers += r.length as u64;
            out.push((key, r));
        }
        out
    }

    fn unhold(&mut self, key: u64, r: Req) {
        self.held_bytes -= r.length as u64;
        if let Some(p) = self.peers.get_mut(&key) {
            p.held -= 1;
        }
    }

    /// The peer cancelled `r`: true if it was held here (and is now dropped).
    pub fn cancel(&mut self, key: u64, r: Req) -> bool {
        if self.peers.get(&key).is_none_or(|p| p.held == 0) {
            return false;
        }
        let found = self
            .held
            .iter()
            .find(|(_, &(k, q))| k == key && q == r)
            .map(|(&at, _)| at);
        match found {
            Some(at) => {
                self.held.remove(&at);
                self.unhold(key, r);
                true
            }
            None => false,
        }
    }

    /// The peer has `index` now: its rank is not needed any more.
    pub fn piece_done(&mut self, key: u64, index: u32) {
        if let Some(p) = self.peers.get_mut(&key) {
            p.ranked.retain(|(i, _)| *i != index);
        }
    }

    /// The peer is gone: its held requests are dropped.
    pub fn forget(&mut self, key: u64) {
        let Some(p) = self.peers.remove(&key) else {
            return;
        };
        if p.held > 0 {
            let mut dropped = 0;
            self.held.retain(|_, &mut (k, r)| {
                let keep = k != key;
                if !keep {
                    dropped += r.length as u64;
                }
                keep
            });
            self.held_bytes -= dropped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(index: u32, block: u32) -> Req {
        Req {
            index,
            begin: block * 16384,
            length: 16384,
        }
    }

    /// Fills the writers to the limit so that what follows is held.
    fn full() -> UploadOrder {
        let mut o = UploadOrder::default();
        o.writers_report(MIN_WRITER_BYTES);
        o
    }

    #[test]
    fn below_the_limit_requests_go_straight_to_the_writers() {
        let mut o = UploadOrder::default();
        let n = MIN_WRITER_BYTES / 16384;
        for b in 0..n as u32 {
            assert_eq!(o.offer(1, req(0, b)), Ok(Some(req(0, b))));
        }
        assert_eq!(o.offer(1, req(1, 0)), Ok(None));
        assert_eq!(o.queued(), MIN_WRITER_BYTES + 16384);
    }

    #[test]
    fn pieces_go_out_one_after_another_in_the_order_first_asked() {
        let mut o = full();
        // Two peers ask for a piece each, block by block, interleaved.
        for b in 0..4 {
            assert_eq!(o.offer(1, req(10, b)), Ok(None));
            assert_eq!(o.offer(2, req(20, b)), Ok(None));
        }
        // A later request for piece 10 by peer 1 keeps that piece's place.
        assert_eq!(o.offer(1, req(10, 4)), Ok(None));
        o.writers_report(0);
        let out = o.release();
        let order: Vec<(u64, u32)> = out.iter().map(|(k, r)| (*k, r.index)).collect();
        let mut want = vec![(1, 10); 5];
        want.extend([(2, 20); 4]);
        assert_eq!(order, want);
        assert_eq!(o.held_bytes(), 0);
    }

    #[test]
    fn a_peer_asking_pieces_ahead_takes_turns_with_the_others() {
        let mut o = full();
        for i in 1..=3 {
            for b in 0..2 {
                assert_eq!(o.offer(1, req(i, b)), Ok(None));
            }
        }
        assert_eq!(o.offer(2, req(9, 0)), Ok(None));
        assert_eq!(o.offer(2, req(8, 0)), Ok(None));
        o.writers_report(0);
        let order: Vec<(u64, u32)> = o.release().iter().map(|(k, r)| (*k, r.index)).collect();
        let p1 = |i| [(1, i), (1, i)];
        let want: Vec<(u64, u32)> = [&p1(1)[..], &[(2, 9)], &p1(2), &[(2, 8)], &p1(3)].concat();
        assert_eq!(order, want);
    }

    #[test]
    fn release_stops_at_the_limit_and_the_rate_raises_it() {
        let mut o = full();
        for b in 0..120 {
            assert_eq!(o.offer(1, req(b / 16, b % 16)), Ok(None));
        }
        o.writers_report(0);
        assert_eq!(o.release().len() as u64, MIN_WRITER_BYTES / 16384);
        assert_eq!(o.release().len(), 0, "the writers are full");
        // 100 MB/s measured: 5 MB ahead.
        let t = Instant::now();
        o.tick(t, 0);
        o.tick(t + Duration::from_secs(1), 100_000_000);
        assert_eq!(o.limit(), 5_000_000);
        o.writers_report(0);
        assert_eq!(o.release().len(), 120 - 64);
    }

    #[test]
    fn held_requests_are_bounded_cancelled_and_forgotten() {
        let mut o = full();
        for b in 0..MAX_QUEUED_REQUESTS as u32 {
            assert_eq!(o.offer(1, req(b / 16, b % 16)), Ok(None));
        }
        assert_eq!(o.offer(1, req(99, 0)), Err(req(99, 0)));
        assert!(o.cancel(1, req(0, 3)));
        assert!(!o.cancel(1, req(0, 3)), "once");
        assert!(!o.cancel(2, req(0, 4)), "another peer's");
        assert_eq!(o.offer(1, req(99, 0)), Ok(None), "room again");
        assert_eq!(o.offer(2, req(5, 0)), Ok(None));
        o.forget(1);
        assert_eq!(o.held_bytes(), 16384);
        o.writers_report(0);
        assert_eq!(o.release(), vec![(2, req(5, 0))]);
    }

    #[test]
    fn ranks_are_bounded_per_peer_and_dropped_once_it_has_the_piece() {
        let mut o = UploadOrder::default();
        for i in 0..(RANKED_PER_PEER as u32 + 10) {
            o.rank(1, i);
        }
        assert_eq!(o.peers[&1].ranked.len(), RANKED_PER_PEER);
        let r = o.rank(1, 50);
        o.piece_done(1, 50);
        assert!(
            o.rank(1, 50) > r,
            "a new rank: asked for again, it is a new copy"
        );
    }
}
