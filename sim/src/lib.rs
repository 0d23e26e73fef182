//! A deterministic simulator of a blockswarm room: many nodes in one process, each the real
//! policy core ([`blockswarm_swarm::proto::Core`]), on modelled links ([`net`]) behind edge
//! switches joined by uplinks, on a virtual clock, with seeded randomness so that a run
//! replays exactly. Blocks carry their lengths, not their bytes.
//!
//! What is modelled: link rates and latency each way, header and ACK bytes, a tracker that
//! lists every live peer (as ours does), receivers starting within `start_spread`, slow
//! links, machines killed mid-way (their peers see the connections reset), peers that send
//! corrupt blocks. What is not: TCP's congestion control and fairness between flows (a
//! host's uplink is one FIFO), CPU and disk time (hashing takes `hash_rate`).

#![forbid(unsafe_code)]

pub mod net;
mod run;
mod topology;

pub use run::{run, Report};
pub use topology::Params;

use std::time::Duration;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("parameters: {0}")]
    Params(String),
}

/// Nanoseconds of virtual time.
pub type Ns = u64;

pub(crate) fn ns(d: Duration) -> Ns {
    d.as_nanos() as Ns
}
