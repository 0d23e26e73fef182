//! How many requests each peer gets: enough blocks in flight for about
//! `request_queue_time` of its measured rate (within bounds), topped up after every event;
//! and, every tick, requests that stalled (asked elsewhere too) or timed out (released).

use std::time::Instant;

use tracing::debug;

use crate::wire::{Msg, Req};

use super::peer::PeerState;
use super::{Action, Core, STALL_AFTER, TICK};

impl Core {
    /// Asks `key` for blocks until its pipeline is full or nothing is left to ask it for.
    pub(crate) fn fill_requests(&mut self, now: Instant, key: u64) {
        // Only a rationing seed's requests need the number of seeds (see `pick_block`).
        let n = self.have.len() as u32;
        let seeds = match self.peers.get(&key) {
            Some(p) if p.is_rationing(now) => {
                self.peers.values().filter(|p| p.has_count == n).count() as u32
            }
            _ => 0,
        };
        loop {
            let Some(p) = self.peers.get(&key) else {
                return;
            };
            let cfg = &self.cfg;
            if p.choked_us
                || p.useful == 0
                || p.inflight.len() >= p.rate.pipeline(cfg.request_queue_time, cfg.pipeline_blocks)
            {
                return;
            }
            let Some((index, begin, length)) = self.pick_block(now, key, seeds) else {
                return;
            };
            let p = self.peers.get_mut(&key).expect("present");
            p.inflight.insert((index, begin), now);
            let r = Req {
                index,
                begin,
                length,
            };
            self.out.push_back(Action::Send(key, Msg::Request(r)));
        }
    }

    /// The periodic tick: stalled requests are noted (another peer may be asked), timed-out
    /// ones released, every peer's pipeline topped up, known addresses redialed.
    pub(crate) fn on_tick(&mut self, now: Instant, uploaded: u64) {
        self.next_tick = Some(now + TICK);
        self.upload_order.tick(now, uploaded);
        self.release_uploads();
        if tracing::enabled!(tracing::Level::DEBUG) {
            self.debug_tick(uploaded);
        }
        let timeout = self.cfg.request_timeout;
        let mut keys = self.peer_keys();
        keys.sort_unstable();
        let mut stalled: Vec<(u32, u32)> = self
            .peers
            .values()
            .flat_map(|p| p.inflight.iter())
            .filter(|(_, &t)| now.saturating_duration_since(t) > STALL_AFTER)
            .map(|(k, _)| *k)
            .collect();
        stalled.sort_unstable();
        self.stalled = stalled;
        for k in &keys {
            let p = self.peers.get_mut(k).expect("present");
            let expired: Vec<(u32, u32)> = p
                .inflight
                .iter()
                .filter(|(_, &t)| now.saturating_duration_since(t) > timeout)
                .map(|(k, _)| *k)
                .collect();
            for &(i, b) in &expired {
                p.give_up(i, b);
            }
            for (i, b) in expired {
                self.release_block(*k, i, b);
            }
        }
        for k in keys {
            self.fill_requests(now, k);
        }
        self.dial_known(now);
    }

    /// Every tick at debug level: what the seeder sent, or where a receiver stands (how the
    /// bench's profiles were read).
    fn debug_tick(&mut self, uploaded: u64) {
        if self.is_complete() {
            let (up0, rej0) = self.last_tick;
            debug!(
                uploaded_kib = uploaded.saturating_sub(up0) / 1024,
                rejects = self.rejects_sent - rej0,
                peers = self.peers.len(),
                "tick: serving"
            );
            self.last_tick = (uploaded, self.rejects_sent);
            return;
        }
        let useful: Vec<&PeerState> = self.peers.values().filter(|p| p.useful > 0).collect();
        debug!(
            have = self.have_count,
            in_progress = self.in_progress.len(),
            verifying = self.verifying.len(),
            inflight = useful.iter().map(|p| p.inflight.len()).sum::<usize>(),
            useful_peers = useful.len(),
            idle_useful = useful.iter().filter(|p| p.inflight.is_empty()).count(),
            choked = useful.iter().filter(|p| p.choked_us).count(),
            pipes_blocks_kibps = ?useful
                .iter()
                .map(|p| (p.inflight.len(), p.rate.rate.unwrap_or(0.0) as u64 / 1024))
                .collect::<Vec<_>>(),
            "tick: fetching"
        );
    }
}
