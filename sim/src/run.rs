//! One simulation: the event loop, and what each node's core asks done.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use blockswarm_swarm::proto::{self, Action, Core, Hello, Input, Verified};
use blockswarm_swarm::wire::{self, Msg, Req};
use librqbit_core::lengths::Lengths;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::net::{acks_for, on_wire, Hop};
use crate::topology::{addr_of, node_of, Params, Role};
use crate::{ns, Ns, SimError};

/// Receivers announce to the tracker this often (ours: at most every 10 s).
const ANNOUNCE_EVERY: Ns = 10_000_000_000;

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Completion times of the receivers that finished, as ratios to bytes / rate, sorted.
    pub ratios: Vec<f64>,
    /// Receivers killed on purpose.
    pub died: usize,
    /// Receivers neither finished nor killed when the run stopped.
    pub stuck: usize,
    /// Bytes of blocks the seeders sent, in copies of the image.
    pub seeder_copies: f64,
    /// Bytes over switch uplinks (both ways), in copies of the image per switch that has
    /// receivers and no seeder (the least that must cross); None with one switch.
    pub uplink: Option<f64>,
    /// Requests sent to a peer that did not have the piece (must be 0).
    pub bad_requests: u64,
    /// (banner, banned) pairs where the banned node is honest (must be empty).
    pub honest_banned: Vec<(usize, usize)>,
    /// Liars banned by at least one receiver.
    pub liars_banned: usize,
    /// Pieces that failed their check at a receiver.
    pub hash_failures: u64,
    /// Events processed.
    pub events: u64,
}

impl Report {
    /// The ratio at quantile `q` (0..=1) of the finished receivers.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.ratios.is_empty() {
            return f64::NAN;
        }
        let i = ((self.ratios.len() - 1) as f64 * q).round() as usize;
        self.ratios[i]
    }
}

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
            max_peers: 128,
            request_timeout: Duration::from_secs(20),
            prefer_unsent: role == Role::Seeder,
            trust_initial_pieces: true,
            compress: false,
            carry_data: false,
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
    };
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
                let up = self.seeder_block_bytes;
                self.feed(i, Input::Tick { uploaded: up });
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
                    self.feed(node, Input::Verified { index, result });
                }
            }
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

    /// The tracker lists every live started node (as ours does); receivers ask again later.
    fn announce(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        if self.nodes[i].role == Role::Receiver {
            let peers: Vec<_> = (0..self.nodes.len())
                .filter(|&j| j != i && self.nodes[j].started && self.nodes[j].alive)
                .map(addr_of)
                .collect();
            self.feed(i, Input::PeersLearnt(peers));
            if self.nodes[i].done_at.is_none() {
                self.at(self.now + ANNOUNCE_EVERY, Ev::Announce(i));
            }
        }
    }

    /// Hands `input` to node `i`'s core and carries out its actions.
    fn feed(&mut self, i: usize, input: Input) {
        let now = self.instant();
        // Only a message names a peer to blame (see `feed_from`).
        let _ = self.nodes[i].core.handle(now, input);
        self.apply(i);
        if self.nodes[i].done_at.is_none()
            && self.nodes[i].role == Role::Receiver
            && self.nodes[i].core.is_complete()
        {
            self.nodes[i].done_at = Some(self.now);
        }
    }

    /// Like `feed` for a message on connection `key`: a protocol error closes it.
    fn feed_from(&mut self, i: usize, key: u64, input: Input) {
        let now = self.instant();
        let r = self.nodes[i].core.handle(now, input);
        self.apply(i);
        if r.is_err() {
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
            let _ = self.nodes[from].core.handle(now, Input::DialEnded(addr));
            return;
        }
        let hello = |node: usize, outgoing: bool| Hello {
            addr: addr_of(node),
            peer_id: peer_id(node),
            fast: true,
            extended: false,
            outgoing,
        };
        let Ok(kt) = self.nodes[to]
            .core
            .connect(now, hello(from, false), || false)
        else {
            self.apply(to);
            let _ = self.nodes[from].core.handle(now, Input::DialEnded(addr));
            return;
        };
        let Ok(kf) = self.nodes[from]
            .core
            .connect(now, hello(to, true), || false)
        else {
            self.apply(from);
            let _ = self.nodes[from].core.handle(now, Input::DialEnded(addr));
            self.nodes[to].conns.insert(kt, (from, 0, None));
            self.close(to, kt);
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
        let now = self.instant();
        if self.nodes[i].alive {
            let _ = self.nodes[i].core.handle(now, Input::Disconnected { key });
            if let Some(a) = dialed {
                let _ = self.nodes[i].core.handle(now, Input::DialEnded(a));
            }
            self.apply(i);
        }
        if let Some((_, _, d)) = self.nodes[j].conns.remove(&jk) {
            if self.nodes[j].alive {
                let _ = self.nodes[j]
                    .core
                    .handle(now, Input::Disconnected { key: jk });
                if let Some(a) = d {
                    let _ = self.nodes[j].core.handle(now, Input::DialEnded(a));
                }
                self.apply(j);
            }
        }
    }

    fn path(&self, from: usize, to: usize) -> ([usize; 4], u8) {
        let (a, b) = (&self.nodes[from], &self.nodes[to]);
        let (sa, sb) = (self.p.switch_of(from), self.p.switch_of(to));
        if sa == sb {
            ([a.up, b.down, 0, 0], 2)
        } else {
            ([a.up, self.sw_hops[sa].0, self.sw_hops[sb].1, b.down], 4)
        }
    }

    fn send(&mut self, i: usize, key: u64, content: Content) {
        let Some(&(j, jk, _)) = self.nodes[i].conns.get(&key) else {
            return;
        };
        let payload = match &content {
            Content::Msg(m) => {
                if let Msg::Request(r) = m {
                    if !self.nodes[j].core.have_bits()[r.index as usize] {
                        self.bad_requests += 1;
                    }
                }
                encoded_len(m)
            }
            Content::Block(r) => {
                if self.nodes[i].role == Role::Seeder {
                    self.seeder_block_bytes += r.length as u64;
                }
                self.nodes[i].queued += r.length as u64;
                13 + r.length as u64
            }
        };
        let (path, len) = self.path(i, j);
        let data = matches!(content, Content::Block(_));
        let wire = on_wire(payload);
        let id = self.next_packet;
        self.next_packet += 1;
        let ctrl_at = (!data).then(|| {
            // A control message is not queued packet by packet (a room sends millions of
            // HAVEs): it goes ahead of blocks, so it takes its own time on each hop, and
            // its bytes are charged to each hop's next block. In order per connection.
            let mut t = self.now;
            for &h in &path[..len as usize] {
                let hop = &mut self.hops[h];
                hop.bytes += wire;
                hop.debt += wire;
                t += hop.time_ns(wire) + hop.latency_ns;
            }
            let last = self.ctrl_last.entry((i, key)).or_insert(0);
            *last = t.max(*last + 1);
            *last
        });
        self.packets.insert(
            id,
            Packet {
                from: i,
                to: j,
                to_key: jk,
                from_key: key,
                content,
                wire,
                path,
                len,
                pos: if data { 0 } else { len - 1 },
            },
        );
        match ctrl_at {
            Some(t) => self.at(t, Ev::Arrive(id)),
            None => self.enqueue(path[0], id),
        }
    }

    fn enqueue(&mut self, h: usize, id: u64) {
        let hop = &mut self.hops[h];
        hop.data.push_back(id);
        if !hop.busy {
            self.start_next(h);
        }
    }

    fn start_next(&mut self, h: usize) {
        let Some(id) = self.hops[h].take_next() else {
            self.hops[h].busy = false;
            return;
        };
        let wire = self.packets.get(&id).map_or(0, |p| p.wire);
        let hop = &mut self.hops[h];
        hop.busy = true;
        hop.bytes += wire;
        // Control bytes sent meanwhile delay this block.
        let t = self.now + hop.time_ns(wire + hop.debt);
        hop.debt = 0;
        hop.serving = Some(id);
        self.at(t, Ev::HopDone(h));
    }

    fn hop_done(&mut self, h: usize) {
        let id = self.hops[h].serving.take().expect("a packet in service");
        let lat = self.hops[h].latency_ns;
        if let Some(p) = self.packets.get(&id) {
            if p.pos == 0 {
                if let Content::Block(r) = &p.content {
                    let from = p.from;
                    self.nodes[from].queued -= r.length as u64;
                }
            }
        }
        self.at(self.now + lat, Ev::Arrive(id));
        self.start_next(h);
    }

    fn arrive(&mut self, id: u64) {
        let Some(p) = self.packets.get_mut(&id) else {
            return;
        };
        p.pos += 1;
        if p.pos < p.len {
            let h = p.path[p.pos as usize];
            self.enqueue(h, id);
            return;
        }
        let p = self.packets.remove(&id).expect("present");
        let (to, key) = (p.to, p.to_key);
        let alive = self.nodes[to].alive
            && self.nodes[to]
                .conns
                .get(&key)
                .is_some_and(|&(f, fk, _)| f == p.from && fk == p.from_key);
        if !alive {
            return;
        }
        let input = match p.content {
            Content::Msg(msg) => Input::Message {
                key,
                msg,
                upload_queued: self.nodes[to].queued,
            },
            Content::Block(r) => {
                self.ack(to, p.wire);
                Input::ModelledBlock {
                    key,
                    index: r.index,
                    begin: r.begin,
                    len: r.length,
                }
            }
        };
        self.feed_from(to, key, input);
    }

    /// The receiver's ACKs take their bytes on its uplink (charged to its next block).
    fn ack(&mut self, at: usize, wire: u64) {
        let hop = &mut self.hops[self.nodes[at].up];
        let a = acks_for(wire);
        hop.bytes += a;
        hop.debt += a;
    }

    /// Drops a block still waiting on the server's uplink for a request it cancelled.
    fn cancel_serve(&mut self, i: usize, key: u64, r: Req) {
        let up = self.nodes[i].up;
        let packets = &self.packets;
        let pos = self.hops[up].data.iter().position(|id| {
            packets.get(id).is_some_and(|p| {
                p.from_key == key && matches!(&p.content, Content::Block(q) if *q == r)
            })
        });
        if let Some(pos) = pos {
            let id = self.hops[up].data.remove(pos).expect("present");
            self.packets.remove(&id);
            self.nodes[i].queued -= r.length as u64;
            if self.nodes[i].role == Role::Seeder {
                self.seeder_block_bytes -= r.length as u64;
            }
        }
    }

    fn report(&self, dying: &[usize], ideal: Ns) -> Report {
        let mut ratios: Vec<f64> = self
            .nodes
            .iter()
            .filter_map(|n| n.done_at)
            .map(|t| t as f64 / ideal as f64)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let died = dying.iter().filter(|&&d| !self.nodes[d].alive).count();
        let stuck = self
            .nodes
            .iter()
            .filter(|n| n.role == Role::Receiver && n.alive && n.done_at.is_none())
            .count();
        let mut honest_banned = Vec::new();
        let mut liars_banned = 0;
        for j in 0..self.nodes.len() {
            let ip = addr_of(j).ip();
            let by: Vec<usize> = (0..self.nodes.len())
                .filter(|&i| self.nodes[i].core.is_banned(ip))
                .collect();
            if self.nodes[j].role == Role::Liar {
                liars_banned += (!by.is_empty()) as usize;
            } else {
                honest_banned.extend(by.into_iter().map(|i| (i, j)));
            }
        }
        let switches_needing: usize = (0..self.p.switches)
            .filter(|&s| {
                let has = |r: Role| {
                    (0..self.nodes.len())
                        .any(|i| self.nodes[i].role == r && self.p.switch_of(i) == s)
                };
                has(Role::Receiver) && !has(Role::Seeder)
            })
            .count();
        let uplink_bytes: u64 = self.hops.iter().filter(|h| h.uplink).map(|h| h.bytes).sum();
        let bytes = self.p.bytes as f64;
        Report {
            ratios,
            died,
            stuck,
            seeder_copies: self.seeder_block_bytes as f64 / bytes,
            uplink: (self.p.switches > 1 && switches_needing > 0)
                .then(|| uplink_bytes as f64 / (switches_needing as f64 * bytes)),
            bad_requests: self.bad_requests,
            honest_banned,
            liars_banned,
            hash_failures: self.hash_failures,
            events: self.processed,
        }
    }
}

/// Bytes of `m` on the wire (its length prefix included).
fn encoded_len(m: &Msg) -> u64 {
    match m {
        Msg::Piece { data, .. } => 13 + data.len() as u64,
        _ => {
            let mut b = Vec::new();
            wire::encode(m, &mut b);
            b.len() as u64
        }
    }
}
