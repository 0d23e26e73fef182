//! When a receiver gives up its download: no piece verified for `--stall-timeout` while no
//! connected peer is sending any of the pieces we lack (the seeder is gone for good, or it
//! refuses what it cannot read, and no other receiver has those pieces). Pure: the main
//! loop feeds [`StallWatch::check`] the swarm's figures a few times a second.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blockswarm_swarm::PeerStats;

/// `--stall-timeout` unless set: far longer than any wait inside the swarm (a refused piece
/// is asked again within 10 s, a lost request within 20 s), short enough that a room does
/// not wait all night on a dead seeder.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Missing pieces named in the give-up message at most (the count is always given).
pub const MAX_NAMED_PIECES: usize = 8;

/// Peer addresses named in the give-up message at most, per list.
pub const MAX_NAMED_PEERS: usize = 8;

/// Watches for a download that makes no progress.
#[derive(Debug)]
pub struct StallWatch {
    timeout: Duration,
    have: u32,
    since: Instant,
}

impl StallWatch {
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self {
            timeout,
            have: 0,
            since: now,
        }
    }

    /// `contact`: the tracker answered or some peer connected at least once (before that,
    /// an unreachable seeder is reported by `--retry-for`, not here); `have`: pieces
    /// verified so far. Returns for how long nothing was verified when the download is to
    /// be given up.
    pub fn check(
        &mut self,
        now: Instant,
        contact: bool,
        have: u32,
        peers: &[PeerStats],
    ) -> Option<Duration> {
        if !contact || have != self.have {
            self.have = have;
            self.since = now;
            return None;
        }
        let stalled = now.duration_since(self.since);
        (stalled >= self.timeout && !feeding(peers, self.timeout)).then_some(stalled)
    }
}

/// Some connected peer has a piece we lack and sent us a block within `window`: the
/// download still moves, however slowly.
pub fn feeding(peers: &[PeerStats], window: Duration) -> bool {
    peers
        .iter()
        .any(|p| p.useful > 0 && p.since_block.is_some_and(|d| d < window))
}

/// What a give-up message reports.
pub struct GiveUp<'a> {
    pub stalled: Duration,
    /// Pieces we lack, in order.
    pub missing: &'a [u32],
    pub total: u32,
    pub tracker: Option<&'a str>,
    /// Peer addresses dialed (from the tracker or `--peer`).
    pub known: &'a [SocketAddr],
    /// Peers connected now.
    pub connected: &'a [PeerStats],
}

fn list<T: std::fmt::Display>(items: impl ExactSizeIterator<Item = T>, max: usize) -> String {
    let n = items.len();
    let mut s: Vec<String> = items.take(max).map(|i| i.to_string()).collect();
    if n > max {
        s.push(format!("and {} more", n - max));
    }
    if s.is_empty() {
        "none".into()
    } else {
        s.join(", ")
    }
}

impl std::fmt::Display for GiveUp<'_> {
    /// One line: how long, which pieces, who was tried and where they stand.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let connected = self.connected.iter().map(|p| {
            if p.useful > 0 {
                format!("{} (has {} of them, sends none)", p.addr, p.useful)
            } else {
                format!("{} (has none of them)", p.addr)
            }
        });
        write!(
            f,
            "download gave up: no piece verified for {:.0} s and no peer sends any of the {} \
             missing pieces of {} ({}); tried tracker {}, peers {}; connected now: {}",
            self.stalled.as_secs_f64(),
            self.missing.len(),
            self.total,
            list(self.missing.iter(), MAX_NAMED_PIECES),
            self.tracker.unwrap_or("none"),
            list(self.known.iter(), MAX_NAMED_PEERS),
            list(connected.collect::<Vec<_>>().into_iter(), MAX_NAMED_PEERS),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(useful: u32, since_block: Option<Duration>) -> PeerStats {
        PeerStats {
            addr: "10.0.0.1:6881".into(),
            peer_id: String::new(),
            client: String::new(),
            pieces: useful,
            complete: false,
            uploaded_to: 0,
            downloaded_from: 0,
            fast: true,
            useful,
            since_block,
            zstd: false,
        }
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn gives_up_only_after_the_timeout_without_progress() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T, t0);
        assert_eq!(w.check(t0, true, 0, &[]), None);
        assert_eq!(w.check(t0 + T / 2, true, 0, &[]), None);
        // A verified piece restarts the clock.
        assert_eq!(w.check(t0 + T / 2, true, 1, &[]), None);
        assert_eq!(w.check(t0 + T, true, 1, &[]), None);
        assert_eq!(w.check(t0 + T / 2 + T, true, 1, &[]), Some(T));
    }

    #[test]
    fn no_clock_before_first_contact() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T, t0);
        assert_eq!(w.check(t0 + 5 * T, false, 0, &[]), None);
        // Contact at 5 T: the stall is counted from there, not from the start.
        assert_eq!(w.check(t0 + 5 * T, true, 0, &[]), None);
        assert_eq!(w.check(t0 + 6 * T - T / 10, true, 0, &[]), None);
        assert_eq!(w.check(t0 + 6 * T, true, 0, &[]), Some(T));
    }

    #[test]
    fn a_peer_still_sending_missing_pieces_keeps_it_going() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T, t0);
        w.check(t0, true, 3, &[]);
        let slow = [peer(2, Some(T / 2))];
        assert_eq!(w.check(t0 + 3 * T, true, 3, &slow), None);
        // Has them but sends nothing (gone quiet, or refuses them): not feeding.
        let quiet = [peer(2, Some(T)), peer(2, None)];
        assert!(!feeding(&quiet, T));
        assert_eq!(w.check(t0 + 3 * T, true, 3, &quiet), Some(3 * T));
        // Sends, but has nothing we lack: not feeding either.
        assert!(!feeding(&[peer(0, Some(Duration::ZERO))], T));
    }

    #[test]
    fn the_message_names_pieces_tracker_and_peers() {
        let missing: Vec<u32> = (50..60).collect();
        let known: Vec<SocketAddr> = vec!["10.0.0.1:6881".parse().unwrap()];
        let connected = [peer(2, None)];
        let m = GiveUp {
            stalled: Duration::from_secs(5),
            missing: &missing,
            total: 64,
            tracker: Some("http://10.0.0.1:6880/announce"),
            known: &known,
            connected: &connected,
        }
        .to_string();
        assert_eq!(
            m,
            "download gave up: no piece verified for 5 s and no peer sends any of the 10 \
             missing pieces of 64 (50, 51, 52, 53, 54, 55, 56, 57, and 2 more); tried tracker \
             http://10.0.0.1:6880/announce, peers 10.0.0.1:6881; connected now: \
             10.0.0.1:6881 (has 2 of them, sends none)"
        );
        assert!(!m.contains('\n'));
    }
}
