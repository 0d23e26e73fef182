//! Modelled links. Every direction of a host's link and of an edge switch's uplink is a
//! serializer with a rate and a propagation latency; a packet crosses the hops of its path
//! one after another (store and forward, per message). Control messages go ahead of
//! blocks, as a connection's writer sends them first: they are not queued, their bytes are
//! charged to the hop's next block. Bytes on the wire include
//! Ethernet/IP/TCP headers, as `tc` counts them, and the receiver's ACKs.

use std::collections::VecDeque;

/// TCP payload per full segment at MTU 1500 with timestamps.
pub const MSS: u64 = 1448;
/// Ethernet + IP + TCP (timestamps) header bytes per segment.
pub const SEGMENT_OVERHEAD: u64 = 66;

/// Bytes `tc` sees for `payload` bytes of one TCP stream.
pub fn on_wire(payload: u64) -> u64 {
    payload + payload.div_ceil(MSS) * SEGMENT_OVERHEAD
}

/// Bytes of the ACKs for `payload` bytes received (one per two segments).
pub fn acks_for(payload: u64) -> u64 {
    payload.div_ceil(2 * MSS) * SEGMENT_OVERHEAD
}

/// One direction of one link.
pub struct Hop {
    /// Bytes per second.
    pub rate: f64,
    /// Propagation, nanoseconds.
    pub latency_ns: u64,
    pub busy: bool,
    /// The packet being sent.
    pub serving: Option<u64>,
    pub data: VecDeque<u64>,
    /// Control and ACK bytes not yet paid for in time: the next block waits for them.
    pub debt: u64,
    /// Bytes sent over it so far.
    pub bytes: u64,
    /// Counted in the uplink figure (a switch uplink).
    pub uplink: bool,
}

impl Hop {
    pub fn new(rate_bytes: f64, latency_ns: u64, uplink: bool) -> Self {
        Hop {
            rate: rate_bytes,
            latency_ns,
            busy: false,
            serving: None,
            debt: 0,
            data: VecDeque::new(),
            bytes: 0,
            uplink,
        }
    }

    /// Nanoseconds to serialize `bytes`.
    pub fn time_ns(&self, bytes: u64) -> u64 {
        ((bytes as f64 / self.rate) * 1e9).ceil() as u64
    }

    /// The next packet to send.
    pub fn take_next(&mut self) -> Option<u64> {
        self.data.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_bytes_count_headers_and_acks() {
        assert_eq!(on_wire(0), 0);
        assert_eq!(on_wire(1448), 1514);
        // A 16 KiB block and its 13-byte header: 12 segments.
        assert_eq!(on_wire(16384 + 13), 16397 + 12 * 66);
        assert_eq!(acks_for(16397), 6 * 66);
        let h = Hop::new(12.5e6, 0, false);
        assert_eq!(h.time_ns(12_500_000), 1_000_000_000);
    }
}
