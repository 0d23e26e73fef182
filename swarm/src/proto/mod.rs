//! The swarm's decisions, apart from its I/O (sans-IO, the shape of quinn-proto's
//! `Connection`): no async runtime, no sockets, no clock and no randomness of its own. The driver
//! (`engine`) feeds it [`Input`]s with the current time and carries out the [`Action`]s it
//! queues; a simulator can do the same with a virtual clock and modelled links.
//!
//! By concern: [`peer`] (what we know of a peer, its rate meter), [`pieces`] (have,
//! availability, pieces being assembled), [`connect`] (registering peers, duplicates,
//! limits, whom to dial), [`messages`] (one incoming message or block), [`picker`] (which
//! piece and block to ask for next), [`endgame`] (stalled blocks, the last blocks asked of
//! several peers), [`pacing`] (how many requests per peer; timeouts), [`seed`] (a seeder's
//! rationing of first copies, suggestions), [`blame`] (who sent a bad piece; bans).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use librqbit_core::lengths::Lengths;

use crate::servable::Servable;
use crate::wire::{Msg, Req};
use crate::zblock::Form;
use crate::SwarmError;

mod blame;
mod connect;
mod endgame;
mod messages;
mod pacing;
mod peer;
mod picker;
mod pieces;
mod seed;
mod stats;
#[cfg(test)]
mod tests;
mod upload_order;

pub use connect::Hello;
pub use peer::client_name;
pub use stats::{PeerStats, Stats};

use messages::Payload;
use peer::{Known, PeerState};
use pieces::InProgress;
use upload_order::UploadOrder;

/// How long a seeder keeps rejecting a peer's requests for a piece assigned to another peer,
/// and how long a peer avoids asking again for a piece it was refused.
pub const REJECT_WINDOW: Duration = Duration::from_secs(2);
/// How long a seeder refuses a piece that another connected peer already has.
pub const HELD_REJECT_WINDOW: Duration = Duration::from_secs(10);
/// A block asked for this long ago and not received is also asked from another peer that
/// has its piece (a stalled TCP flow, e.g. one waiting out a retransmission timeout, must not
/// hold up a piece the whole swarm is waiting for).
pub const STALL_AFTER: Duration = Duration::from_secs(2);
/// Fewest blocks kept requested from a peer that has what we need.
pub const MIN_PIPELINE_BLOCKS: usize = 4;
/// Blocks requested from a peer before its rate is known.
pub const INITIAL_PIPELINE_BLOCKS: usize = 16;
/// Suggestions kept per peer.
pub const MAX_SUGGESTED: usize = 64;
/// How often the core wants a [`Input::Tick`].
pub const TICK: Duration = Duration::from_millis(500);
/// A known address is dialed again at most this often.
pub const REDIAL_AFTER: Duration = Duration::from_secs(3);

/// The core's maps hash with keys from the node's seed: what it iterates over (pieces in
/// progress, peers) comes in an order of the node's own, as with std's random keys, yet
/// the same on every run with that seed, so a simulation replays exactly.
pub(crate) type Map<K, V> = HashMap<K, V, Seeded>;

/// A `BuildHasher` keyed by a seed (SipHash, as std's maps).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seeded(u64);

impl BuildHasher for Seeded {
    type Hasher = DefaultHasher;
    fn build_hasher(&self) -> DefaultHasher {
        let mut h = DefaultHasher::new();
        h.write_u64(self.0);
        h
    }
}

/// The policy's tunables (see `SwarmOptions` for what each does).
#[derive(Debug, Clone)]
pub struct Config {
    pub our_id: [u8; 20],
    pub pipeline_blocks: usize,
    pub request_queue_time: Duration,
    pub max_pieces_in_progress: usize,
    pub max_peers: usize,
    pub dial_peers: usize,
    pub request_timeout: Duration,
    pub prefer_unsent: bool,
    pub trust_initial_pieces: bool,
    pub compress: bool,
    /// Blocks carry their bytes (a real node). Off: only their lengths are modelled
    /// ([`Input::ModelledBlock`], the simulator); pieces are assembled without buffers.
    pub carry_data: bool,
    /// Requests are served piece by piece through a shallow writers' queue (see
    /// `upload_order`), not in the order they came.
    pub order_uploads: bool,
}

/// What happened, as the driver tells the core.
#[derive(Debug)]
pub enum Input {
    /// A message from a connected peer. `upload_queued`: bytes requested from this node and
    /// not yet written to any socket (a seeder serves second copies when it runs dry).
    Message {
        key: u64,
        msg: Msg,
        upload_queued: u64,
    },
    /// A block that came compressed (`bs_zstd`), already decompressed within bounds.
    ZBlock {
        key: u64,
        index: u32,
        begin: u32,
        data: Vec<u8>,
        frame: bytes::Bytes,
    },
    /// A block whose bytes are modelled, not carried (the simulator; `Config::carry_data`
    /// off): handled as a PIECE message of `len` bytes.
    ModelledBlock {
        key: u64,
        index: u32,
        begin: u32,
        len: u32,
    },
    /// A compressed block that did not decompress to what it claimed (a lie).
    BadZBlock { key: u64 },
    /// The connection ended.
    Disconnected { key: u64 },
    /// The writers' queue fell below [`Core::upload_release_below`]: `upload_queued`
    /// bytes are left in it.
    UploadDrained { upload_queued: u64 },
    /// A peer left too many of our refusals unread while it went on requesting.
    Flooding { key: u64 },
    /// A piece handed out by [`Action::Verify`] was hashed (and written if it matched).
    Verified { index: u32, result: Verified },
    /// A piece found correct on storage (resume).
    Resumed { index: u32 },
    /// The timer the core asked for ([`Core::poll_timeout`]). `uploaded`: block bytes sent
    /// so far (our upload rate, for the upload order; the debug log).
    Tick { uploaded: u64 },
    /// Peer listen addresses (from a tracker); dialed and redialed as needed.
    PeersLearnt(Vec<SocketAddr>),
    /// A dial handed out by [`Action::Dial`] ended (connected and gone, or failed).
    DialEnded(SocketAddr),
}

/// How a verification ended.
#[derive(Debug)]
pub enum Verified {
    /// Hash matched, piece written.
    Stored,
    /// Hash did not match.
    Mismatch,
    /// Writing (or the task) failed: the node must stop.
    Failed(String),
}

/// What the core wants done.
#[derive(Debug)]
pub enum Action {
    /// Queue a message for a peer.
    Send(u64, Msg),
    /// Serve a block request from storage.
    Serve(u64, Req),
    /// Drop a queued request the peer cancelled.
    CancelServe(u64, Req),
    /// Close a connection.
    Disconnect(u64),
    /// Hash a complete piece and write it if it matches; then report [`Input::Verified`].
    Verify {
        index: u32,
        buf: Vec<u8>,
        forms: Vec<Option<Form>>,
    },
    /// Connect to a peer's listen address; report [`Input::DialEnded`] when done.
    Dial(SocketAddr),
    /// The peer takes compressed blocks with this extension id.
    PeerZstd(u64, u8),
    /// Progress or peers changed (wake whoever waits for it).
    Changed,
}

/// The policy state of one node.
pub struct Core {
    cfg: Config,
    lengths: Lengths,
    out: VecDeque<Action>,
    next_tick: Option<Instant>,

    have: Vec<bool>,
    have_count: u32,
    bytes_have: u64,
    availability: Vec<u32>,
    in_progress: Map<u32, InProgress>,
    /// Pieces being hashed and written, and who sent their blocks.
    verifying: Map<u32, HashSet<u64>>,
    peers: Map<u64, PeerState>,
    next_key: u64,
    cursor: u32,
    banned: HashSet<IpAddr>,
    banned_ids: HashSet<[u8; 20]>,
    /// Connection keys of banned peers (their blocks still in flight or being verified).
    banned_keys: HashSet<u64>,
    /// Pieces that failed their hash with several senders: next time from one peer only.
    single_source: HashSet<u32>,
    /// Blocks requested more than [`STALL_AFTER`] ago and still not here (found every tick):
    /// another peer that has the piece may be asked for them too.
    stalled: Vec<(u32, u32)>,
    /// Known listen addresses of peers (from the tracker) and when we last dialed them.
    known: Map<SocketAddr, Known>,
    connecting: HashSet<SocketAddr>,
    /// Seeder policy: the peer each piece was first served to.
    assigned: Vec<Option<u64>>,
    /// Seeder policy: pieces not assigned to any connected peer.
    unassigned: u32,
    /// Pieces at least one connected peer has.
    held: u32,
    /// Per piece, how many connected local peers ([`Hello::local`]) that are not seeds have
    /// it (see `pieces::counts_local`).
    local_availability: Vec<u32>,
    /// Seeder policy: where the search for a piece to suggest starts.
    suggest_cursor: usize,
    /// Seeder policy: since when we have been refusing (peer, piece), and when it last asked.
    refusing: Map<(u64, u32), (Instant, Instant)>,
    downloaded: u64,
    hash_failures: u64,
    fatal: Option<String>,
    /// Which pieces may be served, and how (first-serve check, unreadable).
    pub(crate) servable: Servable,
    /// Requests refused (Fast REJECT) so far.
    rejects_sent: u64,
    /// Debug tick: figures at the previous tick.
    last_tick: (u64, u64),
    /// Requests waiting for the writers, released piece by piece.
    upload_order: UploadOrder,
}

impl Core {
    /// A node with the pieces `have`; `seed` places its random start points (picking,
    /// suggesting), so that nodes do not all start on the same piece.
    pub fn new(cfg: Config, lengths: Lengths, have: Vec<bool>, seed: u64) -> Core {
        let n = have.len();
        let have_count = have.iter().filter(|&&h| h).count() as u32;
        let bytes_have = (0..n as u32)
            .filter(|&i| have[i as usize])
            .map(|i| {
                let vi = lengths.validate_piece_index(i).expect("valid");
                lengths.piece_length(vi) as u64
            })
            .sum();
        let servable = if cfg.trust_initial_pieces {
            Servable::trusting(n)
        } else {
            Servable::new(n)
        };
        let m = n.max(1) as u64;
        let hasher = Seeded(seed.rotate_left(17) ^ 0x5bd1_e995);
        Core {
            cfg,
            lengths,
            out: VecDeque::new(),
            next_tick: None,
            have,
            have_count,
            bytes_have,
            availability: vec![0; n],
            in_progress: Map::with_hasher(hasher),
            verifying: Map::with_hasher(hasher),
            peers: Map::with_hasher(hasher),
            next_key: 1,
            cursor: (seed % m) as u32,
            banned: HashSet::new(),
            banned_ids: HashSet::new(),
            banned_keys: HashSet::new(),
            single_source: HashSet::new(),
            stalled: Vec::new(),
            known: Map::with_hasher(hasher),
            connecting: HashSet::new(),
            assigned: vec![None; n],
            unassigned: n as u32,
            held: 0,
            local_availability: vec![0; n],
            suggest_cursor: ((seed >> 32) % m) as usize,
            refusing: Map::with_hasher(hasher),
            downloaded: 0,
            hash_failures: 0,
            fatal: None,
            servable,
            rejects_sent: 0,
            last_tick: (0, 0),
            upload_order: UploadOrder::default(),
        }
    }

    /// Takes one event. An error is about the peer the event came from: the driver closes
    /// that connection (the core has forgotten nothing it must undo: `Disconnected` follows).
    pub fn handle(&mut self, now: Instant, input: Input) -> Result<(), SwarmError> {
        match input {
            Input::Message {
                key,
                msg,
                upload_queued,
            } => return self.on_message(now, key, msg, upload_queued),
            Input::ZBlock {
                key,
                index,
                begin,
                data,
                frame,
            } => {
                let form = Some(Form::Zstd(frame));
                return self.on_block(now, key, index, begin, Payload::Bytes(data), form);
            }
            Input::ModelledBlock {
                key,
                index,
                begin,
                len,
            } => return self.on_block(now, key, index, begin, Payload::Modelled(len), None),
            Input::BadZBlock { key } => {
                self.ban(key, "sent a bad compressed block");
                return Err(SwarmError::Banned);
            }
            Input::Disconnected { key } => {
                self.remove_peer(key);
                self.out.push_back(Action::Changed);
            }
            Input::UploadDrained { upload_queued } => {
                self.upload_order.writers_report(upload_queued);
                self.release_uploads();
            }
            Input::Flooding { key } => self.ban(key, "requests without reading our refusals"),
            Input::Verified { index, result } => self.on_verified(now, index, result),
            Input::Resumed { index } => {
                self.mark_have(index);
                self.out.push_back(Action::Changed);
            }
            Input::Tick { uploaded } => self.on_tick(now, uploaded),
            Input::PeersLearnt(addrs) => {
                for a in addrs {
                    self.known.entry(a).or_default();
                }
                self.dial_known(now);
            }
            Input::DialEnded(a) => {
                self.connecting.remove(&a);
            }
        }
        Ok(())
    }

    /// While requests wait in the upload order: the writers' queue (bytes) below which the
    /// driver reports [`Input::UploadDrained`], so that more are released.
    pub fn upload_release_below(&self) -> Option<u64> {
        (self.upload_order.held_bytes() > 0).then(|| self.upload_order.limit())
    }

    /// The next thing to do, if any (call until None after every input).
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// When the core wants the next [`Input::Tick`].
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        self.next_tick.unwrap_or(now + TICK)
    }

    /// Which pieces are present (verified and written).
    pub fn have_bits(&self) -> &[bool] {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have_count as usize == self.have.len()
    }

    /// True if the piece is present, being fetched or being verified.
    pub fn is_busy_or_have(&self, index: u32) -> bool {
        self.have[index as usize]
            || self.in_progress.contains_key(&index)
            || self.verifying.contains_key(&index)
    }

    /// Addresses this node banned.
    pub fn banned_ips(&self) -> impl Iterator<Item = &IpAddr> {
        self.banned.iter()
    }

    /// True if this node banned the peers at `ip`.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.banned.contains(&ip)
    }

    /// Peer addresses we were given and dial, in order.
    pub fn known_peers(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.known.keys().copied().collect();
        v.sort();
        v
    }

    /// A fatal storage error, if one happened.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// Who sent the blocks of a piece being verified (connection keys), if it is.
    pub fn senders(&self, index: u32) -> Option<&HashSet<u64>> {
        self.verifying.get(&index)
    }

    /// Keys of the connected peers.
    pub fn peer_keys(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }

    /// A verification ended: the piece is ours, or its senders are blamed, or the node
    /// must stop.
    fn on_verified(&mut self, now: Instant, index: u32, result: Verified) {
        let contributors = self.verifying.remove(&index).unwrap_or_default();
        match result {
            Verified::Stored => {
                tracing::debug!(piece = index, "piece verified and written");
                self.mark_have(index);
            }
            Verified::Mismatch => {
                self.hash_failures += 1;
                tracing::warn!(
                    piece = index,
                    "piece failed its SHA-1 check; fetching it again"
                );
                self.punish(index, &contributors);
            }
            Verified::Failed(e) => self.fatal = Some(e),
        }
        for k in self.peer_keys() {
            self.fill_requests(now, k);
        }
        self.out.push_back(Action::Changed);
    }
}
