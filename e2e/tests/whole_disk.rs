//! Whole-disk mode end to end (issue 10): real GPT and MBR disk images (see
//! `blockswarm_e2e::disk`) deployed with `imager DISK | seeder` to receivers writing targets
//! 25% larger than the source (random-filled files and a loop device), checked with sgdisk,
//! sfdisk, byte comparisons, fsck and file contents; bad input refused with nothing written;
//! `--target auto` among loop devices. The fixtures and the checks themselves are tested in
//! disk_fixtures.rs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use blockswarm_e2e::disk::*;
use blockswarm_e2e::*;
use blockswarm_manifest::{exit, Manifest};

const T: Duration = Duration::from_secs(180);

// ---- deploying with the real binaries ----

/// `imager DISK` into `dir/m.torrent`; checks the manifest's layout against the fixture and
/// prints (and bounds) the bytes the swarm carries against the disk size.
fn image_disk(src: &Disk, dir: &Path) -> (PathBuf, Manifest) {
    let mpath = image(&src.path, &dir.join("m.torrent"), &["--piece-size", "256K"]);
    let m = read_manifest(&mpath);
    assert_eq!(m.map.device_size(), src.size, "disk size in the manifest");
    let layout = m
        .disk
        .as_ref()
        .expect("a whole-disk manifest carries the layout");
    assert_eq!(layout.table, src.table);
    assert_eq!(layout.sector_size, SECTOR);
    assert_eq!(layout.min_size, src.min_size(), "min_size");
    let got: Vec<_> = layout
        .partitions
        .iter()
        .map(|p| (p.number, p.start, p.size, p.fs.as_str()))
        .collect();
    let want: Vec<_> = src
        .parts
        .iter()
        .map(|p| (p.number, p.start, p.size, p.fs.name()))
        .collect();
    assert_eq!(got, want, "partitions in the manifest");
    let sent = m.total_length();
    println!(
        "{}: {} bytes in the swarm for a {}-byte disk ({:.1}%); per partition: {:?}",
        src.path.display(),
        sent,
        src.size,
        sent as f64 * 100.0 / src.size as f64,
        layout
            .partitions
            .iter()
            .map(|p| (p.number, p.used))
            .collect::<Vec<_>>()
    );
    assert!(
        sent * 3 < src.size,
        "{sent} bytes sent is not well below the disk size {}",
        src.size
    );
    (mpath, m)
}

/// Deploys `src` through a seeder to two receivers: a random-filled file and a loop device
/// (with partition scanning) over another, both 25% larger; checks both clones and that the
/// kernel re-read the loop device's partition table.
fn deploy(src: &Disk, dir: &Path, net: u8) {
    let parser = kernel_reads_tables(&src.path);
    let (mpath, m) = image_disk(src, dir);
    let size = grown_size(src.size);
    let file_t = dir.join("t-file.img");
    random_target(&file_t, size, net as u64);
    let backing = dir.join("t-loop.img");
    random_target(&backing, size, net as u64 + 1);
    let l = LoopDev::whole(&backing);
    // A stale partition: it must be gone (or replaced) once the receiver re-read the table.
    run_out(tool("addpart").arg(&l.dev).args(["1", "2048", "8"]));
    settle();
    assert_eq!(l.kernel_partitions(), vec![(1, 2048, 8)]);

    let ip = |h: u8| format!("127.0.{net}.{h}");
    let mut seeder = seeder(&ip(1), &mpath, &["--expect", "2"], dir, "seeder");
    let url = manifest_url(&ip(1), &m);
    let mut rs = vec![
        (
            file_t.clone(),
            receiver(&ip(2), &url, &file_t, &["--verify"], dir, "r2"),
        ),
        (
            l.dev.clone(),
            receiver(&ip(3), &url, &l.dev, &["--verify"], dir, "r3"),
        ),
    ];
    wait_all_ok(&mut rs, T);
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    let status = seeder_status(&seeder);
    assert_eq!(status["completed"], 2, "{status}");
    println!("seeder: {status}");

    let got = l.kernel_partitions();
    if parser {
        let want: Vec<(u32, u64, u64)> = src
            .parts
            .iter()
            .map(|p| {
                let sectors = if p.fs == Fs::Extended {
                    2
                } else {
                    p.size / SECTOR
                };
                (p.number, p.start / SECTOR, sectors)
            })
            .collect();
        assert_eq!(
            got,
            want,
            "partitions of {} after the receiver",
            l.dev.display()
        );
        for p in &src.parts {
            let node = l.part(p.number);
            assert!(
                wait_until(Duration::from_secs(10), || node.exists()),
                "{} did not appear",
                node.display()
            );
        }
        println!("{}: the kernel re-read the table: {got:?}", l.dev.display());
    } else {
        assert_eq!(
            got,
            vec![],
            "the stale partition of {} is still there: the table was not re-read (BLKRRPART)",
            l.dev.display()
        );
        println!(
            "NOTE: this kernel parses no {} tables; the receiver's BLKRRPART dropped the stale \
             partition of {}",
            src.table,
            l.dev.display()
        );
    }
    for (t, _) in &rs {
        assert_clone(src, t);
    }
}

#[test]
fn gpt_disk_deploys_to_a_larger_file_and_a_larger_loop_device() {
    if !need_tools("gpt_deploy", &[]) {
        return;
    }
    let dir = scratch();
    let src = gpt_disk(dir.path(), 3);
    deploy(&src, dir.path(), 101);
}

#[test]
fn mbr_disk_deploys_to_a_larger_file_and_a_larger_loop_device() {
    if !need_tools("mbr_deploy", &[]) {
        return;
    }
    let dir = scratch();
    let src = mbr_disk(dir.path(), 4);
    deploy(&src, dir.path(), 102);
}

#[test]
fn imager_list_and_map_describe_every_partition() {
    if !need_tools("imager_list", &[]) {
        return;
    }
    let dir = scratch();
    for src in [gpt_disk(dir.path(), 5), mbr_disk(dir.path(), 6)] {
        let out = run_ok(Command::new(bin("imager")).arg("--list").arg(&src.path));
        let listing = String::from_utf8_lossy(&out.stdout);
        println!("imager --list {}:\n{listing}", src.path.display());
        assert_listing(&src, &listing);
        let out = run_ok(Command::new(bin("imager")).arg("--map").arg(&src.path));
        assert_map(&src, &String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn copy_to_clones_a_gpt_disk_onto_a_larger_and_an_exactly_fitting_file() {
    if !need_tools("copy_to", &[]) {
        return;
    }
    let dir = scratch();
    let src = gpt_disk(dir.path(), 7);
    // 25% larger; and exactly the layout's minimum (the backup table right after the last
    // partition).
    for (i, size) in [grown_size(src.size), src.min_size()]
        .into_iter()
        .enumerate()
    {
        let t = dir.path().join(format!("t{i}.img"));
        random_target(&t, size, 70 + i as u64);
        run_ok(
            Command::new(bin("imager"))
                .arg("-q")
                .arg("--copy-to")
                .arg(&t)
                .arg(&src.path),
        );
        assert_clone(&src, &t);
        std::fs::remove_file(&t).unwrap();
    }
}

/// Resume works on a whole disk as on a partition. A finished clone on a larger target has its
/// GPT fitted to that target, so the pieces holding sector 0 and the primary header differ
/// from the source's: a new receiver on it keeps every other piece, fetches only those again,
/// fits the table again, and the target is again a good clone. (The second seeder starts once
/// the receiver's resume scan is over: a scan runs beside the download, and a piece fetched
/// before the scan reaches it would blur what is measured.)
#[test]
fn a_finished_disk_clone_resumes_and_fetches_only_the_rewritten_table() {
    if !need_tools("disk_resume", &[]) {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let src = gpt_disk(d, 8);
    let (mpath, m) = image_disk(&src, d);
    let t = d.join("t.img");
    random_target(&t, grown_size(src.size), 108);
    let ip = |h: u8| format!("127.0.108.{h}");
    let url = manifest_url(&ip(1), &m);
    let tracker = announce_url(&ip(1));
    let mut copies = Vec::new();
    for round in 0..2 {
        let (mut seeder, r) = if round == 0 {
            let s = seeder(&ip(1), &mpath, &["--expect", "1"], d, "s0");
            (s, receiver(&ip(2), &url, &t, &["--verify"], d, "r0"))
        } else {
            let manifest = mpath.to_str().unwrap();
            let extra = ["--verify", "--tracker", &tracker, "--retry-for", "120s"];
            let r = receiver(&ip(2), manifest, &t, &extra, d, "r1");
            assert!(
                wait_until(T, || r.stderr_text().contains("resume scan finished")),
                "no resume scan:\n{}",
                r.stderr_text()
            );
            let s = seeder(&ip(1), &mpath, &["--expect", "1"], d, "s1");
            (s, r)
        };
        let mut rs = vec![(t.clone(), r)];
        wait_all_ok(&mut rs, T);
        assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
        copies.push(seeder_status(&seeder)["uploaded_copies"].as_f64().unwrap());
        assert_clone(&src, &t);
    }
    println!(
        "seeder uploaded {:.3} copies to the fresh target, {:.4} to the finished one ({} pieces)",
        copies[0],
        copies[1],
        m.num_pieces()
    );
    assert!(copies[0] >= 1.0, "first round: {copies:?}");
    assert!(
        copies[1] > 0.0 && copies[1] <= 2.0 / m.num_pieces() as f64 + 1e-9,
        "the second round fetched more than the two pieces the table fit changed: {copies:?}"
    );
}

// ---- bad input: one-line error, documented exit code, nothing written ----

/// Runs a receiver on 127.0.`net`.9 (manifest file `mpath`, a dead peer: refusals come
/// before any download) that must fail with `want` and a one-line error; every path of `watch`
/// (the target and anything else that must stay untouched) keeps its SHA-1. Returns the line.
fn expect_receiver_refusal(
    net: u8,
    mpath: &Path,
    target: &Path,
    watch: &[&Path],
    want: i32,
    what: &str,
) -> String {
    let before: Vec<String> = watch.iter().map(|p| sha1_stream(p)).collect();
    let out = Command::new(bin("receiver"))
        .arg("--manifest")
        .arg(mpath)
        .args(["--peer", &format!("127.0.{net}.1:1")])
        .arg("--target")
        .arg(target)
        .args([
            "--listen",
            &format!("127.0.{net}.9:6881"),
            "--retry-for",
            "2s",
        ])
        .output()
        .unwrap();
    let line = assert_one_line_error(&out, "receiver", want, what);
    for (p, h) in watch.iter().zip(before) {
        assert_eq!(sha1_stream(p), h, "{what}: {} was modified", p.display());
    }
    line
}

/// A GPT fixture and its manifest (no seeder: refusals come before any download).
fn gpt_with_manifest(dir: &Path, seed: u64) -> (Disk, PathBuf) {
    let src = gpt_disk(dir, seed);
    let mpath = image(&src.path, &dir.join("m.torrent"), &["--piece-size", "256K"]);
    (src, mpath)
}

#[test]
fn receiver_refuses_a_target_smaller_than_the_layout() {
    if !need_tools("too_small", &[]) {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let (src, mpath) = gpt_with_manifest(d, 20);
    let mbr_dir = d.join("mbr");
    std::fs::create_dir_all(&mbr_dir).unwrap();
    let mbr = mbr_disk(&mbr_dir, 21);
    let mbr_m = image(
        &mbr.path,
        &mbr_dir.join("m.torrent"),
        &["--piece-size", "256K"],
    );
    let cases = [
        (
            &mpath,
            src.last_end() - MIB,
            "GPT: 1 MiB short of the last partition's end",
        ),
        (
            &mpath,
            src.last_end() + 16 * 1024,
            "GPT: no room for the backup table",
        ),
        (
            &mbr_m,
            mbr.last_end() - SECTOR,
            "MBR: one sector short of the last partition's end",
        ),
    ];
    for (i, (m, size, what)) in cases.into_iter().enumerate() {
        let t = d.join(format!("small{i}.img"));
        random_target(&t, size, 200 + i as u64);
        let e = expect_receiver_refusal(104, m, &t, &[&t], exit::BAD_TARGET, what);
        assert!(e.contains("small"), "{what}: {e}");
    }
}

#[test]
fn receiver_refuses_a_target_with_a_mounted_partition() {
    if !need_tools("mounted_partition", &[]) {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let (src, mpath) = gpt_with_manifest(d, 22);
    let backing = d.join("t.img");
    reference_clone(&src, &backing, grown_size(src.size));
    let l = LoopDev::whole(&backing);
    l.ensure_partitions();
    let root = l.part(2);
    assert!(
        root.exists(),
        "{} missing: {:?}",
        root.display(),
        l.kernel_partitions()
    );
    let _m = Mount::new(&root, &d.join("mnt"), "ext4", "ro");
    let e = expect_receiver_refusal(
        105,
        &mpath,
        &l.dev,
        &[&l.dev],
        exit::BAD_TARGET,
        "mounted partition",
    );
    assert!(e.contains("mounted"), "{e}");
}

#[test]
fn receiver_refuses_the_source_disk_as_target() {
    if !need_tools("source_target", &[]) {
        return;
    }
    let dir = scratch();
    let (src, mpath) = gpt_with_manifest(dir.path(), 23);
    let e = expect_receiver_refusal(
        106,
        &mpath,
        &src.path,
        &[&src.path],
        exit::BAD_TARGET,
        "source",
    );
    assert!(e.contains("source"), "{e}");
    // The same disk through a loop device.
    let l = LoopDev::slice(&src.path, 0, src.size, true);
    let e = expect_receiver_refusal(
        106,
        &mpath,
        &l.dev,
        &[&src.path],
        exit::BAD_TARGET,
        "loop device over the source",
    );
    assert!(e.contains("source"), "{e}");
}

#[test]
fn imager_refuses_a_gpt_with_a_bad_crc() {
    if !need_tools("corrupt_gpt", &[]) {
        return;
    }
    let dir = scratch();
    let src = gpt_disk(dir.path(), 24);
    // A byte of the disk GUID (header CRC fails), a byte of entry 3's name (entries CRC fails).
    for (off, what) in [
        (SECTOR + 60, "header CRC"),
        (2 * SECTOR + 2 * 128 + 60, "entries CRC"),
    ] {
        let bad = dir.path().join("bad.img");
        run_out(tool("cp").arg("--sparse=always").arg(&src.path).arg(&bad));
        flip_byte(&bad, off);
        let before = sha1_stream(&bad);
        let out = run(Command::new(bin("imager"))
            .arg(&bad)
            .stdin(std::process::Stdio::null()));
        let e = assert_one_line_error(&out, "imager", exit::BAD_INPUT, what);
        assert!(e.to_ascii_lowercase().contains("gpt"), "{what}: {e}");
        assert!(out.stdout.is_empty(), "{what}: a manifest was printed");
        assert_eq!(sha1_stream(&bad), before, "{what}: the source was modified");
        std::fs::remove_file(&bad).unwrap();
    }
}

// ---- --target auto (the receiver's --auto-from restricts the candidates to the test's) ----

#[test]
fn target_auto_picks_the_only_loop_device_large_enough() {
    if !need_tools("target_auto", &[]) {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let src = mbr_disk(d, 25);
    let (mpath, m) = image_disk(&src, d);
    let small_f = d.join("small.img");
    random_target(&small_f, src.min_size() - MIB, 250);
    let big_f = d.join("big.img");
    random_target(&big_f, grown_size(src.size), 251);
    let (small, big) = (LoopDev::whole(&small_f), LoopDev::whole(&big_f));
    let from = format!("{},{}", small.dev.display(), big.dev.display());
    let small_before = sha1_stream(&small.dev);
    let net = 103;
    let ip = |h: u8| format!("127.0.{net}.{h}");
    let mut seeder = seeder(&ip(1), &mpath, &["--expect", "1"], d, "seeder");
    let url = manifest_url(&ip(1), &m);
    let mut r = receiver(
        &ip(2),
        &url,
        Path::new("auto"),
        &["--auto-from", &from],
        d,
        "r2",
    );
    assert_eq!(r.wait(T), 0, "receiver --target auto:\n{}", r.stderr_text());
    assert_eq!(seeder.wait(T), 0, "seeder:\n{}", seeder.stderr_text());
    assert_eq!(
        sha1_stream(&small.dev),
        small_before,
        "the small device was written"
    );
    assert_clone(&src, &big.dev);
}

#[test]
fn target_auto_refuses_when_two_devices_fit() {
    if !need_tools("target_auto_two", &[]) {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let src = mbr_disk(d, 26);
    let mpath = image(&src.path, &d.join("m.torrent"), &["--piece-size", "256K"]);
    let (a_f, b_f) = (d.join("a.img"), d.join("b.img"));
    random_target(&a_f, grown_size(src.size), 260);
    random_target(&b_f, grown_size(src.size) + 8 * MIB, 261);
    let (a, b) = (LoopDev::whole(&a_f), LoopDev::whole(&b_f));
    let from = format!("{},{}", a.dev.display(), b.dev.display());
    let before = [sha1_stream(&a.dev), sha1_stream(&b.dev)];
    let out = Command::new(bin("receiver"))
        .args([
            "--manifest",
            mpath.to_str().unwrap(),
            "--peer",
            "127.0.107.1:1",
        ])
        .args(["--target", "auto", "--auto-from", &from])
        .args(["--listen", "127.0.107.9:6881", "--retry-for", "2s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(exit::BAD_TARGET),
        "stderr:\n{stderr}"
    );
    assert!(stderr.starts_with("receiver: error: "), "{stderr}");
    for dev in [&a.dev, &b.dev] {
        assert!(
            stderr.contains(&*dev.to_string_lossy()),
            "the refusal should list {}:\n{stderr}",
            dev.display()
        );
    }
    println!("two candidates refused:\n{stderr}");
    assert_eq!(
        [sha1_stream(&a.dev), sha1_stream(&b.dev)],
        before,
        "a candidate was written"
    );
}
