//! A seeder's rationing, so that it uploads close to one copy in total: each piece is
//! assigned to the first peer that asks for it; another Fast-extension peer asking for the
//! same piece is refused while that peer can pass it on, and is suggested a piece nobody
//! has been sent yet. Second copies are served once the upload queue runs dry, or to a peer
//! that keeps asking past the refusal window (the holder may not be sharing).

use std::time::Instant;

use tracing::debug;

use super::{Core, HELD_REJECT_WINDOW, REJECT_WINDOW};

impl Core {
    /// Should `key`'s request for `index` be refused because the piece went to another
    /// connected peer, which can pass it on? Refused for [`REJECT_WINDOW`] while the piece
    /// is on its way to that peer, for [`HELD_REJECT_WINDOW`] once some peer has it; after
    /// that the asker is served. `idle`: our upload queue ran dry with every piece held.
    pub(crate) fn refuse(&mut self, now: Instant, key: u64, index: u32, idle: bool) -> bool {
        let i = index as usize;
        match self.assigned[i] {
            Some(k) if k == key => false,
            Some(_) if idle => {
                debug!(piece = index, "serving a piece a second time: upload idle");
                false
            }
            Some(k) if self.peers.contains_key(&k) || self.availability[i] > 0 => {
                let e = self.refusing.entry((key, index)).or_insert((now, now));
                // A peer that stopped asking for a while and asks again starts a new streak.
                if now.saturating_duration_since(e.1) > 2 * REJECT_WINDOW {
                    e.0 = now;
                }
                e.1 = now;
                let since = e.0;
                let window = if self.availability[i] > 0 {
                    HELD_REJECT_WINDOW
                } else {
                    REJECT_WINDOW
                };
                let refuse = now.saturating_duration_since(since) < window;
                if !refuse {
                    debug!(
                        piece = index,
                        assignee_has = self.peers.get(&k).is_some_and(|p| p.has[i]),
                        "serving a piece a second time: asked for it too long"
                    );
                }
                refuse
            }
            // Not yet sent, or its peer left without passing it on.
            _ => {
                if self.assigned[i].is_none() {
                    self.unassigned -= 1;
                }
                self.assigned[i] = Some(key);
                false
            }
        }
    }

    /// The next piece not yet sent to anyone that `key` lacks, now reserved for `key` (as
    /// if it had asked for it first).
    pub(crate) fn next_unassigned(&mut self, key: u64) -> Option<u32> {
        let n = self.assigned.len();
        let p = self.peers.get(&key)?;
        if self.unassigned == 0 {
            return None;
        }
        for k in 0..n {
            let j = (self.suggest_cursor + k) % n;
            if self.assigned[j].is_none() && !p.has[j] {
                self.suggest_cursor = (j + 1) % n;
                self.assigned[j] = Some(key);
                self.unassigned -= 1;
                return Some(j as u32);
            }
        }
        None
    }

    /// Seeder start-up: fewer pieces held by peers than twice the number of peers, and some
    /// not sent to anyone. Meanwhile connections take turns to send one batch each (see the
    /// driver's writer), so the first pieces arrive after a piece's time on the wire instead
    /// of all of them after N times.
    pub fn ramping(&self) -> bool {
        (self.held as usize) < 2 * self.peers.len() && self.unassigned > 0
    }
}
