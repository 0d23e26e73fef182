//! Compressed blocks (`bs_zstd`, issue 13) against peers that lie in them: a frame that
//! decompresses past what it claims (a bomb) is a protocol violation and its sender is
//! banned at once; a well-formed frame of wrong bytes fails the piece's SHA-1 and bans its
//! sole sender. Either way the receiver completes from the seeder, correct, and `--verify`
//! re-reads it from the target. And `--no-compress` on either side is plain BitTorrent.

use std::time::Duration;

use blockswarm_e2e::evil_peer::{self, Lie, ZLie};
use blockswarm_e2e::*;

const T: Duration = Duration::from_secs(120);

/// Deploys a compressible image (subnet 127.0.`net`.x) to one receiver that also knows
/// peer `lie` (a seeder capped at 2 MiB/s, so the liar is asked for much); returns the
/// receiver's log after checking its target.
fn deploy_with_a_zstd_liar(net: u8, lie: ZLie) -> String {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, files) = make_ext4_compressible(d, "src", 48, 8, net as u64);
    let mpath = image(&img, &d.join("m.torrent"), &["--piece-size", "256K"]);
    let m = read_manifest(&mpath);
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let evil_addr: std::net::SocketAddr = format!("{}:6881", ip(9)).parse().unwrap();
    let evil = evil_peer::start_with(
        evil_addr,
        m.info_hash().unwrap(),
        m.num_pieces(),
        Lie::Zstd(lie),
    );
    let mut seeder = seeder(
        &ip(1),
        &mpath,
        &["--expect", "1", "--upload-limit", "2M"],
        d,
        "seeder",
    );
    let t = d.join("t.img");
    random_target(&t, m.map.device_size(), net as u64);
    let mut r = receiver(
        &ip(2),
        &manifest_url(&ip(1), &m),
        &t,
        &["--peer", &evil_addr.to_string(), "--verify", "-v"],
        d,
        "receiver",
    );
    assert_eq!(r.wait(T), 0, "receiver:\n{}", r.stderr_text());
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    let sent = evil.blocks_sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent > 0, "the liar was never asked for data");
    let log = r.stderr_text();
    let bans: Vec<&str> = log.lines().filter(|l| l.contains("banning peer")).collect();
    assert!(!bans.is_empty(), "liar not banned:\n{log}");
    for line in bans {
        assert!(
            line.contains(&evil_addr.ip().to_string()),
            "honest peer banned: {line}"
        );
    }
    assert_same_ext4(&img, &t, &m, &files);
    log
}

#[test]
fn a_peer_sending_zstd_bombs_is_banned_and_the_target_stays_correct() {
    let log = deploy_with_a_zstd_liar(221, ZLie::Bomb);
    assert!(
        log.contains("bad compressed block"),
        "no bad frame logged:\n{log}"
    );
    assert!(
        !log.contains("failed its SHA-1 check"),
        "a bomb must be refused before any piece is hashed:\n{log}"
    );
}

#[test]
fn a_peer_sending_wrong_zstd_frames_is_banned_by_the_hash_check() {
    let log = deploy_with_a_zstd_liar(222, ZLie::Zeros);
    assert!(
        log.contains("failed its SHA-1 check"),
        "no hash failure:\n{log}"
    );
}

/// `--no-compress` on the seeder: our receivers get plain blocks from it (its counters stay
/// zero) yet still trade frames between themselves; on a receiver: it neither sends nor
/// receives a frame.
#[test]
fn no_compress_turns_bs_zstd_off_on_either_side() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, files) = make_ext4_compressible(d, "src", 48, 8, 223);
    let mpath = image(&img, &d.join("m.torrent"), &["--piece-size", "256K"]);
    let m = read_manifest(&mpath);
    let net = 223;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let mut seeder = seeder(
        &ip(1),
        &mpath,
        &["--expect", "3", "--no-compress", "--upload-limit", "3M"],
        d,
        "seeder",
    );
    let url = manifest_url(&ip(1), &m);
    let mut rs = start_receivers(net, 2..=3, &url, &m, &["--seed-after", "30s"], d, 0);
    random_target(&d.join("t4.img"), m.map.device_size(), 4);
    let mut plain = receiver(
        &ip(4),
        &url,
        &d.join("t4.img"),
        &["--no-compress", "--seed-after", "30s"],
        d,
        "receiver-plain",
    );
    wait_all_ok(&mut rs, T);
    assert_eq!(plain.wait(T), 0, "{}", plain.stderr_text());
    assert_eq!(seeder.wait(T), 0, "{}", seeder.stderr_text());
    for t in [d.join("t2.img"), d.join("t3.img"), d.join("t4.img")] {
        assert_same_ext4(&img, &t, &m, &files);
    }
    let st = seeder_status(&seeder);
    assert_eq!(st["zstd"]["sent_blocks"], 0, "{}", st["zstd"]);
    let z_of = |host: u8| {
        st["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["ip"] == ip(host))
            .unwrap_or_else(|| panic!("no row for {}: {}", ip(host), st["machines"]))["zstd"]
            .clone()
    };
    assert!(
        z_of(4).is_null(),
        "the plain receiver traded frames: {}",
        z_of(4)
    );
    let traded: u64 = [2, 3]
        .iter()
        .map(|&h| z_of(h)["received_blocks"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        traded > 0,
        "our receivers traded no frame: {} {}",
        z_of(2),
        z_of(3)
    );
}

/// Item 3: `imager --save DIR --compress` stores the packed data as NAME.bsz, well under the
/// packed size; `seeder --image DIR` serves it: frames straight from the file to our
/// receivers (the seeder compresses nothing itself), plain decompressed blocks to aria2c.
#[test]
fn a_compressed_saved_image_is_small_and_seeded_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, files) = make_ext4_compressible(d, "src", 48, 12, 224);
    let save = d.join("saved");
    let mpath = image(
        &img,
        &d.join("m.torrent"),
        &[
            "--piece-size",
            "256K",
            "--save",
            save.to_str().unwrap(),
            "--compress",
        ],
    );
    let m = read_manifest(&mpath);
    assert!(
        !save.join(&m.name).exists(),
        "the plain packed file was written too"
    );
    let bsz = std::fs::metadata(save.join(format!("{}.bsz", m.name)))
        .unwrap()
        .len();
    assert!(
        bsz * 2 < m.total_length(),
        "compressed image of {bsz} bytes for {} packed",
        m.total_length()
    );
    let net = 224;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let saved_m = save.join(format!("{}.torrent", m.name));
    let mut seeder = seeder(
        &ip(1),
        &saved_m,
        &["--image", save.to_str().unwrap(), "--expect", "2"],
        d,
        "seeder",
    );
    let url = manifest_url(&ip(1), &m);
    let served = fetch_served_manifest(&url, d);
    let aria_out = d.join("aria2");
    let mut aria = aria2c(&aria_out, &served, "7921-7939", d);
    let mut rs = start_receivers(net, 2..=3, &url, &m, &["--verify"], d, 0);
    wait_all_ok(&mut rs, T);
    assert_eq!(aria.wait(T), 0, "aria2c:\n{}", aria.stderr_text());
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    assert!(
        seeder.stderr_text().contains("compressed image"),
        "{}",
        seeder.stderr_text()
    );
    for (t, _) in &rs {
        assert_same_ext4(&img, t, &m, &files);
    }
    let got = std::fs::read(aria_out.join(&m.name)).unwrap();
    assert!(got == packed_data(&img, &m), "aria2c's copy differs");
    let st = seeder_status(&seeder);
    let z = &st["zstd"];
    assert!(z["sent_blocks"].as_u64().unwrap() > 0, "{z}");
    // The frames came from the file; blocks not in the cache were never recompressed.
    assert_eq!(z["compressed_here"], 0, "{z}");
}
