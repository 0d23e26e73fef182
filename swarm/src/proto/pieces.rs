//! Pieces: which we have, how many connected peers have each, and the ones being assembled
//! block by block (who was asked for each block, who sent it).

use std::collections::HashSet;

use crate::wire::{Msg, BLOCK_SIZE};
use crate::zblock::Form;

use super::peer::PeerState;
use super::{Action, Core};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Block {
    Missing,
    Requested,
    Received,
}

/// The connection key of nobody (a block not received yet).
pub(crate) const NOBODY: u64 = u64::MAX;

/// A piece being assembled.
pub(crate) struct InProgress {
    pub(crate) buf: Vec<u8>,
    pub(crate) blocks: Vec<Block>,
    /// Peers each block was requested from (end game may ask more than one).
    pub(crate) requesters: Vec<Vec<u64>>,
    pub(crate) received: u32,
    pub(crate) first_missing: usize,
    /// Who sent each received block (`NOBODY` if none yet).
    pub(crate) from: Vec<u64>,
    /// Set for a piece that already failed its hash with several senders: the whole piece is
    /// then fetched from this one peer, so a second failure names the culprit.
    pub(crate) owner: Option<u64>,
    /// How each block came (a frame to forward as it is, or raw from a `bs_zstd` peer,
    /// which found it incompressible); kept for serving once the piece is verified.
    pub(crate) forms: Vec<Option<Form>>,
}

impl InProgress {
    pub(crate) fn new(len: usize, blocks: usize) -> Self {
        InProgress {
            buf: vec![0u8; len],
            blocks: vec![Block::Missing; blocks],
            requesters: vec![Vec::new(); blocks],
            received: 0,
            first_missing: 0,
            from: vec![NOBODY; blocks],
            owner: None,
            forms: vec![None; blocks],
        }
    }

    pub(crate) fn contributors(&self) -> HashSet<u64> {
        self.from.iter().copied().filter(|&k| k != NOBODY).collect()
    }

    /// May `key` fetch blocks of this piece?
    pub(crate) fn open_to(&self, key: u64) -> bool {
        self.owner.is_none_or(|o| o == key)
    }

    /// Nothing of it requested or received (a refused piece must not hold a slot).
    pub(crate) fn untouched(&self) -> bool {
        self.received == 0 && self.blocks.iter().all(|b| *b == Block::Missing)
    }
}

/// One peer more (`gained`) or fewer has piece `i`; `held` counts pieces some peer has.
pub(crate) fn count_holder(availability: &mut [u32], held: &mut u32, i: usize, gained: bool) {
    if gained {
        availability[i] += 1;
        if availability[i] == 1 {
            *held += 1;
        }
    } else {
        availability[i] -= 1;
        if availability[i] == 0 {
            *held -= 1;
        }
    }
}

/// Do `p`'s pieces count in `Core::local_availability`: it is behind our switch, not a seed,
/// and not choking us? A seed there (the seeder, say) rations: it refuses pieces others can
/// pass on. A peer that chokes us (a standard client does, ours never) gives us nothing.
/// Neither must keep peers behind other switches from being asked for what they hold.
pub(crate) fn counts_local(p: &PeerState, pieces: usize) -> bool {
    p.local && !p.choked_us && (p.has_count as usize) < pieces
}

/// Adds (or takes away) one holder in `local` for every piece in `has`.
pub(crate) fn count_local(local: &mut [u32], has: &[bool], add: bool) {
    for (c, _) in local.iter_mut().zip(has).filter(|(_, &h)| h) {
        if add {
            *c += 1;
        } else {
            *c -= 1;
        }
    }
}

/// Takes `p`'s pieces out of `local` if they count there: call before `p` changes in a way
/// [`counts_local`] looks at (choke, its pieces replaced, gone), and [`join_local`] after.
pub(crate) fn leave_local(local: &mut [u32], p: &PeerState, pieces: usize) {
    if counts_local(p, pieces) {
        count_local(local, &p.has, false);
    }
}

/// Puts `p`'s pieces into `local` if they count there (see [`leave_local`]).
pub(crate) fn join_local(local: &mut [u32], p: &PeerState, pieces: usize) {
    if counts_local(p, pieces) {
        count_local(local, &p.has, true);
    }
}

impl Core {
    /// Pieces we lack that are neither being assembled nor being verified.
    pub(crate) fn unstarted(&self) -> usize {
        self.have.len() - self.have_count as usize - self.in_progress.len() - self.verifying.len()
    }

    pub(crate) fn piece_len(&self, index: u32) -> usize {
        let vi = self.lengths.validate_piece_index(index).expect("valid");
        self.lengths.piece_length(vi) as usize
    }

    pub(crate) fn new_in_progress(&self, index: u32) -> InProgress {
        let vi = self.lengths.validate_piece_index(index).expect("valid");
        let len = if self.cfg.carry_data {
            self.lengths.piece_length(vi) as usize
        } else {
            0
        };
        InProgress::new(len, self.lengths.chunks_per_piece(vi) as usize)
    }

    /// Forgets that `key` requested a block; it becomes missing if nobody else asked for it.
    /// A single-source piece whose owner gives up a block (reject, choke, timeout, gone)
    /// starts over, so the next peer to ask becomes its owner.
    pub(crate) fn release_block(&mut self, key: u64, index: u32, begin: u32) {
        if self
            .in_progress
            .get(&index)
            .is_some_and(|ip| ip.owner == Some(key))
        {
            self.in_progress.remove(&index);
            return;
        }
        if let Some(ip) = self.in_progress.get_mut(&index) {
            let b = (begin / BLOCK_SIZE) as usize;
            ip.requesters[b].retain(|&k| k != key);
            if ip.blocks[b] == Block::Requested && ip.requesters[b].is_empty() {
                ip.blocks[b] = Block::Missing;
                ip.first_missing = ip.first_missing.min(b);
            }
        }
    }

    /// Marks a piece as present (after verification or a resume check) and tells every peer.
    pub(crate) fn mark_have(&mut self, index: u32) {
        let i = index as usize;
        if self.have[i] {
            return;
        }
        self.have[i] = true;
        self.have_count += 1;
        self.bytes_have += self.piece_len(index) as u64;
        self.servable.verified(index);
        self.in_progress.remove(&index);
        self.single_source.remove(&index);
        let keys: Vec<u64> = self.peers.keys().copied().collect();
        for k in keys {
            let p = self.peers.get_mut(&k).expect("present");
            if p.has[i] {
                p.useful -= 1;
            }
            // The peer's outstanding requests for this piece are pointless now.
            let stale: Vec<(u32, u32)> = p
                .inflight
                .keys()
                .filter(|(pi, _)| *pi == index)
                .copied()
                .collect();
            for (pi, b) in stale {
                p.give_up(pi, b);
            }
            self.out.push_back(Action::Send(k, Msg::Have(index)));
            self.update_interest(k);
        }
    }
}
