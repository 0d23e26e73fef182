//! Interoperability with BitTorrent clients no one here wrote: aria2c and libtorrent
//! (Debian's aria2 and python3-libtorrent).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use blockswarm_e2e::*;

const T: Duration = Duration::from_secs(120);

/// libtorrent driven from Python: seeds (`seed`) or downloads (`leech`) one torrent.
const LT_SCRIPT: &str = r#"
import sys, time
import libtorrent as lt
mode, torrent, save, iface, ip, limit = sys.argv[1:7]
s = lt.session({
    'listen_interfaces': iface, 'enable_dht': False, 'enable_lsd': False,
    'enable_upnp': False, 'enable_natpmp': False, 'announce_ip': ip,
    'allow_multiple_connections_per_ip': True, 'outgoing_interfaces': ip,
})
p = lt.add_torrent_params()
p.ti = lt.torrent_info(torrent)
p.save_path = save
if mode == 'seed':
    p.flags |= lt.torrent_flags.seed_mode
h = s.add_torrent(p)
print('started', flush=True)
end = time.time() + float(limit)
while time.time() < end:
    st = h.status()
    if mode == 'leech' and st.is_seeding:
        print('complete', flush=True)
        time.sleep(2)
        sys.exit(0)
    time.sleep(0.2)
sys.exit(0 if mode == 'seed' else 1)
"#;

fn python_libtorrent() -> &'static str {
    // Debian's module is built for Debian's python3, not for other pythons on PATH.
    let py = "/usr/bin/python3";
    let ok = Command::new(py)
        .args(["-c", "import libtorrent"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python3-libtorrent missing: apt-get install python3-libtorrent"
    );
    py
}

fn lt(mode: &str, torrent: &Path, save: &Path, ip: &str, limit: u64, logdir: &Path) -> Proc {
    let script = logdir.join("lt.py");
    std::fs::write(&script, LT_SCRIPT).unwrap();
    Proc::spawn(
        &format!("libtorrent-{mode}"),
        Command::new(python_libtorrent())
            .arg(&script)
            .arg(mode)
            .arg(torrent)
            .arg(save)
            .arg(format!("{ip}:6881"))
            .arg(ip)
            .arg(limit.to_string()),
        logdir,
    )
}

#[test]
fn aria2c_downloads_the_packed_file_from_our_seeder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, _) = make_ext4(d, "src", 64, 4096, 12, 21);
    let mpath = image(&img, &d.join("m.torrent"), &["--piece-size", "256K"]);
    let m = read_manifest(&mpath);
    let ip = "127.0.21.1";
    let _seeder = seeder(ip, &mpath, &[], d, "seeder");
    let url = manifest_url(ip, &m);
    let served = fetch_served_manifest(&url, d);
    let out = d.join("aria2");
    let mut aria = aria2c(&out, &served, "7881-7899", d);
    assert_eq!(
        aria.wait(T),
        0,
        "aria2c failed:\n{}\n{}",
        aria.stdout_text(),
        aria.stderr_text()
    );
    let got = std::fs::read(out.join(&m.name)).expect("aria2c wrote the packed file");
    assert_eq!(got.len() as u64, m.total_length());
    assert!(
        got == packed_data(&img, &m),
        "aria2c's file differs from the used runs"
    );
}

#[test]
fn libtorrent_seeding_saved_image_lets_our_receiver_complete() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, files) = make_ext4(d, "src", 64, 4096, 12, 22);
    let save = d.join("image");
    image(
        &img,
        &d.join("m.torrent"),
        &["--piece-size", "256K", "--save", save.to_str().unwrap()],
    );
    let m = read_manifest(&d.join("m.torrent"));
    let torrent = save.join(format!("{}.torrent", m.name));
    let lt_ip = "127.0.22.9";
    let mut lt_seed = lt("seed", &torrent, &save, lt_ip, 120, d);
    assert!(
        wait_until(Duration::from_secs(20), || lt_seed
            .stdout_text()
            .contains("started")),
        "libtorrent did not start: {}",
        lt_seed.stderr_text()
    );
    let t = d.join("t.img");
    random_target(&t, m.map.device_size(), 9);
    let mut r = receiver(
        "127.0.22.2",
        torrent.to_str().unwrap(),
        &t,
        &[
            "--peer",
            &format!("{lt_ip}:6881"),
            "--seed-after",
            "0",
            "--verify",
        ],
        d,
        "receiver",
    );
    assert_eq!(r.wait(T), 0, "receiver:\n{}", r.stderr_text());
    lt_seed.kill();
    assert_same_ext4(&img, &t, &m, &files);
}

#[test]
fn mixed_swarm_of_our_seeder_libtorrent_and_our_receivers_completes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, files) = make_ext4(d, "src", 64, 4096, 12, 23);
    let mpath = image(&img, &d.join("m.torrent"), &["--piece-size", "256K"]);
    let m = read_manifest(&mpath);
    let net = 23;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let mut seeder = seeder(&ip(1), &mpath, &["--upload-limit", "4M"], d, "seeder");
    let url = manifest_url(&ip(1), &m);
    let served = fetch_served_manifest(&url, d);
    let lt_out = d.join("lt");
    std::fs::create_dir_all(&lt_out).unwrap();
    let mut leech = lt("leech", &served, &lt_out, &ip(9), 100, d);
    let mut rs = start_receivers(net, 2..=3, &url, &m, &["--seed-after", "3s"], d, 0);
    wait_all_ok(&mut rs, T);
    assert_eq!(
        leech.wait(T),
        0,
        "libtorrent leecher:\n{}\n{}",
        leech.stdout_text(),
        leech.stderr_text()
    );
    seeder.kill();
    let got = std::fs::read(lt_out.join(&m.name)).unwrap();
    assert!(got == packed_data(&img, &m), "libtorrent's copy differs");
    for (t, _) in &rs {
        assert_same_ext4(&img, t, &m, &files);
    }
}

#[test]
fn external_opentracker_coordinates_the_swarm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, files) = make_ext4(d, "src", 64, 4096, 12, 24);
    let mpath = image(&img, &d.join("m.torrent"), &["--piece-size", "256K"]);
    let m = read_manifest(&mpath);
    let net = 24;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    // Debian's opentracker serves whitelisted torrents only.
    let info_hash = blockswarm_manifest::Manifest::decode(&std::fs::read(&mpath).unwrap())
        .unwrap()
        .info_hash;
    let wl = d.join("whitelist");
    std::fs::write(&wl, format!("{}\n", hex::encode(info_hash))).unwrap();
    let _tracker = Proc::spawn(
        "opentracker",
        Command::new("opentracker")
            .args(["-i", &ip(5), "-p", "6969", "-P", "6969", "-w"])
            .arg(&wl)
            .current_dir(d),
        d,
    );
    let tracker_url = format!("http://{}:6969/announce", ip(5));
    let mut seeder = seeder(
        &ip(1),
        &mpath,
        &["--tracker", &tracker_url, "--expect", "2"],
        d,
        "seeder",
    );
    let url = manifest_url(&ip(1), &m);
    // No "done" signal comes through a foreign tracker: seed a little, then stop.
    let mut rs = start_receivers(net, 2..=3, &url, &m, &["--seed-after", "5s"], d, 0);
    // The served manifest names the external tracker, not the embedded one.
    let served = http_get(&url).expect("seeder serves its manifest");
    let served = blockswarm_manifest::Manifest::decode(&served)
        .unwrap()
        .manifest;
    assert_eq!(served.announce.as_deref(), Some(tracker_url.as_str()));
    wait_all_ok(&mut rs, T);
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    for (t, _) in &rs {
        assert_same_ext4(&img, t, &m, &files);
    }
}

/// Issue 13: on a compressible image our peers trade zstd frames (`bs_zstd`) while aria2c
/// and libtorrent, in the same swarm, get plain BitTorrent; every copy is right, and the
/// counters in `/status` show compressed bytes from the seeder and between receivers.
#[test]
fn mixed_swarm_on_a_compressible_image_trades_zstd_between_our_peers_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, files) = make_ext4_compressible(d, "src", 64, 16, 220);
    let mpath = image(&img, &d.join("m.torrent"), &["--piece-size", "256K"]);
    let m = read_manifest(&mpath);
    let net = 220;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    // Slow enough that the receivers get much of it from each other.
    let mut seeder = seeder(
        &ip(1),
        &mpath,
        &["--upload-limit", "3M", "--expect", "2"],
        d,
        "seeder",
    );
    let url = manifest_url(&ip(1), &m);
    let served = fetch_served_manifest(&url, d);
    let lt_out = d.join("lt");
    std::fs::create_dir_all(&lt_out).unwrap();
    let mut leech = lt("leech", &served, &lt_out, &ip(9), 100, d);
    let aria_out = d.join("aria2");
    let mut aria = aria2c(&aria_out, &served, "7901-7919", d);
    let mut rs = start_receivers(net, 2..=3, &url, &m, &["--seed-after", "30s"], d, 0);
    wait_all_ok(&mut rs, T);
    for (p, name) in [(&mut leech, "libtorrent"), (&mut aria, "aria2c")] {
        assert_eq!(
            p.wait(T),
            0,
            "{name}:\n{}\n{}",
            p.stdout_text(),
            p.stderr_text()
        );
    }
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    let packed = packed_data(&img, &m);
    assert!(
        std::fs::read(lt_out.join(&m.name)).unwrap() == packed,
        "libtorrent's copy differs"
    );
    assert!(
        std::fs::read(aria_out.join(&m.name)).unwrap() == packed,
        "aria2c's copy differs"
    );
    for (t, _) in &rs {
        assert_same_ext4(&img, t, &m, &files);
    }

    let st = seeder_status(&seeder);
    let z = &st["zstd"];
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(
        n(z, "sent_blocks") > 0,
        "the seeder sent no zstd frame: {z}"
    );
    assert!(
        n(z, "sent_frame_bytes") * 3 < n(z, "sent_raw_bytes") * 2,
        "frames are not smaller than the blocks they carry: {z}"
    );
    let ours: Vec<&serde_json::Value> = st["machines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reports"] == true)
        .collect();
    assert_eq!(
        ours.len(),
        2,
        "our two receivers report: {}",
        st["machines"]
    );
    let mut forwarded = 0;
    for r in &ours {
        let z = &r["zstd"];
        assert!(n(z, "received_blocks") > 0, "receiver got no frame: {r}");
        forwarded += n(z, "sent_blocks");
    }
    assert!(
        forwarded > 0,
        "our receivers sent each other no frame: {ours:?}"
    );
    // The standard clients were served plain blocks: a zstd frame would have been an
    // unknown extension message to them, and their copies would not be complete and right.
}
