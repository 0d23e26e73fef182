//! Faults: a seeder that dies for good or restarts. Nothing hangs: receivers finish, or
//! exit 7 with the missing pieces named within `--stall-timeout`.

use std::time::{Duration, Instant};

use blockswarm_e2e::*;
use blockswarm_manifest::{exit, Manifest};

const T: Duration = Duration::from_secs(120);

/// The receivers' `--stall-timeout` in these tests, and the same as a duration.
const STALL: &str = "5s";
const STALL_T: Duration = Duration::from_secs(5);

/// How long after the stall deadline a receiver may take to exit: the swarm loop looks a
/// few times a second, and the receivers may still trade pieces among themselves after the
/// seeder went (each traded piece restarts the clock).
const EXIT_SLACK: Duration = Duration::from_secs(15);

type Fixture = Ext4Fixture;

fn fixture(seed: u64, data_mib: u64) -> Fixture {
    ext4_fixture(seed, 64, data_mib)
}

fn wait_up(ip: &str) {
    wait_seeder_up(ip, T)
}

/// Waits until `n` receivers announced to the seeder on `ip` and it has sent `pieces`
/// pieces' worth of blocks.
fn wait_receivers_and_upload(ip: &str, n: usize, m: &Manifest, pieces: u64) {
    assert!(
        wait_until(T, || status_of(ip)
            .and_then(|s| s["receivers"].as_array().map(|r| r.len()))
            .is_some_and(|k| k >= n)),
        "{n} receivers never announced to the seeder on {ip}"
    );
    wait_uploaded(ip, m, pieces);
}

/// Waits until the seeder on `ip` has sent `pieces` pieces' worth of blocks.
fn wait_uploaded(ip: &str, m: &Manifest, pieces: u64) {
    let want = pieces * m.piece_length as u64;
    assert!(
        wait_until(T, || status_of(ip)
            .and_then(|s| s["uploaded"].as_u64())
            .is_some_and(|u| u >= want)),
        "the seeder on {ip} never sent {pieces} pieces"
    );
}

#[test]
fn a_seeder_killed_for_good_makes_every_receiver_give_up_within_the_stall_deadline() {
    let f = fixture(51, 16);
    let net = 51;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    // 2 MiB/s: the 16 MiB take 8 s, so the kill comes early.
    let mut seeder = seeder(
        &ip(1),
        &f.mpath,
        &["--expect", "3", "--upload-limit", "2M"],
        &f.d,
        "seeder",
    );
    wait_up(&ip(1));
    let url = manifest_url(&ip(1), &f.m);
    let mut rs = start_receivers(
        net,
        2..=4,
        &url,
        &f.m,
        &["--stall-timeout", STALL],
        &f.d,
        51,
    );
    wait_receivers_and_upload(&ip(1), 3, &f.m, 4);
    seeder.kill();
    let killed = Instant::now();
    for (_, r) in rs.iter_mut() {
        let code = r.wait(T);
        let took = killed.elapsed();
        let err = last_line(r);
        eprintln!("{} exited {code} {took:?} after the kill: {err}", r.name);
        assert_eq!(
            code,
            exit::VERIFY_FAILED,
            "{}:\n{}",
            r.name,
            r.stderr_text()
        );
        assert!(
            err.starts_with("receiver: error: download gave up: no piece verified for "),
            "{err}"
        );
        assert!(err.contains("missing pieces of"), "{err}");
        // It names the seeder it tried: its tracker and its BitTorrent address.
        assert!(
            err.contains(&format!("tried tracker {}", announce_url(&ip(1))))
                && err.contains(&format!("{}:6881", ip(1))),
            "{err}"
        );
        assert!(
            took < STALL_T + EXIT_SLACK,
            "{} gave up {took:?} after the seeder died (stall timeout {STALL_T:?})",
            r.name
        );
    }
}

#[test]
fn a_seeder_restarted_on_the_same_address_is_rejoined_and_every_receiver_finishes() {
    let f = fixture(52, 16);
    let net = 52;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let args = ["--expect", "3", "--upload-limit", "2M"];
    let mut first = seeder(&ip(1), &f.mpath, &args, &f.d, "seeder-1");
    wait_up(&ip(1));
    let url = manifest_url(&ip(1), &f.m);
    let mut rs = start_receivers(
        net,
        2..=4,
        &url,
        &f.m,
        &["--stall-timeout", "30s", "--retry-for", "60s"],
        &f.d,
        52,
    );
    wait_receivers_and_upload(&ip(1), 3, &f.m, 4);
    first.kill();
    // Same addresses, a new process (a new peer id, an empty tracker).
    let started = Instant::now();
    let mut second = seeder(&ip(1), &f.mpath, &args, &f.d, "seeder-2");
    wait_all_ok(&mut rs, T);
    eprintln!(
        "receivers finished {:?} after the seeder restarted",
        started.elapsed()
    );
    assert_eq!(second.wait(T), 0, "seeder-2:\n{}", second.stderr_text());
    let st = seeder_status(&second);
    assert!(
        st["uploaded"].as_u64().unwrap() > 0,
        "the restarted seeder served nothing: {st}"
    );
    for (t, _) in &rs {
        assert_same_ext4(&f.img, t, &f.m, &f.files);
    }
}
