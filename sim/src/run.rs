//! One simulation: the event loop, and what each node's core asks done.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use blockswarm_swarm::locality::{self, Candidate};
use blockswarm_swarm::proto::{self, Action, Core, Hello, Input, Verified};
use blockswarm_swarm::wire::{Msg, Req};
use librqbit_core::lengths::Lengths;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::net::Hop;
use crate::topology::{addr_of, node_of, Params, Role};
use crate::{ns, Ns, SimError};

mod report;
mod trace;
mod transport;

pub use report::Report;

/// Receivers announce to the tracker this often (ours: at most every 10 s).
const ANNOUNCE_EVERY: Ns = 10_000_000_000;

/// An event due at a time; ties in the order they were scheduled.
struct Due(Ns, u64, Ev);

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

enum Ev {
    Start(usize),
    Announce(usize),
    Tick(usize),
    Connect { from: usize, to: usize },
    HopDone(usize),
    Arrive(u64),
    Verified { node: usize, index: u32, ok: bool },
    Die(usize),
    TraceLine,
}

enum Content {
    Msg(Msg),
    Block(Req),
}

struct Packet {
    from: usize,
    to: usize,
    /// The receiving side's key for the connection.
    to_key: u64,
    /// The sending side's key (to find a queued block a CANCEL names).
    from_key: u64,
    content: Content,
    wire: u64,
    path: [usize; 4],
    len: u8,
    pos: u8,
}

struct Node {
    core: Core,
    role: Role,
    alive: bool,
    started: bool,
    done_at: Option<Ns>,
    /// Connection key -> (peer node, the peer's key, the address we dialed if we did).
    conns: BTreeMap<u64, (usize, u64, Option<std::net::SocketAddr>)>,
    /// Every connection key it ever had -> the peer node (blame outlives connections).
    key_node: HashMap<u64, usize>,
    /// Block bytes waiting on this node's uplink.
    queued: u64,
    /// Block bytes that left it.
    uploaded: u64,
    up: usize,
    down: usize,
}

struct Sim {
    p: Params,
    lengths: Lengths,
    base: Instant,
    now: Ns,
    seq: u64,
    events: BinaryHeap<Reverse<Due>>,
    packets: HashMap<u64, Packet>,
    next_packet: u64,
    hops: Vec<Hop>,
    /// Per switch: (uplink to the core, downlink from it).
    sw_hops: Vec<(usize, usize)>,
    nodes: Vec<Node>,
    /// Per (node, key): when its last control message arrives (they stay in order).
    ctrl_last: HashMap<(usize, u64), Ns>,
    seeder_block_bytes: u64,
    bad_requests: u64,
    hash_failures: u64,
    processed: u64,
    trace: trace::Trace,
}

/// Runs one simulation to its end (every live receiver done, or the time limit).
pub fn run(p: &Params) -> Result<Report, SimError> {
    p.check()?;
    let lengths =
        Lengths::new(p.bytes, p.piece_length()).map_err(|e| SimError::Params(e.to_string()))?;
    let n = lengths.total_pieces() as usize;
    let mut rng = StdRng::seed_from_u64(p.seed);
    let lat = ns(p.latency);
    let mut hops = Vec::new();
    let mut sw_hops = Vec::new();
    for _ in 0..p.switches {
        hops.push(Hop::new(p.uplink_bps / 8.0, lat, true));
        hops.push(Hop::new(p.uplink_bps / 8.0, lat, true));
        sw_hops.push((hops.len() - 2, hops.len() - 1));
    }
    let receivers: Vec<usize> = (0..p.total_nodes())
        .filter(|&i| p.role(i) == Role::Receiver)
        .collect();
    let pick = |rng: &mut StdRng, pct: f64| -> Vec<usize> {
        let k = ((receivers.len() as f64) * pct / 100.0).round() as usize;
        let mut v = receivers.clone();
        for i in 0..k.min(v.len()) {
            let j = rng.gen_range(i..v.len());
            v.swap(i, j);
        }
        v.truncate(k);
        v
    };
    let slow = pick(&mut rng, p.slow_pct);
    let dying = pick(&mut rng, p.die_pct);
    let mut nodes = Vec::new();
    for i in 0..p.total_nodes() {
        let role = p.role(i);
        let factor = if slow.contains(&i) { 0.1 } else { 1.0 };
        hops.push(Hop::new(p.rate_bps / 8.0 * factor, lat, false));
        hops.push(Hop::new(p.rate_bps / 8.0 * factor, lat, false));
        let (up, down) = (hops.len() - 2, hops.len() - 1);
        let seed = role != Role::Receiver;
        let cfg = proto::Config {
            our_id: peer_id(i),
            pipeline_blocks: 64,
            request_queue_time: Duration::from_millis(100),
            max_pieces_in_progress: ((64u64 << 20) / p.piece_length() as u64).clamp(4, 64) as usize,
            max_peers: p.max_peers,
            dial_peers: p.dial_peers,
            request_timeout: Duration::from_secs(20),
            prefer_unsent: role == Role::Seeder,
            trust_initial_pieces: true,
            compress: false,
            carry_data: false,
            order_uploads: p.order_uploads,
        };
        let core = Core::new(cfg, lengths, vec![seed; n], rng.gen());
        nodes.push(Node {
            core,
            role,
            alive: true,
            started: false,
            done_at: None,
            conns: BTreeMap::new(),
            key_node: HashMap::new(),
            queued: 0,
            uploaded: 0,
            up,
            down,
        });
    }
    let mut sim = Sim {
        p: p.clone(),
        lengths,
        base: Instant::now(),
        now: 0,
        seq: 0,
        events: BinaryHeap::new(),
        packets: HashMap::new(),
        next_packet: 0,
        hops,
        sw_hops,
        nodes,
        ctrl_last: HashMap::new(),
        seeder_block_bytes: 0,
        bad_requests: 0,
        hash_failures: 0,
        processed: 0,
        trace: trace::Trace::from_env(),
    };
    if sim.trace.every > 0 {
        sim.at(sim.trace.every, Ev::TraceLine);
    }
    let ideal = ns(Duration::from_secs_f64(p.ideal_secs()));
    for i in 0..p.total_nodes() {
        let at = if p.role(i) == Role::Receiver {
            rng.gen_range(0..=ns(p.start_spread).max(1))
        } else {
            0
        };
        sim.at(at, Ev::Start(i));
    }
    for &d in &dying {
        let at = rng.gen_range(ideal / 5..=ideal * 4 / 5);
        sim.at(at, Ev::Die(d));
    }
    let limit = (ideal as f64 * p.limit_factor) as Ns;
    while let Some(Reverse(Due(t, _, ev))) = sim.events.pop() {
        if t > limit {
            break;
        }
        sim.now = t;
        sim.processed += 1;
        sim.step(ev);
        if sim.all_done() {
            break;
        }
    }
    Ok(sim.report(&dying, ideal))
}

fn peer_id(node: usize) -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(b"-BS0100-");
    // Spread so that the duplicate-connection rule (smaller id wins) is not node order.
    let h = (node as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    id[8..16].copy_from_slice(&h.to_be_bytes());
    id[16..20].copy_from_slice(&(node as u32).to_be_bytes());
    id
}

impl Sim {
    fn at(&mut self, t: Ns, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse(Due(t, self.seq, ev)));
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn all_done(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.role != Role::Receiver || !n.alive || n.done_at.is_some())
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Start(i) => {
                self.nodes[i].started = true;
                self.announce(i);
                let t = self.now + proto::TICK.as_nanos() as Ns;
                self.at(t, Ev::Tick(i));
            }
            Ev::Announce(i) => self.announce(i),
            Ev::Tick(i) => {
                if !self.nodes[i].alive {
                    return;
                }
                let up = self.nodes[i].uploaded;
                self.feed(i, None, Input::Tick { uploaded: up });
                let next = self.nodes[i].core.poll_timeout(self.instant());
                let t = self.now + next.duration_since(self.instant()).as_nanos() as Ns;
                self.at(t.max(self.now + 1), Ev::Tick(i));
            }
            Ev::Connect { from, to } => self.connect(from, to),
            Ev::HopDone(h) => self.hop_done(h),
            Ev::Arrive(id) => self.arrive(id),
            Ev::Verified { node, index, ok } => {
                if self.nodes[node].alive {
                    let result = if ok {
                        Verified::Stored
                    } else {
                        self.hash_failures += 1;
                        Verified::Mismatch
                    };
                    self.feed(node, None, Input::Verified { index, result });
                }
            }
            Ev::TraceLine => self.trace_line(),
            Ev::Die(i) => {
                if !self.nodes[i].alive || self.nodes[i].done_at.is_some() {
                    return;
                }
                self.nodes[i].alive = false;
                let conns: Vec<u64> = self.nodes[i].conns.keys().copied().collect();
                for k in conns {
                    self.close(i, k);
                }
            }
        }
    }

    /// The tracker lists the live started nodes as `locality::answer` picks them (the
    /// asker's site, seeders, a few others; with sites off, all of them); receivers ask
    /// again later.
    fn announce(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        if self.nodes[i].role == Role::Receiver {
            let live: Vec<Candidate> = (0..self.nodes.len())
                .filter(|&j| j != i && self.nodes[j].started && self.nodes[j].alive)
                .map(|j| Candidate {
                    addr: addr_of(j),
                    seeder: self.nodes[j].role == Role::Seeder,
                })
                .collect();
            let site = |a, b| match (node_of(a), node_of(b)) {
                (Some(x), Some(y)) => self.p.same_site(x, y),
                _ => false,
            };
            let peers = locality::answer(addr_of(i), &live, site, self.p.remote_peers);
            self.feed(i, None, Input::PeersLearnt(peers));
            if self.nodes[i].done_at.is_none() {
                self.at(self.now + ANNOUNCE_EVERY, Ev::Announce(i));
            }
        }
    }

    /// Hands `input` to node `i`'s core and carries out its actions. `from`: the connection
    /// a message came on (a protocol error closes it; other inputs name no peer to blame).
    fn feed(&mut self, i: usize, from: Option<u64>, input: Input) {
        let now = self.instant();
        let r = self.nodes[i].core.handle(now, input);
        self.apply(i);
        if let (Err(_), Some(key)) = (r, from) {
            self.close(i, key);
        }
        if self.nodes[i].done_at.is_none()
            && self.nodes[i].role == Role::Receiver
            && self.nodes[i].core.is_complete()
        {
            self.nodes[i].done_at = Some(self.now);
        }
    }

    fn apply(&mut self, i: usize) {
        while let Some(a) = self.nodes[i].core.poll_action() {
            match a {
                Action::Send(k, m) => self.send(i, k, Content::Msg(m)),
                Action::Serve(k, r) => self.send(i, k, Content::Block(r)),
                Action::CancelServe(k, r) => self.cancel_serve(i, k, r),
                Action::Disconnect(k) => self.close(i, k),
                Action::Verify { index, .. } => {
                    let senders = self.nodes[i]
                        .core
                        .senders(index)
                        .cloned()
                        .unwrap_or_default();
                    let ok = !senders.iter().any(|k| {
                        self.nodes[i]
                            .key_node
                            .get(k)
                            .is_some_and(|&j| self.nodes[j].role == Role::Liar)
                    });
                    let len = self
                        .lengths
                        .piece_length(self.lengths.validate_piece_index(index).expect("valid"));
                    let t = self.now + (len as f64 / self.p.hash_rate * 1e9) as Ns;
                    self.at(t, Ev::Verified { node: i, index, ok });
                }
                Action::Dial(a) => match node_of(a) {
                    Some(to) if to < self.nodes.len() => {
                        let t = self.now + 4 * ns(self.p.latency);
                        self.at(t, Ev::Connect { from: i, to });
                    }
                    _ => {
                        let now = self.instant();
                        let _ = self.nodes[i].core.handle(now, Input::DialEnded(a));
                    }
                },
                Action::PeerZstd(..) | Action::Changed => {}
            }
        }
    }

    fn connect(&mut self, from: usize, to: usize) {
        let addr = addr_of(to);
        let now = self.instant();
        if !self.nodes[from].alive {
            return;
        }
        if !self.nodes[to].alive || !self.nodes[to].started {
            self.feed(from, None, Input::DialEnded(addr));
            return;
        }
        let local = self.p.same_site(from, to);
        let hello = |node: usize, outgoing: bool| Hello {
            addr: addr_of(node),
            peer_id: peer_id(node),
            fast: true,
            extended: false,
            outgoing,
            local,
        };
        let Ok(kt) = self.nodes[to]
            .core
            .connect(now, hello(from, false), || false)
        else {
            self.apply(to);
            self.feed(from, None, Input::DialEnded(addr));
            return;
        };
        let Ok(kf) = self.nodes[from]
            .core
            .connect(now, hello(to, true), || false)
        else {
            // The dialer refused (a duplicate): the acceptor's side ends as on a reset.
            self.apply(from);
            self.feed(from, None, Input::DialEnded(addr));
            self.forget(to, kt, None);
            return;
        };
        self.nodes[to].conns.insert(kt, (from, kf, None));
        self.nodes[from].conns.insert(kf, (to, kt, Some(addr)));
        self.nodes[to].key_node.insert(kt, from);
        self.nodes[from].key_node.insert(kf, to);
        self.apply(to);
        self.apply(from);
    }

    /// Closes connection `key` of node `i`: both sides forget it (the other side at once,
    /// as on a reset); what is in flight on it is dropped on arrival.
    fn close(&mut self, i: usize, key: u64) {
        let Some((j, jk, dialed)) = self.nodes[i].conns.remove(&key) else {
            return;
        };
        self.forget(i, key, dialed);
        if let Some((_, _, d)) = self.nodes[j].conns.remove(&jk) {
            self.forget(j, jk, d);
        }
    }

    /// Node `i`'s core learns that its connection `key` ended (and its dial, if it dialed).
    fn forget(&mut self, i: usize, key: u64, dialed: Option<std::net::SocketAddr>) {
        if !self.nodes[i].alive {
            return;
        }
        self.feed(i, None, Input::Disconnected { key });
        if let Some(a) = dialed {
            self.feed(i, None, Input::DialEnded(a));
        }
    }
}
