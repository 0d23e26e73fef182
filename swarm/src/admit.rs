//! Which incoming blocks to accept from a peer, and when a peer has sent too many blocks
//! nobody asked it for. Pure bookkeeping, no sockets: the engine asks [`Admission::judge`]
//! for every PIECE message and acts on the [`Verdict`].
//!
//! A block is accepted only if it was requested from that very peer (it is in the peer's
//! in-flight set). A block we asked for and then gave up on (cancelled in the end game,
//! released on a choke, a timeout or because the piece completed elsewhere) may still
//! arrive from an honest peer: it is remembered for a while and dropped without blame. Any
//! other block is unsolicited: dropped, and it counts a strike; past [`MAX_STRIKES`] the
//! peer is to be disconnected and banned.

use std::collections::{HashMap, VecDeque};

/// Unsolicited blocks tolerated from one connection; the next one bans it. Small: an honest
/// peer never sends a block it was not asked for (late answers to cancelled requests are
/// remembered in [`RECENT_RELEASED`] and never count), so a few strikes only absorb a
/// buggy-but-harmless client, while a flooding peer is cut off within a second.
pub const MAX_STRIKES: u32 = 4;

/// Requests given up on that are remembered per peer, so their late answers are dropped
/// without a strike. Twice the longest pipeline we ask any peer for (64 blocks) plus its
/// end-game duplicates: more than a peer can legitimately owe us at once.
pub const RECENT_RELEASED: usize = 256;

/// What to do with one incoming block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Requested from this peer: use it.
    Accept,
    /// A late answer to a request we gave up on: drop it, no blame.
    Late,
    /// Never asked for: drop it; the peer has one more strike.
    Strike,
    /// Never asked for, and the peer is past [`MAX_STRIKES`]: disconnect and ban it.
    Ban,
}

/// Per-connection admission state.
#[derive(Debug, Default)]
pub struct Admission {
    /// Requests given up on, oldest first. A block given up on twice (asked again after a
    /// timeout, and timed out again) is here twice: both answers may still come.
    released: VecDeque<(u32, u32)>,
    /// How many late answers each block in `released` may still get.
    owed: HashMap<(u32, u32), u32>,
    strikes: u32,
}

impl Admission {
    /// We stopped waiting for block `(index, begin)` from this peer without receiving it.
    pub fn released(&mut self, index: u32, begin: u32) {
        self.released.push_back((index, begin));
        *self.owed.entry((index, begin)).or_insert(0) += 1;
        if self.released.len() > RECENT_RELEASED {
            if let Some(old) = self.released.pop_front() {
                self.forget(old);
            }
        }
    }

    fn forget(&mut self, block: (u32, u32)) {
        if let Some(n) = self.owed.get_mut(&block) {
            *n -= 1;
            if *n == 0 {
                self.owed.remove(&block);
            }
        }
    }

    /// A block `(index, begin)` arrived; `requested` says whether it was in flight from this
    /// peer (and has now been taken out of its in-flight set).
    pub fn judge(&mut self, requested: bool, index: u32, begin: u32) -> Verdict {
        if requested {
            return Verdict::Accept;
        }
        if self.owed.contains_key(&(index, begin)) {
            self.forget((index, begin));
            if let Some(at) = self.released.iter().position(|&r| r == (index, begin)) {
                self.released.remove(at);
            }
            return Verdict::Late;
        }
        self.strikes += 1;
        if self.strikes > MAX_STRIKES {
            Verdict::Ban
        } else {
            Verdict::Strike
        }
    }

    /// Unsolicited blocks so far.
    pub fn strikes(&self) -> u32 {
        self.strikes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_blocks_are_accepted_without_strikes() {
        let mut a = Admission::default();
        for i in 0..1000 {
            assert_eq!(a.judge(true, i, 0), Verdict::Accept);
        }
        assert_eq!(a.strikes(), 0);
    }

    #[test]
    fn unsolicited_blocks_strike_then_ban() {
        let mut a = Admission::default();
        for i in 0..MAX_STRIKES {
            assert_eq!(a.judge(false, i, 0), Verdict::Strike);
        }
        assert_eq!(a.judge(false, 99, 0), Verdict::Ban);
        assert_eq!(a.judge(false, 100, 0), Verdict::Ban);
        assert_eq!(a.strikes(), MAX_STRIKES + 2);
    }

    #[test]
    fn late_answers_to_released_requests_are_dropped_without_blame_once_each() {
        let mut a = Admission::default();
        a.released(3, 16384);
        assert_eq!(a.judge(false, 3, 16384), Verdict::Late);
        assert_eq!(a.strikes(), 0);
        // The same block a second time was not owed any more.
        assert_eq!(a.judge(false, 3, 16384), Verdict::Strike);
    }

    #[test]
    fn a_block_given_up_on_twice_may_come_twice() {
        // Asked, timed out, asked again, timed out again: a slow honest peer still owes
        // both answers (the N = 1,000 simulation with 2% slow links banned one for this).
        let mut a = Admission::default();
        a.released(354, 180224);
        a.released(354, 180224);
        assert_eq!(a.judge(false, 354, 180224), Verdict::Late);
        assert_eq!(a.judge(false, 354, 180224), Verdict::Late);
        assert_eq!(a.strikes(), 0);
        assert_eq!(a.judge(false, 354, 180224), Verdict::Strike);
        assert!(a.owed.is_empty() && a.released.is_empty());
    }

    #[test]
    fn released_memory_is_bounded() {
        let mut a = Admission::default();
        for i in 0..(RECENT_RELEASED as u32 + 10) {
            a.released(i, 0);
        }
        assert_eq!(a.released.len(), RECENT_RELEASED);
        assert_eq!(a.owed.len(), RECENT_RELEASED);
        // The oldest were forgotten: they count as unsolicited now.
        assert_eq!(a.judge(false, 0, 0), Verdict::Strike);
        assert_eq!(a.judge(false, RECENT_RELEASED as u32 + 9, 0), Verdict::Late);
    }
}
