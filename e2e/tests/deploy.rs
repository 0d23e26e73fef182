//! The main job end to end: `imager | seeder` and receivers as separate processes on
//! 127.0.x.y, writing into targets pre-filled with random bytes.

use std::time::Duration;

use blockswarm_e2e::*;

const T: Duration = Duration::from_secs(120);

fn deploy_ext4(net: u8, block_size: u32) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, files) = make_ext4(d, "src", 96, block_size, 40, block_size as u64);
    let mpath = image(&img, &d.join("m.torrent"), &["--piece-size", "256K"]);
    let m = read_manifest(&mpath);
    assert!(
        m.map.len() > 3,
        "fragmented map expected, got {} runs",
        m.map.len()
    );
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let mut seeder = seeder(&ip(1), &mpath, &["--expect", "3"], d, "seeder");
    let url = manifest_url(&ip(1), &m);
    let mut receivers = start_receivers(net, 2..=4, &url, &m, &["--verify"], d, 0);
    wait_all_ok(&mut receivers, T);
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    let status = seeder_status(&seeder);
    assert_eq!(status["completed"], 3, "{status}");
    for (t, _) in &receivers {
        assert_same_ext4(&img, t, &m, &files);
    }
}

#[test]
fn ext4_1k_blocks_deploys_to_three_receivers() {
    deploy_ext4(11, 1024);
}

#[test]
fn ext4_4k_blocks_deploys_to_three_receivers() {
    deploy_ext4(12, 4096);
}

/// A seeder on `seeder_ip` capped at `limit` bytes/s (slow enough that receivers must trade
/// pieces to finish in time) and receivers on 127.0.ROOM.2 ..= 127.0.ROOM.`last` for each of
/// `rooms` (each room's targets and logs in a directory of its own: the names are per host),
/// from the ext4 fixture of `seed`. Every receiver exits 0 with the source's packed data and
/// the seeder counts them all completed; returns the copies the seeder uploaded and its
/// final status.
fn capped_deploy(
    seed: u64,
    seeder_ip: &str,
    limit: &str,
    rooms: &[u8],
    last: u8,
) -> (f64, serde_json::Value) {
    let f = ext4_fixture(seed, 64, 20);
    let n = rooms.len() * (last as usize - 1);
    let expect = n.to_string();
    let mut seeder = seeder(
        seeder_ip,
        &f.mpath,
        &["--expect", &expect, "--upload-limit", limit],
        &f.d,
        "seeder",
    );
    let url = manifest_url(seeder_ip, &f.m);
    let mut rs = Vec::new();
    for (k, &net) in rooms.iter().enumerate() {
        let rd = f.d.join(format!("room{net}"));
        std::fs::create_dir(&rd).unwrap();
        let seed = 10 * k as u64;
        rs.extend(start_receivers(net, 2..=last, &url, &f.m, &[], &rd, seed));
    }
    wait_all_ok(&mut rs, T);
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    let status = seeder_status(&seeder);
    assert_eq!(status["completed"], n, "{status}");
    let want = packed_data(&f.img, &f.m);
    for (t, _) in &rs {
        assert!(packed_data(t, &f.m) == want, "{} differs", t.display());
    }
    let copies = status["uploaded_copies"].as_f64().unwrap();
    eprintln!(
        "seeder uploaded {copies:.2} copies for {n} receivers in {} room(s)",
        rooms.len()
    );
    (copies, status)
}

#[test]
fn four_receivers_share_so_the_capped_seeder_uploads_under_1_3_copies() {
    let (copies, status) = capped_deploy(77, "127.0.13.1", "4M", &[13], 5);
    assert!(copies < 1.3, "seeder uploaded {copies:.2} copies: {status}");
    assert!(
        copies >= 1.0,
        "the seeder must have sent everything once: {status}"
    );
}

#[test]
fn image_mode_deploys_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, files) = make_ext4(d, "src", 64, 4096, 16, 5);
    let save = d.join("image");
    image(
        &img,
        &d.join("m.torrent"),
        &["--piece-size", "256K", "--save", save.to_str().unwrap()],
    );
    let m = read_manifest(&d.join("m.torrent"));
    let net = 14;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let mut seeder = Proc::spawn(
        "seeder",
        std::process::Command::new(bin("seeder"))
            .args(["--image", save.to_str().unwrap()])
            .args([
                "--listen",
                &format!("{}:6881", ip(1)),
                "--http",
                &format!("{}:6880", ip(1)),
                "--token",
                TEST_TOKEN,
            ])
            .args(["--expect", "2", "-v"]),
        d,
    );
    let url = manifest_url(&ip(1), &m);
    let mut rs = start_receivers(net, 2..=3, &url, &m, &["--verify"], d, 100);
    wait_all_ok(&mut rs, T);
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    for (t, _) in &rs {
        assert_same_ext4(&img, t, &m, &files);
    }
}

#[test]
fn receivers_in_three_rooms_deploy_and_trade_across_them() {
    // Three /24s (rooms, `--site-prefix 24`, the default) of three receivers each; the
    // seeder in a fourth. Each receiver's tracker answer lists its room, the seeder and 4
    // others, and it asks other rooms only for pieces its own lacks: everyone must still
    // get everything, and the rooms must trade (the seeder is capped).
    let (copies, _) = capped_deploy(78, "127.0.18.1", "6M", &[15, 16, 17], 4);
    assert!(copies < 1.3, "the rooms did not trade: {copies:.2} copies");
}
