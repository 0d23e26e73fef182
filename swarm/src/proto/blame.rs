//! Misbehaviour: who sent a piece that failed its hash, and bans (a banned peer is cut off,
//! its address and peer id refused for the session, the blocks it sent forgotten).

use std::collections::HashSet;

use tracing::{debug, warn};

use super::peer::client_name;
use super::pieces::{Block, NOBODY};
use super::{Action, Core};

impl Core {
    /// Peers that sent data for a piece that failed its hash. A sole sender is banned. With
    /// several senders nobody is blamed on a guess: if one of them is already banned, that
    /// was the culprit; otherwise the piece is fetched again from a single peer, so that a
    /// second failure names the culprit for sure.
    pub(crate) fn punish(&mut self, index: u32, contributors: &HashSet<u64>) {
        if contributors.iter().any(|k| self.banned_keys.contains(k)) {
            return;
        }
        if contributors.len() == 1 {
            let k = *contributors.iter().next().expect("one");
            self.ban(k, "sent corrupt data");
        } else {
            debug!(
                piece = index,
                senders = contributors.len(),
                "refetching from one peer"
            );
            self.single_source.insert(index);
        }
    }

    /// Drops and bans a peer for the session, and forgets the blocks it sent for pieces not
    /// yet complete (they would only fail their hash later).
    pub(crate) fn ban(&mut self, key: u64, why: &str) {
        let Some(p) = self.peers.get(&key) else {
            return;
        };
        warn!(peer = %p.addr, client = %client_name(&p.peer_id), "banning peer that {why}");
        self.out.push_back(Action::Disconnect(key));
        self.banned.insert(p.addr.ip());
        self.banned_ids.insert(p.peer_id);
        self.banned_keys.insert(key);
        self.remove_peer(key);
        for ip in self.in_progress.values_mut() {
            for b in 0..ip.blocks.len() {
                if ip.from[b] == key {
                    ip.from[b] = NOBODY;
                    ip.blocks[b] = Block::Missing;
                    ip.received -= 1;
                    ip.first_missing = ip.first_missing.min(b);
                }
            }
        }
        self.out.push_back(Action::Changed);
    }
}
