//! A seeder's rationing, so that it uploads close to one copy in total: each piece is
//! assigned to the first peer that asks for it; another Fast-extension peer asking for the
//! same piece is refused while that peer can pass it on, and is suggested a piece nobody
//! has been sent yet. Second copies are served once the upload queue runs dry, or to a peer
//! that keeps asking past the refusal window (the holder may not be sharing).

use std::time::{Duration, Instant};

use tracing::debug;

use super::{Core, HELD_REJECT_WINDOW, REJECT_WINDOW};

/// The longest a piece counts as waiting in our upload queue for its first peer.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(20);

impl Core {
    /// Should `key`'s request for `index` be refused because the piece went to another
    /// connected peer, which can pass it on? Refused for `on_way` (see
    /// [`Core::on_way_window`]) while the piece is on its way to that peer, for
    /// [`HELD_REJECT_WINDOW`] once some peer has it; after that the asker is served. `idle`:
    /// our upload queue ran dry with every piece held.
    pub(crate) fn refuse(
        &mut self,
        now: Instant,
        key: u64,
        index: u32,
        idle: bool,
        on_way: Duration,
    ) -> bool {
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
                    on_way
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

    /// How long a piece served to its first peer counts as on its way there: [`REJECT_WINDOW`]
    /// after our upload queue's `upload_queued` bytes have gone out at our measured upload
    /// rate. A seeder serving 128 peers queues seconds of blocks: with a fixed 2 s, pieces
    /// still queued for their first peer were served to others again (the simulator, N = 300
    /// on 25 switches: 14 MB of 100 sent twice so). At most [`MAX_QUEUE_WAIT`] more: a peer
    /// that asks for pieces and does not take them holds nobody up for long.
    pub(crate) fn on_way_window(&self, upload_queued: u64) -> Duration {
        let wait = match self.upload_rate {
            Some(r) if r > 0.0 => (upload_queued as f64 / r).min(MAX_QUEUE_WAIT.as_secs_f64()),
            _ => 0.0,
        };
        REJECT_WINDOW + Duration::from_secs_f64(wait)
    }

    /// Measures our upload rate from each tick's byte count (windows of 200 ms or more,
    /// averaged with the last).
    pub(crate) fn meter_upload(&mut self, now: Instant, uploaded: u64) {
        let Some((t, b)) = self.last_upload else {
            self.last_upload = Some((now, uploaded));
            return;
        };
        let dt = now.saturating_duration_since(t).as_secs_f64();
        if dt < 0.2 {
            return;
        }
        let sample = uploaded.saturating_sub(b) as f64 / dt;
        self.upload_rate = Some(match self.upload_rate {
            Some(r) => 0.5 * r + 0.5 * sample,
            None => sample,
        });
        self.last_upload = Some((now, uploaded));
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
