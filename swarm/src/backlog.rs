//! Bounds on what one connection may have queued for its writer: requests to serve and
//! control messages not yet written. A peer that floods REQUESTs and never reads would
//! otherwise grow our queues without limit (one such connection took a seeder to 909 MB).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::wire::{self, Msg, MAX_REQUEST};

/// Requests from one peer queued to be served at most; beyond it a request is refused
/// (Fast REJECT, or dropped without the Fast extension). Twice the largest pipeline our
/// receivers ask for (`SwarmOptions::pipeline_blocks` = 64 blocks), so an honest peer
/// never meets it.
pub const MAX_QUEUED_REQUESTS: usize = 2 * 64;

/// Encoded control messages (HAVE, REJECT, REQUEST, ...) queued for one connection at
/// most; a peer this far behind in reading is disconnected. 1 MiB is some 60,000 REJECTs,
/// far more than a peer that reads at all leaves unread.
pub const MAX_PENDING_CONTROL_BYTES: u64 = 1 << 20;

/// Most block bytes queued for one connection: every queued request at its largest size.
pub const MAX_PENDING_BLOCK_BYTES: u64 = MAX_QUEUED_REQUESTS as u64 * MAX_REQUEST as u64;

/// What one connection's writer still has to do, counted by the reader that queues it.
#[derive(Debug, Default)]
pub struct Backlog {
    requests: AtomicUsize,
    control_bytes: AtomicU64,
}

impl Backlog {
    /// One more request to serve, unless [`MAX_QUEUED_REQUESTS`] are queued already.
    pub fn try_queue_request(&self) -> bool {
        self.requests
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < MAX_QUEUED_REQUESTS).then_some(n + 1)
            })
            .is_ok()
    }

    /// `n` queued requests were served or cancelled.
    pub fn requests_done(&self, n: usize) {
        self.requests.fetch_sub(n, Ordering::Relaxed);
    }

    /// Requests queued now.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts `m` as queued; false if that takes the connection past
    /// [`MAX_PENDING_CONTROL_BYTES`] (the caller disconnects the peer).
    pub fn queue_msg(&self, m: &Msg) -> bool {
        let n = encoded_len(m);
        self.control_bytes.fetch_add(n, Ordering::Relaxed) + n <= MAX_PENDING_CONTROL_BYTES
    }

    /// An encoded message of `n` bytes left the queue.
    pub fn msg_done(&self, n: usize) {
        self.control_bytes.fetch_sub(n as u64, Ordering::Relaxed);
    }
}

/// Bytes of `m` on the wire.
pub fn encoded_len(m: &Msg) -> u64 {
    let mut b = Vec::new();
    wire::encode(m, &mut b);
    b.len() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Req;

    #[test]
    fn requests_are_capped_and_freed() {
        let b = Backlog::default();
        for _ in 0..MAX_QUEUED_REQUESTS {
            assert!(b.try_queue_request());
        }
        assert!(!b.try_queue_request());
        b.requests_done(1);
        assert!(b.try_queue_request());
        assert_eq!(b.requests(), MAX_QUEUED_REQUESTS);
    }

    #[test]
    fn unread_control_messages_are_bounded() {
        let b = Backlog::default();
        let m = Msg::Reject(Req {
            index: 1,
            begin: 0,
            length: 16384,
        });
        let per = encoded_len(&m);
        let fits = MAX_PENDING_CONTROL_BYTES / per;
        for _ in 0..fits {
            assert!(b.queue_msg(&m));
        }
        assert!(!b.queue_msg(&m));
        b.msg_done(2 * per as usize);
        assert!(b.queue_msg(&m));
    }
}
