//! Connection limits (swarm::conn_limit): floods of idle sockets on a seeder's HTTP and
//! BitTorrent ports do not stop receivers deploying or `/status` answering, slow clients are
//! cut after the documented deadlines, and the seeder's open files stay bounded.
//!
//! Addresses: seeders 127.0.130.x, receivers 127.0.131.x / 127.0.133.x, flood sources
//! 127.0.132.x / 127.0.134.x, single clients 127.0.135.x.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockswarm_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const T: Duration = Duration::from_secs(60);

/// The seeder's caps (conn_limit::HTTP.global + conn_limit::BT.global) and what a process
/// holds besides (files, listeners, runtime, logging): the most fds it may have open.
const FD_BOUND: usize = 128 + 512 + 64;

type Fixture = Ext4Fixture;

fn fixture(seed: u64) -> Fixture {
    ext4_fixture(seed, 48, 8)
}

fn status_ok(ip: &str) -> bool {
    http_get(&status_url(ip)).is_some()
}

fn pid(p: &Proc) -> i32 {
    p.child.as_ref().expect("running").id() as i32
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (soft, hard) "Max open files" of a process.
fn nofile(pid: i32) -> (String, String) {
    let l = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let line = l
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("")
        .to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    (
        f.get(3).unwrap_or(&"").to_string(),
        f.get(4).unwrap_or(&"").to_string(),
    )
}

/// The test process opens thousands of sockets: its own soft limit up to the hard one.
fn raise_own_limit() {
    blockswarm_swarm::conn_limit::raise_fd_limit().expect("raise RLIMIT_NOFILE");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn connect_from(src: IpAddr, to: SocketAddr) -> Option<TcpStream> {
    let s = TcpSocket::new_v4().ok()?;
    s.bind(SocketAddr::new(src, 0)).ok()?;
    tokio::time::timeout(Duration::from_secs(5), s.connect(to))
        .await
        .ok()?
        .ok()
}

/// Announces to the seeder on `sip` from `src` with the deployment token, so that the
/// seeder's BitTorrent port admits `src` (strangers are closed at once; these tests are about
/// insiders that idle).
async fn announce_from(sip: &str, src: IpAddr, info_hash: [u8; 20]) {
    let mut id = *b"-XX0000-000000000000";
    rand::Rng::fill(&mut rand::thread_rng(), &mut id[8..]);
    let url = format!(
        "{}&info_hash={}&peer_id={}&port=6881&uploaded=0&downloaded=0&left=1&compact=1",
        announce_url(sip),
        blockswarm_swarm::http::percent_encode(&info_hash),
        blockswarm_swarm::http::percent_encode(&id)
    );
    blockswarm_swarm::http::get(&url, Some(src), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("announce from {src}: {e}"));
}

/// Opens `n` connections to `to`, round the `sources`, all at once; returns those that
/// connected.
async fn open_idle(to: SocketAddr, sources: &[IpAddr], n: usize) -> Vec<TcpStream> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let src = sources[i % sources.len()];
        set.spawn(connect_from(src, to));
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(s)) = r {
            out.push(s);
        }
    }
    out
}

/// Idle sockets kept open against some ports from a background thread: `hold` per port at
/// first, then every second the oldest `churn` per port closed and as many new ones opened
/// (an attacker who reconnects as the seeder cuts him off), until dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, usize)>>,
}

impl Flood {
    fn start(targets: Vec<SocketAddr>, sources: Vec<IpAddr>, hold: usize, churn: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut held: Vec<std::collections::VecDeque<TcpStream>> = Vec::new();
                let mut opened = 0;
                for &t in &targets {
                    let v = open_idle(t, &sources, hold).await;
                    opened += v.len();
                    held.push(v.into());
                }
                let first: Vec<usize> = held.iter().map(|h| h.len()).collect();
                tx.send(first).unwrap();
                let mut attempts = hold * targets.len();
                while !stop2.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    for (k, &t) in targets.iter().enumerate() {
                        for _ in 0..churn.min(held[k].len()) {
                            held[k].pop_front();
                        }
                        let v = open_idle(t, &sources, churn).await;
                        attempts += churn;
                        opened += v.len();
                        held[k].extend(v);
                    }
                }
                (attempts, opened)
            })
        });
        let first = rx.recv().expect("flood started");
        eprintln!("flood: {first:?} idle connections opened (of {hold} per port)");
        for n in first {
            assert!(n * 10 >= hold * 9, "only {n} of {hold} flood connections");
        }
        Flood {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops; returns (connections attempted, connected) over the whole flood.
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts receivers `hosts` on 127.0.`net`.x (seeding nothing after completion) and
/// waits for them, sampling the seeder's fds and RSS meanwhile; returns the time taken and
/// the largest fd count and RSS (KiB) seen.
fn deploy(
    f: &Fixture,
    seeder: &Proc,
    url: &str,
    net: u8,
    hosts: std::ops::RangeInclusive<u8>,
    dir: &Path,
) -> (Duration, usize, u64) {
    let start = Instant::now();
    let mut rs = start_receivers(net, hosts, url, &f.m, &["--seed-after", "0s"], dir, 7);
    let (mut fds, mut rss) = (0, 0);
    let sp = pid(seeder);
    let done = wait_until(T, || {
        fds = fds.max(fd_count(sp));
        rss = rss.max(rss_kib(sp));
        rs.iter_mut()
            .all(|(_, r)| r.child.as_mut().unwrap().try_wait().unwrap().is_some())
    });
    if !done {
        let logs: Vec<String> = rs
            .iter()
            .map(|(_, r)| format!("{}:\n{}", r.name, r.stderr_text()))
            .collect();
        panic!("receivers not done within {T:?}:\n{}", logs.join("\n"));
    }
    wait_all_ok(&mut rs, Duration::from_secs(1));
    let took = start.elapsed();
    let source = packed_data(&f.img, &f.m);
    for (t, _) in &rs {
        let got = packed_data(t, &f.m);
        assert!(got == source, "{} differs from the source", t.display());
    }
    (took, fds, rss)
}

/// (a) + (d): 1,100 idle sockets on each port (from 110 addresses, more than either cap
/// holds, and reopened as the seeder cuts them) against a seeder held to the default limit
/// of 1024 open files: 3 receivers deploy, `/status` answers, the seeder's fds stay bounded.
#[test]
fn a_flood_of_idle_sockets_on_both_ports_does_not_stop_a_deployment() {
    raise_own_limit();
    let f = fixture(130);
    let sip = "127.0.130.1";
    let seeder = seeder(sip, &f.mpath, &[], &f.d, "seeder");
    assert!(wait_until(T, || status_ok(sip)), "seeder not up");
    let sp = pid(&seeder);
    // Raised to its hard limit at start...
    let (soft, hard) = nofile(sp);
    assert_eq!(soft, hard, "seeder did not raise its open-file limit");
    // ...and now held to 1024, the usual default, as in the review that found the problem.
    rustix::process::prlimit(
        rustix::process::Pid::from_raw(sp),
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(1024),
            maximum: Some(1024),
        },
    )
    .expect("prlimit");
    assert_eq!(nofile(sp), ("1024".into(), "1024".into()));
    let url = manifest_url(sip, &f.m);

    let base_fds = fd_count(sp);
    let base_rss = rss_kib(sp);
    let (quiet, quiet_fds, quiet_rss) = deploy(&f, &seeder, &url, 131, 1..=3, &f.d);
    eprintln!(
        "no flood: 3 receivers in {quiet:?}; seeder fds {base_fds} idle, at most {quiet_fds}; \
         RSS {base_rss} KiB idle, at most {quiet_rss} KiB"
    );

    let sources: Vec<IpAddr> = (1..=110).map(|h| ip(&format!("127.0.132.{h}"))).collect();
    let targets = vec![
        format!("{sip}:6880").parse().unwrap(),
        format!("{sip}:6881").parse().unwrap(),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let info_hash = f.m.info_hash().unwrap();
    rt.block_on(async {
        for &src in &sources {
            announce_from(sip, src, info_hash).await;
        }
    });
    let t0 = Instant::now();
    let flood = Flood::start(targets, sources, 1100, 200);
    let flood_fds = fd_count(sp);
    eprintln!(
        "flood of 2 x 1100 opened in {:?}; seeder fds now {flood_fds}",
        t0.elapsed()
    );
    let t1 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || status_ok(sip)),
        "/status did not answer during the flood"
    );
    eprintln!("/status answered {:?} into the flood", t1.elapsed());
    let (took, fds, rss) = deploy(&f, &seeder, &url, 131, 4..=6, &f.d);
    let fds = fds.max(flood_fds);
    assert!(
        status_ok(sip),
        "/status did not answer after the deployment"
    );
    let (attempts, connected) = flood.finish();
    eprintln!(
        "flood: 3 receivers in {took:?} (vs {quiet:?} without); seeder fds at most {fds} \
         (bound {FD_BOUND}), RSS at most {rss} KiB; flood attempted {attempts}, connected \
         {connected}"
    );
    assert!(fds <= FD_BOUND, "seeder had {fds} fds open");
    // No per-socket buffer for strangers (the read buffer is allocated after the handshake).
    assert!(rss < 64 * 1024, "seeder RSS {rss} KiB under the flood");
    assert!(took < Duration::from_secs(45), "deployment took {took:?}");
    let err = std::fs::read_to_string(&seeder.stderr).unwrap_or_default();
    let accept_errors = err.matches("accept failed").count();
    eprintln!("seeder logged {accept_errors} accept errors");
}

/// (b) 200 idle connections on the BitTorrent port, 150 of them handshaken (more than the
/// engine's 128 peers) and silent: receivers are still served.
#[test]
fn idle_bittorrent_connections_do_not_lock_out_receivers() {
    raise_own_limit();
    let f = fixture(131);
    let sip = "127.0.130.2";
    let seeder = seeder(sip, &f.mpath, &[], &f.d, "seeder");
    assert!(wait_until(T, || status_ok(sip)), "seeder not up");
    let url = manifest_url(sip, &f.m);
    let bt: SocketAddr = format!("{sip}:6881").parse().unwrap();
    let info_hash = f.m.info_hash().unwrap();
    let sources: Vec<IpAddr> = (1..=40).map(|h| ip(&format!("127.0.134.{h}"))).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (held, handshaken) = rt.block_on(async {
        for &src in &sources {
            announce_from(sip, src, info_hash).await;
        }
        let mut held = open_idle(bt, &sources, 200).await;
        let mut handshaken = 0;
        for s in held.iter_mut().take(150) {
            let mut id = [0u8; 20];
            id[..8].copy_from_slice(b"-XX0000-");
            rand::Rng::fill(&mut rand::thread_rng(), &mut id[8..]);
            if blockswarm_swarm::wire::write_handshake(s, info_hash, id, false)
                .await
                .is_ok()
                && blockswarm_swarm::wire::read_handshake(s).await.is_ok()
            {
                handshaken += 1;
            }
        }
        (held, handshaken)
    });
    eprintln!("{} idle connections, {handshaken} handshaken", held.len());
    assert!(held.len() >= 190 && handshaken >= 120);
    let (took, fds, rss) = deploy(&f, &seeder, &url, 133, 1..=3, &f.d);
    eprintln!("3 receivers served in {took:?} past 200 idle peers; seeder fds at most {fds}, RSS at most {rss} KiB");
    assert!(took < Duration::from_secs(45));
    drop(held);
}

/// Reads until the server closes (EOF or reset); the time that took, or None after 15 s.
async fn time_to_close(s: &mut TcpStream) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return t.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

fn assert_about_5s(what: &str, d: Option<Duration>) {
    let d = d.unwrap_or_else(|| panic!("{what}: not cut within 15 s"));
    eprintln!("{what}: cut after {d:?}");
    assert!(
        d >= Duration::from_millis(4500) && d <= Duration::from_secs(8),
        "{what}: cut after {d:?}, expected ~5 s"
    );
}

/// (c) Slow clients are cut after the deadlines; over the per-address cap an HTTP client
/// gets a 503 at once.
#[test]
fn slow_clients_are_cut_after_the_deadlines() {
    raise_own_limit();
    let f = fixture(132);
    let sip = "127.0.130.3";
    let _seeder = seeder(sip, &f.mpath, &[], &f.d, "seeder");
    assert!(wait_until(T, || status_ok(sip)), "seeder not up");
    let http: SocketAddr = format!("{sip}:6880").parse().unwrap();
    let bt: SocketAddr = format!("{sip}:6881").parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let eight = rt.block_on(async {
        let me = ip("127.0.135.1");
        announce_from(sip, me, f.m.info_hash().unwrap()).await;
        let mut partial = connect_from(me, http).await.expect("connect http");
        partial
            .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut silent_bt = connect_from(me, bt).await.expect("connect bt");
        let (h, b) = tokio::join!(time_to_close(&mut partial), time_to_close(&mut silent_bt));
        assert_about_5s("HTTP client with a partial request head", h);
        assert_about_5s("BitTorrent connection that never handshakes", b);

        // A head over 16 KiB: closed as soon as it is read, no answer.
        let mut big = connect_from(me, http).await.expect("connect http");
        let _ = big.write_all(&[b'a'; 20 * 1024]).await;
        let d = time_to_close(&mut big).await.expect("big head not cut");
        eprintln!("20 KiB request head: cut after {d:?}");
        assert!(d < Duration::from_secs(2));

        // 8 connections from one address are served; the 9th gets a 503 at once.
        let other = ip("127.0.135.2");
        let mut eight = Vec::new();
        for _ in 0..8 {
            eight.push(connect_from(other, http).await.expect("connect"));
        }
        // Accepted in order: wait until the seeder has counted the eight.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut ninth = connect_from(other, http).await.expect("connect");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), ninth.read_to_end(&mut answer))
            .await
            .expect("9th connection answered")
            .ok();
        let answer = String::from_utf8_lossy(&answer);
        eprintln!(
            "9th connection from one address: {:?}",
            answer.lines().next()
        );
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        eight
    });
    // Another address is still served meanwhile.
    assert!(status_ok(sip));
    drop(eight);
}

/// Seeder and receiver raise their open-file limit to the hard limit at start.
#[test]
fn seeder_and_receiver_raise_their_open_file_limit() {
    let f = fixture(133);
    let sip = "127.0.130.4";
    let low = |name: &str, bin_name: &str, args: Vec<String>| {
        Proc::spawn(
            name,
            std::process::Command::new("prlimit")
                .arg("--nofile=256:")
                .arg("--")
                .arg(bin(bin_name))
                .args(args),
            &f.d,
        )
    };
    let s = low(
        "seeder",
        "seeder",
        vec![
            f.mpath.display().to_string(),
            "--listen".into(),
            format!("{sip}:6881"),
            "--http".into(),
            format!("{sip}:6880"),
            "--token".into(),
            TEST_TOKEN.into(),
        ],
    );
    assert!(wait_until(T, || status_ok(sip)), "seeder not up");
    let t = f.d.join("t.img");
    random_target(&t, f.m.map.device_size(), 1);
    let r = low(
        "receiver",
        "receiver",
        vec![
            "--manifest".into(),
            manifest_url(sip, &f.m),
            "--target".into(),
            t.display().to_string(),
            "--listen".into(),
            "127.0.135.10:6881".into(),
        ],
    );
    for (p, name) in [(&s, "seeder"), (&r, "receiver")] {
        // prlimit has exec'd the binary (and lowered its limit before).
        assert!(wait_until(Duration::from_secs(10), || {
            std::fs::read_link(format!("/proc/{}/exe", pid(p))).is_ok_and(|e| e.ends_with(name))
        }));
        let mut lim = (String::new(), String::new());
        let raised = wait_until(Duration::from_secs(10), || {
            lim = nofile(pid(p));
            lim.0 == lim.1 && !lim.0.is_empty()
        });
        eprintln!("{}: open files soft {} hard {}", p.name, lim.0, lim.1);
        assert!(raised, "{} kept its soft limit {lim:?}", p.name);
    }
}
