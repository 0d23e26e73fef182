//! Asking a second peer for a block: one stalled at its first peer (asked more than
//! [`STALL_AFTER`](super::STALL_AFTER) ago), and, once every piece we lack is started, the
//! last blocks others are fetching (end game). At most two requesters per block; the block
//! that arrives first cancels the other request.

use std::time::Instant;

use crate::wire::BLOCK_SIZE;

use super::pieces::Block;
use super::Core;

impl Core {
    /// A block stalled at another peer that `key` can be asked for: (piece, block number).
    /// Entries that no longer need help are dropped from the list on the way.
    pub(crate) fn stalled_block(&mut self, now: Instant, key: u64) -> Option<(u32, usize)> {
        let p = self.peers.get(&key)?;
        let mut k = 0;
        while k < self.stalled.len() {
            let (index, begin) = self.stalled[k];
            let b = (begin / BLOCK_SIZE) as usize;
            let Some(ip) = self.in_progress.get(&index) else {
                self.stalled.swap_remove(k);
                continue;
            };
            if ip.blocks[b] != Block::Requested || ip.requesters[b].len() >= 2 {
                self.stalled.swap_remove(k);
                continue;
            }
            if p.has[index as usize]
                && !p.refused(index, now)
                && ip.open_to(key)
                && !ip.requesters[b].contains(&key)
            {
                self.stalled.swap_remove(k);
                return Some((index, b));
            }
            k += 1;
        }
        None
    }

    /// End game: a block another peer is fetching that `key` can fetch too.
    pub(crate) fn end_game_block(&self, now: Instant, key: u64) -> Option<(u32, usize)> {
        let p = self.peers.get(&key)?;
        for (&index, ip) in self.in_progress.iter() {
            if !p.has[index as usize] || p.refused(index, now) || !ip.open_to(key) {
                continue;
            }
            for b in 0..ip.blocks.len() {
                if ip.blocks[b] == Block::Requested
                    && ip.requesters[b].len() < 2
                    && !ip.requesters[b].contains(&key)
                {
                    return Some((index, b));
                }
            }
        }
        None
    }
}
