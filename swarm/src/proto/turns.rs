//! Turns: a node lets few peers at a time ask it for blocks (BitTorrent's unchoke), each
//! for one piece's worth, round robin, and starts the next turn while little waits for its
//! link. A piece it uploads then goes out at a good share of its link rate, one after
//! another, instead of all at once to every peer that asked (a link shared by 99 requesters
//! of the same new piece gave each of them the piece after 99 pieces' time on the wire, so
//! a new piece spread in seconds instead of in a few piece times). A rationing seeder's
//! turn is for one piece nobody has been sent yet, which it suggests.

use std::time::{Duration, Instant};

use crate::wire::Msg;

use super::peer::Slot;
use super::{Action, Core};

/// Peers a node lets ask it for blocks at once, at most.
pub const TURNS: usize = 4;
/// A turn not used up in this long ends.
pub const TURN_MAX: Duration = Duration::from_secs(1);
/// A node starts another turn while fewer bytes than this wait for its link (twice a
/// piece, at most 1 MiB): enough to keep the link busy while the next peer asks.
pub fn turn_queue(piece_length: u32) -> u64 {
    (2 * piece_length as u64).min(1 << 20)
}

impl Core {
    /// Does the turn policy apply to `key`? To peers with the Fast extension (a choke
    /// leaves their requests for us to serve or refuse).
    pub(crate) fn slotted(&self, key: u64) -> bool {
        self.peers.get(&key).is_some_and(|p| p.fast)
    }

    /// A rationing seeder: a turn is for one piece nobody was sent yet.
    fn rationing_seed(&self) -> bool {
        self.cfg.prefer_unsent && self.is_complete()
    }

    /// Refuse `key`'s request for `index` for want of a turn? A seeder's peer is always
    /// served the piece it was given, and in a turn only that piece.
    pub(crate) fn out_of_turn(&self, key: u64, index: u32) -> bool {
        if !self.slotted(key) {
            return false;
        }
        let seed = self.rationing_seed();
        if seed && self.assigned[index as usize] == Some(key) {
            return false;
        }
        let Some(p) = self.peers.get(&key) else {
            return false;
        };
        match p.slot {
            None => true,
            Some(s) => seed && s.piece.is_some_and(|j| j != index),
        }
    }

    /// `key` was served a block of `index`: a turn ends after a piece's worth of blocks
    /// (a seeder's: once every block of the turn's piece is on its way).
    pub(crate) fn slot_served(&mut self, now: Instant, key: u64, index: u32) {
        let seed = self.rationing_seed();
        let blocks = self.piece_blocks(index);
        let Some(s) = self.peers.get_mut(&key).and_then(|p| p.slot.as_mut()) else {
            return;
        };
        if !seed || *s.piece.get_or_insert(index) == index {
            s.served += 1;
        }
        if s.served >= blocks {
            self.end_slot(key, false);
            self.fill_slots(now);
        }
    }

    fn piece_blocks(&self, index: u32) -> u32 {
        let vi = self.lengths.validate_piece_index(index).expect("valid");
        self.lengths.chunks_per_piece(vi)
    }

    /// Chokes `key` and ends its turn. `give_back` (a seeder): a piece given to it that it
    /// has not been sent in full goes back to the pool.
    pub(crate) fn end_slot(&mut self, key: u64, give_back: bool) {
        let seed = self.rationing_seed();
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        if p.slot.take().is_none() {
            return;
        }
        p.choked = true;
        self.out.push_back(Action::Send(key, Msg::Choke));
        if give_back && seed {
            for (a, &has) in self.assigned.iter_mut().zip(&p.has) {
                if *a == Some(key) && !has {
                    *a = None;
                    self.unassigned += 1;
                }
            }
        }
    }

    /// Suggests to `key` a piece nobody has been sent yet, reserved for it; a peer in its
    /// turn only if the turn has no piece yet (the suggested one becomes it).
    pub(crate) fn suggest_unsent(&mut self, key: u64) {
        if self.slotted(key)
            && self
                .peers
                .get(&key)
                .is_none_or(|p| p.slot.is_none_or(|s| s.piece.is_some()))
        {
            return;
        }
        if let Some(j) = self.next_unassigned(key) {
            if let Some(s) = self.peers.get_mut(&key).and_then(|p| p.slot.as_mut()) {
                s.piece = Some(j);
            }
            self.out.push_back(Action::Send(key, Msg::Suggest(j)));
        }
    }

    /// Turns past [`TURN_MAX`] end (every tick).
    pub(crate) fn expire_slots(&mut self, now: Instant) {
        let mut old: Vec<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.slot
                    .is_some_and(|s| now.saturating_duration_since(s.since) >= TURN_MAX)
            })
            .map(|(&k, _)| k)
            .collect();
        old.sort_unstable();
        for k in old {
            self.end_slot(k, true);
        }
        self.fill_slots(now);
    }

    /// Starts turns of interested, choked peers, round robin by key, up to [`TURNS`],
    /// while little waits for our link (what the driver last reported, plus the blocks
    /// served since). A seeder suggests each a piece nobody has been sent yet (reserved
    /// for it), then unchokes it.
    pub(crate) fn fill_slots(&mut self, now: Instant) {
        let seed = self.rationing_seed();
        let low = turn_queue(self.lengths.default_piece_length());
        loop {
            let taken = self.peers.values().filter(|p| p.slot.is_some()).count();
            if taken >= TURNS || self.upload_queued >= low {
                return;
            }
            let cursor = self.slot_cursor;
            let Some(k) = self
                .peers
                .iter()
                .filter(|(_, p)| p.fast && p.choked && p.interested)
                .map(|(&k, _)| k)
                .min_by_key(|&k| (k <= cursor, k))
            else {
                return;
            };
            let p = self.peers.get_mut(&k).expect("present");
            p.choked = false;
            p.slot = Some(Slot {
                since: now,
                piece: None,
                served: 0,
            });
            self.slot_cursor = k;
            if seed {
                self.suggest_unsent(k);
            }
            self.out.push_back(Action::Send(k, Msg::Unchoke));
        }
    }
}
