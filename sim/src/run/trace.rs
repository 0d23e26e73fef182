//! A diagnostic trace (`SIM_TRACE=MS`): every MS milliseconds of virtual time, one line on
//! stderr of how busy the links were and how far the swarm got. Off by default; it changes
//! nothing in the run.

use std::collections::HashMap;

use super::{Ev, Sim};
use crate::topology::Role;
use crate::Ns;

/// What the trace remembers between lines.
#[derive(Default)]
pub(crate) struct Trace {
    pub(crate) every: Ns,
    /// Per node: its uplink's and downlink's bytes at the last line.
    last: Vec<(u64, u64)>,
    /// Seeder block bytes sent of each (piece, begin) so far, and the first/repeat totals.
    pub(crate) sent: HashMap<(u32, u32), u32>,
    pub(crate) first_bytes: u64,
    pub(crate) repeat_bytes: u64,
    last_first: u64,
    last_repeat: u64,
}

impl Trace {
    pub(crate) fn from_env() -> Trace {
        let every = std::env::var("SIM_TRACE")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Trace {
            every: every * 1_000_000,
            ..Trace::default()
        }
    }
}

impl Sim {
    /// Counts a block the seeder sends (first copy or repeat).
    pub(super) fn trace_seeder_block(&mut self, index: u32, begin: u32, len: u64) {
        if self.trace.every == 0 {
            return;
        }
        let c = self.trace.sent.entry((index, begin)).or_insert(0);
        *c += 1;
        if *c == 1 {
            self.trace.first_bytes += len;
        } else {
            self.trace.repeat_bytes += len;
        }
    }

    pub(super) fn trace_line(&mut self) {
        let dt = self.trace.every;
        if self.trace.last.len() != self.nodes.len() {
            self.trace.last = vec![(0, 0); self.nodes.len()];
        }
        let cap = |s: &Sim, h: usize| s.hops[h].rate * dt as f64 / 1e9;
        let mut up_util = Vec::new();
        let mut down_util = Vec::new();
        let mut seeder_util = 0.0;
        let mut done = 0;
        let mut have_sum = 0u64;
        let mut have_min = u32::MAX;
        let n = self.lengths.total_pieces() as usize;
        let mut copies = vec![0u32; n];
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            let (u, d) = (self.hops[node.up].bytes, self.hops[node.down].bytes);
            let (lu, ld) = self.trace.last[i];
            let uu = (u - lu) as f64 / cap(self, node.up);
            let du = (d - ld) as f64 / cap(self, node.down);
            self.trace.last[i] = (u, d);
            match node.role {
                Role::Seeder => seeder_util += uu,
                Role::Receiver if node.alive => {
                    if node.done_at.is_some() {
                        done += 1;
                    }
                    up_util.push(uu);
                    down_util.push(du);
                    let bits = node.core.have_bits();
                    let h = bits.iter().filter(|&&b| b).count() as u32;
                    have_sum += h as u64;
                    have_min = have_min.min(h);
                    for (c, &b) in copies.iter_mut().zip(bits) {
                        *c += b as u32;
                    }
                }
                _ => {}
            }
        }
        let r = up_util.len().max(1) as f64;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / r;
        let idle = up_util.iter().filter(|&&u| u < 0.5).count();
        let rare = copies.iter().filter(|&&c| c == 0).count();
        let one = copies.iter().filter(|&&c| c == 1).count();
        let (f, rep) = (self.trace.first_bytes, self.trace.repeat_bytes);
        let mb = |b: u64| b as f64 / 1e6;
        eprintln!(
            "t={:.2}s seeder_up={:.2} rx_up={:.2} rx_down={:.2} up<50%={} done={} have_mean={:.1}/{} have_min={} pieces_nowhere={} pieces_1copy={} seeder_first={:.1}MB(+{:.1}) repeat={:.1}MB(+{:.1})",
            self.now as f64 / 1e9,
            seeder_util,
            mean(&up_util),
            mean(&down_util),
            idle,
            done,
            have_sum as f64 / r,
            n,
            if have_min == u32::MAX { 0 } else { have_min },
            rare,
            one,
            mb(f),
            mb(f - self.trace.last_first),
            mb(rep),
            mb(rep - self.trace.last_repeat),
        );
        self.trace.last_first = f;
        self.trace.last_repeat = rep;
        self.at(self.now + dt, Ev::TraceLine);
    }
}
