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

#[test]
fn four_receivers_share_so_the_capped_seeder_uploads_under_1_3_copies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, _) = make_ext4(d, "src", 64, 4096, 20, 77);
    let mpath = image(&img, &d.join("m.torrent"), &["--piece-size", "256K"]);
    let m = read_manifest(&mpath);
    let net = 13;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    // 4 MiB/s: slow enough that receivers must trade pieces to finish in time.
    let mut seeder = seeder(
        &ip(1),
        &mpath,
        &["--expect", "4", "--upload-limit", "4M"],
        d,
        "seeder",
    );
    let url = manifest_url(&ip(1), &m);
    let mut rs = start_receivers(net, 2..=5, &url, &m, &[], d, 0);
    wait_all_ok(&mut rs, T);
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    let status = seeder_status(&seeder);
    let copies = status["uploaded_copies"].as_f64().unwrap();
    eprintln!("seeder uploaded {copies:.2} copies for 4 receivers");
    assert!(copies < 1.3, "seeder uploaded {copies:.2} copies: {status}");
    assert!(
        copies >= 1.0,
        "the seeder must have sent everything once: {status}"
    );
    let want = packed_data(&img, &m);
    for (t, _) in &rs {
        assert!(packed_data(t, &m) == want, "{} differs", t.display());
    }
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
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, _) = make_ext4(d, "src", 64, 4096, 20, 78);
    let mpath = image(&img, &d.join("m.torrent"), &["--piece-size", "256K"]);
    let m = read_manifest(&mpath);
    let seeder_ip = "127.0.18.1";
    let mut seeder = seeder(
        seeder_ip,
        &mpath,
        &["--expect", "9", "--upload-limit", "6M"],
        d,
        "seeder",
    );
    let url = manifest_url(seeder_ip, &m);
    let mut rs = Vec::new();
    for (room, net) in [15u8, 16, 17].into_iter().enumerate() {
        // Each room's targets and logs in a directory of its own (the names are per host).
        let rd = d.join(format!("room{net}"));
        std::fs::create_dir(&rd).unwrap();
        let seed = 10 * room as u64;
        rs.extend(start_receivers(net, 2..=4, &url, &m, &[], &rd, seed));
    }
    wait_all_ok(&mut rs, T);
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    let status = seeder_status(&seeder);
    assert_eq!(status["completed"], 9, "{status}");
    let copies = status["uploaded_copies"].as_f64().unwrap();
    eprintln!("seeder uploaded {copies:.2} copies for 9 receivers in 3 rooms");
    assert!(copies < 1.3, "the rooms did not trade: {copies:.2} copies");
    let want = packed_data(&img, &m);
    for (t, _) in &rs {
        assert!(packed_data(t, &m) == want, "{} differs", t.display());
    }
}
