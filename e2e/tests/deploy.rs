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
