//! Which piece and block to ask a peer for next: blocks stalled elsewhere first, then
//! pieces already in progress, then a new piece (a suggested one, else rarest first from
//! this node's random start point), then the end game.

use std::time::Instant;

use crate::wire::BLOCK_SIZE;

use super::pieces::Block;
use super::Core;

impl Core {
    /// With `spare = Some(seeds)` (asking a rationing seed), is piece `i` held by some peer
    /// that is not a seed, so that the seed should not be asked for it?
    fn spared(&self, spare: Option<u32>, i: u32) -> bool {
        spare.is_some_and(|seeds| self.availability[i as usize] > seeds)
    }

    /// Is `key` a peer behind another switch, and piece `i` one a local peer has? Then it
    /// is not asked for it (outside stalls and the end game): the local peer is.
    fn far(&self, local: bool, i: u32) -> bool {
        !local && self.local_availability[i as usize] > 0
    }

    /// Chooses a new piece for `key` to start: rarest first, ties broken by distance from
    /// this node's random start point.
    pub(crate) fn pick_new_piece(&self, now: Instant, key: u64, spare: Option<u32>) -> Option<u32> {
        let p = self.peers.get(&key)?;
        let n = self.have.len() as u32;
        let mut best: Option<(u32, u32)> = None;
        for k in 0..n {
            let i = (self.cursor + k) % n;
            let iu = i as usize;
            if !p.has[iu]
                || self.have[iu]
                || self.in_progress.contains_key(&i)
                || self.verifying.contains_key(&i)
                || p.refused(i, now)
                || self.spared(spare, i)
                || self.far(p.local, i)
            {
                continue;
            }
            let a = self.availability[iu];
            if best.is_none_or(|(ba, _)| a < ba) {
                best = Some((a, i));
                if a <= 1 {
                    break;
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// The first piece `key` suggested that we can still start.
    fn take_suggested(&mut self, now: Instant, key: u64) -> Option<u32> {
        let p = self.peers.get_mut(&key)?;
        while let Some(i) = p.suggested.pop_front() {
            let iu = i as usize;
            if !self.have[iu]
                && !self.in_progress.contains_key(&i)
                && !self.verifying.contains_key(&i)
                && !p.refused(i, now)
            {
                return Some(i);
            }
        }
        None
    }

    /// Next block for `key` to request, marked requested: (piece, begin, length). `seeds`:
    /// connected peers that have every piece.
    ///
    /// Outside the end game a rationing seed (the seeder) is not asked for a piece that a
    /// peer which is not a seed also has: that piece can come from the swarm, and the seeder
    /// would only refuse it (its link is for pieces nobody else has yet). Receivers that
    /// completed are asked for anything: at the end they carry the swarm.
    pub(crate) fn pick_block(
        &mut self,
        now: Instant,
        key: u64,
        seeds: u32,
    ) -> Option<(u32, u32, u32)> {
        let p = self.peers.get(&key)?;
        let spare = (p.is_rationing(now) && self.unstarted() > 0).then_some(seeds);
        // 0. Blocks stalled at another peer.
        let mut found = self.stalled_block(now, key);
        // 1. Finish pieces already in progress.
        if found.is_none() {
            let p = self.peers.get(&key)?;
            for (&index, ip) in self.in_progress.iter() {
                if !p.has[index as usize]
                    || p.refused(index, now)
                    || !ip.open_to(key)
                    || self.spared(spare, index)
                    || self.far(p.local, index)
                {
                    continue;
                }
                if let Some(b) =
                    (ip.first_missing..ip.blocks.len()).find(|&b| ip.blocks[b] == Block::Missing)
                {
                    found = Some((index, b));
                    break;
                }
            }
        }
        // 2. Start a new piece.
        // Pieces waiting to be hashed and written count too: with a disk slower than the
        // network they would pile up in memory otherwise.
        if found.is_none()
            && self.in_progress.len() + self.verifying.len() < self.cfg.max_pieces_in_progress
        {
            let suggested = self.take_suggested(now, key);
            if let Some(index) = suggested.or_else(|| self.pick_new_piece(now, key, spare)) {
                if self.availability[index as usize] <= 1 {
                    self.cursor = (index + 1) % self.have.len() as u32;
                }
                let mut ip = self.new_in_progress(index);
                if self.single_source.contains(&index) {
                    ip.owner = Some(key);
                }
                self.in_progress.insert(index, ip);
                found = Some((index, 0));
            }
        }
        // 3. End game.
        if found.is_none() && self.unstarted() == 0 {
            found = self.end_game_block(now, key);
        }
        let (index, b) = found?;
        let vi = self.lengths.validate_piece_index(index).expect("valid");
        let size = self.lengths.chunk_size(vi, b as u32).expect("valid block");
        let ip = self.in_progress.get_mut(&index).expect("in progress");
        ip.blocks[b] = Block::Requested;
        ip.requesters[b].push(key);
        if ip.first_missing == b {
            ip.first_missing = b + 1;
        }
        Some((index, b as u32 * BLOCK_SIZE, size))
    }
}
