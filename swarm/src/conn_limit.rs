//! Connection limits of the listeners (the HTTP server on :6880, the BitTorrent port :6881):
//! how many connections at once, how many from one address, how long a connection may take to
//! say what it wants, and which connection makes room for a new one at the cap.
//!
//! The decisions are in [`ConnTable`] (pure: data and a clock passed in); [`Limiter`] and its
//! RAII [`Slot`] wrap it for the accept loops, so every exit path of a connection task frees
//! its place.
//!
//! Per remote address: 8 at once. On a LAN every receiver is its own machine with its own
//! address and opens one BitTorrent connection to a peer (two for a moment when both dial at
//! once) and one HTTP request at a time (manifest, then an announce every few seconds); a
//! browser on `/status` opens up to 6. A room of 50 machines never comes near it; many
//! receivers behind one NAT are not a LAN deployment.
//!
//! At the cap an HTTP connection still sending its request head, or a BitTorrent connection
//! not yet handshaken or silent (no useful message, see [`useful`]) for [`BT`]`.idle_evict`,
//! is closed in favour of the new one: idle sockets cannot lock out real clients, whose
//! first bytes arrive within milliseconds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::wire::Msg;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub global: usize,
    /// Connections open at once from one remote address.
    pub per_ip: usize,
    /// A connection past its opening (HTTP: request head read; BitTorrent: handshaken) that
    /// sent no useful message for this long may be closed to make room at the cap. `None`:
    /// only connections still opening make room.
    pub idle_evict: Option<Duration>,
}

/// The seeder's HTTP server (manifest, tracker, `/status`, netboot files).
pub const HTTP: Limits = Limits {
    global: 128,
    per_ip: 8,
    idle_evict: None,
};

/// The BitTorrent listener of seeders and receivers.
pub const BT: Limits = Limits {
    global: 512,
    per_ip: 8,
    idle_evict: Some(Duration::from_secs(5)),
};

/// An HTTP client has this long from connecting to send its whole request head.
pub const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest HTTP request head read.
pub const HTTP_MAX_HEAD: usize = 16 * 1024;
/// An HTTP exchange (head, handler, response written) ends within this long.
pub const HTTP_CONN_TIMEOUT: Duration = Duration::from_secs(30);
/// A BitTorrent handshake (both ways) completes within this long.
pub const BT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (EMFILE, ENFILE, ENOBUFS...) before the next one: the
/// listener keeps running, without spinning on an error that repeats.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Does this BitTorrent message show the connection is in use? Data asked for or sent, or a
/// piece gained; keep-alives and the greetings after the handshake do not count.
pub fn useful(m: &Msg) -> bool {
    matches!(m, Msg::Request(_) | Msg::Piece { .. } | Msg::Have(_))
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address already has `per_ip` connections.
    PerIp,
    /// `global` connections, none of which may be closed for it.
    Full,
}

/// What [`ConnTable::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Accepted as `id`; `evict` was removed from the table to make room and must be closed.
    Accept {
        id: u64,
        evict: Option<u64>,
    },
    Refuse(Refusal),
}

#[derive(Debug, Clone)]
struct Conn {
    ip: IpAddr,
    opened: Instant,
    /// Set once the connection is past its opening: since then, its last useful message.
    active: Option<Instant>,
}

/// The open connections of one listener and the policy over them.
#[derive(Debug)]
pub struct ConnTable {
    limits: Limits,
    conns: HashMap<u64, Conn>,
    per_ip: HashMap<IpAddr, usize>,
    next_id: u64,
}

impl ConnTable {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            conns: HashMap::new(),
            per_ip: HashMap::new(),
            next_id: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn from_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// A new connection from `ip` at `now`: accepted (perhaps in place of another), or not.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Admit {
        if self.from_ip(ip) >= self.limits.per_ip {
            return Admit::Refuse(Refusal::PerIp);
        }
        let evict = if self.conns.len() >= self.limits.global {
            match self.victim(now, true) {
                Some(v) => {
                    self.release(v);
                    Some(v)
                }
                None => return Admit::Refuse(Refusal::Full),
            }
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        self.conns.insert(
            id,
            Conn {
                ip,
                opened: now,
                active: None,
            },
        );
        *self.per_ip.entry(ip).or_default() += 1;
        Admit::Accept { id, evict }
    }

    /// The connection to close for a new one: the oldest still opening (if `opening` may be
    /// chosen), else the one silent longest among those silent for at least `idle_evict`.
    pub fn victim(&self, now: Instant, opening: bool) -> Option<u64> {
        let oldest_opening = self
            .conns
            .iter()
            .filter(|(_, c)| opening && c.active.is_none())
            .min_by_key(|(&id, c)| (c.opened, id))
            .map(|(&id, _)| id);
        oldest_opening.or_else(|| {
            let idle = self.limits.idle_evict?;
            self.conns
                .iter()
                .filter_map(|(&id, c)| c.active.map(|t| (t, id)))
                .filter(|&(t, _)| now.saturating_duration_since(t) >= idle)
                .min()
                .map(|(_, id)| id)
        })
    }

    /// Removes and returns a connection past its opening and idle long enough (see
    /// [`Self::victim`]), for a user of the listener that is full in its own way (the
    /// engine's peer cap).
    pub fn evict_idle(&mut self, now: Instant) -> Option<u64> {
        let v = self.victim(now, false)?;
        self.release(v);
        Some(v)
    }

    /// `id` is past its opening (request head read, handshake done) at `now`.
    pub fn opened(&mut self, id: u64, now: Instant) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.active = Some(now);
        }
    }

    /// `id` sent a useful message at `now`.
    pub fn touch(&mut self, id: u64, now: Instant) {
        if let Some(c) = self.conns.get_mut(&id) {
            if c.active.is_some() {
                c.active = Some(now);
            }
        }
    }

    /// `id` is gone (no-op if it was evicted already).
    pub fn release(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            if let Some(n) = self.per_ip.get_mut(&c.ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&c.ip);
                }
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    table: ConnTable,
    kills: HashMap<u64, Arc<Notify>>,
}

/// A listener's [`ConnTable`] shared by its connection tasks.
#[derive(Debug, Clone)]
pub struct Limiter(Arc<Mutex<Inner>>);

impl Limiter {
    pub fn new(limits: Limits) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            table: ConnTable::new(limits),
            kills: HashMap::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().expect("connection limiter lock")
    }

    /// A place for a new connection from `ip`, or why not. A connection evicted for it is
    /// told to close (its [`Slot::evicted`] completes), and the caller yields once so that
    /// it does before the next accept: open sockets stay within the cap, not the cap plus
    /// the victims not yet scheduled.
    pub async fn admit(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        let (slot, evicted) = self.admit_now(ip)?;
        if evicted {
            tokio::task::yield_now().await;
        }
        Ok(slot)
    }

    fn admit_now(&self, ip: IpAddr) -> Result<(Slot, bool), Refusal> {
        let mut g = self.lock();
        match g.table.admit(ip, Instant::now()) {
            Admit::Refuse(r) => Err(r),
            Admit::Accept { id, evict } => {
                if let Some(k) = evict.and_then(|v| g.kills.remove(&v)) {
                    k.notify_one();
                }
                let kill = Arc::new(Notify::new());
                g.kills.insert(id, kill.clone());
                let slot = Slot {
                    limiter: self.clone(),
                    id,
                    kill,
                };
                Ok((slot, evict.is_some()))
            }
        }
    }

    /// Closes one connection past its opening and idle (see [`ConnTable::evict_idle`]);
    /// false if there is none.
    pub fn evict_idle(&self) -> bool {
        let mut g = self.lock();
        let Some(v) = g.table.evict_idle(Instant::now()) else {
            return false;
        };
        if let Some(k) = g.kills.remove(&v) {
            k.notify_one();
        }
        true
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().table.len()
    }
}

/// One connection's place in its listener's table, freed when dropped.
#[derive(Debug)]
pub struct Slot {
    limiter: Limiter,
    id: u64,
    kill: Arc<Notify>,
}

impl Slot {
    /// The connection is past its opening.
    pub fn opened(&self) {
        self.limiter.lock().table.opened(self.id, Instant::now());
    }

    /// The connection sent a useful message.
    pub fn touch(&self) {
        self.limiter.lock().table.touch(self.id, Instant::now());
    }

    /// Completes when the connection was chosen to make room for another: close it.
    pub async fn evicted(&self) {
        self.kill.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.limiter.lock();
        g.table.release(self.id);
        g.kills.remove(&self.id);
    }
}

/// [`Slot::evicted`] of an optional slot (never, without one: outgoing connections).
pub async fn evicted(slot: &Option<Slot>) {
    match slot {
        Some(s) => s.evicted().await,
        None => std::future::pending().await,
    }
}

/// Raises this process's open-file limit (RLIMIT_NOFILE) to its hard limit, so the caps
/// above and the files in use fit however the process was started; returns the new soft
/// limit (`None`: unlimited).
pub fn raise_fd_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current == cur.maximum {
        return Ok(cur.current);
    }
    // An unlimited hard limit cannot be the soft one (the kernel caps it at nr_open).
    let want = cur.maximum.unwrap_or(1 << 20);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: cur.maximum,
        },
    )?;
    Ok(Some(want))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    const SMALL: Limits = Limits {
        global: 4,
        per_ip: 2,
        idle_evict: Some(Duration::from_secs(5)),
    };

    fn accept(t: &mut ConnTable, a: IpAddr, now: Instant) -> (u64, Option<u64>) {
        match t.admit(a, now) {
            Admit::Accept { id, evict } => (id, evict),
            r => panic!("refused: {r:?}"),
        }
    }

    #[test]
    fn per_ip_cap_refuses_and_release_frees() {
        let now = Instant::now();
        let mut t = ConnTable::new(SMALL);
        let (a, _) = accept(&mut t, ip(1), now);
        accept(&mut t, ip(1), now);
        assert_eq!(t.admit(ip(1), now), Admit::Refuse(Refusal::PerIp));
        assert_eq!(t.from_ip(ip(1)), 2);
        accept(&mut t, ip(2), now);
        t.release(a);
        t.release(a); // twice: no effect
        assert_eq!(t.from_ip(ip(1)), 1);
        assert_eq!(t.len(), 2);
        accept(&mut t, ip(1), now);
    }

    #[test]
    fn at_the_cap_the_oldest_opening_connection_makes_room() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = ConnTable::new(SMALL);
        let (a, _) = accept(&mut t, ip(1), t0);
        let (b, _) = accept(&mut t, ip(2), t0 + s);
        let (c, _) = accept(&mut t, ip(3), t0 + 2 * s);
        let (d, _) = accept(&mut t, ip(4), t0 + 3 * s);
        // a handshakes; b is the oldest still opening.
        t.opened(a, t0 + 3 * s);
        let (_, ev) = accept(&mut t, ip(5), t0 + 4 * s);
        assert_eq!(ev, Some(b));
        assert_eq!(t.len(), 4);
        assert_eq!(t.from_ip(ip(2)), 0);
        let (_, ev) = accept(&mut t, ip(6), t0 + 4 * s);
        assert_eq!(ev, Some(c));
        let (_, ev) = accept(&mut t, ip(7), t0 + 4 * s);
        assert_eq!(ev, Some(d));
    }

    #[test]
    fn busy_connections_are_kept_idle_ones_make_room() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = ConnTable::new(SMALL);
        let ids: Vec<u64> = (1..=4).map(|i| accept(&mut t, ip(i), t0).0).collect();
        for &id in &ids {
            t.opened(id, t0);
        }
        // All handshaken and recently useful: nobody makes room.
        assert_eq!(t.admit(ip(9), t0 + 4 * s), Admit::Refuse(Refusal::Full));
        // ids[2] and ids[0] useful lately, ids[1] last at 1 s, ids[3] at 2 s.
        t.touch(ids[0], t0 + 6 * s);
        t.touch(ids[1], t0 + s);
        t.touch(ids[2], t0 + 6 * s);
        t.touch(ids[3], t0 + 2 * s);
        // At 6.5 s: ids[1] silent 5.5 s, ids[3] silent 4.5 s (< 5 s).
        let now = t0 + 6 * s + s / 2;
        let (new1, ev) = accept(&mut t, ip(9), now);
        assert_eq!(ev, Some(ids[1]));
        // The newcomer, still opening, is the first to go...
        assert_eq!(t.victim(now, true), Some(new1));
        // ...once handshaken, nobody is silent 5 s yet.
        t.opened(new1, now);
        assert_eq!(t.admit(ip(10), now), Admit::Refuse(Refusal::Full));
        // At 7 s ids[3] is silent 5 s.
        let (_, ev) = accept(&mut t, ip(10), t0 + 7 * s);
        assert_eq!(ev, Some(ids[3]));
        assert_eq!(t.from_ip(ip(4)), 0);
    }

    #[test]
    fn touch_before_opening_does_not_count() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(SMALL);
        let (a, _) = accept(&mut t, ip(1), t0);
        t.touch(a, t0);
        assert_eq!(t.victim(t0, false), None);
        assert_eq!(t.victim(t0, true), Some(a));
    }

    #[test]
    fn evict_idle_picks_only_opened_idle_connections() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(BT);
        let (opening, _) = accept(&mut t, ip(1), t0);
        let (busy, _) = accept(&mut t, ip(2), t0);
        let (idle, _) = accept(&mut t, ip(3), t0);
        t.opened(busy, t0);
        t.opened(idle, t0);
        let later = t0 + Duration::from_secs(6);
        t.touch(busy, later);
        assert_eq!(t.evict_idle(later), Some(idle));
        assert_eq!(t.evict_idle(later), None);
        assert_eq!(t.len(), 2);
        assert_eq!(t.victim(later, true), Some(opening));
    }

    #[test]
    fn http_never_evicts_a_request_being_served() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(Limits { global: 2, ..HTTP });
        let (a, _) = accept(&mut t, ip(1), t0);
        let (b, _) = accept(&mut t, ip(2), t0);
        t.opened(a, t0);
        t.opened(b, t0);
        let much_later = t0 + Duration::from_secs(3600);
        assert_eq!(t.admit(ip(3), much_later), Admit::Refuse(Refusal::Full));
    }

    #[test]
    fn the_limits_as_documented() {
        assert_eq!((HTTP.global, HTTP.per_ip, HTTP.idle_evict), (128, 8, None));
        assert_eq!(
            (BT.global, BT.per_ip, BT.idle_evict),
            (512, 8, Some(Duration::from_secs(5)))
        );
        assert_eq!(HTTP_HEAD_TIMEOUT, Duration::from_secs(5));
        assert_eq!(BT_HANDSHAKE_TIMEOUT, Duration::from_secs(5));
        assert_eq!(HTTP_MAX_HEAD, 16384);
        // A room of 50 receivers, one address each, fits the global caps.
        let mut t = ConnTable::new(BT);
        let now = Instant::now();
        for i in 0..50 {
            assert_eq!(accept(&mut t, ip(i), now).1, None);
        }
        assert_eq!(t.len(), 50);
    }

    #[test]
    fn useful_messages() {
        use crate::wire::Req;
        let r = Req {
            index: 0,
            begin: 0,
            length: 16384,
        };
        assert!(useful(&Msg::Request(r)));
        assert!(useful(&Msg::Have(3)));
        assert!(useful(&Msg::Piece {
            index: 0,
            begin: 0,
            data: vec![]
        }));
        for m in [Msg::KeepAlive, Msg::Interested, Msg::HaveAll, Msg::HaveNone] {
            assert!(!useful(&m));
        }
    }

    #[tokio::test]
    async fn slots_release_on_drop_and_victims_are_told() {
        let l = Limiter::new(Limits {
            global: 1,
            per_ip: 1,
            idle_evict: None,
        });
        let a = l.admit(ip(1)).await.unwrap();
        assert_eq!(l.admit(ip(1)).await.unwrap_err(), Refusal::PerIp);
        let b = l.admit(ip(2)).await.unwrap(); // a was still opening: evicted
        tokio::time::timeout(Duration::from_secs(1), a.evicted())
            .await
            .expect("victim told");
        assert_eq!(l.open(), 1);
        drop(a); // already gone from the table: b keeps its place
        assert_eq!(l.open(), 1);
        b.opened();
        assert_eq!(l.admit(ip(3)).await.unwrap_err(), Refusal::Full);
        drop(b);
        assert_eq!(l.open(), 0);
        let _c = l.admit(ip(3)).await.unwrap();
    }
}
