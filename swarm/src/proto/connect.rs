//! Peers coming and going: registering a handshaken connection (bans, the peer cap,
//! duplicate connections), forgetting one, and which known addresses to dial.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

use crate::wire::{self, Msg};
use crate::zblock;
use crate::SwarmError;

use super::peer::PeerState;
use super::pieces::{count_holder, leave_local};
use super::{Action, Core, REDIAL_AFTER};

/// A handshaken connection, as the driver reports it to [`Core::connect`].
#[derive(Debug, Clone, Copy)]
pub struct Hello {
    pub addr: SocketAddr,
    pub peer_id: [u8; 20],
    /// It speaks the Fast extension (BEP 6).
    pub fast: bool,
    /// It speaks the extension protocol (BEP 10).
    pub extended: bool,
    /// We dialed it.
    pub outgoing: bool,
    /// Behind our own switch (the driver's site rule, see `locality`). A peer that is not
    /// is asked only for pieces no connected local peer has (outside stalls and the end
    /// game): what a site lacks crosses its uplink once, not once per machine. True for
    /// every peer when no site rule is set.
    pub local: bool,
}

impl Core {
    /// Registers a handshaken connection and returns its key, or why it is refused. At the
    /// peer cap, `evict_idle` is asked to make room (it closes an idle incoming connection,
    /// true if it did). Queues our first messages to it.
    pub fn connect(
        &mut self,
        now: Instant,
        hello: Hello,
        evict_idle: impl FnOnce() -> bool,
    ) -> Result<u64, SwarmError> {
        let Hello {
            addr,
            peer_id,
            fast,
            extended,
            outgoing,
            local,
        } = hello;
        if outgoing {
            if let Some(k) = self.known.get_mut(&addr) {
                k.peer_id = Some(peer_id);
            }
        }
        if self.banned_ids.contains(&peer_id) || self.banned.contains(&addr.ip()) {
            return Err(SwarmError::Banned);
        }
        // Full: an idle incoming connection makes room (it ends at once, see `conn_limit`).
        if self.peers.len() >= self.cfg.max_peers && !evict_idle() {
            return Err(SwarmError::Protocol("too many peers".into()));
        }
        // Two nodes that dial each other at once keep the connection opened by the one with
        // the smaller peer id; both sides decide the same way.
        if let Some((&old_key, old)) = self.peers.iter().find(|(_, p)| p.peer_id == peer_id) {
            let keep_new = outgoing == (self.cfg.our_id < peer_id);
            if !keep_new || old.outgoing == outgoing {
                return Err(SwarmError::Protocol("duplicate connection".into()));
            }
            self.out.push_back(Action::Disconnect(old_key));
            self.remove_peer(old_key);
        }
        let key = self.next_key;
        self.next_key += 1;
        let n = self.have.len();
        let mut p = PeerState::new(addr, peer_id, fast, outgoing, n, now);
        p.local = local;
        self.peers.insert(key, p);
        // Announce what we have at once: HAVE_ALL / HAVE_NONE with the Fast extension, a
        // bitfield otherwise (even an empty one, so the peer knows where we stand).
        let first = if fast && self.is_complete() {
            Msg::HaveAll
        } else if fast && self.have_count == 0 {
            Msg::HaveNone
        } else {
            Msg::Bitfield(wire::bitfield_from(&self.have))
        };
        self.out.push_back(Action::Send(key, first));
        if self.cfg.compress && extended {
            let payload =
                zblock::handshake_payload(concat!("blockswarm ", env!("CARGO_PKG_VERSION")));
            self.out.push_back(Action::Send(
                key,
                Msg::Extended {
                    id: zblock::HANDSHAKE_ID,
                    payload,
                },
            ));
        }
        // We never choke on a LAN: everyone may ask from the start.
        self.out.push_back(Action::Send(key, Msg::Unchoke));
        self.out.push_back(Action::Changed);
        Ok(key)
    }

    /// Forgets a peer: what it has, what it was asked for, what was assigned to it.
    pub(crate) fn remove_peer(&mut self, key: u64) {
        let Some(p) = self.peers.remove(&key) else {
            return;
        };
        self.upload_order.forget(key);
        for (i, &h) in p.has.iter().enumerate() {
            if h {
                count_holder(&mut self.availability, &mut self.held, i, false);
            }
        }
        leave_local(&mut self.local_availability, &p, self.have.len());
        for &(index, begin) in p.inflight.keys() {
            self.release_block(key, index, begin);
        }
        // A piece only this peer was fetching starts over with another single peer.
        self.in_progress.retain(|_, ip| ip.owner != Some(key));
        for a in self.assigned.iter_mut() {
            if *a == Some(key) {
                *a = None;
                self.unassigned += 1;
            }
        }
        self.refusing.retain(|(k, _), _| *k != key);
    }

    /// Known addresses to dial now: not connected (by the peer id that answered there last
    /// time), not being dialed, not banned, not dialed in the last [`REDIAL_AFTER`]; at most
    /// enough to have `dial_peers` connections of our own (dialed, or pending) and never
    /// past `max_peers` in all, chosen in an order of this node's own (a hash of its peer id
    /// and the address). In a room larger than that the connections form a random graph,
    /// and nodes keep slots free for the ones that start later (see `SwarmOptions`).
    pub(crate) fn dial_known(&mut self, now: Instant) {
        let outgoing = self.peers.values().filter(|p| p.outgoing).count();
        let pending = self.connecting.len().saturating_sub(outgoing);
        let free = self
            .cfg
            .max_peers
            .saturating_sub(self.peers.len() + pending)
            .min(self.cfg.dial_peers.saturating_sub(outgoing + pending));
        if free == 0 {
            return;
        }
        let connected: HashSet<[u8; 20]> = self.peers.values().map(|p| p.peer_id).collect();
        let mut candidates: Vec<SocketAddr> = self
            .known
            .iter()
            .filter(|(a, k)| {
                !k.peer_id.is_some_and(|id| connected.contains(&id))
                    && !self.connecting.contains(a)
                    && !self.banned.contains(&a.ip())
                    && k.last_dial
                        .is_none_or(|t| now.saturating_duration_since(t) > REDIAL_AFTER)
            })
            .map(|(a, _)| *a)
            .collect();
        let our_id = self.cfg.our_id;
        candidates.sort_by_cached_key(|a| (spread(&our_id, a), *a));
        candidates.truncate(free);
        for a in candidates {
            self.known.entry(a).or_default().last_dial = Some(now);
            self.connecting.insert(a);
            self.out.push_back(Action::Dial(a));
        }
    }
}

/// This node's place for address `a` in its dialing order (fixed-key hash: replayable).
fn spread(our_id: &[u8; 20], a: &SocketAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    our_id.hash(&mut h);
    a.hash(&mut h);
    h.finish()
}
