//! The swarm engine's driver: sockets, tasks and timers around the policy core
//! ([`crate::proto`]). One mutex holds the core and, under the same keys as the core's
//! peers, each connection's channels ([`Link`]); every event (a message read by a
//! connection's reader task, a verification ended, the tick) is fed to the core and the
//! actions it queues are carried out before the lock is released. Each connection is a
//! reader task (framing, handshake) and a writer task (`serve`: queued messages, block
//! requests served from storage); verification runs on the blocking pool.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use librqbit_core::lengths::Lengths;
use rand::Rng;
use sha1::{Digest, Sha1};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::backlog::Backlog;
use crate::conn_limit;
use crate::proto::{self, Action, Core, Input, Verified};
use crate::storage::Storage;
use crate::wire::{Msg, Req, MAX_REQUEST};
use crate::zblock::{Form, FormCache, ZStats};
use crate::SwarmError;

mod conn;
mod serve;
mod zserve;
pub use crate::proto::{
    PeerStats, Stats, HELD_REJECT_WINDOW, MIN_PIPELINE_BLOCKS, REJECT_WINDOW, STALL_AFTER,
};
pub use serve::CorruptPiece;

/// Seeder sockets: unsent bytes above which a write waits (`TCP_NOTSENT_LOWAT`).
const TURN_LOWAT: u32 = 64 * 1024;

/// Most bytes a serving peer reads from storage in one go (consecutive requests).
const MAX_BATCH: u32 = 256 * 1024;

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
    /// Connections this node opens itself, at most (the rest of `max_peers` is left for
    /// peers that dial it: in a room larger than the cap, nodes that started first would
    /// otherwise fill their slots with each other and leave the later ones a swarm of their
    /// own with no seeder; found by the simulator, bench/README.md).
    pub dial_peers: usize,
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
            dial_peers: 32,
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

enum Out {
    Msg(Msg),
    Serve(Req),
    Cancel(Req),
}

/// One connection's side of the driver: how to reach its writer and stop its reader.
struct Link {
    tx: mpsc::UnboundedSender<Out>,
    kill: Arc<Notify>,
    fast: bool,
    addr: SocketAddr,
    uploaded_to: Arc<AtomicU64>,
    /// What this connection's writer has queued (bounded, see `backlog`).
    backlog: Arc<Backlog>,
    /// The id it wants for `bs_zstd` messages (0: plain blocks only); read by the writer.
    zstd_id: Arc<AtomicU8>,
}

/// The core and the connections' links, under one lock.
struct Node {
    core: Core,
    links: HashMap<u64, Link>,
    /// A piece found not to match its hash when first served: the node must stop.
    corrupt: Option<CorruptPiece>,
}

pub(crate) struct Shared {
    info: TorrentInfo,
    lengths: Lengths,
    peer_id: [u8; 20],
    opts: SwarmOptions,
    storage: Arc<dyn Storage>,
    node: Mutex<Node>,
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
        let have_count = have.iter().filter(|&&h| h).count();
        let bucket = opts.upload_limit.map(|rate| {
            Mutex::new(Bucket {
                tokens: 0.0,
                rate: rate as f64,
                burst: (rate as f64 / 10.0).max(2.0 * MAX_REQUEST as f64),
                last: Instant::now(),
            })
        });
        let cfg = proto::Config {
            our_id: peer_id,
            pipeline_blocks: opts.pipeline_blocks,
            request_queue_time: opts.request_queue_time,
            max_pieces_in_progress: opts.max_pieces_in_progress,
            max_peers: opts.max_peers,
            dial_peers: opts.dial_peers,
            request_timeout: opts.request_timeout,
            prefer_unsent: opts.prefer_unsent,
            trust_initial_pieces: opts.trust_initial_pieces,
            compress: opts.compress,
            carry_data: true,
        };
        let core = Core::new(cfg, lengths, have, rand::thread_rng().gen());
        let shared = Arc::new(Shared {
            lengths,
            peer_id,
            storage,
            node: Mutex::new(Node {
                core,
                links: HashMap::new(),
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

    fn lock(&self) -> MutexGuard<'_, Node> {
        self.shared.node.lock().expect("swarm state lock")
    }

    /// Feeds one event to the core and carries out what it asks.
    fn feed(&self, node: &mut Node, input: Input) -> Result<(), SwarmError> {
        let r = node.core.handle(Instant::now(), input);
        self.apply(node);
        r
    }

    /// Carries out the core's queued actions (under the lock: sends only queue, tasks are
    /// spawned, nothing waits).
    fn apply(&self, node: &mut Node) {
        let mut changed = false;
        loop {
            let mut flooding = Vec::new();
            while let Some(a) = node.core.poll_action() {
                match a {
                    Action::Send(k, m) => {
                        if let Some(l) = node.links.get(&k) {
                            let reject = matches!(m, Msg::Reject(_));
                            if !send(l, m) && reject {
                                flooding.push(k);
                            }
                        }
                    }
                    Action::Serve(k, r) => {
                        if let Some(l) = node.links.get(&k) {
                            // Past `MAX_QUEUED_REQUESTS` a request is refused like any other.
                            if l.backlog.try_queue_request() {
                                let _ = l.tx.send(Out::Serve(r));
                            } else if l.fast && !send(l, Msg::Reject(r)) {
                                flooding.push(k);
                            }
                        }
                    }
                    Action::CancelServe(k, r) => {
                        if let Some(l) = node.links.get(&k) {
                            // Counted like a message until the writer takes it.
                            if l.backlog.queue_msg(&Msg::Cancel(r)) {
                                let _ = l.tx.send(Out::Cancel(r));
                            } else {
                                l.kill.notify_one();
                            }
                        }
                    }
                    Action::Disconnect(k) => {
                        if let Some(l) = node.links.get(&k) {
                            l.kill.notify_one();
                        }
                    }
                    Action::Verify { index, buf, forms } => {
                        tokio::spawn(self.clone().verify_and_store(index, buf, forms));
                    }
                    Action::Dial(a) => {
                        let s = self.clone();
                        tokio::spawn(async move {
                            let r = s.dial(a).await;
                            let mut node = s.lock();
                            let _ = s.feed(&mut node, Input::DialEnded(a));
                            if let Err(e) = r {
                                debug!(peer = %a, "connection ended: {e}");
                            }
                        });
                    }
                    Action::PeerZstd(k, id) => {
                        if let Some(l) = node.links.get(&k) {
                            l.zstd_id.store(id, Ordering::Relaxed);
                        }
                    }
                    Action::Changed => changed = true,
                }
            }
            if flooding.is_empty() {
                break;
            }
            // It went on requesting while not reading our refusals (some 60,000 of them
            // unread): a flood, not a slow peer. Banned, so it cannot redial and go on.
            let now = Instant::now();
            for key in flooding {
                let _ = node.core.handle(now, Input::Flooding { key });
            }
        }
        if changed {
            self.shared.changed.notify_waiters();
        }
    }

    /// Adds peers' listen addresses (from a tracker); they are dialed and redialed as needed.
    pub fn add_peers(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let own = self.shared.listen_addr;
        let addrs: Vec<SocketAddr> = addrs.into_iter().filter(|a| *a != own).collect();
        let mut node = self.lock();
        let _ = self.feed(&mut node, Input::PeersLearnt(addrs));
    }
    async fn verify_and_store(self, index: u32, buf: Vec<u8>, forms: Vec<Option<Form>>) {
        let expected = self.shared.info.piece_hashes[index as usize];
        let storage = self.shared.storage.clone();
        let offset = index as u64 * self.shared.info.piece_length as u64;
        let res = tokio::task::spawn_blocking(move || {
            let digest: [u8; 20] = Sha1::digest(&buf).into();
            if digest != expected {
                return Ok(false);
            }
            storage.write_at(offset, &buf).map(|_| true)
        })
        .await;
        let result = match res {
            Ok(Ok(true)) => {
                self.keep_forms(index, forms);
                Verified::Stored
            }
            Ok(Ok(false)) => Verified::Mismatch,
            Ok(Err(e)) => Verified::Failed(format!("storage write failed: {e}")),
            Err(e) => Verified::Failed(format!("verification task failed: {e}")),
        };
        let mut node = self.lock();
        let _ = self.feed(&mut node, Input::Verified { index, result });
    }

    /// Marks pieces found correct on storage (resume); safe to call while downloading.
    pub fn mark_verified(&self, index: u32) {
        let mut node = self.lock();
        let _ = self.feed(&mut node, Input::Resumed { index });
    }

    /// Which pieces are present (verified and written).
    pub fn have_bits(&self) -> Vec<bool> {
        self.lock().core.have_bits().to_vec()
    }

    /// True if the piece is present, being fetched or being verified.
    pub fn is_busy_or_have(&self, index: u32) -> bool {
        self.lock().core.is_busy_or_have(index)
    }

    /// Seeder start-up (see `Core::ramping`).
    fn ramping(&self) -> bool {
        self.lock().core.ramping()
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

    /// The core's timer: a tick when it asks for one.
    async fn tick_loop(self) {
        loop {
            let at = self.lock().core.poll_timeout(Instant::now());
            tokio::time::sleep_until(at.into()).await;
            let uploaded = self.shared.uploaded.load(Ordering::Relaxed);
            let mut node = self.lock();
            let _ = self.feed(&mut node, Input::Tick { uploaded });
        }
    }

    /// Current figures.
    pub fn stats(&self) -> Stats {
        let node = self.lock();
        let zstd = self.shared.zstats.lock().expect("zstats lock").clone();
        node.core.stats(
            Instant::now(),
            self.shared.uploaded.load(Ordering::Relaxed),
            |k| {
                node.links
                    .get(&k)
                    .map_or(0, |l| l.uploaded_to.load(Ordering::Relaxed))
            },
            zstd,
        )
    }

    /// Peer addresses we were given (tracker, `--peer`) and dial.
    pub fn known_peers(&self) -> Vec<SocketAddr> {
        self.lock().core.known_peers()
    }

    /// True if this node banned the peers at `ip` (a seeder does not wait for them).
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.lock().core.is_banned(ip)
    }

    pub fn is_complete(&self) -> bool {
        self.lock().core.is_complete()
    }

    /// A stored piece found not to match the manifest when first served, if any: the
    /// node serves nothing more, and should stop (source changed since imaging, or wrong).
    pub fn corrupt_piece(&self) -> Option<CorruptPiece> {
        self.lock().corrupt.clone()
    }

    /// A fatal storage error, if one happened.
    pub fn fatal_error(&self) -> Option<String> {
        self.lock().core.fatal().map(str::to_string)
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
        let node = self.lock();
        for l in node.links.values() {
            l.kill.notify_one();
        }
    }
}

/// Queues a message for a connection's writer; a peer that leaves too many unread is
/// disconnected (false).
fn send(l: &Link, m: Msg) -> bool {
    if !l.backlog.queue_msg(&m) {
        warn!(peer = %l.addr, "disconnecting a peer that does not read what we send");
        l.kill.notify_one();
        return false;
    }
    let _ = l.tx.send(Out::Msg(m));
    true
}
