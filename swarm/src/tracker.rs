//! HTTP tracker (BEP 3, compact peer lists per BEP 23): the seeder's embedded server and the
//! announce client used by receivers (which also works against an external tracker such as
//! opentracker).
//!
//! One extension: the seeder's reply carries `blockswarm done` = 1 once every expected
//! receiver has completed, telling receivers they may stop seeding.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use librqbit_bencode::ByteBuf;
use serde::Serialize;

use crate::failure_report::{FailureLog, FailureReport, LoggedFailure};
use crate::http::{Request, Response};
use crate::locality::{self, Candidate};

mod client;

pub use client::{announce, parse_reply, Announce, AnnounceReply};

/// Most peer ids the tracker keeps, live and gone. A room is tens or hundreds of receivers;
/// announces with made-up peer ids (or ports) must not grow the table, and the work of every
/// announce with it, without bound. When it is full a gone peer makes room (one that never
/// completed first, then the longest silent); with none gone a new peer id is refused.
pub const MAX_TRACKED_PEERS: usize = 4096;

/// A peer as the tracker knows it.
#[derive(Debug, Clone, Serialize)]
pub struct TrackedPeer {
    pub addr: SocketAddr,
    pub left: u64,
    pub uploaded: u64,
    pub downloaded: u64,
    pub completed: bool,
    /// Sent `event=stopped` or went silent: kept for the status page, not handed out.
    pub gone: bool,
    #[serde(skip)]
    pub last_seen: Instant,
    #[serde(skip)]
    pub first_seen: Instant,
    /// Seconds from first announce to the completed event.
    pub seconds_to_complete: Option<f64>,
    /// What it reported with its last `event=stopped` when it failed.
    pub failure: Option<FailureReport>,
    /// Registered with [`TrackerServer::add_static`] (the seeder): listed to everyone.
    #[serde(skip)]
    pub seeder: bool,
}

/// The seeder's embedded tracker for one torrent.
pub struct TrackerServer {
    info_hash: [u8; 20],
    interval: u64,
    peers: Mutex<HashMap<[u8; 20], TrackedPeer>>,
    failures: Mutex<FailureLog>,
    done: AtomicBool,
    site_prefix: u8,
}

#[derive(Serialize)]
struct ReplyOut<'a> {
    #[serde(rename = "blockswarm done")]
    done: u8,
    complete: u64,
    incomplete: u64,
    interval: u64,
    #[serde(rename = "min interval")]
    min_interval: u64,
    peers: ByteBuf<'a>,
}

#[derive(Serialize)]
struct Failure<'a> {
    #[serde(rename = "failure reason")]
    reason: &'a str,
}

fn bencode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    librqbit_bencode::bencode_serialize_to_writer(v, &mut out).expect("bencode to a Vec");
    out
}

fn failure(reason: &str) -> Response {
    Response::ok("text/plain", bencode(&Failure { reason }))
}

impl TrackerServer {
    pub fn new(info_hash: [u8; 20], interval: Duration) -> Self {
        Self {
            info_hash,
            interval: interval.as_secs().max(1),
            peers: Mutex::new(HashMap::new()),
            failures: Mutex::new(FailureLog::default()),
            done: AtomicBool::new(false),
            site_prefix: crate::locality::DEFAULT_SITE_PREFIX,
        }
    }

    /// Answers list the asker's site (addresses sharing `bits` leading bits with it), every
    /// seeder and [`locality::REMOTE_PEERS`] others (see `locality`); 0: every live peer.
    pub fn with_site_prefix(mut self, bits: u8) -> Self {
        self.site_prefix = bits;
        self
    }

    /// Registers a peer that never announces (the seeder itself).
    pub fn add_static(&self, peer_id: [u8; 20], addr: SocketAddr, complete: bool) {
        let now = Instant::now();
        self.peers.lock().expect("tracker lock").insert(
            peer_id,
            TrackedPeer {
                addr,
                left: if complete { 0 } else { 1 },
                uploaded: 0,
                downloaded: 0,
                completed: complete,
                gone: false,
                last_seen: now + Duration::from_secs(86400 * 365),
                first_seen: now,
                seconds_to_complete: None,
                failure: None,
                seeder: true,
            },
        );
    }

    /// Tells announcing receivers that the deployment is done.
    pub fn set_done(&self, done: bool) {
        self.done.store(done, Ordering::Relaxed);
    }

    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    /// Failures reported with `seq >= from` (the last few kept), oldest first.
    pub fn failures_since(&self, from: u64) -> Vec<LoggedFailure> {
        self.failures.lock().expect("tracker lock").since(from)
    }

    /// True if a live peer announced from `ip` (what the seeder's BitTorrent port admits).
    pub fn knows(&self, ip: IpAddr) -> bool {
        let ip = crate::allow::canonical(ip);
        self.peers
            .lock()
            .expect("tracker lock")
            .values()
            .any(|p| !p.gone && crate::allow::canonical(p.addr.ip()) == ip)
    }

    /// Every known peer.
    pub fn snapshot(&self) -> Vec<([u8; 20], TrackedPeer)> {
        let mut v: Vec<_> = self
            .peers
            .lock()
            .expect("tracker lock")
            .iter()
            .map(|(k, p)| (*k, p.clone()))
            .collect();
        v.sort_by_key(|(_, p)| p.addr);
        v
    }

    /// Handles `GET /announce?...`.
    pub fn announce(&self, req: &Request) -> Response {
        let Some(ih) = req.param("info_hash") else {
            return failure("missing info_hash");
        };
        if ih != self.info_hash {
            return failure("unknown info_hash: this tracker serves one torrent");
        }
        let Some(pid) = req
            .param("peer_id")
            .and_then(|p| <[u8; 20]>::try_from(p).ok())
        else {
            return failure("missing or malformed peer_id");
        };
        let Some(port) = req.param_str("port").and_then(|p| p.parse::<u16>().ok()) else {
            return failure("missing or malformed port");
        };
        let num = |k: &str| {
            req.param_str(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // `ip=` is ignored: a peer is where its TCP connection comes from, so nobody can have
        // the tracker hand out (and receivers dial) an address of its choosing.
        let ip = req.peer.ip();
        let event = req.param_str("event").unwrap_or_default();
        let left = num("left");
        let now = Instant::now();
        let mut peers = self.peers.lock().expect("tracker lock");
        // A live peer id belongs to the address it registered from: a copy announced from
        // elsewhere would move it (or complete it) at will.
        if peers
            .get(&pid)
            .is_some_and(|p| !p.gone && p.addr.ip() != ip)
        {
            return failure("peer_id registered from another address");
        }
        // Peers silent for three intervals are gone (kept for the status page).
        let ttl = Duration::from_secs(self.interval * 3);
        for p in peers.values_mut() {
            if now.saturating_duration_since(p.last_seen) >= ttl {
                p.gone = true;
            }
        }
        // A node restarted at the same address (a receiver killed and started again)
        // replaces its old entry at once.
        let addr = SocketAddr::new(ip, port);
        for (id, p) in peers.iter_mut() {
            if *id != pid && p.addr == addr {
                p.gone = true;
            }
        }
        if event == "stopped" {
            // A receiver that fails before it joined the swarm (a target too small, say)
            // still reports it: registered gone, with its failure.
            let report = FailureReport::from_request(req);
            if report.is_some() && !peers.contains_key(&pid) {
                peers.insert(
                    pid,
                    TrackedPeer {
                        addr,
                        left,
                        uploaded: 0,
                        downloaded: 0,
                        completed: false,
                        gone: true,
                        last_seen: now,
                        first_seen: now,
                        seconds_to_complete: None,
                        failure: None,
                        seeder: false,
                    },
                );
            }
            // Only from the address the peer registered from: a peer id copied from /status
            // does not make a stranger able to mark a real receiver gone.
            if let Some(p) = peers.get_mut(&pid).filter(|p| p.addr.ip() == ip) {
                p.gone = true;
                // A failing receiver's last word (bounded); once per peer id.
                if let Some(f) = report.filter(|_| p.failure.is_none()) {
                    p.failure = Some(f.clone());
                    self.failures
                        .lock()
                        .expect("tracker lock")
                        .push(&pid, p.addr, f);
                }
            }
        } else {
            if peers.len() >= MAX_TRACKED_PEERS && !peers.contains_key(&pid) {
                let Some(old) = peers
                    .iter()
                    .filter(|(_, p)| p.gone)
                    .min_by_key(|(_, p)| (p.completed, p.last_seen))
                    .map(|(id, _)| *id)
                else {
                    return failure("tracker full: too many live peers");
                };
                peers.remove(&old);
            }
            let e = peers.entry(pid).or_insert_with(|| TrackedPeer {
                addr: SocketAddr::new(ip, port),
                left,
                uploaded: 0,
                downloaded: 0,
                completed: false,
                gone: false,
                last_seen: now,
                first_seen: now,
                seconds_to_complete: None,
                failure: None,
                seeder: false,
            });
            e.gone = false;
            e.addr = addr;
            e.left = left;
            e.uploaded = num("uploaded");
            e.downloaded = num("downloaded");
            e.last_seen = now;
            if left == 0 && !e.completed {
                e.completed = true;
                e.seconds_to_complete = Some(now.duration_since(e.first_seen).as_secs_f64());
            }
        }
        let (mut complete, mut incomplete) = (0, 0);
        let mut live = Vec::new();
        for (id, p) in peers.iter().filter(|(_, p)| !p.gone) {
            if p.completed {
                complete += 1;
            } else {
                incomplete += 1;
            }
            if *id != pid && p.addr.is_ipv4() {
                live.push(Candidate {
                    addr: p.addr,
                    seeder: p.seeder,
                });
            }
        }
        drop(peers);
        let bits = self.site_prefix;
        let site = |a: SocketAddr, b: SocketAddr| locality::same_site(a.ip(), b.ip(), bits);
        let mut compact = Vec::new();
        for a in locality::answer(addr, &live, site, locality::REMOTE_PEERS) {
            if let SocketAddr::V4(a) = a {
                compact.extend_from_slice(&a.ip().octets());
                compact.extend_from_slice(&a.port().to_be_bytes());
            }
        }
        Response::ok(
            "text/plain",
            bencode(&ReplyOut {
                done: self.is_done() as u8,
                complete,
                incomplete,
                interval: self.interval,
                min_interval: 1,
                peers: ByteBuf(&compact),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;
    use crate::SwarmError;

    #[tokio::test]
    async fn announce_round_trip_lists_other_peers_and_completion() {
        let ih = [7u8; 20];
        let t = std::sync::Arc::new(TrackerServer::new(ih, Duration::from_secs(5)));
        let seeder: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        t.add_static([1u8; 20], seeder, true);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let t2 = t.clone();
        tokio::spawn(http::serve(
            l,
            std::sync::Arc::new(move |r: Request| {
                let t = t2.clone();
                async move { t.announce(&r) }
            }),
        ));
        let url = format!("http://{addr}/announce");
        let mut a = Announce {
            url: &url,
            info_hash: ih,
            peer_id: [2u8; 20],
            port: 7001,
            ip: Some("127.0.0.2".parse().unwrap()),
            uploaded: 0,
            downloaded: 0,
            left: 100,
            event: Some("started"),
            failure: None,
        };
        // The address comes from the connection (bound to 127.0.0.2), not from `ip=`.
        let from = Some("127.0.0.2".parse().unwrap());
        a.ip = Some("10.9.9.9".parse().unwrap());
        let r = announce(&a, from).await.unwrap();
        assert_eq!(r.peers, vec![seeder]);
        assert!(!r.done);
        a.peer_id = [3u8; 20];
        a.port = 7002;
        let r = announce(&a, from).await.unwrap();
        assert_eq!(r.peers.len(), 2);
        assert!(r.peers.contains(&"127.0.0.2:7001".parse().unwrap()));
        a.left = 0;
        a.event = Some("completed");
        t.set_done(true);
        let r = announce(&a, from).await.unwrap();
        assert!(r.done);
        let snap = t.snapshot();
        assert!(snap.iter().any(|(id, p)| *id == [3u8; 20] && p.completed));
        a.info_hash = [9u8; 20];
        assert!(matches!(
            announce(&a, None).await,
            Err(SwarmError::Tracker(_))
        ));
    }

    #[test]
    fn answers_list_the_askers_room_the_seeder_and_a_few_others() {
        let ih = [7u8; 20];
        let announce = |t: &TrackerServer, room: u8, j: u8| {
            let r = Request::get(
                "/announce",
                vec![
                    ("info_hash".into(), ih.to_vec()),
                    (
                        "peer_id".into(),
                        vec![
                            room, j, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                        ],
                    ),
                    ("port".into(), b"6881".to_vec()),
                    ("left".into(), b"100".to_vec()),
                ],
                format!("10.0.{room}.{j}:40000").parse().unwrap(),
            );
            parse_reply(&t.announce(&r).body).unwrap().peers
        };
        for (bits, want) in [(24, 11 + 1 + locality::REMOTE_PEERS), (0, 3 * 12 - 1 + 1)] {
            let t = TrackerServer::new(ih, Duration::from_secs(5)).with_site_prefix(bits);
            t.add_static([9u8; 20], "10.0.9.1:7000".parse().unwrap(), true);
            for room in 0..3 {
                for j in 1..=12 {
                    announce(&t, room, j);
                }
            }
            let got = announce(&t, 0, 1);
            assert_eq!(got.len(), want, "prefix {bits}: {got:?}");
            assert!(
                got.contains(&"10.0.9.1:7000".parse().unwrap()),
                "the seeder"
            );
            let own = got
                .iter()
                .filter(|a| a.ip().to_string().starts_with("10.0.0."))
                .count();
            assert_eq!(own, 11, "the whole room but the asker");
        }
    }

    #[test]
    fn knows_live_announcers_only() {
        let ih = [7u8; 20];
        let t = TrackerServer::new(ih, Duration::from_secs(5));
        let req = |peer: &str, event: &[u8]| {
            Request::get(
                "/announce",
                vec![
                    ("event".into(), event.to_vec()),
                    ("info_hash".into(), ih.to_vec()),
                    ("peer_id".into(), vec![4u8; 20]),
                    ("port".into(), b"6881".to_vec()),
                ],
                peer.parse().unwrap(),
            )
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(!t.knows(ip("127.0.0.2")));
        t.announce(&req("127.0.0.2:40000", b"started"));
        assert!(t.knows(ip("127.0.0.2")));
        assert!(t.knows(ip("::ffff:127.0.0.2")));
        assert!(!t.knows(ip("127.0.0.3")));
        t.announce(&req("127.0.0.2:40001", b"stopped"));
        assert!(!t.knows(ip("127.0.0.2")), "a stopped peer is gone");
    }

    #[test]
    fn a_node_restarted_at_the_same_address_replaces_its_old_entry() {
        let ih = [7u8; 20];
        let t = TrackerServer::new(ih, Duration::from_secs(5));
        let req = |pid: u8| {
            Request::get(
                "/announce",
                vec![
                    ("info_hash".into(), ih.to_vec()),
                    ("peer_id".into(), vec![pid; 20]),
                    ("port".into(), b"6881".to_vec()),
                    ("left".into(), b"100".to_vec()),
                ],
                "127.0.0.2:40000".parse().unwrap(),
            )
        };
        t.announce(&req(1));
        t.announce(&req(2));
        let snap = t.snapshot();
        assert_eq!(snap.len(), 2);
        assert!(snap.iter().any(|(id, p)| *id == [1u8; 20] && p.gone));
        assert!(snap.iter().any(|(id, p)| *id == [2u8; 20] && !p.gone));
    }

    #[test]
    fn made_up_peer_ids_do_not_grow_the_table_without_bound() {
        let ih = [7u8; 20];
        let t = TrackerServer::new(ih, Duration::from_secs(5));
        let req = |n: u32, port: u16| {
            Request::get(
                "/announce",
                vec![
                    ("info_hash".into(), ih.to_vec()),
                    ("peer_id".into(), [n.to_be_bytes(); 5].concat()),
                    ("port".into(), port.to_string().into_bytes()),
                    ("left".into(), b"100".to_vec()),
                ],
                "127.0.0.2:40000".parse().unwrap(),
            )
        };
        let refused = |r: &Response| String::from_utf8_lossy(&r.body).contains("failure");
        // Same address and port: each replaces the last, which is gone and makes room.
        let n = MAX_TRACKED_PEERS as u32 + 100;
        for i in 0..n {
            assert!(!refused(&t.announce(&req(i, 6881))), "announce {i}");
        }
        let snap = t.snapshot();
        assert_eq!(snap.len(), MAX_TRACKED_PEERS);
        assert!(snap
            .iter()
            .any(|(id, p)| *id == req(n - 1, 0).param("peer_id").unwrap() && !p.gone));
        // All live (distinct ports): a new peer id is refused, a known one still answered.
        let t = TrackerServer::new(ih, Duration::from_secs(5));
        for i in 0..MAX_TRACKED_PEERS as u32 {
            assert!(!refused(&t.announce(&req(i, 1000 + i as u16))));
        }
        assert!(refused(&t.announce(&req(n, 9))));
        assert!(!refused(&t.announce(&req(0, 1000))));
        assert_eq!(t.snapshot().len(), MAX_TRACKED_PEERS);
    }

    #[test]
    fn ip_param_is_ignored_and_stopped_counts_only_from_the_registered_address() {
        let ih = [7u8; 20];
        let t = TrackerServer::new(ih, Duration::from_secs(5));
        let req = |peer: &str, extra: &[(&str, &[u8])]| {
            // Extras first: the first value of a parameter wins.
            let mut query: Vec<(String, Vec<u8>)> = extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect();
            query.extend([
                ("info_hash".into(), ih.to_vec()),
                ("peer_id".into(), vec![5u8; 20]),
                ("port".into(), b"6881".to_vec()),
                ("left".into(), b"100".to_vec()),
            ]);
            Request::get("/announce", query, peer.parse().unwrap())
        };
        t.announce(&req("127.0.0.2:40000", &[("ip", b"10.1.2.3")]));
        let addr = |t: &TrackerServer| t.snapshot()[0].1.clone();
        assert_eq!(addr(&t).addr, "127.0.0.2:6881".parse().unwrap());
        // A copied peer id from another address cannot stop it.
        t.announce(&req("127.0.0.3:40000", &[("event", b"stopped")]));
        assert!(!addr(&t).gone);
        t.announce(&req("127.0.0.3:40000", &[("left", b"0")]));
        assert_eq!(addr(&t).addr, "127.0.0.2:6881".parse().unwrap());
        assert!(!addr(&t).completed);
        t.announce(&req("127.0.0.2:40001", &[("event", b"stopped")]));
        assert!(addr(&t).gone);
    }

    #[test]
    fn a_failure_report_is_recorded_once_and_only_from_the_peers_address() {
        let ih = [7u8; 20];
        let t = TrackerServer::new(ih, Duration::from_secs(5));
        let req = |peer: &str, pid: u8, extra: &[(&str, &[u8])]| {
            let mut query: Vec<(String, Vec<u8>)> = extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect();
            query.extend([
                ("info_hash".into(), ih.to_vec()),
                ("peer_id".into(), vec![pid; 20]),
                ("port".into(), b"6881".to_vec()),
                ("left".into(), b"100".to_vec()),
            ]);
            Request::get("/announce", query, peer.parse().unwrap())
        };
        let fail: &[(&str, &[u8])] = &[
            ("event", b"stopped"),
            ("blockswarm_exit", b"1"),
            ("blockswarm_error", b"write failed at byte 4096"),
        ];
        t.announce(&req("127.0.0.2:40000", 5, &[]));
        // A stranger with a copied peer id reports nothing.
        t.announce(&req("127.0.0.3:40000", 5, fail));
        assert!(t.failures_since(0).is_empty());
        t.announce(&req("127.0.0.2:40001", 5, fail));
        t.announce(&req("127.0.0.2:40001", 5, fail));
        let f = t.failures_since(0);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].report.exit, 1);
        assert_eq!(f[0].report.error, "write failed at byte 4096");
        assert_eq!(f[0].addr, "127.0.0.2:6881".parse().unwrap());
        let p = &t.snapshot()[0].1;
        assert!(p.gone && p.failure.is_some());
        // One that never announced before (a bad target) is registered gone, failed.
        t.announce(&req("127.0.0.4:40000", 6, fail));
        assert_eq!(t.failures_since(1).len(), 1);
        assert!(t.snapshot().iter().all(|(_, p)| p.gone));
    }
}
