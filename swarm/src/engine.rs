//! The swarm engine's driver: sockets, tasks and timers around the policy core
//! ([`crate::proto`]). One task, the actor (`actor`), owns the core and each connection's
//! channels ([`Link`], under the core's key for the peer); every event (a message read by a
//! connection's reader task, a verification ended, the timer) reaches it as a message, is fed
//! to the core, and the actions the core queues are carried out before the next event. The
//! API's getters read what the actor publishes. Each connection is a reader task (framing,
//! handshake, `conn`) and a writer task (`serve`: queued messages, block requests served from
//! storage); verification runs on the blocking pool.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use librqbit_core::lengths::Lengths;
use rand::Rng;
use sha1::{Digest, Sha1};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{info, warn};

use crate::backlog::Backlog;
use crate::conn_limit;
use crate::proto::{self, Core, Input, Verified};
use crate::storage::Storage;
use crate::wire::{Msg, Req, MAX_REQUEST};
use crate::zblock::{Form, FormCache, ZStats};
use crate::SwarmError;
use actor::{Actor, Event, Node, View, PEER_INBOX};

mod actor;
mod conn;
mod serve;
#[cfg(test)]
mod tests;
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
    /// Peers whose IPv4 address shares this many leading bits with ours sit behind the
    /// same switch (a room's subnet; `locality::same_site`); others are asked only for
    /// pieces no local peer has. 0: every peer is local.
    pub site_prefix: u8,
    /// Serve requests piece by piece: the writers get a shallow queue and the rest waits
    /// in the core, released a piece at a time in rounds (each peer's first piece, then
    /// each one's second, ...; see `proto::upload_order`). Off: in the order they came.
    pub order_uploads: bool,
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
            site_prefix: crate::locality::DEFAULT_SITE_PREFIX,
            order_uploads: true,
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
    /// Found misbehaving and told to close: what it still sends is not read.
    closing: bool,
}

pub(crate) struct Shared {
    info: TorrentInfo,
    lengths: Lengths,
    peer_id: [u8; 20],
    opts: SwarmOptions,
    storage: Arc<dyn Storage>,
    /// The actor's inboxes (see `actor`).
    ctl: mpsc::UnboundedSender<Event>,
    peers: mpsc::Sender<Event>,
    /// What the actor last published.
    view: watch::Sender<Arc<View>>,
    /// The core's `ramping`, as of the actor's last event (read by the writers).
    ramping: AtomicBool,
    uploaded: AtomicU64,
    bucket: Option<Mutex<Bucket>>,
    listen_addr: SocketAddr,
    /// Bytes requested from us and not yet written to a socket, all peers together (counted
    /// when the actor hands a request to a writer).
    queued: AtomicU64,
    /// The core's `upload_release_below` (0: none), as of the actor's last event: a writer
    /// whose write takes `queued` below it tells the actor.
    release_below: AtomicU64,
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
            order_uploads: opts.order_uploads,
        };
        let core = Core::new(cfg, lengths, have, rand::thread_rng().gen());
        let node = Node {
            core,
            links: HashMap::new(),
            corrupt: None,
        };
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (peers, peers_rx) = mpsc::channel(PEER_INBOX);
        let (view, _) = watch::channel(Arc::new(node.view(Instant::now())));
        let shared = Arc::new(Shared {
            lengths,
            peer_id,
            storage,
            ctl,
            peers,
            view,
            ramping: AtomicBool::new(node.core.ramping()),
            checked: Notify::new(),
            uploaded: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            release_below: AtomicU64::new(0),
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
        tokio::spawn(Actor::new(node, s.clone()).run(ctl_rx, peers_rx));
        tokio::spawn(s.clone().accept_loop(listener));
        info!(%listen_addr, pieces = n, have = have_count, "swarm node started");
        Ok(s)
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.shared.listen_addr
    }

    pub fn peer_id(&self) -> [u8; 20] {
        self.shared.peer_id
    }

    /// What the actor last published.
    fn view(&self) -> Arc<View> {
        self.shared.view.borrow().clone()
    }

    /// Adds peers' listen addresses (from a tracker); they are dialed and redialed as needed.
    pub fn add_peers(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let own = self.shared.listen_addr;
        let addrs: Vec<SocketAddr> = addrs.into_iter().filter(|a| *a != own).collect();
        self.input(Input::PeersLearnt(addrs));
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
        self.input(Input::Verified { index, result });
    }

    /// Marks pieces found correct on storage (resume); safe to call while downloading.
    pub fn mark_verified(&self, index: u32) {
        self.input(Input::Resumed { index });
    }

    /// Which pieces are present (verified and written), as last published (at most
    /// ~50 ms old).
    pub fn have_bits(&self) -> Vec<bool> {
        self.view().have.clone()
    }

    /// True if the piece is present, being fetched or being verified (asks the actor).
    pub async fn is_busy_or_have(&self, index: u32) -> bool {
        self.query(move |a| a.node.core.is_busy_or_have(index))
            .await
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

    /// Current figures: the core's as last published (on each change, at most every
    /// ~50 ms, and every tick), the byte counters live.
    pub fn stats(&self) -> Stats {
        let mut st = self.view().stats.clone();
        st.uploaded = self.shared.uploaded.load(Ordering::Relaxed);
        st.zstd = self.shared.zstats.lock().expect("zstats lock").clone();
        st
    }

    /// Peer addresses we were given (tracker, `--peer`) and dial.
    pub fn known_peers(&self) -> Vec<SocketAddr> {
        self.view().known.clone()
    }

    /// True if this node banned the peers at `ip` (a seeder does not wait for them).
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        self.view().banned.contains(&ip)
    }

    pub fn is_complete(&self) -> bool {
        self.view().complete
    }

    /// A stored piece found not to match the manifest when first served, if any: the
    /// node serves nothing more, and should stop (source changed since imaging, or wrong).
    pub fn corrupt_piece(&self) -> Option<CorruptPiece> {
        self.view().corrupt.clone()
    }

    /// A fatal storage error, if one happened.
    pub fn fatal_error(&self) -> Option<String> {
        self.view().fatal.clone()
    }

    /// Waits until something changes (a piece verified, a peer joined or left), or 500 ms.
    pub async fn changed(&self) {
        let mut rx = self.shared.view.subscribe();
        let _ = tokio::time::timeout(Duration::from_millis(500), rx.changed()).await;
    }

    /// Waits until every piece is present, or a fatal error.
    pub async fn wait_complete(&self) -> Result<(), SwarmError> {
        let mut rx = self.shared.view.subscribe();
        loop {
            let v = rx.borrow_and_update().clone();
            if let Some(e) = &v.fatal {
                return Err(SwarmError::Storage(e.clone()));
            }
            if v.complete {
                return Ok(());
            }
            if rx.changed().await.is_err() {
                return Err(SwarmError::Storage("the swarm's actor stopped".into()));
            }
        }
    }

    /// Closes every connection and waits (at most 5 s) until they are gone: once it
    /// returns, no writer of ours reads the storage for a peer any more.
    pub async fn disconnect_all(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let open = self
                .query(|a| {
                    for l in a.node.links.values() {
                        l.kill.notify_one();
                    }
                    a.node.links.len()
                })
                .await;
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout_at(deadline, self.changed()).await;
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
