//! The gate in front of a node's BitTorrent port (policy in [`crate::allow`]).
//!
//! A receiver takes peer connections only from addresses it knows: the seeder, peers its
//! tracker handed it, `--peer` addresses ([`PeerGate::permit`]). A connection from an unknown
//! address makes it announce at once ([`PeerGate::take_asked`], polled by its announce loop)
//! and waits up to [`ASK_WAIT`] for the reply to list that address: a peer that announced
//! after our last announce and dialed us at once is let in. The seeder instead asks its own
//! tracker ([`PeerGate::with_lookup`]): only addresses that announced with the deployment
//! token get in.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tracing::{debug, info};

use crate::allow::{self, canonical, AllowList, Inbound};

/// How long an unknown address's connection waits for a fresh tracker reply.
pub const ASK_WAIT: Duration = Duration::from_secs(5);
/// Connections waiting for the tracker at once, at most (more are refused at once).
pub const MAX_WAITING: usize = 16;
/// Addresses a gate remembers, at most (a room is well below; the tracker hands ≤ 200 per
/// reply).
pub const MAX_KNOWN: usize = 65536;

type Lookup = Box<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Decides which incoming peer connections a node takes. Shared by the engine (at accept)
/// and the node's announce loop.
pub struct PeerGate {
    allow: AllowList,
    known: Mutex<HashSet<IpAddr>>,
    lookup: Option<Lookup>,
    /// A tracker exists to ask about unknown addresses.
    can_ask: bool,
    asked: AtomicBool,
    waiting: AtomicUsize,
    changed: tokio::sync::watch::Sender<u64>,
}

impl PeerGate {
    /// A receiver's gate: known addresses only; `can_ask`: it has a tracker to ask.
    pub fn new(can_ask: bool) -> PeerGate {
        PeerGate {
            allow: AllowList::any(),
            known: Mutex::new(HashSet::new()),
            lookup: None,
            can_ask,
            asked: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// The seeder's gate: addresses inside `allow` that `lookup` knows (its tracker).
    pub fn with_lookup(
        allow: AllowList,
        lookup: impl Fn(IpAddr) -> bool + Send + Sync + 'static,
    ) -> PeerGate {
        PeerGate {
            allow,
            lookup: Some(Box::new(lookup)),
            ..PeerGate::new(false)
        }
    }

    /// Addresses inside `allow`, nobody else to ask (the seeder with an external tracker).
    pub fn allow_only(allow: AllowList) -> PeerGate {
        PeerGate::with_lookup(allow, |_| true)
    }

    /// Lets these addresses in from now on (the seeder's, a tracker reply's, `--peer`s).
    pub fn permit(&self, ips: impl IntoIterator<Item = IpAddr>) {
        let mut k = self.known.lock().expect("gate lock");
        for ip in ips {
            if k.len() >= MAX_KNOWN {
                break;
            }
            k.insert(canonical(ip));
        }
        drop(k);
        // Every tracker answer wakes the waiters, so that they check again.
        self.changed.send_modify(|n| *n += 1);
    }

    fn knows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.known.lock().expect("gate lock").contains(&ip)
            || self.lookup.as_ref().is_some_and(|f| f(ip))
    }

    /// True once if a connection asked for a fresh tracker reply since the last call.
    pub fn take_asked(&self) -> bool {
        self.asked.swap(false, Ordering::Relaxed)
    }

    /// Whether to take a connection from `ip` (waits up to [`ASK_WAIT`] for the tracker when
    /// the address is unknown).
    pub async fn admit(&self, ip: IpAddr) -> bool {
        let mut rx = self.changed.subscribe();
        let decision = allow::inbound(
            self.allow.contains(ip),
            self.knows(ip),
            self.can_ask,
            self.waiting.load(Ordering::Relaxed),
            MAX_WAITING,
        );
        match decision {
            Inbound::Accept => return true,
            Inbound::Refuse => {
                debug!(%ip, "peer connection refused: not a known peer of this deployment");
                return false;
            }
            Inbound::AskTracker => {}
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _undo = Undo(&self.waiting);
        self.asked.store(true, Ordering::Relaxed);
        info!(%ip, "peer connection from an address the tracker has not listed yet: announcing now");
        let deadline = tokio::time::Instant::now() + ASK_WAIT;
        loop {
            if self.knows(ip) {
                info!(%ip, "the tracker lists it: connection accepted");
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    info!(%ip, "peer connection refused: the tracker does not list this address");
                    return false;
                }
            }
        }
    }
}

impl std::fmt::Debug for PeerGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerGate")
            .field("allow", &self.allow)
            .field("can_ask", &self.can_ask)
            .finish_non_exhaustive()
    }
}

struct Undo<'a>(&'a AtomicUsize);

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn an_unknown_address_is_let_in_once_the_tracker_lists_it() {
        let g = Arc::new(PeerGate::new(true));
        g.permit([ip("10.0.0.1")]);
        assert!(g.admit(ip("10.0.0.1")).await);
        let g2 = g.clone();
        let t = tokio::spawn(async move { g2.admit(ip("10.0.0.2")).await });
        // The announce loop sees the request and gets a reply listing the address.
        while !g.take_asked() {
            tokio::task::yield_now().await;
        }
        g.permit([ip("10.0.0.3")]);
        g.permit([ip("10.0.0.2")]);
        assert!(t.await.unwrap());
    }

    #[tokio::test]
    async fn an_address_no_reply_lists_is_refused_after_the_wait() {
        let g = PeerGate::new(true);
        let t0 = tokio::time::Instant::now();
        assert!(!g.admit(ip("10.0.0.9")).await);
        assert!(t0.elapsed() >= ASK_WAIT);
        assert!(g.take_asked());
        // Without a tracker there is nobody to ask: refused at once.
        let g = PeerGate::new(false);
        let t0 = tokio::time::Instant::now();
        assert!(!g.admit(ip("10.0.0.9")).await);
        assert!(t0.elapsed() < Duration::from_millis(100));
        assert!(!g.take_asked());
    }

    #[tokio::test]
    async fn the_seeder_gate_is_its_tracker_inside_the_allow_list() {
        let allow = AllowList::parse("127.0.0.0/30").unwrap();
        let g = PeerGate::with_lookup(allow.clone(), |ip| {
            ip == "127.0.0.3".parse::<IpAddr>().unwrap()
        });
        assert!(g.admit(ip("127.0.0.3")).await);
        assert!(g.admit(ip("::ffff:127.0.0.3")).await);
        assert!(!g.admit(ip("127.0.0.2")).await, "inside, never announced");
        assert!(!g.admit(ip("127.0.0.9")).await, "outside");
        let g = PeerGate::allow_only(allow);
        assert!(g.admit(ip("127.0.0.2")).await);
        assert!(!g.admit(ip("127.0.0.9")).await);
    }
}
