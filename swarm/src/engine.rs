//! The swarm engine: peer connections, piece picking, verification, HAVE broadcasting.
//!
//! One mutex-protected [`State`] holds everything about pieces and peers; each peer
//! connection is a reader task (handles incoming messages, picks what to request) and a
//! writer task (sends queued messages and serves block requests from storage). Picking is
//! rarest-first with a random start point per node, pieces in progress are finished before
//! new ones are started, and once no unstarted piece is left the last blocks are requested
//! from several peers (end game).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use librqbit_core::lengths::Lengths;
use rand::Rng;
use serde::Serialize;
use sha1::{Digest, Sha1};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::admit::{Admission, Verdict};
use crate::backlog::Backlog;
use crate::conn_limit;
use crate::servable::{Admit, Servable};
use crate::storage::Storage;
use crate::wire::{self, FrameReader, Msg, Req, BLOCK_SIZE, MAX_REQUEST};
use crate::zblock::{self, Form, FormCache, ZStats};
use crate::SwarmError;

mod serve;
mod zserve;
pub use serve::CorruptPiece;

/// How long a seeder keeps rejecting a peer's requests for a piece assigned to another peer,
/// and how long a peer avoids asking again for a piece it was refused.
pub const REJECT_WINDOW: Duration = Duration::from_secs(2);
/// How long a seeder refuses a piece that another connected peer already has.
pub const HELD_REJECT_WINDOW: Duration = Duration::from_secs(10);

/// A block asked for this long ago and not received is also asked from another peer that
/// has its piece (a stalled TCP flow, e.g. one waiting out a retransmission timeout, must not
/// hold up a piece the whole swarm is waiting for).
pub const STALL_AFTER: Duration = Duration::from_secs(2);

/// Seeder sockets: unsent bytes above which a write waits (`TCP_NOTSENT_LOWAT`).
const TURN_LOWAT: u32 = 64 * 1024;

/// Suggestions kept per peer.
const MAX_SUGGESTED: usize = 64;

/// Fewest blocks kept requested from a peer that has what we need.
pub const MIN_PIPELINE_BLOCKS: usize = 4;
/// Most bytes a serving peer reads from storage in one go (consecutive requests).
const MAX_BATCH: u32 = 256 * 1024;
/// Blocks requested from a peer before its rate is known.
const INITIAL_PIPELINE_BLOCKS: usize = 16;

/// Download rate from one peer: bytes per second, smoothed over windows of 200 ms or more.
struct RateMeter {
    window_start: Instant,
    window_bytes: u64,
    rate: Option<f64>,
}

impl RateMeter {
    fn new() -> Self {
        Self {
            window_start: Instant::now(),
            window_bytes: 0,
            rate: None,
        }
    }

    fn add(&mut self, n: u64) {
        self.window_bytes += n;
        let dt = self.window_start.elapsed().as_secs_f64();
        if dt >= 0.2 {
            let sample = self.window_bytes as f64 / dt;
            self.rate = Some(match self.rate {
                Some(r) if dt < 2.0 => 0.5 * r + 0.5 * sample,
                // First sample, or the link sat idle: start afresh.
                _ => sample,
            });
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
    }

    /// Blocks to keep in flight for a queue of `queue_time`.
    fn pipeline(&self, queue_time: Duration, max: usize) -> usize {
        let want = match self.rate {
            None => INITIAL_PIPELINE_BLOCKS,
            Some(r) => (r * queue_time.as_secs_f64() / BLOCK_SIZE as f64).ceil() as usize,
        };
        want.clamp(MIN_PIPELINE_BLOCKS, max.max(MIN_PIPELINE_BLOCKS))
    }
}

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct SwarmOptions {
    /// Blocks (16 KiB) requested from one peer and not yet received, at most.
    pub pipeline_blocks: usize,
    /// Requests to one peer are kept to about this much of its measured rate (but at least
    /// [`MIN_PIPELINE_BLOCKS`], at most `pipeline_blocks`): enough to keep the link busy,
    /// not more. Every request queued at a peer delays the next piece it serves, and a piece
    /// can be passed on only once it is complete: short queues make a fresh piece reach the
    /// whole swarm sooner (measured at N = 16: 0.5 s -> 1.16 x S/R, 0.3 s -> 1.14,
    /// 0.2 s -> 1.13, 0.1 s -> 1.12; see bench/README.md).
    pub request_queue_time: Duration,
    /// Pieces in memory at once, being assembled or waiting to be hashed and written
    /// (bounds RAM: this x piece length).
    pub max_pieces_in_progress: usize,
    /// Connections at most.
    pub max_peers: usize,
    /// Upload cap in bytes per second for this node (None: unlimited).
    pub upload_limit: Option<u64>,
    /// Local address to bind outgoing connections to.
    pub bind_ip: Option<IpAddr>,
    /// A requested block not received after this long is requested again elsewhere.
    pub request_timeout: Duration,
    /// Seeder behaviour, so that it uploads close to one copy in total: each piece is
    /// assigned to the first peer that asks for it; another Fast-extension peer asking for
    /// the same piece is rejected (it picks another piece and gets this one from the swarm)
    /// for [`REJECT_WINDOW`] while the piece is on its way, for [`HELD_REJECT_WINDOW`] once a
    /// peer has it; a peer still asking after that is served. A refusal comes with a SUGGEST
    /// of a piece not sent to anyone yet (reserved for the asker). Once every piece is held
    /// by some peer and the upload queue has run dry, second copies are served at once.
    /// Our receivers recognise such a rationing seed by its rejects and ask it only for
    /// pieces no other peer has.
    pub prefer_unsent: bool,
    /// Serve the pieces given as present at start without hashing them first. Off: each
    /// is SHA-1-checked the first time it is served (see `servable`). For measurements.
    pub trust_initial_pieces: bool,
    /// Incoming connections only from addresses this gate admits (None: from anyone).
    pub gate: Option<Arc<crate::gate::PeerGate>>,
    /// Offer and accept zstd-compressed blocks with peers that speak `bs_zstd` (see
    /// `zblock`); standard clients get plain BitTorrent either way.
    pub compress: bool,
    /// Bytes of compressed blocks kept for serving again (see `zblock::FormCache`).
    pub zstd_cache_bytes: usize,
}

impl Default for SwarmOptions {
    fn default() -> Self {
        Self {
            pipeline_blocks: 64,
            request_queue_time: Duration::from_millis(100),
            max_pieces_in_progress: 16,
            max_peers: 128,
            upload_limit: None,
            bind_ip: None,
            request_timeout: Duration::from_secs(20),
            prefer_unsent: false,
            trust_initial_pieces: false,
            gate: None,
            compress: true,
            zstd_cache_bytes: 64 << 20,
        }
    }
}

/// What the engine needs to know about the torrent.
#[derive(Clone)]
pub struct TorrentInfo {
    pub info_hash: [u8; 20],
    pub piece_length: u32,
    pub total_length: u64,
    pub piece_hashes: Arc<Vec<[u8; 20]>>,
}

/// Per-peer figures for status reports.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStats {
    pub addr: String,
    pub peer_id: String,
    pub client: String,
    pub pieces: u32,
    pub complete: bool,
    pub uploaded_to: u64,
    pub downloaded_from: u64,
    pub fast: bool,
    /// Pieces it has that we lack.
    pub useful: u32,
    /// Time since it last sent us a block we asked for (None: never).
    pub since_block: Option<Duration>,
    /// It accepts zstd-compressed blocks (`bs_zstd`).
    pub zstd: bool,
}

/// Swarm-wide figures.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub pieces_have: u32,
    pub pieces_total: u32,
    pub bytes_have: u64,
    pub bytes_total: u64,
    pub uploaded: u64,
    pub downloaded: u64,
    pub hash_failures: u64,
    /// Pieces refused to peers because they could not be read from storage.
    pub unreadable_pieces: Vec<u32>,
    /// Pieces hashed by this node (received, found on resume, or checked on first serve).
    pub pieces_verified: u32,
    /// Compressed traffic (`bs_zstd`).
    pub zstd: ZStats,
    pub peers: Vec<PeerStats>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Missing,
    Requested,
    Received,
}

struct InProgress {
    buf: Vec<u8>,
    blocks: Vec<Block>,
    /// Peers each block was requested from (end game may ask more than one).
    requesters: Vec<Vec<u64>>,
    received: u32,
    first_missing: usize,
    /// Who sent each received block (`NOBODY` if none yet).
    from: Vec<u64>,
    /// Set for a piece that already failed its hash with several senders: the whole piece is
    /// then fetched from this one peer, so a second failure names the culprit.
    owner: Option<u64>,
    /// How each block came (a frame to forward as it is, or raw from a `bs_zstd` peer,
    /// which found it incompressible); kept for serving once the piece is verified.
    forms: Vec<Option<Form>>,
}

const NOBODY: u64 = u64::MAX;

impl InProgress {
    fn contributors(&self) -> HashSet<u64> {
        self.from.iter().copied().filter(|&k| k != NOBODY).collect()
    }

    /// May `key` fetch blocks of this piece?
    fn open_to(&self, key: u64) -> bool {
        self.owner.is_none_or(|o| o == key)
    }
}

struct PeerState {
    addr: SocketAddr,
    peer_id: [u8; 20],
    tx: mpsc::UnboundedSender<Out>,
    kill: Arc<Notify>,
    has: Vec<bool>,
    has_count: u32,
    /// Pieces the peer has that we lack.
    useful: u32,
    choked_us: bool,
    am_interested: bool,
    fast: bool,
    inflight: HashMap<(u32, u32), Instant>,
    /// Pieces this peer refused us (Fast REJECT), and when.
    rejected: HashMap<u32, Instant>,
    /// A seed that refuses pieces others can pass on: a blockswarm seeder. It is asked
    /// only for pieces no other peer has (outside the end game).
    rationing: Option<Instant>,
    /// Pieces this peer suggested (a rationing seed names pieces nobody has yet).
    suggested: VecDeque<u32>,
    uploaded_to: Arc<AtomicU64>,
    downloaded_from: u64,
    /// When it last sent us a block we asked for.
    last_block: Option<Instant>,
    rate: RateMeter,
    outgoing: bool,
    /// Which incoming blocks we asked this peer for; strikes for the others.
    admit: Admission,
    /// What this connection's writer has queued (bounded, see `backlog`).
    backlog: Arc<Backlog>,
    /// The id it wants for `bs_zstd` messages (0: it takes plain blocks only); read by
    /// the writer.
    zstd_id: Arc<std::sync::atomic::AtomicU8>,
}

impl PeerState {
    /// A seed that refused us something lately: it has pieces nobody else has to send
    /// first. One that stopped refusing (its copy is out, its link is free) is asked for
    /// anything again.
    fn is_rationing(&self) -> bool {
        self.rationing.is_some_and(|t| t.elapsed() < REJECT_WINDOW)
    }

    /// Queues a message for the writer; a peer that leaves too many unread is disconnected
    /// (false).
    fn send(&self, m: Msg) -> bool {
        if !self.backlog.queue_msg(&m) {
            warn!(peer = %self.addr, "disconnecting a peer that does not read what we send");
            self.kill.notify_one();
            return false;
        }
        let _ = self.tx.send(Out::Msg(m));
        true
    }

    /// We stop waiting for a requested block (its late answer is dropped without blame).
    fn give_up(&mut self, index: u32, begin: u32) -> bool {
        let had = self.inflight.remove(&(index, begin)).is_some();
        if had {
            self.admit.released(index, begin);
        }
        had
    }
}

enum Out {
    Msg(Msg),
    Serve(Req),
    Cancel(Req),
}

/// A peer listen address learnt from the tracker.
#[derive(Default)]
struct Known {
    last_dial: Option<Instant>,
    /// Who answered there last time: not redialed while that peer is connected either way.
    peer_id: Option<[u8; 20]>,
}

struct State {
    have: Vec<bool>,
    have_count: u32,
    availability: Vec<u32>,
    in_progress: HashMap<u32, InProgress>,
    verifying: HashSet<u32>,
    peers: HashMap<u64, PeerState>,
    next_key: u64,
    cursor: u32,
    banned: HashSet<IpAddr>,
    banned_ids: HashSet<[u8; 20]>,
    /// Connection keys of banned peers (their blocks still in flight or being verified).
    banned_keys: HashSet<u64>,
    /// Pieces that failed their hash with several senders: next time from one peer only.
    single_source: HashSet<u32>,
    /// Blocks requested more than [`STALL_AFTER`] ago and still not here (found twice a
    /// second): another peer that has the piece may be asked for them too.
    stalled: Vec<(u32, u32)>,
    /// Known listen addresses of peers (from the tracker) and when we last dialed them.
    known: HashMap<SocketAddr, Known>,
    connecting: HashSet<SocketAddr>,
    /// Seeder policy: the peer each piece was first served to.
    assigned: Vec<Option<u64>>,
    /// Seeder policy: pieces not assigned to any connected peer.
    unassigned: u32,
    /// Pieces at least one connected peer has.
    held: u32,
    /// Seeder policy: where the search for a piece to suggest starts.
    suggest_cursor: usize,

    /// Seeder policy: since when we have been refusing (peer, piece), and when it last asked.
    refusing: HashMap<(u64, u32), (Instant, Instant)>,
    downloaded: u64,
    hash_failures: u64,
    fatal: Option<String>,
    /// Which pieces may be served, and how (first-serve check, unreadable).
    servable: Servable,
    /// A piece found not to match its hash when first served: the node must stop.
    corrupt: Option<CorruptPiece>,
    /// Requests refused (Fast REJECT) so far.
    rejects_sent: u64,
    /// Debug tick: figures at the previous tick.
    last_tick: (u64, u64),
}

pub(crate) struct Shared {
    info: TorrentInfo,
    lengths: Lengths,
    peer_id: [u8; 20],
    opts: SwarmOptions,
    storage: Arc<dyn Storage>,
    state: Mutex<State>,
    changed: Notify,
    uploaded: AtomicU64,
    bucket: Option<Mutex<Bucket>>,
    listen_addr: SocketAddr,
    /// Bytes requested from us and not yet written to a socket, all peers together.
    queued: AtomicU64,
    /// Seeder start-up: connections take turns to send one batch each (see `writer`).
    turns: tokio::sync::Semaphore,
    /// A first-serve check ended (writers waiting for it look again).
    checked: Notify,
    /// Incoming connections (see `conn_limit`).
    limiter: conn_limit::Limiter,
    /// Forms of verified blocks for `bs_zstd` peers (see `zblock`).
    forms: Mutex<FormCache>,
    zstats: Mutex<ZStats>,
}

struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

/// A running swarm node (seeder or receiver).
#[derive(Clone)]
pub struct Swarm {
    shared: Arc<Shared>,
}

/// True while `p` refused piece `i` recently.
fn refused(p: &PeerState, i: u32) -> bool {
    p.rejected
        .get(&i)
        .is_some_and(|t| t.elapsed() < REJECT_WINDOW)
}

/// One peer more (`gained`) or fewer has piece `i`; `held` counts pieces some peer has.
fn count_holder(availability: &mut [u32], held: &mut u32, i: usize, gained: bool) {
    if gained {
        availability[i] += 1;
        if availability[i] == 1 {
            *held += 1;
        }
    } else {
        availability[i] -= 1;
        if availability[i] == 0 {
            *held -= 1;
        }
    }
}

/// With `spare = Some(seeds)` (asking a rationing seed), is piece `i` held by some peer
/// that is not a seed, so that the seed should not be asked for it?
fn spared(st: &State, spare: Option<u32>, i: u32) -> bool {
    spare.is_some_and(|seeds| st.availability[i as usize] > seeds)
}

fn client_name(peer_id: &[u8; 20]) -> String {
    // Azureus-style ids: -XX1234-
    if peer_id[0] == b'-' && peer_id[7] == b'-' {
        String::from_utf8_lossy(&peer_id[1..7]).into_owned()
    } else {
        hex::encode(&peer_id[..4])
    }
}

/// A fresh peer id: `-BS0100-` and 12 random bytes.
pub fn new_peer_id() -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(b"-BS0100-");
    rand::thread_rng().fill(&mut id[8..]);
    id
}

impl Swarm {
    /// Starts listening on `listener` and returns the running node. `have` says which pieces
    /// are already present in `storage` (all for a seeder: seed mode does not re-hash up
    /// front; each of these pieces is SHA-1-checked the first time it is served instead,
    /// unless `opts.trust_initial_pieces`).
    pub fn start(
        info: TorrentInfo,
        peer_id: [u8; 20],
        storage: Arc<dyn Storage>,
        have: Vec<bool>,
        listener: TcpListener,
        opts: SwarmOptions,
    ) -> Result<Swarm, SwarmError> {
        let lengths = Lengths::new(info.total_length, info.piece_length)
            .map_err(|e| SwarmError::Config(e.to_string()))?;
        let n = lengths.total_pieces() as usize;
        if have.len() != n || info.piece_hashes.len() != n {
            return Err(SwarmError::Config(format!(
                "piece count mismatch: {} pieces, {} hashes, {} have-bits",
                n,
                info.piece_hashes.len(),
                have.len()
            )));
        }
        let listen_addr = listener.local_addr()?;
        let have_count = have.iter().filter(|&&h| h).count() as u32;
        let cursor = rand::thread_rng().gen_range(0..n as u32);
        let bucket = opts.upload_limit.map(|rate| {
            Mutex::new(Bucket {
                tokens: 0.0,
                rate: rate as f64,
                burst: (rate as f64 / 10.0).max(2.0 * MAX_REQUEST as f64),
                last: Instant::now(),
            })
        });
        let shared = Arc::new(Shared {
            lengths,
            peer_id,
            storage,
            state: Mutex::new(State {
                have,
                have_count,
                availability: vec![0; n],
                in_progress: HashMap::new(),
                verifying: HashSet::new(),
                peers: HashMap::new(),
                next_key: 1,
                cursor,
                banned: HashSet::new(),
                banned_ids: HashSet::new(),
                banned_keys: HashSet::new(),
                single_source: HashSet::new(),
                stalled: Vec::new(),
                known: HashMap::new(),
                connecting: HashSet::new(),
                assigned: vec![None; n],
                unassigned: n as u32,
                held: 0,
                suggest_cursor: rand::thread_rng().gen_range(0..n.max(1)),

                refusing: HashMap::new(),
                rejects_sent: 0,
                last_tick: (0, 0),
                downloaded: 0,
                hash_failures: 0,
                fatal: None,
                servable: if opts.trust_initial_pieces {
                    Servable::trusting(n)
                } else {
                    Servable::new(n)
                },
                corrupt: None,
            }),
            checked: Notify::new(),
            changed: Notify::new(),
            uploaded: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            turns: tokio::sync::Semaphore::new(1),
            limiter: conn_limit::Limiter::new(conn_limit::BT),
            forms: Mutex::new(FormCache::new(opts.zstd_cache_bytes)),
            zstats: Mutex::new(ZStats::default()),
            bucket,
            listen_addr,
            opts,
            info,
        });
        let s = Swarm { shared };
        tokio::spawn(s.clone().accept_loop(listener));
        tokio::spawn(s.clone().tick_loop());
        info!(%listen_addr, pieces = n, have = have_count, "swarm node started");
        Ok(s)
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.shared.listen_addr
    }

    pub fn peer_id(&self) -> [u8; 20] {
        self.shared.peer_id
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("swarm state lock")
    }

    /// Adds peers' listen addresses (from a tracker); they are dialed and redialed as needed.
    pub fn add_peers(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut st = self.lock();
        for a in addrs {
            if a == self.shared.listen_addr {
                continue;
            }
            st.known.entry(a).or_default();
        }
        drop(st);
        self.dial_known();
    }

    fn dial_known(&self) {
        let now = Instant::now();
        let mut to_dial = Vec::new();
        {
            let mut st = self.lock();
            if st.peers.len() >= self.shared.opts.max_peers {
                return;
            }
            let connected: HashSet<[u8; 20]> = st.peers.values().map(|p| p.peer_id).collect();
            let candidates: Vec<SocketAddr> = st
                .known
                .iter()
                .filter(|(a, k)| {
                    !k.peer_id.is_some_and(|id| connected.contains(&id))
                        && !st.connecting.contains(a)
                        && !st.banned.contains(&a.ip())
                        && k.last_dial
                            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(3))
                })
                .map(|(a, _)| *a)
                .collect();
            for a in candidates {
                st.known.entry(a).or_default().last_dial = Some(now);
                st.connecting.insert(a);
                to_dial.push(a);
            }
        }
        for a in to_dial {
            let s = self.clone();
            tokio::spawn(async move {
                let r = s.dial(a).await;
                s.lock().connecting.remove(&a);
                if let Err(e) = r {
                    debug!(peer = %a, "connection ended: {e}");
                }
            });
        }
    }

    async fn dial(&self, addr: SocketAddr) -> Result<(), SwarmError> {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.shared.opts.bind_ip {
            if ip.is_ipv4() == addr.is_ipv4() {
                sock.bind(SocketAddr::new(ip, 0))?;
            }
        }
        let stream = tokio::time::timeout(Duration::from_secs(5), sock.connect(addr))
            .await
            .map_err(|_| SwarmError::Timeout("connect"))??;
        self.run_peer(stream, addr, true, None).await
    }

    async fn accept_loop(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let slot = match self.shared.limiter.admit(addr.ip()).await {
                        Ok(slot) => Some(slot),
                        Err(why) => {
                            debug!(peer = %addr, "connection refused: {why:?}");
                            continue;
                        }
                    };
                    let s = self.clone();
                    tokio::spawn(async move {
                        if let Some(g) = &s.shared.opts.gate {
                            if !g.admit(addr.ip()).await {
                                return; // closed before any handshake of ours
                            }
                        }
                        if let Err(e) = s.run_peer(stream, addr, false, slot).await {
                            debug!(peer = %addr, "incoming connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(conn_limit::ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    async fn run_peer(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        outgoing: bool,
        slot: Option<conn_limit::Slot>,
    ) -> Result<(), SwarmError> {
        let _ = stream.set_nodelay(true);
        if self.shared.opts.prefer_unsent {
            // A write returns once the data is nearly all handed to the network, so that
            // the start-up turns in `writer` really take turns on the wire.
            let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(TURN_LOWAT);
        }
        if self.lock().banned.contains(&addr.ip()) {
            return Err(SwarmError::Banned);
        }
        // The handshake is read unbuffered (read_exact: never past it); the 256 KiB read
        // buffer is for handshaken peers only, not for every socket a stranger opens.
        let (mut rd, mut wr) = stream.into_split();
        let info_hash = self.shared.info.info_hash;
        let hs = tokio::select! {
            _ = conn_limit::evicted(&slot) => return Err(SwarmError::Evicted),
            r = tokio::time::timeout(conn_limit::BT_HANDSHAKE_TIMEOUT, async {
                wire::write_handshake(&mut wr, info_hash, self.shared.peer_id, self.shared.opts.compress).await?;
                wire::read_handshake(&mut rd).await
            }) => r.map_err(|_| SwarmError::Timeout("handshake"))??,
        };
        slot.iter().for_each(|s| s.opened());
        let rd = tokio::io::BufReader::with_capacity(256 * 1024, rd);
        if hs.info_hash != info_hash {
            return Err(SwarmError::Protocol("peer offered another infohash".into()));
        }
        if hs.peer_id == self.shared.peer_id {
            return Err(SwarmError::Protocol("connected to ourselves".into()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let kill = Arc::new(Notify::new());
        let uploaded_to = Arc::new(AtomicU64::new(0));
        let backlog = Arc::new(Backlog::default());
        let zstd_id = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let key = self.register(
            addr,
            hs,
            outgoing,
            tx.clone(),
            kill.clone(),
            uploaded_to.clone(),
            backlog.clone(),
            zstd_id.clone(),
        )?;
        debug!(peer = %addr, client = %client_name(&hs.peer_id), fast = hs.fast, extended = hs.extended, "peer connected");
        let writer = tokio::spawn(
            self.clone()
                .writer(wr, rx, key, uploaded_to, backlog, zstd_id),
        );
        let max_frame = 13 + MAX_REQUEST as usize + self.shared.lengths.piece_bitfield_bytes();
        let mut frames = FrameReader::new(rd, max_frame);
        let result = loop {
            tokio::select! {
                _ = kill.notified() => break Ok(()),
                _ = conn_limit::evicted(&slot) => break Err(SwarmError::Evicted),
                m = tokio::time::timeout(Duration::from_secs(150), frames.next()) => {
                    match m {
                        Err(_) => break Err(SwarmError::Timeout("peer silent for 150 s")),
                        Ok(Err(e)) => break Err(e.into()),
                        Ok(Ok(None)) => break Ok(()),
                        Ok(Ok(Some(msg))) => {
                            let zpiece = self.shared.opts.compress
                                && matches!(msg, Msg::Extended { id, .. } if id == zblock::OUR_ID);
                            if conn_limit::useful(&msg) || zpiece {
                                slot.iter().for_each(|s| s.touch());
                            }
                            let r = match msg {
                                Msg::Extended { payload, .. } if zpiece => self.on_zpiece(key, &payload),
                                msg => self.on_message(key, msg),
                            };
                            if let Err(e) = r {
                                break Err(e);
                            }
                        }
                    }
                }
            }
        };
        self.unregister(key);
        writer.abort();
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        &self,
        addr: SocketAddr,
        hs: wire::PeerHandshake,
        outgoing: bool,
        tx: mpsc::UnboundedSender<Out>,
        kill: Arc<Notify>,
        uploaded_to: Arc<AtomicU64>,
        backlog: Arc<Backlog>,
        zstd_id: Arc<std::sync::atomic::AtomicU8>,
    ) -> Result<u64, SwarmError> {
        let (peer_id, fast) = (hs.peer_id, hs.fast);
        let mut st = self.lock();
        if outgoing {
            if let Some(k) = st.known.get_mut(&addr) {
                k.peer_id = Some(peer_id);
            }
        }
        if st.banned_ids.contains(&peer_id) {
            return Err(SwarmError::Banned);
        }
        // Full: an idle incoming connection makes room (it ends at once, see `conn_limit`).
        if st.peers.len() >= self.shared.opts.max_peers && !self.shared.limiter.evict_idle() {
            return Err(SwarmError::Protocol("too many peers".into()));
        }
        // Two nodes that dial each other at once keep the connection opened by the one with
        // the smaller peer id; both sides decide the same way.
        if let Some((&old_key, old)) = st.peers.iter().find(|(_, p)| p.peer_id == peer_id) {
            let keep_new = outgoing == (self.shared.peer_id < peer_id);
            if !keep_new || old.outgoing == outgoing {
                return Err(SwarmError::Protocol("duplicate connection".into()));
            }
            old.kill.notify_one();
            Self::remove_peer(&mut st, old_key);
        }
        let key = st.next_key;
        st.next_key += 1;
        let n = st.have.len();
        let complete = st.have_count as usize == n;
        st.peers.insert(
            key,
            PeerState {
                addr,
                peer_id,
                tx: tx.clone(),
                kill,
                has: vec![false; n],
                has_count: 0,
                useful: 0,
                choked_us: true,
                am_interested: false,
                fast,
                inflight: HashMap::new(),
                rejected: HashMap::new(),
                rationing: None,
                suggested: VecDeque::new(),
                uploaded_to,
                downloaded_from: 0,
                last_block: None,
                rate: RateMeter::new(),
                outgoing,
                admit: Admission::default(),
                backlog: backlog.clone(),
                zstd_id,
            },
        );
        // Announce what we have at once: HAVE_ALL / HAVE_NONE with the Fast extension, a
        // bitfield otherwise (even an empty one, so the peer knows where we stand).
        let first = if fast && complete {
            Msg::HaveAll
        } else if fast && st.have_count == 0 {
            Msg::HaveNone
        } else {
            Msg::Bitfield(wire::bitfield_from(&st.have))
        };
        let p = st.peers.get(&key).expect("inserted");
        p.send(first);
        if self.shared.opts.compress && hs.extended {
            p.send(Msg::Extended {
                id: zblock::HANDSHAKE_ID,
                payload: zblock::handshake_payload(concat!(
                    "blockswarm ",
                    env!("CARGO_PKG_VERSION")
                )),
            });
        }
        // We never choke on a LAN: everyone may ask from the start.
        p.send(Msg::Unchoke);
        Ok(key)
    }

    fn remove_peer(st: &mut State, key: u64) {
        let Some(p) = st.peers.remove(&key) else {
            return;
        };
        for (i, &h) in p.has.iter().enumerate() {
            if h {
                count_holder(&mut st.availability, &mut st.held, i, false);
            }
        }
        for &(index, begin) in p.inflight.keys() {
            Self::release_block(st, key, index, begin);
        }
        // A piece only this peer was fetching starts over with another single peer.
        st.in_progress.retain(|_, ip| ip.owner != Some(key));
        for a in st.assigned.iter_mut() {
            if *a == Some(key) {
                *a = None;
                st.unassigned += 1;
            }
        }
        st.refusing.retain(|(k, _), _| *k != key);
    }

    fn unregister(&self, key: u64) {
        let mut st = self.lock();
        Self::remove_peer(&mut st, key);
        drop(st);
        self.shared.changed.notify_waiters();
    }

    /// Forgets that `key` requested a block; it becomes missing if nobody else asked for it.
    /// A single-source piece whose owner gives up a block (reject, choke, timeout, gone)
    /// starts over, so the next peer to ask becomes its owner.
    fn release_block(st: &mut State, key: u64, index: u32, begin: u32) {
        if st
            .in_progress
            .get(&index)
            .is_some_and(|ip| ip.owner == Some(key))
        {
            st.in_progress.remove(&index);
            return;
        }
        if let Some(ip) = st.in_progress.get_mut(&index) {
            let b = (begin / BLOCK_SIZE) as usize;
            ip.requesters[b].retain(|&k| k != key);
            if ip.blocks[b] == Block::Requested && ip.requesters[b].is_empty() {
                ip.blocks[b] = Block::Missing;
                ip.first_missing = ip.first_missing.min(b);
            }
        }
    }

    fn on_message(&self, key: u64, msg: Msg) -> Result<(), SwarmError> {
        let n = self.shared.lengths.total_pieces();
        let mut st = self.lock();
        let st = &mut *st;
        match msg {
            Msg::KeepAlive | Msg::NotInterested | Msg::AllowedFast(_) => {}
            Msg::Suggest(i) => {
                // A blockswarm seeder that refused a request names a piece it has not sent
                // to anyone yet: asked for next, it will not be refused.
                let we_need = i < n && !st.have[i as usize];
                if let Some(p) = st.peers.get_mut(&key) {
                    if we_need && p.has[i as usize] && p.suggested.len() < MAX_SUGGESTED {
                        p.suggested.push_back(i);
                    }
                }
                self.fill_requests(st, key);
            }
            Msg::Other(id) => debug!(id, "ignoring unknown message"),
            Msg::Extended { id, payload } => {
                if id == zblock::HANDSHAKE_ID && self.shared.opts.compress {
                    if let Some(p) = st.peers.get(&key) {
                        let zid = zblock::peer_id_for_zstd(&payload).unwrap_or(0);
                        p.zstd_id.store(zid, Ordering::Relaxed);
                    }
                } else {
                    debug!(id, "ignoring an extension message");
                }
            }
            Msg::Bitfield(b) => {
                let bits = wire::bitfield_to(&b, n as usize)?;
                self.set_has_all(st, key, Some(bits));
            }
            Msg::HaveAll => self.set_has_all(st, key, None),
            Msg::HaveNone => self.set_has_all(st, key, Some(vec![false; n as usize])),
            Msg::Have(i) => {
                if i >= n {
                    return Err(SwarmError::Protocol(format!("HAVE {i} beyond {n} pieces")));
                }
                let we_have = st.have[i as usize];
                if let Some(p) = st.peers.get_mut(&key) {
                    if !p.has[i as usize] {
                        p.has[i as usize] = true;
                        p.has_count += 1;
                        if !we_have {
                            p.useful += 1;
                        }
                        count_holder(&mut st.availability, &mut st.held, i as usize, true);
                    }
                }
                self.update_interest(st, key);
                self.fill_requests(st, key);
            }
            Msg::Choke => {
                if let Some(p) = st.peers.get_mut(&key) {
                    p.choked_us = true;
                    if !p.fast {
                        // Without the Fast extension a choke drops every pending request.
                        let pending: Vec<_> = p.inflight.keys().copied().collect();
                        for &(i, b) in &pending {
                            p.give_up(i, b);
                        }
                        for (i, b) in pending {
                            Self::release_block(st, key, i, b);
                        }
                    }
                }
            }
            Msg::Unchoke => {
                if let Some(p) = st.peers.get_mut(&key) {
                    p.choked_us = false;
                }
                self.fill_requests(st, key);
            }
            Msg::Interested => {}
            Msg::Request(r) => {
                let ok = r.index < n
                    && st.have[r.index as usize]
                    && st.servable.admit(r.index, Instant::now()) == Admit::Serve
                    && r.length > 0
                    && r.length <= MAX_REQUEST
                    && r.begin as u64 + r.length as u64
                        <= self.shared.lengths.piece_length(
                            self.shared
                                .lengths
                                .validate_piece_index(r.index)
                                .expect("checked"),
                        ) as u64;
                let fast = st.peers.get(&key).is_some_and(|p| p.fast);
                // Once some peer holds every piece and our upload queue has run dry, a second
                // copy costs nothing: the link would be idle otherwise.
                let idle = st.held == n
                    && self.shared.queued.load(Ordering::Relaxed)
                        < self.shared.info.piece_length as u64;
                let refuse = ok
                    && fast
                    && self.shared.opts.prefer_unsent
                    && Self::refuse(st, key, r.index, idle);
                // With a refusal of a piece's first block, suggest a piece nobody has been
                // sent yet (reserved for this peer), so the next request is not refused too.
                let suggest = if refuse && r.begin == 0 {
                    Self::next_unassigned(st, key)
                } else {
                    None
                };
                let mut flooding = false;
                if let Some(p) = st.peers.get(&key) {
                    // Past `MAX_QUEUED_REQUESTS` a request is refused like any other.
                    if ok && !refuse && p.backlog.try_queue_request() {
                        let _ = p.tx.send(Out::Serve(r));
                    } else if p.fast {
                        flooding = !p.send(Msg::Reject(r));
                        st.rejects_sent += 1;
                        if let Some(j) = suggest {
                            p.send(Msg::Suggest(j));
                        }
                    }
                }
                // It went on requesting while not reading our refusals (some 60,000 of them
                // unread): a flood, not a slow peer. Banned, so it cannot redial and go on.
                if flooding {
                    self.ban(st, key, "requests without reading our refusals");
                }
            }
            Msg::Cancel(r) => {
                if let Some(p) = st.peers.get(&key) {
                    // Counted like a message until the writer takes it.
                    if p.backlog.queue_msg(&Msg::Cancel(r)) {
                        let _ = p.tx.send(Out::Cancel(r));
                    } else {
                        p.kill.notify_one();
                    }
                }
            }
            Msg::Reject(r) => {
                if let Some(p) = st.peers.get_mut(&key) {
                    if p.inflight.remove(&(r.index, r.begin)).is_some() {
                        p.rejected.insert(r.index, Instant::now());
                        if p.has_count == n {
                            p.rationing = Some(Instant::now());
                        }
                        Self::release_block(st, key, r.index, r.begin);
                        // A refused piece nothing arrived for yet must not hold a slot of
                        // `max_pieces_in_progress` while we wait to ask someone else.
                        if st.in_progress.get(&r.index).is_some_and(|ip| {
                            ip.received == 0 && ip.blocks.iter().all(|b| *b == Block::Missing)
                        }) {
                            st.in_progress.remove(&r.index);
                        }
                    }
                }
                self.fill_requests(st, key);
            }
            Msg::Piece { index, begin, data } => {
                // From a `bs_zstd` peer, a plain block is one that does not compress.
                let form = st
                    .peers
                    .get(&key)
                    .is_some_and(|p| p.zstd_id.load(Ordering::Relaxed) != 0)
                    .then_some(Form::Raw);
                self.on_block(st, key, index, begin, data, form)?
            }
        }
        Ok(())
    }

    /// Seeder policy: should `key`'s request for `index` be refused because the piece went
    /// to another connected peer, which can pass it on? Refused for [`REJECT_WINDOW`] while
    /// the piece is on its way to that peer, for [`HELD_REJECT_WINDOW`] once some peer has
    /// it; after that the asker is served (the holder may not be sharing).
    fn refuse(st: &mut State, key: u64, index: u32, idle: bool) -> bool {
        let i = index as usize;
        match st.assigned[i] {
            Some(k) if k == key => false,
            Some(_) if idle => {
                debug!(piece = index, "serving a piece a second time: upload idle");
                false
            }
            Some(k) if st.peers.contains_key(&k) || st.availability[i] > 0 => {
                let now = Instant::now();
                let e = st.refusing.entry((key, index)).or_insert((now, now));
                // A peer that stopped asking for a while and asks again starts a new streak.
                if now.duration_since(e.1) > 2 * REJECT_WINDOW {
                    e.0 = now;
                }
                e.1 = now;
                let since = e.0;
                let window = if st.availability[i] > 0 {
                    HELD_REJECT_WINDOW
                } else {
                    REJECT_WINDOW
                };
                let refuse = since.elapsed() < window;
                if !refuse {
                    debug!(
                        piece = index,
                        assignee_has = st.peers.get(&k).is_some_and(|p| p.has[i]),
                        "serving a piece a second time: asked for it too long"
                    );
                }
                refuse
            }
            // Not yet sent, or its peer left without passing it on.
            _ => {
                if st.assigned[i].is_none() {
                    st.unassigned -= 1;
                }
                st.assigned[i] = Some(key);
                false
            }
        }
    }

    /// Seeder policy: the next piece not yet sent to anyone that `key` lacks, now reserved
    /// for `key` (as if it had asked for it first).
    fn next_unassigned(st: &mut State, key: u64) -> Option<u32> {
        let n = st.assigned.len();
        let p = st.peers.get(&key)?;
        if st.unassigned == 0 {
            return None;
        }
        for k in 0..n {
            let j = (st.suggest_cursor + k) % n;
            if st.assigned[j].is_none() && !p.has[j] {
                st.suggest_cursor = (j + 1) % n;
                st.assigned[j] = Some(key);
                st.unassigned -= 1;
                return Some(j as u32);
            }
        }
        None
    }

    fn set_has_all(&self, st: &mut State, key: u64, bits: Option<Vec<bool>>) {
        let n = st.have.len();
        let Some(p) = st.peers.get_mut(&key) else {
            return;
        };
        let bits = bits.unwrap_or_else(|| vec![true; n]);
        let mut useful = 0;
        for (i, (&had, &has)) in p.has.iter().zip(&bits).enumerate() {
            if has != had {
                count_holder(&mut st.availability, &mut st.held, i, has);
            }
            if has && !st.have[i] {
                useful += 1;
            }
        }
        p.has_count = bits.iter().filter(|&&b| b).count() as u32;
        p.has = bits;
        p.useful = useful;
        self.update_interest(st, key);
        self.fill_requests(st, key);
        self.shared.changed.notify_waiters();
    }

    fn update_interest(&self, st: &mut State, key: u64) {
        if let Some(p) = st.peers.get_mut(&key) {
            let want = p.useful > 0;
            if want != p.am_interested {
                p.am_interested = want;
                let m = if want {
                    Msg::Interested
                } else {
                    Msg::NotInterested
                };
                p.send(m);
            }
        }
    }

    /// Chooses a new piece for `key` to start: rarest first, ties broken by distance from
    /// this node's random start point.
    fn pick_new_piece(&self, st: &State, key: u64, spare: Option<u32>) -> Option<u32> {
        let p = st.peers.get(&key)?;
        let n = st.have.len() as u32;
        let mut best: Option<(u32, u32)> = None;
        for k in 0..n {
            let i = (st.cursor + k) % n;
            let iu = i as usize;
            if !p.has[iu]
                || st.have[iu]
                || st.in_progress.contains_key(&i)
                || st.verifying.contains(&i)
                || refused(p, i)
                || spared(st, spare, i)
            {
                continue;
            }
            let a = st.availability[iu];
            if best.is_none_or(|(ba, _)| a < ba) {
                best = Some((a, i));
                if a <= 1 {
                    break;
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// The first piece `key` suggested that we can still start.
    fn take_suggested(st: &mut State, key: u64) -> Option<u32> {
        let p = st.peers.get_mut(&key)?;
        while let Some(i) = p.suggested.pop_front() {
            let iu = i as usize;
            if !st.have[iu]
                && !st.in_progress.contains_key(&i)
                && !st.verifying.contains(&i)
                && !refused(p, i)
            {
                return Some(i);
            }
        }
        None
    }

    fn new_in_progress(&self, index: u32) -> InProgress {
        let vi = self
            .shared
            .lengths
            .validate_piece_index(index)
            .expect("valid");
        let len = self.shared.lengths.piece_length(vi) as usize;
        let nb = self.shared.lengths.chunks_per_piece(vi) as usize;
        InProgress {
            buf: vec![0u8; len],
            blocks: vec![Block::Missing; nb],
            requesters: vec![Vec::new(); nb],
            received: 0,
            first_missing: 0,
            from: vec![NOBODY; nb],
            owner: None,
            forms: vec![None; nb],
        }
    }

    /// Next block for `key` to request, marking it requested. `seeds`: connected peers
    /// that have every piece.
    ///
    /// Outside the end game a rationing seed (the seeder) is not asked for a piece that a
    /// peer which is not a seed also has: that piece can come from the swarm, and the seeder
    /// would only refuse it (its link is for pieces nobody else has yet). Receivers that
    /// completed are asked for anything: at the end they carry the swarm.
    fn pick_block(&self, st: &mut State, key: u64, seeds: u32) -> Option<(u32, u32, u32)> {
        let p = st.peers.get(&key)?;
        let unstarted =
            st.have.len() - st.have_count as usize - st.in_progress.len() - st.verifying.len();
        let spare = (p.is_rationing() && unstarted > 0).then_some(seeds);
        let mut found = None;
        // 0. Blocks stalled at another peer.
        let mut k = 0;
        while k < st.stalled.len() {
            let (index, begin) = st.stalled[k];
            let b = (begin / BLOCK_SIZE) as usize;
            let Some(ip) = st.in_progress.get(&index) else {
                st.stalled.swap_remove(k);
                continue;
            };
            if ip.blocks[b] != Block::Requested || ip.requesters[b].len() >= 2 {
                st.stalled.swap_remove(k);
                continue;
            }
            if p.has[index as usize]
                && !refused(p, index)
                && ip.open_to(key)
                && !ip.requesters[b].contains(&key)
            {
                st.stalled.swap_remove(k);
                found = Some((index, b));
                break;
            }
            k += 1;
        }
        // 1. Finish pieces already in progress.
        for (&index, ip) in st.in_progress.iter() {
            if found.is_some() {
                break;
            }
            if !p.has[index as usize]
                || refused(p, index)
                || !ip.open_to(key)
                || spared(st, spare, index)
            {
                continue;
            }
            if let Some(b) =
                (ip.first_missing..ip.blocks.len()).find(|&b| ip.blocks[b] == Block::Missing)
            {
                found = Some((index, b));
                break;
            }
        }
        // 2. Start a new piece.
        // Pieces waiting to be hashed and written count too: with a disk slower than the
        // network they would pile up in memory otherwise.
        if found.is_none()
            && st.in_progress.len() + st.verifying.len() < self.shared.opts.max_pieces_in_progress
        {
            let suggested = Self::take_suggested(st, key);
            if let Some(index) = suggested.or_else(|| self.pick_new_piece(st, key, spare)) {
                if st.availability[index as usize] <= 1 {
                    st.cursor = (index + 1) % st.have.len() as u32;
                }
                let mut ip = self.new_in_progress(index);
                if st.single_source.contains(&index) {
                    ip.owner = Some(key);
                }
                st.in_progress.insert(index, ip);
                found = Some((index, 0));
            }
        }
        // 3. End game: every piece we lack is started; double up on blocks others are
        //    fetching (at most two requesters per block).
        let unstarted =
            st.have.len() - st.have_count as usize - st.in_progress.len() - st.verifying.len();
        if found.is_none() && unstarted == 0 {
            let p = st.peers.get(&key)?;
            'outer: for (&index, ip) in st.in_progress.iter() {
                if !p.has[index as usize] || refused(p, index) || !ip.open_to(key) {
                    continue;
                }
                for b in 0..ip.blocks.len() {
                    if ip.blocks[b] == Block::Requested
                        && ip.requesters[b].len() < 2
                        && !ip.requesters[b].contains(&key)
                    {
                        found = Some((index, b));
                        break 'outer;
                    }
                }
            }
        }
        let (index, b) = found?;
        let vi = self
            .shared
            .lengths
            .validate_piece_index(index)
            .expect("valid");
        let size = self
            .shared
            .lengths
            .chunk_size(vi, b as u32)
            .expect("valid block");
        let ip = st.in_progress.get_mut(&index).expect("in progress");
        ip.blocks[b] = Block::Requested;
        ip.requesters[b].push(key);
        if ip.first_missing == b {
            ip.first_missing = b + 1;
        }
        Some((index, b as u32 * BLOCK_SIZE, size))
    }

    fn fill_requests(&self, st: &mut State, key: u64) {
        // Only a rationing seed's requests need the number of seeds (see `pick_block`).
        let n = st.have.len() as u32;
        let seeds = match st.peers.get(&key) {
            Some(p) if p.is_rationing() => {
                st.peers.values().filter(|p| p.has_count == n).count() as u32
            }
            _ => 0,
        };
        loop {
            let Some(p) = st.peers.get(&key) else { return };
            let opts = &self.shared.opts;
            if p.choked_us
                || p.useful == 0
                || p.inflight.len()
                    >= p.rate
                        .pipeline(opts.request_queue_time, opts.pipeline_blocks)
            {
                return;
            }
            let Some((index, begin, length)) = self.pick_block(st, key, seeds) else {
                return;
            };
            let p = st.peers.get_mut(&key).expect("present");
            p.inflight.insert((index, begin), Instant::now());
            p.send(Msg::Request(Req {
                index,
                begin,
                length,
            }));
        }
    }

    fn on_block(
        &self,
        st: &mut State,
        key: u64,
        index: u32,
        begin: u32,
        data: Vec<u8>,
        form: Option<Form>,
    ) -> Result<(), SwarmError> {
        let lengths = &self.shared.lengths;
        let vi = lengths
            .validate_piece_index(index)
            .ok_or_else(|| SwarmError::Protocol(format!("block of piece {index} out of range")))?;
        if lengths
            .chunk_info_from_received_data(vi, begin, data.len() as u32)
            .is_none()
        {
            return Err(SwarmError::Protocol(format!(
                "block {index}+{begin} has a wrong length {}",
                data.len()
            )));
        }
        let Some(p) = st.peers.get_mut(&key) else {
            return Ok(());
        };
        let requested = p.inflight.remove(&(index, begin)).is_some();
        match p.admit.judge(requested, index, begin) {
            Verdict::Accept => {}
            Verdict::Late => return Ok(()),
            Verdict::Strike => {
                debug!(peer = %p.addr, piece = index, begin, strikes = p.admit.strikes(), "dropped a block we did not ask this peer for");
                return Ok(());
            }
            Verdict::Ban => {
                self.ban(st, key, "sends blocks nobody asked it for");
                return Err(SwarmError::Banned);
            }
        }
        {
            p.downloaded_from += data.len() as u64;
            p.last_block = Some(Instant::now());
            p.rate.add(data.len() as u64);
        }
        st.downloaded += data.len() as u64;
        let b = (begin / BLOCK_SIZE) as usize;
        let Some(ip) = st.in_progress.get_mut(&index) else {
            // Already have it, or verifying it, or never asked: a late end-game duplicate.
            self.fill_requests(st, key);
            return Ok(());
        };
        if ip.blocks[b] == Block::Received {
            self.fill_requests(st, key);
            return Ok(());
        }
        ip.buf[begin as usize..begin as usize + data.len()].copy_from_slice(&data);
        ip.blocks[b] = Block::Received;
        ip.received += 1;
        ip.from[b] = key;
        ip.forms[b] = form;
        let others: Vec<u64> = ip.requesters[b].drain(..).filter(|&k| k != key).collect();
        let done = ip.received as usize == ip.blocks.len();
        // End game: tell the other requesters of this block to stop.
        let length = data.len() as u32;
        for k in others {
            if let Some(p) = st.peers.get_mut(&k) {
                if p.give_up(index, begin) {
                    p.send(Msg::Cancel(Req {
                        index,
                        begin,
                        length,
                    }));
                }
            }
        }
        if done {
            let ip = st.in_progress.remove(&index).expect("present");
            st.verifying.insert(index);
            let s = self.clone();
            tokio::spawn(async move { s.verify_and_store(index, ip).await });
        }
        self.fill_requests(st, key);
        Ok(())
    }

    async fn verify_and_store(self, index: u32, ip: InProgress) {
        let expected = self.shared.info.piece_hashes[index as usize];
        let storage = self.shared.storage.clone();
        let offset = index as u64 * self.shared.info.piece_length as u64;
        let contributors = ip.contributors();
        let InProgress { buf, forms, .. } = ip;
        let res = tokio::task::spawn_blocking(move || {
            let digest: [u8; 20] = Sha1::digest(&buf).into();
            if digest != expected {
                return Ok(false);
            }
            storage.write_at(offset, &buf).map(|_| true)
        })
        .await;
        let mut st = self.lock();
        st.verifying.remove(&index);
        match res {
            Ok(Ok(true)) => {
                debug!(piece = index, "piece verified and written");
                self.keep_forms(index, forms);
                self.mark_have(&mut st, index)
            }
            Ok(Ok(false)) => {
                st.hash_failures += 1;
                warn!(
                    piece = index,
                    "piece failed its SHA-1 check; fetching it again"
                );
                self.punish(&mut st, index, &contributors);
            }
            Ok(Err(e)) => {
                st.fatal = Some(format!("storage write failed: {e}"));
            }
            Err(e) => {
                st.fatal = Some(format!("verification task failed: {e}"));
            }
        }
        let keys: Vec<u64> = st.peers.keys().copied().collect();
        for k in keys {
            self.fill_requests(&mut st, k);
        }
        drop(st);
        self.shared.changed.notify_waiters();
    }

    /// Peers that sent data for a piece that failed its hash. A sole sender is banned. With
    /// several senders nobody is blamed on a guess: if one of them is already banned, that
    /// was the culprit; otherwise the piece is fetched again from a single peer, so that a
    /// second failure names the culprit for sure.
    fn punish(&self, st: &mut State, index: u32, contributors: &HashSet<u64>) {
        if contributors.iter().any(|k| st.banned_keys.contains(k)) {
            return;
        }
        if contributors.len() == 1 {
            let k = *contributors.iter().next().expect("one");
            self.ban(st, k, "sent corrupt data");
        } else {
            debug!(
                piece = index,
                senders = contributors.len(),
                "refetching from one peer"
            );
            st.single_source.insert(index);
        }
    }

    /// Drops and bans a peer for the session, and forgets the blocks it sent for pieces not
    /// yet complete (they would only fail their hash later).
    fn ban(&self, st: &mut State, key: u64, why: &str) {
        let Some(p) = st.peers.get(&key) else {
            return;
        };
        warn!(peer = %p.addr, client = %client_name(&p.peer_id), "banning peer that {why}");
        p.kill.notify_one();
        st.banned.insert(p.addr.ip());
        st.banned_ids.insert(p.peer_id);
        st.banned_keys.insert(key);
        Self::remove_peer(st, key);
        for ip in st.in_progress.values_mut() {
            for b in 0..ip.blocks.len() {
                if ip.from[b] == key {
                    ip.from[b] = NOBODY;
                    ip.blocks[b] = Block::Missing;
                    ip.received -= 1;
                    ip.first_missing = ip.first_missing.min(b);
                }
            }
        }
    }

    /// Marks a piece as present (after verification or a resume check) and tells every peer.
    fn mark_have(&self, st: &mut State, index: u32) {
        let i = index as usize;
        if st.have[i] {
            return;
        }
        st.have[i] = true;
        st.have_count += 1;
        st.servable.verified(index);
        st.in_progress.remove(&index);
        st.single_source.remove(&index);
        let keys: Vec<u64> = st.peers.keys().copied().collect();
        for k in keys {
            let p = st.peers.get_mut(&k).expect("present");
            if p.has[i] {
                p.useful -= 1;
            }
            // The peer's outstanding requests for this piece are pointless now.
            let stale: Vec<(u32, u32)> = p
                .inflight
                .keys()
                .filter(|(pi, _)| *pi == index)
                .copied()
                .collect();
            for (pi, b) in stale {
                p.give_up(pi, b);
            }
            p.send(Msg::Have(index));
            self.update_interest(st, k);
        }
    }

    /// Marks pieces found correct on storage (resume); safe to call while downloading.
    pub fn mark_verified(&self, index: u32) {
        let mut st = self.lock();
        self.mark_have(&mut st, index);
        drop(st);
        self.shared.changed.notify_waiters();
    }

    /// Which pieces are present (verified and written).
    pub fn have_bits(&self) -> Vec<bool> {
        self.lock().have.clone()
    }

    /// True if the piece is present, being fetched or being verified.
    pub fn is_busy_or_have(&self, index: u32) -> bool {
        let st = self.lock();
        st.have[index as usize]
            || st.in_progress.contains_key(&index)
            || st.verifying.contains(&index)
    }

    /// Seeder start-up: fewer pieces held by peers than twice the number of peers.
    fn ramping(&self) -> bool {
        let st = self.lock();
        (st.held as usize) < 2 * st.peers.len() && st.unassigned > 0
    }

    async fn throttle(&self, n: u64) {
        let Some(bucket) = &self.shared.bucket else {
            return;
        };
        loop {
            let wait = {
                let mut b = bucket.lock().expect("bucket lock");
                let now = Instant::now();
                let dt = now.duration_since(b.last).as_secs_f64();
                b.last = now;
                b.tokens = (b.tokens + dt * b.rate).min(b.burst);
                if b.tokens >= n as f64 {
                    b.tokens -= n as f64;
                    return;
                }
                Duration::from_secs_f64((n as f64 - b.tokens) / b.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Twice a second at debug level: what the seeder sent, or where a receiver stands
    /// (how the bench's profiles were read).
    fn debug_tick(&self, st: &mut State) {
        if st.have_count == st.have.len() as u32 {
            let up = self.shared.uploaded.load(Ordering::Relaxed);
            let (up0, rej0) = st.last_tick;
            debug!(
                uploaded_kib = (up - up0) / 1024,
                rejects = st.rejects_sent - rej0,
                peers = st.peers.len(),
                "tick: serving"
            );
            st.last_tick = (up, st.rejects_sent);
            return;
        }
        let useful: Vec<&PeerState> = st.peers.values().filter(|p| p.useful > 0).collect();
        debug!(
            have = st.have_count,
            in_progress = st.in_progress.len(),
            verifying = st.verifying.len(),
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

    async fn tick_loop(self) {
        let mut iv = tokio::time::interval(Duration::from_millis(500));
        loop {
            iv.tick().await;
            let timeout = self.shared.opts.request_timeout;
            {
                let mut st = self.lock();
                let now = Instant::now();
                if tracing::enabled!(tracing::Level::DEBUG) {
                    self.debug_tick(&mut st);
                }
                let keys: Vec<u64> = st.peers.keys().copied().collect();
                let stalled: Vec<(u32, u32)> = st
                    .peers
                    .values()
                    .flat_map(|p| p.inflight.iter())
                    .filter(|(_, &t)| now.duration_since(t) > STALL_AFTER)
                    .map(|(k, _)| *k)
                    .collect();
                st.stalled = stalled;
                for k in &keys {
                    let p = st.peers.get_mut(k).expect("present");
                    let expired: Vec<(u32, u32)> = p
                        .inflight
                        .iter()
                        .filter(|(_, &t)| now.duration_since(t) > timeout)
                        .map(|(k, _)| *k)
                        .collect();
                    for &(i, b) in &expired {
                        p.give_up(i, b);
                    }
                    for (i, b) in expired {
                        Self::release_block(&mut st, *k, i, b);
                    }
                }
                for k in keys {
                    self.fill_requests(&mut st, k);
                }
            }
            self.dial_known();
        }
    }

    /// Current figures.
    pub fn stats(&self) -> Stats {
        let st = self.lock();
        let n = st.have.len() as u32;
        let bytes_have = (0..n)
            .filter(|&i| st.have[i as usize])
            .map(|i| {
                self.shared
                    .lengths
                    .piece_length(self.shared.lengths.validate_piece_index(i).expect("valid"))
                    as u64
            })
            .sum();
        Stats {
            pieces_have: st.have_count,
            pieces_total: n,
            bytes_have,
            bytes_total: self.shared.info.total_length,
            uploaded: self.shared.uploaded.load(Ordering::Relaxed),
            downloaded: st.downloaded,
            hash_failures: st.hash_failures,
            unreadable_pieces: st.servable.unreadable_pieces(),
            pieces_verified: st.servable.verified_count() as u32,
            zstd: self.shared.zstats.lock().expect("zstats lock").clone(),
            peers: st
                .peers
                .values()
                .map(|p| PeerStats {
                    addr: p.addr.to_string(),
                    peer_id: hex::encode(p.peer_id),
                    client: client_name(&p.peer_id),
                    pieces: p.has_count,
                    complete: p.has_count == n,
                    uploaded_to: p.uploaded_to.load(Ordering::Relaxed),
                    downloaded_from: p.downloaded_from,
                    fast: p.fast,
                    useful: p.useful,
                    since_block: p.last_block.map(|t| t.elapsed()),
                    zstd: p.zstd_id.load(Ordering::Relaxed) != 0,
                })
                .collect(),
        }
    }

    /// Peer addresses we were given (tracker, `--peer`) and dial.
    pub fn known_peers(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.lock().known.keys().copied().collect();
        v.sort();
        v
    }

    /// True if this node banned the peers at `ip` (a seeder does not wait for them).
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.lock().banned.contains(&ip)
    }

    pub fn is_complete(&self) -> bool {
        let st = self.lock();
        st.have_count as usize == st.have.len()
    }

    /// A stored piece found not to match the manifest when first served, if any: the
    /// node serves nothing more, and should stop (source changed since imaging, or wrong).
    pub fn corrupt_piece(&self) -> Option<CorruptPiece> {
        self.lock().corrupt.clone()
    }

    /// A fatal storage error, if one happened.
    pub fn fatal_error(&self) -> Option<String> {
        self.lock().fatal.clone()
    }

    /// Waits until something changes (a piece verified, a peer joined or left).
    pub async fn changed(&self) {
        let n = self.shared.changed.notified();
        tokio::select! {
            _ = n => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }

    /// Waits until every piece is present, or a fatal error.
    pub async fn wait_complete(&self) -> Result<(), SwarmError> {
        loop {
            if let Some(e) = self.fatal_error() {
                return Err(SwarmError::Storage(e));
            }
            if self.is_complete() {
                return Ok(());
            }
            self.changed().await;
        }
    }

    /// Closes every connection.
    pub fn disconnect_all(&self) {
        let st = self.lock();
        for p in st.peers.values() {
            p.kill.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_follows_the_measured_rate_within_bounds() {
        let q = Duration::from_millis(500);
        let mut m = RateMeter::new();
        assert_eq!(m.pipeline(q, 64), INITIAL_PIPELINE_BLOCKS);
        // 1 MiB/s for half a second: 512 KiB queued = 32 blocks.
        m.rate = Some(1024.0 * 1024.0);
        assert_eq!(m.pipeline(q, 64), 32);
        assert_eq!(m.pipeline(q, 16), 16, "capped by pipeline_blocks");
        m.rate = Some(1000.0);
        assert_eq!(
            m.pipeline(q, 64),
            MIN_PIPELINE_BLOCKS,
            "never below the floor"
        );
        m.rate = Some(1e12);
        assert_eq!(m.pipeline(q, 64), 64);
    }

    #[test]
    fn rate_meter_measures_bytes_per_second() {
        let mut m = RateMeter::new();
        m.window_start = Instant::now() - Duration::from_millis(500);
        m.add(500_000);
        let r = m.rate.expect("a sample after 200 ms");
        assert!((900_000.0..=1_010_000.0).contains(&r), "{r}");
        // The next window is averaged with the last.
        m.window_start = Instant::now() - Duration::from_millis(500);
        m.add(1_500_000);
        let r2 = m.rate.unwrap();
        assert!((1_800_000.0..=2_020_000.0).contains(&r2), "{r2}");
        // After an idle gap the old rate is dropped, not averaged in.
        m.window_start = Instant::now() - Duration::from_secs(4);
        m.add(400_000);
        let r3 = m.rate.unwrap();
        assert!(r3 < 110_000.0, "{r3}");
    }
}
