//! Bad input gets a clear one-line error, a documented exit code, and loses nothing: the
//! target is untouched. Also: a lying peer, an unreachable seeder, a receiver killed half-way.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use blockswarm_e2e::*;
use blockswarm_manifest::exit;

const T: Duration = Duration::from_secs(120);

type Fixture = Ext4Fixture;

fn fixture(seed: u64, data_mib: u64) -> Fixture {
    ext4_fixture(seed, 64, data_mib)
}

/// The same deployment without an attacker, for the "time vs the healthy run" figure: a
/// seeder (`--expect 3` and `seeder_extra`) on 127.0.`net`.1 and 3 receivers; seconds until
/// all exited 0.
fn healthy_secs(f: &Fixture, net: u8, seeder_extra: &[&str]) -> f64 {
    let sip = format!("127.0.{net}.1");
    let mut args = vec!["--expect", "3"];
    args.extend_from_slice(seeder_extra);
    let mut s = seeder(&sip, &f.mpath, &args, &f.d, &format!("seeder-healthy{net}"));
    let t0 = Instant::now();
    let mut rs = start_receivers(
        net,
        2..=4,
        &manifest_url(&sip, &f.m),
        &f.m,
        &[],
        &f.d,
        net as u64,
    );
    wait_all_ok(&mut rs, T);
    let t = t0.elapsed().as_secs_f64();
    assert_eq!(s.wait(T), 0, "{}", s.stderr_text());
    t
}

/// Runs a receiver that must fail; checks code, one-line error, untouched target.
fn expect_refusal(args: &[&str], target: &Path, want: i32, what: &str) -> String {
    let before = if target.exists() {
        sha1_file(target)
    } else {
        String::new()
    };
    let out = Command::new(bin("receiver"))
        .args(args)
        .arg("--target")
        .arg(target)
        .args(["--listen", "127.0.31.9:6881", "--retry-for", "2s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(want), "{what}: stderr:\n{stderr}");
    // Beside the progress lines a receiver without a terminal prints every few seconds.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("receiver: progress "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one error line, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("receiver: error: "),
        "{what}: {stderr}"
    );
    if target.exists() {
        assert_eq!(sha1_file(target), before, "{what}: target was modified");
    }
    stderr
}

#[test]
fn malformed_manifests_are_rejected_before_any_write() {
    let f = fixture(31, 4);
    let t = f.d.join("t.img");
    random_target(&t, f.m.map.device_size(), 1);
    let bytes = std::fs::read(&f.mpath).unwrap();
    // Truncated at several points.
    for cut in [0, 1, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let p = f.d.join(format!("cut{cut}.torrent"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = expect_refusal(
            &["--manifest", p.to_str().unwrap()],
            &t,
            exit::BAD_INPUT,
            "truncated",
        );
        assert!(e.contains("invalid manifest"), "{e}");
    }
    // A run beyond the device: shrink the recorded device size below the last run's end.
    let last = *f.m.map.extents().last().unwrap();
    let needle = format!("11:device sizei{}e", f.m.map.device_size()).into_bytes();
    let pos = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut bad = bytes[..pos].to_vec();
    bad.extend_from_slice(format!("11:device sizei{}e", last.offset).as_bytes());
    bad.extend_from_slice(&bytes[pos + needle.len()..]);
    let p = f.d.join("beyond.torrent");
    std::fs::write(&p, &bad).unwrap();
    let e = expect_refusal(
        &["--manifest", p.to_str().unwrap()],
        &t,
        exit::BAD_INPUT,
        "run beyond device",
    );
    assert!(e.contains("beyond the device size"), "{e}");
    // Not a blockswarm manifest at all.
    let p = f.d.join("garbage.torrent");
    std::fs::write(&p, b"this is not bencode").unwrap();
    expect_refusal(
        &["--manifest", p.to_str().unwrap()],
        &t,
        exit::BAD_INPUT,
        "garbage",
    );
}

#[test]
fn target_too_small_missing_or_source_is_refused() {
    let f = fixture(32, 4);
    let mp = f.mpath.to_str().unwrap();
    let small = f.d.join("small.img");
    random_target(&small, f.m.map.device_size() - 4096, 2);
    let e = expect_refusal(
        &["--manifest", mp, "--peer", "127.0.31.1:1"],
        &small,
        exit::BAD_TARGET,
        "too small",
    );
    assert!(e.contains("smaller than the source"), "{e}");
    let e = expect_refusal(
        &["--manifest", mp, "--peer", "127.0.31.1:1"],
        &f.d.join("nope.img"),
        exit::BAD_TARGET,
        "missing",
    );
    assert!(e.contains("does not exist"), "{e}");
    // The manifest names the source image; the target is that very file.
    let e = expect_refusal(
        &["--manifest", mp, "--peer", "127.0.31.1:1"],
        &f.img,
        exit::BAD_TARGET,
        "is source",
    );
    assert!(e.contains("source"), "{e}");
    // ... or a hard link to it.
    let link = f.d.join("link.img");
    std::fs::hard_link(&f.img, &link).unwrap();
    expect_refusal(
        &["--manifest", mp, "--peer", "127.0.31.1:1"],
        &link,
        exit::BAD_TARGET,
        "hard link to source",
    );
}

#[test]
fn target_in_use_by_a_live_seeder_is_refused() {
    // Copy the source elsewhere and serve that copy: the manifest's recorded source path no
    // longer matches, so only the seeder's lock can tell that the target is a live source.
    let f = fixture(33, 4);
    let copy = f.d.join("served-source.img");
    std::fs::copy(&f.img, &copy).unwrap();
    let ip = "127.0.33.1";
    let _seeder = Proc::spawn(
        "seeder",
        Command::new(bin("seeder"))
            .arg(&f.mpath)
            .arg("--source")
            .arg(&copy)
            .args([
                "--listen",
                &format!("{ip}:6881"),
                "--http",
                &format!("{ip}:6880"),
                "--token",
                blockswarm_e2e::TEST_TOKEN,
            ]),
        &f.d,
    );
    let url = manifest_url(ip, &f.m);
    assert!(wait_until(Duration::from_secs(10), || http_get(&url).is_some()));
    let e = expect_refusal(
        &["--manifest", &url],
        &copy,
        exit::BAD_TARGET,
        "live source",
    );
    assert!(e.contains("in use"), "{e}");
}

#[test]
fn mounted_target_is_refused() {
    let f = fixture(34, 4);
    let t = f.d.join("mounted.img");
    std::fs::copy(&f.img, &t).unwrap();
    let mnt = f.d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-o", "loop,ro"])
            .arg(&t)
            .arg(&mnt),
    );
    struct Umount<'a>(&'a Path);
    impl Drop for Umount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Umount(&mnt);
    let mp = f.mpath.to_str().unwrap();
    let e = expect_refusal(
        &["--manifest", mp, "--peer", "127.0.31.1:1"],
        &t,
        exit::BAD_TARGET,
        "mounted image",
    );
    assert!(e.contains("mounted"), "{e}");
    // The loop device itself.
    let out = run_ok(Command::new("losetup").args(["-j"]).arg(&t));
    let text = String::from_utf8_lossy(&out.stdout);
    let loopdev = text.split(':').next().unwrap().trim().to_string();
    assert!(loopdev.starts_with("/dev/loop"), "losetup -j: {text}");
    let e = expect_refusal(
        &["--manifest", mp, "--peer", "127.0.31.1:1"],
        Path::new(&loopdev),
        exit::BAD_TARGET,
        "mounted loop device",
    );
    assert!(e.contains("mounted"), "{e}");
}

/// A loop device in use as active swap is held by the kernel but mounted nowhere: only the
/// O_EXCL open sees it. Exit 4, nothing written.
#[test]
fn active_swap_target_is_refused() {
    let f = fixture(36, 4);
    let backing = f.d.join("swap.img");
    random_target(&backing, f.m.map.device_size(), 36);
    let out = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(&backing));
    let dev = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    struct Detach(std::path::PathBuf);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }
    let _detach = Detach(dev.clone());
    run_ok(Command::new("mkswap").arg(&dev));
    run_ok(Command::new("swapon").arg(&dev));
    // Dropped before the detach guard (reverse declaration order).
    struct SwapOff(std::path::PathBuf);
    impl Drop for SwapOff {
        fn drop(&mut self) {
            let _ = Command::new("swapoff").arg(&self.0).status();
        }
    }
    let _swapoff = SwapOff(dev.clone());
    let mp = f.mpath.to_str().unwrap();
    let e = expect_refusal(
        &["--manifest", mp, "--peer", "127.0.31.1:1"],
        &dev,
        exit::BAD_TARGET,
        "active swap",
    );
    assert!(e.contains("in use by the kernel"), "{e}");
}

#[test]
fn unreachable_seeder_gives_up_with_exit_6_and_target_untouched() {
    let f = fixture(35, 4);
    let t = f.d.join("t.img");
    random_target(&t, f.m.map.device_size(), 3);
    let start = Instant::now();
    let e = expect_refusal(
        &["--manifest", "http://127.0.35.1:6880/x.torrent"],
        &t,
        exit::UNREACHABLE,
        "no seeder",
    );
    assert!(e.contains("cannot fetch manifest"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(30));
    // Manifest from a file, but its tracker is down.
    let mut m = f.m.clone();
    m.announce = Some("http://127.0.35.1:6880/announce".into());
    let p = f.d.join("dead-tracker.torrent");
    std::fs::write(&p, m.encode().unwrap()).unwrap();
    let e = expect_refusal(
        &["--manifest", p.to_str().unwrap()],
        &t,
        exit::UNREACHABLE,
        "dead tracker",
    );
    assert!(e.contains("target untouched"), "{e}");
}

/// Deploys fixture `f` (subnet 127.0.`net`.x) from a seeder capped at 2 MiB/s, so the
/// receiver asks the lying peer `lie` for much of the data. Checks the liar was asked, the
/// receiver and seeder exit 0, no honest peer was banned and the target is correct; returns
/// the receiver's log.
fn deploy_with_a_liar(
    f: &Fixture,
    net: u8,
    lie: blockswarm_e2e::evil_peer::Lie,
    seed: u64,
) -> String {
    let d = &f.d;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let evil_addr: std::net::SocketAddr = format!("{}:6881", ip(9)).parse().unwrap();
    let evil = blockswarm_e2e::evil_peer::start_with(
        evil_addr,
        f.m.info_hash().unwrap(),
        f.m.num_pieces(),
        lie,
    );
    let mut seeder = seeder(
        &ip(1),
        &f.mpath,
        &["--expect", "1", "--upload-limit", "2M"],
        d,
        "seeder",
    );
    let t = d.join("t.img");
    random_target(&t, f.m.map.device_size(), seed);
    let mut r = receiver(
        &ip(2),
        &manifest_url(&ip(1), &f.m),
        &t,
        &["--peer", &evil_addr.to_string(), "--verify"],
        d,
        "receiver",
    );
    assert_eq!(r.wait(T), 0, "receiver:\n{}", r.stderr_text());
    assert_eq!(seeder.wait(T), 0);
    let sent = evil.blocks_sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent > 0, "the evil peer was never asked for data");
    let log = r.stderr_text();
    // Only the liar: pieces mixing its blocks with the seeder's must not cost the seeder.
    for line in log.lines().filter(|l| l.contains("banning peer")) {
        assert!(
            line.contains(&evil_addr.to_string()),
            "honest peer banned: {line}"
        );
    }
    assert_same_ext4(&f.img, &t, &f.m, &f.files);
    log
}

#[test]
fn a_peer_sending_corrupt_blocks_is_banned_and_the_target_stays_correct() {
    let f = fixture(36, 8);
    let log = deploy_with_a_liar(&f, 36, blockswarm_e2e::evil_peer::Lie::Random, 4);
    assert!(
        log.contains("failed its SHA-1 check"),
        "no hash failure logged:\n{log}"
    );
    assert!(log.contains("banning peer"), "liar not banned:\n{log}");
}

#[test]
fn a_liar_hiding_among_honest_senders_never_gets_the_seeder_banned() {
    // The liar's bad block always shares a piece with blocks from the seeder, so each failed
    // piece has two senders. Blaming both (strikes) would ban the seeder and hang the deploy.
    let f = fixture(38, 8);
    let mut packed = vec![0u8; f.m.map.packed_len() as usize];
    f.m.map
        .read_packed(&std::fs::File::open(&f.img).unwrap(), 0, &mut packed)
        .unwrap();
    let lie = blockswarm_e2e::evil_peer::Lie::MixIn {
        packed: std::sync::Arc::new(packed),
        piece_len: f.m.piece_length,
    };
    let log = deploy_with_a_liar(&f, 38, lie, 5);
    let failures = log.matches("failed its SHA-1 check").count();
    assert!(
        failures >= 2,
        "the liar caused {failures} hash failures; the test needs two or more:\n{log}"
    );
}

#[test]
fn receiver_killed_half_way_resumes_and_finishes_correct() {
    let f = fixture(37, 16);
    let d = &f.d;
    let ip = |h: u8| format!("127.0.37.{h}");
    // ~16 MiB at 4 MiB/s: about 4 s of transfer.
    let mut seeder = seeder(
        &ip(1),
        &f.mpath,
        &["--expect", "1", "--upload-limit", "4M"],
        d,
        "seeder",
    );
    let url = manifest_url(&ip(1), &f.m);
    let t = d.join("t.img");
    random_target(&t, f.m.map.device_size(), 5);
    let mut first = receiver(&ip(2), &url, &t, &[], d, "receiver-1");
    // Killed once the seeder has sent half of the data (its /status), not after a guessed
    // time: under load a sleep could kill it before it got anything, or after it finished.
    let half = f.m.total_length() / 2;
    let uploaded = || {
        http_get(&status_url(&ip(1)))
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|s| s["uploaded"].as_u64())
    };
    assert!(
        wait_until(T, || uploaded().is_some_and(|u| u >= half)),
        "the seeder never sent half of the {} bytes",
        f.m.total_length()
    );
    first.kill();
    eprintln!(
        "receiver-1 killed after the seeder sent {:?} of {} bytes",
        uploaded(),
        f.m.total_length()
    );
    let mut second = receiver(&ip(2), &url, &t, &["--verify"], d, "receiver-2");
    assert_eq!(
        second.wait(T),
        0,
        "restarted receiver:\n{}",
        second.stderr_text()
    );
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    let log = second.stderr_text();
    let found: u32 = log
        .lines()
        .find(|l| l.contains("resume scan finished"))
        .and_then(|l| l.split("found=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resume report:\n{log}"));
    assert!(
        found > 0,
        "resume found no piece after a kill half-way:\n{log}"
    );
    eprintln!(
        "resume found {found} of {} pieces already on the target",
        f.m.num_pieces()
    );
    assert_same_ext4(&f.img, &t, &f.m, &f.files);
}

/// GET `url` from a socket bound to `from` (a plain announce, as `curl --interface` would).
fn get_from(url: &str, from: &str) -> Option<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(blockswarm_swarm::http::get(
        url,
        Some(from.parse().unwrap()),
        Duration::from_secs(5),
    ))
    .ok()
}

/// `seeder --expect 2` counts only receivers it has exchanged data with: two bare announces
/// with `left=0` complete nobody, a `stopped` event with a real receiver's peer id sent from
/// another address removes nobody, and the two real receivers then complete and the seeder
/// exits 0 having uploaded data.
#[test]
fn bare_announces_complete_nobody_and_a_copied_stop_removes_nobody() {
    let f = fixture(41, 8);
    let d = &f.d;
    let ip = |h: u8| format!("127.0.41.{h}");
    let mut seeder = seeder(
        &ip(1),
        &f.mpath,
        &["--expect", "2", "--upload-limit", "2M"],
        d,
        "seeder",
    );
    let status_url = blockswarm_e2e::status_url(&ip(1));
    let status =
        || http_get(&status_url).and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    assert!(
        wait_until(T, || status().is_some()),
        "seeder never served /status"
    );
    let ih = blockswarm_swarm::http::percent_encode(&f.m.info_hash().unwrap());
    let announce = |from: &str, pid: &[u8; 20], extra: &str| {
        let url = format!(
            "{}&info_hash={ih}&peer_id={}&port=6881&uploaded=0&downloaded=0&left=0&compact=1{extra}",
            blockswarm_e2e::announce_url(&ip(1)),
            blockswarm_swarm::http::percent_encode(pid)
        );
        get_from(&url, from).expect("tracker reply")
    };
    for h in [7u8, 8] {
        let mut pid = *b"-FAKE0-0123456789abc";
        pid[19] = h;
        // `ip=` names a real receiver's address: it must be ignored too.
        announce(&ip(h), &pid, &format!("&event=completed&ip={}", ip(2)));
    }
    let st = status().unwrap();
    let fakes = st["receivers"].as_array().unwrap();
    assert_eq!(fakes.len(), 2, "{st}");
    for r in fakes {
        assert!(
            !r["addr"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}:", ip(2))),
            "ip= honoured: {st}"
        );
    }
    assert_eq!(
        st["completed"], 0,
        "bare announces counted as complete: {st}"
    );

    let url = manifest_url(&ip(1), &f.m);
    let mut rs = start_receivers(41, 2..=3, &url, &f.m, &[], d, 410);
    // Once receiver 2 has registered, a stranger sends `stopped` with its peer id.
    let mut real_id = String::new();
    assert!(
        wait_until(T, || {
            let st = status().unwrap_or_default();
            for r in st["receivers"].as_array().into_iter().flatten() {
                if r["addr"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with(&format!("{}:", ip(2)))
                {
                    real_id = r["peer_id"].as_str().unwrap().to_string();
                    return true;
                }
            }
            false
        }),
        "receiver 2 never announced"
    );
    let pid: [u8; 20] = hex::decode(&real_id).unwrap().try_into().unwrap();
    announce(&ip(9), &pid, "&event=stopped");
    let st = status().unwrap();
    let r2 = st["receivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["peer_id"] == real_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        r2["gone"], false,
        "a copied stopped event removed a real receiver: {st}"
    );
    assert!(
        r2["addr"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", ip(2))),
        "{st}"
    );

    wait_all_ok(&mut rs, T);
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    let fin = seeder_status(&seeder);
    assert_eq!(fin["completed"], 2, "{fin}");
    assert!(fin["uploaded"].as_u64().unwrap() > 0, "{fin}");
    for (t, _) in &rs {
        assert_same_ext4(&f.img, t, &f.m, &f.files);
    }
}

#[test]
fn a_peer_sending_blocks_nobody_asked_for_is_banned_and_stalls_nobody() {
    // Claims nothing (HAVE_NONE) and sends a garbage block for the next piece every 0.1 s.
    // Taken in, each such block spoils a piece in progress with two senders, so nobody was
    // blamed and the receivers stalled. Now such blocks are dropped and the peer banned.
    let f = fixture(39, 8);
    let healthy = healthy_secs(&f, 42, &["--upload-limit", "2M"]);
    let net = 39;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let evil_addr: std::net::SocketAddr = format!("{}:6881", ip(9)).parse().unwrap();
    let evil = blockswarm_e2e::evil_peer::start_with(
        evil_addr,
        f.m.info_hash().unwrap(),
        f.m.num_pieces(),
        blockswarm_e2e::evil_peer::Lie::Unsolicited,
    );
    let start = Instant::now();
    // The seeder's upload is capped so that the deployment lasts seconds, not a fraction of
    // one: every receiver is then connected to the attacker while it sends (one block per
    // 0.1 s) and must ban it (on loopback an uncapped receiver may be done before the first).
    let mut seeder = seeder(
        &ip(1),
        &f.mpath,
        &["--expect", "3", "--upload-limit", "2M"],
        &f.d,
        "seeder",
    );
    let mut rs = start_receivers(
        net,
        2..=4,
        &manifest_url(&ip(1), &f.m),
        &f.m,
        &["--peer", &evil_addr.to_string()],
        &f.d,
        39,
    );
    wait_all_ok(&mut rs, T);
    // As in `healthy_secs`: until every receiver exited 0 (the seeder lingers after that).
    let took = start.elapsed().as_secs_f64();
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    eprintln!(
        "deploy beside the unsolicited-block sender took {took:.1} s vs {healthy:.1} s healthy \
         ({:.2}x)",
        took / healthy
    );
    let conns = evil.connections.load(std::sync::atomic::Ordering::Relaxed);
    let sent = evil.blocks_sent.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("evil peer: {conns} connections, {sent} blocks sent");
    // Each receiver dialed it once, banned it, and never came back.
    assert!(
        conns <= 3,
        "the attacker was let back in: {conns} connections"
    );
    for (t, r) in &rs {
        let log = r.stderr_text();
        let bans: Vec<&str> = log.lines().filter(|l| l.contains("banning peer")).collect();
        assert!(
            bans.iter()
                .any(|l| l.contains(&evil_addr.to_string()) && l.contains("blocks nobody asked")),
            "{}: the attacker was not banned:\n{log}",
            r.name
        );
        assert!(
            bans.iter().all(|l| l.contains(&evil_addr.to_string())),
            "{}: an honest peer was banned: {bans:?}",
            r.name
        );
        assert!(
            !log.contains("failed its SHA-1 check"),
            "{}: a garbage block reached a piece:\n{log}",
            r.name
        );
        assert_same_ext4(&f.img, t, &f.m, &f.files);
    }
}

/// VmRSS of process `pid` in bytes.
fn vm_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// What the seeder may grow by while one connection floods it with REQUESTs: the queues
/// are bounded (`blockswarm_swarm::backlog`), the rest is the honest deployment.
const FLOOD_RSS_SLACK: u64 = 64 << 20;

#[test]
fn a_request_flood_that_never_reads_does_not_exhaust_the_seeder() {
    let f = fixture(40, 8);
    let healthy = healthy_secs(&f, 43, &[]);
    let net = 40;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let mut seeder = seeder(&ip(1), &f.mpath, &["--expect", "3"], &f.d, "seeder");
    let url = manifest_url(&ip(1), &f.m);
    assert!(wait_until(T, || http_get(&url).is_some()), "seeder not up");
    let pid = seeder.child.as_ref().unwrap().id();
    let start_rss = vm_rss(pid);
    let seed_addr: std::net::SocketAddr = format!("{}:6881", ip(1)).parse().unwrap();
    // An insider: it announced with the deployment token (from the address it then dials
    // from), else the seeder would not even take its connection.
    let ih = blockswarm_swarm::http::percent_encode(&f.m.info_hash().unwrap());
    http_get(&format!(
        "{}&info_hash={ih}&peer_id=-FLOOD0-0123456789ab&port=6881&left=1&compact=1",
        announce_url(&ip(1))
    ))
    .expect("the flooder's announce");
    let evil = blockswarm_e2e::evil_peer::flood_requests(
        seed_addr,
        f.m.info_hash().unwrap(),
        f.m.num_pieces(),
    );
    // Let the flood get going before the honest receivers start.
    assert!(wait_until(T, || evil
        .requests_sent
        .load(std::sync::atomic::Ordering::Relaxed)
        > 100_000));
    let started = Instant::now();
    let mut rs = start_receivers(net, 2..=4, &url, &f.m, &[], &f.d, 40);
    let mut max_rss = start_rss;
    let finished = wait_until(T, || {
        max_rss = max_rss.max(vm_rss(pid));
        rs.iter_mut()
            .all(|(_, r)| r.child.as_mut().unwrap().try_wait().unwrap().is_some())
    });
    assert!(finished, "receivers did not finish beside the flood");
    wait_all_ok(&mut rs, T);
    // Receivers exit once the seeder tells them all are done: it served them to the end.
    // (Whether it then exits by itself is not what this test is about.)
    seeder.kill();
    let sent = evil
        .requests_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    let conns = evil.connections.load(std::sync::atomic::Ordering::Relaxed);
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "flood: {sent} requests over {conns} connections; seeder VmRSS {} -> max {} KiB; \
         receivers done in {took:.1} s vs {healthy:.1} s healthy ({:.2}x)",
        start_rss / 1024,
        max_rss / 1024,
        took / healthy
    );
    // Requests on and on without reading the refusals: banned (it cannot redial and go on).
    let log = seeder.stderr_text();
    assert!(
        log.contains("banning peer that requests without reading our refusals"),
        "the flooder was not banned:\n{log}"
    );
    assert!(
        max_rss < start_rss + FLOOD_RSS_SLACK,
        "seeder grew from {start_rss} to {max_rss} bytes under the flood"
    );
    for (t, _) in &rs {
        assert_same_ext4(&f.img, t, &f.m, &f.files);
    }
}
