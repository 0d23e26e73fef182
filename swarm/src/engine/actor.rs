//! The driver's actor: one task owns the policy core and the connections' links ([`Node`]).
//! Nothing else touches them: connection readers, the verify tasks, the writers and the
//! public API send [`Event`]s, and read what the actor publishes ([`View`]). There is no
//! lock around the policy.
//!
//! Two inboxes. Readers' events (messages, blocks, a connection's end) come through a bounded
//! channel ([`PEER_INBOX`]): a reader waits when it is full, so a fast peer is held back by
//! TCP, not by our memory. Everything else (connections registering, verify results, dials
//! ended, the writers' read plans, queries) comes through an unbounded one whose length is
//! bounded by construction (each sender is a task of ours with at most one event in flight,
//! or a caller of the API waiting for the answer), and is taken first.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::{send, CorruptPiece, Link, Out, Swarm};
use crate::proto::{Action, Core, Hello, Input, Stats};
use crate::wire::Msg;
use crate::zblock::ZStats;
use crate::SwarmError;

/// Readers' events waiting for the actor, at most (a block each at most: 4 MiB).
pub(super) const PEER_INBOX: usize = 256;

/// The published view is refreshed at most this often (and at once when the node completes,
/// fails or finds a corrupt piece).
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// Events the actor handles one at a time.
pub(super) enum Event {
    /// An input for the core (`Disconnected` also drops the connection's link).
    Input(Input),
    /// A handshaken connection asks for a key.
    Connect {
        hello: Hello,
        link: Link,
        reply: oneshot::Sender<Result<u64, SwarmError>>,
    },
    /// Driver bookkeeping or a query, run on the actor's state.
    With(Box<dyn FnOnce(&mut Actor) + Send>),
}

/// The core and the connections' links.
pub(super) struct Node {
    pub(super) core: Core,
    pub(super) links: HashMap<u64, Link>,
    /// A piece found not to match its hash when first served: the node must stop.
    pub(super) corrupt: Option<CorruptPiece>,
}

/// What the actor publishes for the API's getters (a copy: readers never wait for the core).
#[derive(Clone)]
pub(super) struct View {
    pub(super) stats: Stats,
    pub(super) have: Vec<bool>,
    pub(super) complete: bool,
    pub(super) fatal: Option<String>,
    pub(super) corrupt: Option<CorruptPiece>,
    pub(super) known: Vec<SocketAddr>,
    pub(super) banned: HashSet<IpAddr>,
}

pub(super) struct Actor {
    pub(super) node: Node,
    pub(super) swarm: Swarm,
    /// Something the view shows changed since it was published.
    pub(super) dirty: bool,
    published: Instant,
    /// When the actor started: the core's first tick is due a tick after.
    started: Instant,
}

impl Node {
    pub(super) fn view(&self, now: Instant) -> View {
        let stats = self.core.stats(
            now,
            0, // the live counters are read by `Swarm::stats`
            |k| {
                self.links
                    .get(&k)
                    .map_or(0, |l| l.uploaded_to.load(Ordering::Relaxed))
            },
            ZStats::default(),
        );
        View {
            stats,
            have: self.core.have_bits().to_vec(),
            complete: self.core.is_complete(),
            fatal: self.core.fatal().map(str::to_string),
            corrupt: self.corrupt.clone(),
            known: self.core.known_peers(),
            banned: self.core.banned_ips().copied().collect(),
        }
    }
}

impl Actor {
    pub(super) fn new(node: Node, swarm: Swarm) -> Actor {
        Actor {
            node,
            swarm,
            dirty: false,
            published: Instant::now(),
            started: Instant::now(),
        }
    }

    /// Runs until both inboxes close (never, while the node's tasks hold senders).
    pub(super) async fn run(
        mut self,
        mut ctl: mpsc::UnboundedReceiver<Event>,
        mut peers: mpsc::Receiver<Event>,
    ) {
        loop {
            // The tick is checked on every turn: a busy inbox never starves the timer.
            let now = Instant::now();
            if now >= self.node.core.poll_timeout(self.started) {
                let uploaded = self.swarm.shared.uploaded.load(Ordering::Relaxed);
                let _ = self.feed(Input::Tick { uploaded });
                self.dirty = true;
            }
            self.publish(now);
            let mut wake = self.node.core.poll_timeout(self.started);
            if self.dirty {
                wake = wake.min(self.published + PUBLISH_EVERY);
            }
            tokio::select! {
                biased;
                e = ctl.recv() => match e {
                    Some(e) => self.on_event(e),
                    None => return,
                },
                e = peers.recv() => match e {
                    Some(e) => self.on_event(e),
                    None => return,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Input(input) => self.on_input(input),
            Event::Connect { hello, link, reply } => {
                let limiter = &self.swarm.shared.limiter;
                let r = self
                    .node
                    .core
                    .connect(Instant::now(), hello, || limiter.evict_idle());
                if let Ok(key) = r {
                    self.node.links.insert(key, link);
                }
                self.apply();
                let _ = reply.send(r);
            }
            Event::With(f) => {
                f(self);
                self.apply();
            }
        }
    }

    fn on_input(&mut self, input: Input) {
        let key = match &input {
            Input::Message { key, .. } | Input::ZBlock { key, .. } | Input::BadZBlock { key } => {
                Some(*key)
            }
            Input::Disconnected { key } => {
                self.node.links.remove(key);
                None
            }
            _ => None,
        };
        if let Some(k) = key {
            // A connection found misbehaving is ending: what it sent after is not read.
            if self.node.links.get(&k).is_none_or(|l| l.closing) {
                return;
            }
        }
        if let Err(e) = self.feed(input) {
            if let Some(l) = key.and_then(|k| self.node.links.get_mut(&k)) {
                debug!(peer = %l.addr, "connection ended: {e}");
                l.closing = true;
                l.kill.notify_one();
            }
        }
    }

    /// Feeds one event to the core and carries out what it asks.
    pub(super) fn feed(&mut self, input: Input) -> Result<(), SwarmError> {
        let r = self.node.core.handle(Instant::now(), input);
        self.apply();
        r
    }

    /// Publishes the view if it changed: at once when the node completed, failed or found a
    /// corrupt piece, else at most every [`PUBLISH_EVERY`].
    fn publish(&mut self, now: Instant) {
        if !self.dirty {
            return;
        }
        let urgent = {
            let v = self.swarm.shared.view.borrow();
            v.complete != self.node.core.is_complete()
                || v.fatal.is_some() != self.node.core.fatal().is_some()
                || v.corrupt.is_some() != self.node.corrupt.is_some()
        };
        if urgent || now >= self.published + PUBLISH_EVERY {
            let view = self.node.view(now);
            self.swarm.shared.view.send_replace(Arc::new(view));
            self.published = now;
            self.dirty = false;
        }
    }

    /// Carries out the core's queued actions (sends only queue, tasks are spawned, nothing
    /// waits).
    fn apply(&mut self) {
        let node = &mut self.node;
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
                                // Counted before the writer can take it (and count it
                                // off), so that the core's view of the writers' queue is
                                // never behind what it handed them.
                                let queued = &self.swarm.shared.queued;
                                let len = r.length as u64;
                                queued.fetch_add(len, Ordering::SeqCst);
                                if l.tx.send(Out::Serve(r)).is_err() {
                                    queued.fetch_sub(len, Ordering::SeqCst);
                                }
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
                        tokio::spawn(self.swarm.clone().verify_and_store(index, buf, forms));
                    }
                    Action::Dial(a) => {
                        let s = self.swarm.clone();
                        tokio::spawn(async move {
                            let r = s.dial(a).await;
                            s.input(Input::DialEnded(a));
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
                    Action::Changed => self.dirty = true,
                }
            }
            if !flooding.is_empty() {
                // It went on requesting while not reading our refusals (some 60,000 of
                // them unread): a flood, not a slow peer. Banned, so it cannot redial.
                let now = Instant::now();
                for key in flooding {
                    let _ = node.core.handle(now, Input::Flooding { key });
                }
                continue;
            }
            // Requests wait in the core's upload order: the writers learn below which
            // queue they must tell us, and if it is below that already, more go now.
            let shared = &self.swarm.shared;
            let below = node.core.upload_release_below().unwrap_or(0);
            shared.release_below.store(below, Ordering::SeqCst);
            let upload_queued = shared.queued.load(Ordering::SeqCst);
            if upload_queued >= below {
                break;
            }
            let _ = node
                .core
                .handle(Instant::now(), Input::UploadDrained { upload_queued });
        }

        // Before anything else runs: a writer of a connection just registered reads it.
        self.swarm
            .shared
            .ramping
            .store(self.node.core.ramping(), Ordering::Relaxed);
    }
}

impl Swarm {
    /// Sends an input to the actor (not from a connection's reader: see [`Swarm::peer_input`]).
    pub(super) fn input(&self, input: Input) {
        let _ = self.shared.ctl.send(Event::Input(input));
    }

    /// A reader's input: waits while the actor's peer inbox is full.
    pub(super) async fn peer_input(&self, input: Input) {
        let _ = self.shared.peers.send(Event::Input(input)).await;
    }

    /// Runs `f` on the actor's state, without waiting for it.
    pub(super) fn with(&self, f: impl FnOnce(&mut Actor) + Send + 'static) {
        let _ = self.shared.ctl.send(Event::With(Box::new(f)));
    }

    /// Runs `f` on the actor's state and returns what it returns.
    pub(super) async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Actor) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = oneshot::channel();
        self.with(move |a| {
            let _ = tx.send(f(a));
        });
        rx.await
            .expect("the swarm's actor runs as long as the node")
    }

    /// Registers a handshaken connection with the core; its first messages are queued.
    pub(super) async fn register(&self, hello: Hello, link: Link) -> Result<u64, SwarmError> {
        let (reply, rx) = oneshot::channel();
        let _ = self.shared.ctl.send(Event::Connect { hello, link, reply });
        rx.await
            .expect("the swarm's actor runs as long as the node")
    }
}
