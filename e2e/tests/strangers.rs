//! Strangers on the LAN: `seeder --allow`, the deployment token, the receivers' peer gate and
//! `receiver --info-hash`, with the real binaries on loopback addresses (a socket bound to a
//! source address is what `curl --interface` does).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use blockswarm_e2e::*;
use blockswarm_manifest::{exit, Manifest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(120);

/// What a server did with a request we sent from an address of our choosing.
#[derive(Debug)]
enum Answer {
    /// Closed (or reset) without sending a byte.
    Closed,
    /// The bytes it sent before closing (at most `limit`).
    Sent(Vec<u8>),
}

/// Connects from `from` to `to`, sends `req`, reads up to `limit` bytes (or until closed).
fn exchange(from: &str, to: SocketAddr, req: &[u8], limit: usize) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from.parse().unwrap(), 0))
            .unwrap();
        let mut s = sock.connect(to).await.expect("TCP connect");
        // The peer may close before reading: a failed write is an answer too.
        let _ = s.write_all(req).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let r = tokio::time::timeout(Duration::from_secs(20), async {
            while got.len() < limit {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("read from {to}: {e}"),
                }
            }
        })
        .await;
        assert!(r.is_ok(), "{to} neither answered nor closed in 20 s");
        if got.is_empty() {
            Answer::Closed
        } else {
            Answer::Sent(got)
        }
    })
}

/// `GET path` on `ip:6880` from `from`; the answer's status code, or None if closed mute.
fn http_status(from: &str, ip: &str, path: &str) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n");
    let to = format!("{ip}:6880").parse().unwrap();
    match exchange(from, to, req.as_bytes(), 1 << 24) {
        Answer::Closed => None,
        Answer::Sent(b) => {
            let head = String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned();
            Some(
                head.split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}")),
            )
        }
    }
}

/// A BitTorrent handshake (Fast extension bit set) for `info_hash` from `from` to `to`; the
/// peer's 68-byte handshake (and what came with it), or None if it closed without one.
fn bt_handshake(from: &str, to: &str, info_hash: &[u8; 20]) -> Option<Vec<u8>> {
    let mut hs = vec![19u8];
    hs.extend_from_slice(b"BitTorrent protocol");
    hs.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0x04]);
    hs.extend_from_slice(info_hash);
    hs.extend_from_slice(b"-XX0001-stranger0001");
    match exchange(from, to.parse().unwrap(), &hs, 68) {
        Answer::Closed => None,
        Answer::Sent(b) => {
            assert!(
                b.len() >= 48 && &b[1..20] == b"BitTorrent protocol",
                "{b:?}"
            );
            assert_eq!(&b[28..48], info_hash, "handshake for another torrent");
            Some(b)
        }
    }
}

/// An announce from `from` (as a BitTorrent client there would send it) with `base` (the
/// tracker URL, token included or not); the reply body if the tracker answered 200.
fn announce_from(
    from: &str,
    announce: &str,
    info_hash: &[u8; 20],
    pid: &[u8; 20],
) -> Option<Vec<u8>> {
    let sep = if announce.contains('?') { '&' } else { '?' };
    let url = format!(
        "{announce}{sep}info_hash={}&peer_id={}&port=6881&uploaded=0&downloaded=0&left=1000&compact=1&event=started",
        blockswarm_swarm::http::percent_encode(info_hash),
        blockswarm_swarm::http::percent_encode(pid)
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(blockswarm_swarm::http::get(
        &url,
        Some(from.parse().unwrap()),
        Duration::from_secs(10),
    ))
    .ok()
}

struct Fixture {
    _dir: tempfile::TempDir,
    img: std::path::PathBuf,
    mpath: std::path::PathBuf,
    m: Manifest,
    ih: [u8; 20],
}

fn fixture(mib: u64, seed: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("src.img");
    random_file(&img, mib << 20, seed);
    let mpath = image(
        &img,
        &dir.path().join("m.torrent"),
        &["--piece-size", "256K"],
    );
    let m = read_manifest(&mpath);
    let ih = m.info_hash().unwrap();
    Fixture {
        _dir: dir,
        img,
        mpath,
        m,
        ih,
    }
}

fn d(f: &Fixture) -> &Path {
    f._dir.path()
}

/// The acceptance check of `--allow` and the token: a seeder on 127.0.0.2 with
/// `--allow 127.0.0.0/30`. From 127.0.0.9 (outside): manifest, /status and a BitTorrent
/// handshake are all closed without a byte. From 127.0.0.3 (inside) without the token: 403,
/// the tracker refuses, the BitTorrent port closes. With the token: served, and a real
/// receiver run with the command line the seeder printed deploys.
#[test]
fn outside_allow_nothing_inside_only_with_the_token() {
    let f = fixture(4, 140);
    let (seeder_ip, inside, outside) = ("127.0.0.2", "127.0.0.3", "127.0.0.9");
    let mut s = seeder(
        seeder_ip,
        &f.mpath,
        &["--allow", "127.0.0.0/30"],
        d(&f),
        "seeder",
    );
    let url = manifest_url(seeder_ip, &f.m);
    let path = |u: &str| u.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap();
    assert!(
        wait_until(T, || http_get(&url).is_some()),
        "seeder never served its manifest:\n{}",
        s.stderr_text()
    );
    assert_eq!(http_status(inside, seeder_ip, &path(&url)), Some(200));
    let bt = format!("{seeder_ip}:6881");

    // Outside --allow: closed at once, whatever the path, token or not.
    let t0 = Instant::now();
    for p in [
        path(&url),
        path(&status_url(seeder_ip)),
        format!("/{}.torrent", f.m.name),
        "/status".into(),
    ] {
        assert_eq!(
            http_status(outside, seeder_ip, &p),
            None,
            "{p} from {outside}"
        );
    }
    assert!(
        announce_from(outside, &announce_url(seeder_ip), &f.ih, &[9u8; 20]).is_none(),
        "announce from outside answered"
    );
    assert_eq!(
        bt_handshake(outside, &bt, &f.ih),
        None,
        "handshake from outside"
    );
    eprintln!(
        "outside: 4 HTTP requests, an announce and a handshake closed in {:?}",
        t0.elapsed()
    );

    // Inside, without the token (or with a wrong one): refused.
    let wrong = url.replace(TEST_TOKEN, "ffffffffffffffffffffffffffffffff");
    for p in [
        format!("/{}.torrent", f.m.name),
        "/manifest.torrent".into(),
        path(&wrong),
        "/status".into(),
        "/announce".into(),
        "/report".into(),
        "/t/ffffffffffffffffffffffffffffffff/report".into(),
        "/t/ffffffffffffffffffffffffffffffff/".into(),
    ] {
        assert_eq!(
            http_status(inside, seeder_ip, &p),
            Some(403),
            "{p} from {inside}"
        );
    }
    // `/` only says where the dashboard is (the status names machines: behind the token).
    assert_eq!(http_status(inside, seeder_ip, "/"), Some(200));
    let bare_announce = format!("http://{seeder_ip}:6880/announce");
    assert!(announce_from(inside, &bare_announce, &f.ih, &[3u8; 20]).is_none());
    let wrong_q = format!("{bare_announce}?token=ffffffffffffffffffffffffffffffff");
    assert!(announce_from(inside, &wrong_q, &f.ih, &[3u8; 20]).is_none());
    assert!(announce_from(
        inside,
        &wrong.replace(&format!("{}.torrent", f.m.name), "announce"),
        &f.ih,
        &[3u8; 20]
    )
    .is_none());
    assert_eq!(
        bt_handshake(inside, &bt, &f.ih),
        None,
        "handshake from an address that never announced with the token"
    );

    // With the token: served.
    let body = http_get(&url).expect("manifest with the token");
    let served = Manifest::decode(&body).unwrap();
    assert_eq!(
        served.info_hash, f.ih,
        "the served manifest has the imager's infohash"
    );
    assert_eq!(
        served.manifest.announce.as_deref(),
        Some(announce_url(seeder_ip).as_str()),
        "the torrent's announce URL carries the token"
    );
    let st: serde_json::Value =
        serde_json::from_slice(&http_get(&status_url(seeder_ip)).expect("/status with the token"))
            .unwrap();
    assert_eq!(st["info_hash"], hex::encode(f.ih));
    let reply = announce_from(inside, &announce_url(seeder_ip), &f.ih, &[3u8; 20])
        .expect("announce with the token");
    let reply = blockswarm_swarm::tracker::parse_reply(&reply).expect("a tracker reply");
    assert_eq!(
        reply.peers,
        vec![bt.parse().unwrap()],
        "the seeder is handed out"
    );
    let hs = bt_handshake(inside, &bt, &f.ih).expect("handshake after a token announce");
    assert!(hs.len() >= 68, "{} bytes", hs.len());

    // The seeder printed the whole receiver command: run exactly that.
    let err = s.stderr_text();
    let line = err
        .lines()
        .find(|l| l.contains("receiver --manifest"))
        .unwrap_or_else(|| panic!("no receiver command printed:\n{err}"));
    let args: Vec<&str> = line
        .split("receiver ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    let ih_hex = hex::encode(f.ih);
    assert_eq!(
        &args[..4],
        ["--manifest", url.as_str(), "--info-hash", ih_hex.as_str()]
    );
    let t = d(&f).join("t.img");
    random_target(&t, f.m.map.device_size(), 141);
    let t1 = Instant::now();
    let mut r = receiver(
        "127.0.0.1",
        args[1],
        &t,
        &[args[2], args[3], "--seed-after", "0"],
        d(&f),
        "r1",
    );
    assert_eq!(r.wait(T), 0, "receiver:\n{}", r.stderr_text());
    assert_eq!(
        sha1_file(&t),
        sha1_file(&f.img),
        "target differs from the source"
    );
    eprintln!(
        "receiver from 127.0.0.1 with the printed command: {} bytes deployed in {:?}",
        f.m.total_length(),
        t1.elapsed()
    );
    s.kill();
}

/// A receiver takes peer connections only from the seeder and from addresses its tracker
/// lists: a handshake from 127.0.140.9 (never announced) is closed without a byte; a peer
/// that announced after the receiver's last announce and dials it at once (the receiver's
/// tracker list cannot hold it yet) is let in, the receiver announcing on the spot.
#[test]
fn a_receiver_refuses_strangers_and_admits_a_peer_announced_since() {
    let f = fixture(4, 142);
    let ip = |h: u8| format!("127.0.140.{h}");
    // A long interval: a downloading receiver announces every 10 s by itself (a complete one
    // four times a second). The upload limit keeps it downloading (4 MiB at 200 KiB/s: 20 s).
    let mut s = seeder(
        &ip(1),
        &f.mpath,
        &["--announce-interval", "60", "--upload-limit", "200K"],
        d(&f),
        "seeder",
    );
    let url = manifest_url(&ip(1), &f.m);
    let t = d(&f).join("t.img");
    random_target(&t, f.m.map.device_size(), 143);
    let mut r = receiver(&ip(2), &url, &t, &["--seed-after", "300s"], d(&f), "r2");
    let status = || {
        http_get(&status_url(&ip(1)))
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    };
    let r2 = |st: &serde_json::Value| {
        st["receivers"].as_array().and_then(|rs| {
            rs.iter()
                .find(|r| r["addr"] == format!("{}:6881", ip(2)))
                .cloned()
        })
    };
    assert!(
        wait_until(T, || status().is_some_and(|st| r2(&st).is_some())),
        "the receiver never announced:\n{}\n{}",
        r.stderr_text(),
        s.stderr_text()
    );
    let rbt = format!("{}:6881", ip(2));

    let t0 = Instant::now();
    assert_eq!(
        bt_handshake(&ip(9), &rbt, &f.ih),
        None,
        "the receiver answered a stranger's handshake"
    );
    let refused_after = t0.elapsed();
    assert!(
        r.stderr_text().contains("127.0.140.9") && r.stderr_text().contains("announcing now"),
        "the receiver did not ask its tracker about the stranger:\n{}",
        r.stderr_text()
    );

    // A peer announces (with the token), then dials the receiver at once.
    announce_from(
        &ip(3),
        &announce_url(&ip(1)),
        &f.ih,
        b"-XX0001-latecomer001",
    )
    .expect("the latecomer's announce");
    let t1 = Instant::now();
    let hs = bt_handshake(&ip(3), &rbt, &f.ih);
    let admitted_after = t1.elapsed();
    assert!(
        hs.is_some(),
        "a peer the tracker lists was refused:\n{}",
        r.stderr_text()
    );
    eprintln!(
        "stranger refused after {refused_after:?} (the tracker asked, not listed); \
         the latecomer admitted after {admitted_after:?}"
    );
    // It was still downloading (announcing every 10 s, not four times a second).
    let st = status().unwrap();
    assert_eq!(r2(&st).unwrap()["completed"], false, "{st}");
    assert!(r.child.as_mut().unwrap().try_wait().unwrap().is_none());
    r.kill();
    s.kill();
}

/// `receiver --info-hash` pins the manifest: one with another infohash is refused with exit 3
/// before anything is written.
#[test]
fn an_info_hash_mismatch_exits_3_before_any_write() {
    let f = fixture(2, 144);
    let ip = |h: u8| format!("127.0.141.{h}");
    let _s = seeder(&ip(1), &f.mpath, &[], d(&f), "seeder");
    let url = manifest_url(&ip(1), &f.m);
    let t = d(&f).join("t.img");
    random_target(&t, f.m.map.device_size(), 145);
    let before = sha1_file(&t);
    let mut other = f.ih;
    other[0] ^= 0xff;
    let mut r = receiver(
        &ip(2),
        &url,
        &t,
        &["--info-hash", &hex::encode(other)],
        d(&f),
        "r",
    );
    assert_eq!(r.wait(T), exit::BAD_INPUT, "{}", r.stderr_text());
    let err = r.stderr_text();
    assert!(
        err.contains(&hex::encode(f.ih)) && err.contains(&hex::encode(other)),
        "{err}"
    );
    assert_eq!(sha1_file(&t), before, "the target was written");
    // The config file's INFO_HASH= does the same.
    let conf = d(&f).join("r.conf");
    std::fs::write(&conf, format!("INFO_HASH={}\n", hex::encode(other))).unwrap();
    let mut r = receiver(
        &ip(2),
        &url,
        &t,
        &["--config", conf.to_str().unwrap()],
        d(&f),
        "r-conf",
    );
    assert_eq!(r.wait(T), exit::BAD_INPUT, "{}", r.stderr_text());
    assert_eq!(sha1_file(&t), before, "the target was written");
}

/// Without `--token` the seeder makes a token and keeps it in `--state-dir`: a restarted
/// seeder prints (and serves) the same URL, so receivers keep theirs.
#[test]
fn the_token_made_by_the_seeder_survives_a_restart() {
    let f = fixture(1, 146);
    let ip = "127.0.142.1";
    let state = d(&f).join("state");
    let printed_url = |name: &str| {
        let mut s = Proc::spawn(
            name,
            std::process::Command::new(bin("seeder"))
                .arg(&f.mpath)
                .args([
                    "--listen",
                    &format!("{ip}:6881"),
                    "--http",
                    &format!("{ip}:6880"),
                ])
                .arg("--state-dir")
                .arg(&state),
            d(&f),
        );
        let mut url = String::new();
        assert!(
            wait_until(T, || {
                let err = s.stderr_text();
                let found = err
                    .split_whitespace()
                    .skip_while(|w| *w != "--manifest")
                    .nth(1)
                    .map(str::to_string);
                url = found.unwrap_or_default();
                !url.is_empty() && http_get(&url).is_some()
            }),
            "{name} never served its printed URL:\n{}",
            s.stderr_text()
        );
        s.kill();
        url
    };
    let first = printed_url("seeder-1");
    let token = first.split('/').nth(4).unwrap().to_string();
    assert_eq!(token.len(), 32, "{first}");
    assert_ne!(token, TEST_TOKEN);
    let kept = std::fs::read_to_string(state.join(format!("{}.token", hex::encode(f.ih)))).unwrap();
    assert_eq!(kept.trim(), token);
    let second = printed_url("seeder-2");
    assert_eq!(first, second, "a restart changed the URL");
}
