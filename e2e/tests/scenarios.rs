//! Fault scenarios (issue 11) with real parts: real binaries on loopback addresses, a real
//! failing disk (a loop device over a file on a small tmpfs), real signals. Each test runs
//! the healthy case on the same fixture first, then the fault, and prints one table row:
//!
//! `SCENARIO | name | outcome | time vs healthy | bytes rewritten | data lost`
//!
//! "time" is from the receivers' start until every (surviving) receiver's target is complete
//! (its `complete` line); "bytes rewritten" is what the receivers downloaded beyond one copy
//! each (the seeder's `/status` `downloaded` of every receiver process, a killed one as of
//! its last announce); "data lost" is the packed bytes of every finished target that differ
//! from the source (must be 0; the targets also pass e2fsck and file dumps).
//!
//! The seeder is limited to 2 MiB/s so that a run lasts seconds and a fault lands mid-way.
//! Addresses: 127.0.160.x .. 127.0.179.x (scenario on 16N, its healthy run on 17N).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blockswarm_e2e::disk::{find_tool, tools_required, LoopDev, Mount};
use blockswarm_e2e::evil_peer::{self, Lie};
use blockswarm_e2e::*;
use blockswarm_manifest::{exit, Manifest};

const T: Duration = Duration::from_secs(90);
const LIMIT: &str = "2M";

type Fixture = Ext4Fixture;

fn fixture(seed: u64) -> Fixture {
    ext4_fixture(seed, 64, 16)
}

fn ip(net: u8, h: u8) -> String {
    format!("127.0.{net}.{h}")
}

fn start_seeder(f: &Fixture, net: u8, expect: usize, name: &str) -> Proc {
    let p = seeder(
        &ip(net, 1),
        &f.mpath,
        &[
            "--expect",
            &expect.to_string(),
            "--upload-limit",
            LIMIT,
            "--announce-interval",
            "1",
        ],
        &f.d,
        name,
    );
    wait_seeder_up(&ip(net, 1), T);
    p
}

/// True once the receiver printed its `complete` line.
fn is_complete(r: &Proc) -> bool {
    r.stderr_text()
        .lines()
        .any(|l| l.starts_with("receiver: ") && l.contains(" complete: "))
}

/// Waits until every receiver in `rs` is complete; returns the time since `t0`.
fn wait_complete(rs: &[&Proc], t0: Instant) -> f64 {
    assert!(
        wait_until(T, || rs.iter().all(|r| is_complete(r))),
        "not every receiver completed: {}",
        rs.iter()
            .map(|r| format!("{}:\n{}", r.name, r.stderr_text()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    t0.elapsed().as_secs_f64()
}

/// Bytes a completed receiver downloaded (its `complete` line).
fn downloaded_by(r: &Proc) -> u64 {
    let e = r.stderr_text();
    let l = e
        .lines()
        .find(|l| l.starts_with("receiver: ") && l.contains(" complete: "))
        .unwrap_or_else(|| panic!("{} has no complete line:\n{e}", r.name));
    l.rsplit(", ")
        .next()
        .and_then(|t| t.strip_suffix(" bytes downloaded"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no download figure in {l:?}"))
}

/// Bytes downloaded beyond one copy each by the receivers `rs` (all complete).
fn rewritten(f: &Fixture, rs: &[&Proc]) -> i64 {
    rs.iter().map(|r| downloaded_by(r) as i64).sum::<i64>()
        - rs.len() as i64 * f.m.total_length() as i64
}

/// Sum of `downloaded` over the receivers in a seeder status.
fn downloaded(status: &serde_json::Value) -> u64 {
    status["receivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["downloaded"].as_u64().unwrap())
        .sum()
}

/// Bytes lost on finished targets (asserted 0 by the caller), after the full ext4 checks.
fn data_lost(f: &Fixture, targets: &[&Path]) -> u64 {
    let lost = targets
        .iter()
        .map(|t| packed_bytes_differing(&f.img, t, &f.m))
        .sum();
    if lost == 0 {
        for t in targets {
            assert_same_ext4(&f.img, t, &f.m, &f.files);
        }
    }
    lost
}

/// The healthy run: `n` receivers on `net`, all finish. Returns the time to complete.
fn healthy(f: &Fixture, net: u8, n: u8) -> f64 {
    let mut s = start_seeder(f, net, n as usize, &format!("seeder-healthy{net}"));
    let t0 = Instant::now();
    let mut rs = start_receivers(
        net,
        2..=n + 1,
        &manifest_url(&ip(net, 1), &f.m),
        &f.m,
        &[],
        &f.d,
        net as u64,
    );
    let t = wait_complete(&rs.iter().map(|(_, r)| r).collect::<Vec<_>>(), t0);
    wait_all_ok(&mut rs, T);
    assert_eq!(s.wait(T), 0, "{}", s.stderr_text());
    t
}

fn row(name: &str, outcome: &str, t: f64, healthy: f64, rewritten: i64, lost: u64) {
    eprintln!(
        "SCENARIO | {name} | {outcome} | {t:.1} s vs {healthy:.1} s healthy ({:.2}x) | {rewritten} bytes rewritten | {lost} bytes lost",
        t / healthy
    );
}

/// Root and losetup/mount, or SKIP (a failure under `BLOCKSWARM_REQUIRE_FS_TOOLS=1`).
fn need_loop_devices(test: &str) -> bool {
    let ok = is_root()
        && ["losetup", "mount", "umount"]
            .iter()
            .all(|t| find_tool(t).is_some());
    if !ok {
        assert!(
            !tools_required(),
            "{test}: needs root, losetup and mount (BLOCKSWARM_REQUIRE_FS_TOOLS=1)"
        );
        println!("SKIP {test}: needs root, losetup and mount");
    }
    ok
}

#[test]
fn a_target_failing_writes_exits_naming_the_offset_is_reported_and_the_others_finish() {
    if !need_loop_devices("failing target") {
        return;
    }
    let f = fixture(160);
    let h = healthy(&f, 170, 3);
    let net = 160;
    // The failing disk: a 64 MiB sparse file on an 8 MiB tmpfs behind a loop device. Writes
    // land in the page cache; the loop device fails them (EIO) once the tmpfs is full.
    let tmpfs = Mount::new(Path::new("tmpfs"), &f.d.join("small"), "tmpfs", "size=8M");
    let back = tmpfs.dir.join("disk");
    std::fs::File::create(&back)
        .unwrap()
        .set_len(f.m.map.device_size())
        .unwrap();
    let lo = LoopDev::slice(&back, 0, f.m.map.device_size(), true);
    assert!(
        f.m.total_length() > 9 << 20,
        "the data ({} bytes) must not fit the 8 MiB tmpfs",
        f.m.total_length()
    );

    let mut s = start_seeder(&f, net, 3, "seeder");
    let url = manifest_url(&ip(net, 1), &f.m);
    let t0 = Instant::now();
    let mut rs = start_receivers(net, 2..=3, &url, &f.m, &[], &f.d, 160);
    let mut bad = receiver(&ip(net, 4), &url, &lo.dev, &[], &f.d, "r4-failing");
    let code = bad.wait(T);
    let err = last_line(&bad);
    eprintln!("failing receiver exited {code}: {err}");
    assert_eq!(code, exit::FAILURE, "{}", bad.stderr_text());
    // It names the device, the device offset and the OS error: the piece that did not reach
    // the device when reading back finds it, else the range written since the last good flush
    // (a kernel may keep pages whose writeback failed in the cache, and reads then return them).
    let dev = lo.dev.display();
    let named_piece = err.contains(&format!("{dev}: piece ")) && err.contains(" at device byte ");
    let named_range = err.contains(&format!("{dev}: flush failed: "))
        && err.contains("(data written between device bytes ");
    assert!(
        (named_piece || named_range) && err.contains("(os error "),
        "{err}"
    );
    let t = wait_complete(&rs.iter().map(|(_, r)| r).collect::<Vec<_>>(), t0);
    // The seeder's /status lists it, with its exit code and error.
    assert!(
        wait_until(T, || status_of(&ip(net, 1)).is_some_and(|st| {
            st["failed"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["addr"] == ip(net, 4)
                        && x["exit"] == exit::FAILURE
                        && x["error"]
                            .as_str()
                            .is_some_and(|e| e.contains("device byte"))
                })
            })
        })),
        "the seeder's /status never listed the failure: {:?}",
        status_of(&ip(net, 1))
    );
    wait_all_ok(&mut rs, T);
    // --expect 3: 2 complete + 1 failed -> a non-zero exit with the summary.
    assert_eq!(s.wait(T), exit::RECEIVERS_FAILED, "{}", s.stderr_text());
    let serr = s.stderr_text();
    let summary = last_line(&s);
    eprintln!("seeder: {summary}");
    assert!(
        summary.starts_with(&format!(
            "seeder: error: 2 complete, 1 failed: {} exit 1: ",
            ip(net, 4)
        )),
        "{serr}"
    );
    assert_eq!(
        serr.lines()
            .filter(|l| l.starts_with(&format!(
                "seeder: receiver {}:6881 failed (exit 1): ",
                ip(net, 4)
            )))
            .count(),
        1,
        "one log line per failure:\n{serr}"
    );
    let rewritten = rewritten(&f, &rs.iter().map(|(_, r)| r).collect::<Vec<_>>());
    let lost = data_lost(&f, &rs.iter().map(|(t, _)| t.as_path()).collect::<Vec<_>>());
    row(
        "target failing writes (loop on 8M tmpfs)",
        &format!("failing one exit 1 ({err}); 2 others exit 0; seeder exit 8"),
        t,
        h,
        rewritten,
        lost,
    );
    assert_eq!(lost, 0);
    drop(bad);
    drop(lo);
}

/// Pieces of the packed data that some target in `targets` holds, correct.
fn pieces_in_swarm(f: &Fixture, targets: &[PathBuf], seen: &mut [bool]) -> usize {
    use sha1::{Digest, Sha1};
    for t in targets {
        let Ok(file) = std::fs::File::open(t) else {
            continue;
        };
        for i in 0..f.m.num_pieces() {
            if seen[i as usize] {
                continue;
            }
            let (off, len) = f.m.piece_range(i);
            let mut buf = vec![0u8; len as usize];
            if f.m.map.read_packed(&file, off, &mut buf).is_ok()
                && <[u8; 20]>::from(Sha1::digest(&buf)) == f.m.piece_hashes[i as usize]
            {
                seen[i as usize] = true;
            }
        }
    }
    seen.iter().filter(|&&s| s).count()
}

/// True once the seeder on `ip` lists a receiver at `addr` with some data.
fn has_data(ip: &str, addr: &str) -> bool {
    status_of(ip).is_some_and(|st| {
        st["receivers"].as_array().is_some_and(|a| {
            a.iter()
                .any(|r| r["addr"] == addr && r["bytes_done"].as_u64().is_some_and(|b| b > 0))
        })
    })
}

#[test]
fn a_seeder_killed_once_every_piece_is_in_the_swarm_leaves_every_receiver_finishing() {
    let f = fixture(161);
    let h = healthy(&f, 171, 3);
    let net = 161;
    let mut s = start_seeder(&f, net, 3, "seeder");
    let t0 = Instant::now();
    // The seeder never says "done" (it is killed): seed 20 s after completing, then exit.
    let mut rs = start_receivers(
        net,
        2..=4,
        &manifest_url(&ip(net, 1), &f.m),
        &f.m,
        &["--seed-after", "20s"],
        &f.d,
        161,
    );
    // On loopback the receivers trade so fast that they are complete the moment the seeder
    // has sent its last new piece; so r4 is held (SIGSTOP) from its first data until after
    // the kill, and must then get everything it lacks from the other two.
    assert!(
        wait_until(T, || has_data(&ip(net, 1), &format!("{}:6881", ip(net, 4)))),
        "r4 never got data"
    );
    signal(&rs[2].1, "STOP");
    let targets: Vec<PathBuf> = rs.iter().map(|(t, _)| t.clone()).collect();
    let mut seen = vec![false; f.m.num_pieces() as usize];
    // Event, not time: every piece verified on some receiver's target.
    assert!(
        wait_until(T, || pieces_in_swarm(&f, &targets, &mut seen)
            == f.m.num_pieces() as usize),
        "the pieces never all reached the swarm"
    );
    let complete_at_kill = rs.iter().filter(|(_, r)| is_complete(r)).count();
    let mut r4_seen = vec![false; f.m.num_pieces() as usize];
    let r4_at_kill = pieces_in_swarm(&f, &targets[2..], &mut r4_seen);
    s.kill();
    let killed = t0.elapsed().as_secs_f64();
    signal(&rs[2].1, "CONT");
    let t = wait_complete(&rs.iter().map(|(_, r)| r).collect::<Vec<_>>(), t0);
    let r4_after = t - killed;
    wait_all_ok(&mut rs, T);
    let lost = data_lost(&f, &targets.iter().map(|t| t.as_path()).collect::<Vec<_>>());
    row(
        "seeder killed once every piece is in the swarm",
        &format!(
            "killed at {killed:.1} s ({complete_at_kill} of 3 complete; r4, held by SIGSTOP, had {r4_at_kill} of {} pieces); r4 complete {r4_after:.1} s after the kill from the other two; all 3 exit 0",
            f.m.num_pieces()
        ),
        t,
        h,
        rewritten(&f, &rs.iter().map(|(_, r)| r).collect::<Vec<_>>()),
        lost,
    );
    assert_eq!(lost, 0);
    assert!(
        r4_at_kill < f.m.num_pieces() as usize,
        "r4 was complete at the kill: nothing tested"
    );
}

#[test]
fn a_receiver_sigstopped_30s_does_not_hold_up_the_others_and_finishes_after_sigcont() {
    let f = fixture(162);
    let h = healthy(&f, 172, 3);
    let net = 162;
    let mut s = start_seeder(&f, net, 3, "seeder");
    let t0 = Instant::now();
    let mut rs = start_receivers(
        net,
        2..=4,
        &manifest_url(&ip(net, 1), &f.m),
        &f.m,
        &[],
        &f.d,
        162,
    );
    // Stop r4 once it has some data (the seeder's view of it).
    assert!(
        wait_until(T, || has_data(&ip(net, 1), &format!("{}:6881", ip(net, 4)))),
        "r4 never got data"
    );
    signal(&rs[2].1, "STOP");
    let stopped = Instant::now();
    let mut r4_seen = vec![false; f.m.num_pieces() as usize];
    let r4_at_stop = pieces_in_swarm(&f, &[rs[2].0.clone()], &mut r4_seen);
    let others = wait_complete(&[&rs[0].1, &rs[1].1], t0);
    let others_during_stop = stopped.elapsed() < Duration::from_secs(30);
    assert!(
        others_during_stop,
        "the others took {:?} after the stop: they waited for the stopped one",
        stopped.elapsed()
    );
    // The stop lasts 30 s (the scenario), then the receiver goes on.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed()));
    signal(&rs[2].1, "CONT");
    let resumed = Instant::now();
    let all = wait_complete(&[&rs[2].1], t0);
    let after_resume = resumed.elapsed().as_secs_f64();
    wait_all_ok(&mut rs, T);
    assert_eq!(s.wait(T), 0, "{}", s.stderr_text());
    // No ban cascade: nobody banned anybody.
    for (_, r) in &rs {
        assert!(
            !r.stderr_text().contains("banning peer"),
            "{} banned a peer:\n{}",
            r.name,
            r.stderr_text()
        );
    }
    let rewritten = rewritten(&f, &rs.iter().map(|(_, r)| r).collect::<Vec<_>>());
    let lost = data_lost(&f, &rs.iter().map(|(t, _)| t.as_path()).collect::<Vec<_>>());
    row(
        "receiver SIGSTOPped 30 s, then SIGCONT",
        &format!(
            "stopped with {r4_at_stop} of {} pieces; others complete at {others:.1} s (during the stop); stopped one complete {after_resume:.1} s after SIGCONT ({all:.1} s); no bans; all exit 0",
            f.m.num_pieces()
        ),
        others,
        h,
        rewritten,
        lost,
    );
    assert_eq!(lost, 0);
}

#[test]
fn every_receiver_sigkilled_at_half_way_and_restarted_resumes_and_finishes() {
    let f = fixture(163);
    let h = healthy(&f, 173, 3);
    let net = 163;
    let mut s = start_seeder(&f, net, 3, "seeder");
    let url = manifest_url(&ip(net, 1), &f.m);
    let t0 = Instant::now();
    let mut rs = start_receivers(net, 2..=4, &url, &f.m, &[], &f.d, 163);
    let total = f.m.total_length();
    let half = |st: &serde_json::Value| {
        st["receivers"].as_array().is_some_and(|a| {
            a.len() >= 3
                && a.iter()
                    .all(|r| r["bytes_done"].as_u64().is_some_and(|b| b >= total / 2))
        })
    };
    let mut at_kill = serde_json::Value::Null;
    assert!(
        wait_until(T, || status_of(&ip(net, 1)).is_some_and(|st| {
            let h = half(&st);
            at_kill = st;
            h
        })),
        "the receivers never reached half-way"
    );
    for (_, r) in rs.iter_mut() {
        assert!(!is_complete(r), "{} completed before the kill", r.name);
        r.kill();
    }
    let killed = t0.elapsed().as_secs_f64();
    let before = downloaded(&at_kill);
    // Restart on the same targets (resume on: pieces already there count).
    let mut rs2: Vec<(PathBuf, Proc)> = rs
        .iter()
        .enumerate()
        .map(|(k, (t, _))| {
            let h = 2 + k as u8;
            (
                t.clone(),
                receiver(&ip(net, h), &url, t, &[], &f.d, &format!("r{h}-again")),
            )
        })
        .collect();
    let t = wait_complete(&rs2.iter().map(|(_, r)| r).collect::<Vec<_>>(), t0);
    wait_all_ok(&mut rs2, T);
    assert_eq!(s.wait(T), 0, "{}", s.stderr_text());
    let found: Vec<String> = rs2
        .iter()
        .map(|(_, r)| {
            r.stderr_text()
                .lines()
                .find(|l| l.contains("resume scan finished"))
                .and_then(|l| l.split("found=").nth(1))
                .map(|n| n.split_whitespace().next().unwrap_or("?").to_string())
                .unwrap_or_else(|| "?".into())
        })
        .collect();
    // The killed processes' downloads as of their last announce, plus the restarted ones'.
    let after: u64 = rs2.iter().map(|(_, r)| downloaded_by(r)).sum();
    let rewritten = (before + after) as i64 - 3 * total as i64;
    let lost = data_lost(
        &f,
        &rs2.iter().map(|(t, _)| t.as_path()).collect::<Vec<_>>(),
    );
    row(
        "every receiver SIGKILLed at 50 %, restarted (resume)",
        &format!(
            "killed at {killed:.1} s with {before} bytes downloaded (of 3 x {total}); the resume scans counted {} pieces of {} (pieces the download had not taken first); all 3 exit 0",
            found.join("/"),
            f.m.num_pieces()
        ),
        t,
        h,
        rewritten,
        lost,
    );
    assert_eq!(lost, 0);
    assert!(found.iter().all(|n| n != "?" && n != "0"), "{found:?}");
}

#[test]
fn a_peer_that_stalls_mid_piece_is_worked_around_and_everyone_finishes() {
    let f = fixture(164);
    let h = healthy(&f, 174, 3);
    let net = 164;
    let decoded = Manifest::decode(&std::fs::read(&f.mpath).unwrap()).unwrap();
    let evil_addr: std::net::SocketAddr = format!("{}:6881", ip(net, 9)).parse().unwrap();
    let evil = evil_peer::start_with(
        evil_addr,
        decoded.info_hash,
        f.m.num_pieces(),
        Lie::StallMidPiece {
            packed: std::sync::Arc::new(packed_data(&f.img, &f.m)),
            piece_len: f.m.piece_length,
        },
    );
    let mut s = start_seeder(&f, net, 3, "seeder");
    let t0 = Instant::now();
    let mut rs = start_receivers(
        net,
        2..=4,
        &manifest_url(&ip(net, 1), &f.m),
        &f.m,
        &["--peer", &evil_addr.to_string()],
        &f.d,
        164,
    );
    let t = wait_complete(&rs.iter().map(|(_, r)| r).collect::<Vec<_>>(), t0);
    wait_all_ok(&mut rs, T);
    assert_eq!(s.wait(T), 0, "{}", s.stderr_text());
    let ignored = evil
        .requests_ignored
        .load(std::sync::atomic::Ordering::Relaxed);
    let served = evil.blocks_sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        evil.connections.load(std::sync::atomic::Ordering::Relaxed) >= 3 && ignored > 0,
        "the stalling peer was not used: {ignored} requests ignored"
    );
    let rewritten = rewritten(&f, &rs.iter().map(|(_, r)| r).collect::<Vec<_>>());
    let lost = data_lost(&f, &rs.iter().map(|(t, _)| t.as_path()).collect::<Vec<_>>());
    row(
        "a peer stalls mid-piece (HAVE_ALL, first block only)",
        &format!(
            "it served {served} first blocks and left {ignored} requests unanswered; all 3 exit 0"
        ),
        t,
        h,
        rewritten,
        lost,
    );
    assert_eq!(lost, 0);
}

#[test]
fn a_receiver_with_a_too_small_target_reports_exit_4_and_the_seeder_counts_it() {
    let f = fixture(165);
    let net = 165;
    let mut s = start_seeder(&f, net, 2, "seeder");
    let url = manifest_url(&ip(net, 1), &f.m);
    let mut rs = start_receivers(net, 2..=2, &url, &f.m, &[], &f.d, 165);
    let small = f.d.join("small.img");
    random_target(&small, f.m.map.device_size() / 2, 1);
    let mut bad = receiver(&ip(net, 3), &url, &small, &[], &f.d, "r3-small");
    assert_eq!(bad.wait(T), exit::BAD_TARGET, "{}", bad.stderr_text());
    wait_all_ok(&mut rs, T);
    // --expect 2: 1 complete + 1 failed (it never joined the swarm, yet it is counted).
    assert_eq!(s.wait(T), exit::RECEIVERS_FAILED, "{}", s.stderr_text());
    let summary = last_line(&s);
    assert!(
        summary.starts_with(&format!(
            "seeder: error: 1 complete, 1 failed: {} exit 4: ",
            ip(net, 3)
        )),
        "{}",
        s.stderr_text()
    );
    let st = seeder_status(&s);
    assert_eq!(st["failed"][0]["exit"], exit::BAD_TARGET, "{st}");
    assert_eq!(st["failed"][0]["addr"], ip(net, 3), "{st}");
    eprintln!("{summary}");
}
