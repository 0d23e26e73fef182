//! The seeder's HTTP server (hyper, swarm/src/http) under abuse, with the real binaries on
//! loopback: a request with 1 MiB of headers, clients that send one byte per second
//! (slowloris), 200 connections at once that send nothing, malformed request lines. All at
//! the same time, while a real receiver fetches the manifest, announces and completes: the
//! seeder keeps serving it, every attacker is answered with an error or cut off within the
//! documented limits, and the seeder's memory stays bounded.
//!
//! Addresses: the seeder and the receiver on 127.0.190.x, attackers from 127.0.191.x.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blockswarm_e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SEEDER: &str = "127.0.190.1";

async fn connect_from(from: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    sock.connect(format!("{SEEDER}:6880").parse().unwrap())
        .await
        .expect("TCP connect to the seeder")
}

/// What the server sent before it closed (an empty answer: closed mute or reset), within
/// `limit` (panics if the connection is still open then).
async fn read_answer(s: &mut TcpStream, limit: Duration) -> String {
    let mut got = Vec::new();
    let r = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "the seeder kept the connection open past {limit:?}"
    );
    String::from_utf8_lossy(&got).into_owned()
}

fn status_code(answer: &str) -> Option<u16> {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// 1 MiB of headers: refused (431) or cut, never read whole.
async fn huge_headers() -> String {
    let mut s = connect_from("127.0.191.1").await;
    let mut req = b"GET /t/x/status HTTP/1.1\r\nHost: seeder\r\n".to_vec();
    while req.len() < 1 << 20 {
        req.extend_from_slice(
            b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    req.extend_from_slice(b"\r\n");
    // The server stops reading at its head limit: a failed write is expected.
    let _ = s.write_all(&req).await;
    read_answer(&mut s, Duration::from_secs(10)).await
}

/// A client that sends its request head one byte per second: cut when its head is not in
/// after the 5 s head timeout. Returns how long the server let it hold the connection.
async fn slowloris(from: String) -> Duration {
    let start = Instant::now();
    let mut s = connect_from(&from).await;
    let head = b"GET /t/0123456789abcdef0123456789abcdef/status HTTP/1.1\r\nHost: seeder\r\n\r\n";
    for b in head.iter() {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        // Cut: the next read sees the end (or a reset) at once.
        let mut probe = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => break, // an error answer (408): read the rest below
            Err(_) => {}        // still open after a second: the next byte
        }
    }
    read_answer(&mut s, Duration::from_secs(10)).await;
    start.elapsed()
}

#[test]
fn the_seeder_serves_through_abuse_with_bounded_memory() {
    let f = ext4_fixture(190, 32, 12);
    let mut seeder = seeder(SEEDER, &f.mpath, &["--upload-limit", "4M"], &f.d, "seeder");
    wait_seeder_up(SEEDER, Duration::from_secs(30));
    let pid = seeder.child.as_ref().unwrap().id();
    let rss_before = rss_kib(pid);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // 200 connections at once from 25 addresses (8 each: the per-address cap), idle.
    let held: Vec<TcpStream> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..200 {
            v.push(connect_from(&format!("127.0.191.{}", 10 + i / 8)).await);
        }
        v
    });
    // Slowloris from 10 more addresses, beside them.
    let lorises: Vec<_> = (0..10)
        .map(|i| rt.spawn(slowloris(format!("127.0.191.{}", 100 + i))))
        .collect();

    // A real receiver fetches the manifest, announces and completes meanwhile.
    let target = f.d.join("target.img");
    random_target(&target, std::fs::metadata(&f.img).unwrap().len(), 7);
    let mut r = receiver(
        "127.0.190.2",
        &manifest_url(SEEDER, &f.m),
        &target,
        &["--seed-after", "0s"],
        &f.d,
        "receiver",
    );

    let big = rt.block_on(huge_headers());
    assert!(
        big.is_empty() || status_code(&big) == Some(431),
        "1 MiB of headers answered {big:?}"
    );
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /x HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let a = rt.block_on(async {
            let mut s = connect_from("127.0.191.2").await;
            let _ = s.write_all(bad).await;
            read_answer(&mut s, Duration::from_secs(10)).await
        });
        let code = status_code(&a);
        assert!(
            a.is_empty() || code.is_some_and(|c| (400..=505).contains(&c)),
            "{bad:?} answered {a:?}"
        );
    }

    // Memory while the attack is on: 200 sockets and the slow clients still held.
    let rss_during = rss_kib(pid);
    assert_eq!(r.wait(Duration::from_secs(120)), 0, "{}", r.stderr_text());
    assert_same_ext4(&f.img, &target, &f.m, &f.files);
    for l in lorises {
        let held_for = rt.block_on(l).unwrap();
        assert!(
            held_for < Duration::from_secs(12),
            "a one-byte-per-second client held its connection {held_for:?} (head timeout 5 s)"
        );
    }
    // The idle connections: each was refused (503), evicted for a newcomer, or cut at the
    // head timeout; none is still open (read_answer panics on one that is).
    let answers: Vec<String> = rt.block_on(async {
        let mut out = Vec::new();
        for mut s in held {
            out.push(read_answer(&mut s, Duration::from_secs(15)).await);
        }
        out
    });
    let refused = answers
        .iter()
        .filter(|a| status_code(a) == Some(503))
        .count();
    assert!(
        answers
            .iter()
            .all(|a| a.is_empty() || [408, 503].contains(&status_code(a).unwrap_or(0))),
        "{answers:?}"
    );
    // At the cap (128) a newcomer evicts a connection still without its head, so most of
    // them were closed mute; which ones depends on timing, that all of them are does not.
    // Still serving, and memory bounded.
    assert!(status_of(SEEDER).is_some(), "the seeder stopped answering");
    let rss_after = rss_kib(pid);
    eprintln!(
        "seeder RSS {rss_before} KiB before, {rss_during} KiB during, {rss_after} KiB after; {refused} refused"
    );
    for (when, rss) in [("during", rss_during), ("after", rss_after)] {
        assert!(
            rss < rss_before + 64 * 1024,
            "seeder RSS grew from {rss_before} to {rss} KiB ({when} the attack)"
        );
    }
    seeder.kill();
}

/// The URL the seeder prints works for a name with `+`, space, `#`, `?` and `%` in it; a
/// wrong token is a 403 and the receiver says so at once with exit 3 (no retrying for 60 s
/// as if the seeder were unreachable).
#[test]
fn the_printed_url_survives_odd_names_and_a_wrong_token_exits_3_at_once() {
    let ip = "127.0.190.10";
    let f = ext4_fixture(191, 16, 2);
    let name = "lab +1 #2 ?3 %4";
    let mpath = image(
        &f.img,
        &f.d.join("odd.torrent"),
        &["--piece-size", "256K", "--name", name],
    );
    let mut s = seeder(ip, &mpath, &[], &f.d, "seeder-odd");
    wait_seeder_up(ip, Duration::from_secs(30));
    let printed = wait_for_printed_url(&s);
    assert!(
        printed.contains("lab%20%2B1%20%232%20%3F3%20%254.torrent"),
        "{printed}"
    );
    let target = f.d.join("odd-target.img");
    random_target(&target, std::fs::metadata(&f.img).unwrap().len(), 3);
    let mut r = receiver(
        "127.0.190.11",
        &printed,
        &target,
        &["--seed-after", "0s"],
        &f.d,
        "receiver-odd",
    );
    assert_eq!(r.wait(Duration::from_secs(60)), 0, "{}", r.stderr_text());
    assert_same_ext4(&f.img, &target, &f.m, &f.files);

    let wrong = printed.replace(TEST_TOKEN, "ffffffffffffffffffffffffffffffff");
    let started = Instant::now();
    let mut r = receiver(
        "127.0.190.12",
        &wrong,
        &target,
        &["--retry-for", "60s"],
        &f.d,
        "receiver-wrong-token",
    );
    let code = r.wait(Duration::from_secs(30));
    let err = last_line(&r);
    assert_eq!(code, blockswarm_manifest::exit::BAD_INPUT, "{err}");
    assert!(err.contains("403"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}: retried as if unreachable",
        started.elapsed()
    );
    s.kill();
}

/// The manifest URL from the seeder's "on each target run:" line.
fn wait_for_printed_url(s: &Proc) -> String {
    let mut url = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            url = s
                .stderr_text()
                .split_whitespace()
                .skip_while(|w| *w != "--manifest")
                .nth(1)
                .map(String::from);
            url.is_some()
        }),
        "no manifest URL printed:\n{}",
        s.stderr_text()
    );
    url.unwrap()
}
