//! Scale benchmark (issue 5): does a very fragmented map cost throughput, and does the
//! receiver's memory stay bounded?
//!
//! Builds a device file with random data and two manifests over the same number of used
//! bytes: one with FEW runs, one with MANY (every other 4 KiB block). Deploys each from a
//! seeder to one receiver over loopback and prints seconds, MiB/s, the ratio of the two, and
//! the receiver's peak RSS (VmHWM).
//!
//! The target is a fully written file (a raw partition has every block; a sparse file would
//! add the file system's extent allocation, which a block device does not have). The baseline
//! for each map is a local copy in this process: the same runs read from the device and
//! written to the target in 4 MiB pieces, then fdatasync, with no network and no hashing. On
//! a real disk a map of 500,000 runs of 4 KiB is bound by the disk's own write rate for
//! scattered blocks; `ours / local copy` says how much of that the receiver reaches.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p blockswarm-e2e --bench scale`
//! Environment: SCALE_USED_MIB (default 2048), SCALE_MANY_RUNS (default 500000),
//! SCALE_FEW_RUNS (default 1000), SCALE_DIR (default /var/tmp; /dev/shm takes the disk out),
//! SCALE_LOG=1 (print each receiver's -v log).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use blockswarm_e2e::{random_file, Proc};
use blockswarm_manifest::{Extent, ExtentMap, Manifest};
use sha1::{Digest, Sha1};

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap(); // target/release/deps/x -> target
    let p = target.join("release").join(name);
    assert!(
        p.exists(),
        "{} missing: cargo build --release --workspace --bins",
        p.display()
    );
    p
}

/// Hashes the packed stream of `dev` under `map` into a manifest.
fn manifest_for(dev: &Path, map: ExtentMap, name: &str) -> Manifest {
    let piece = 4u32 << 20;
    let f = std::fs::File::open(dev).unwrap();
    let total = map.packed_len();
    let mut hashes = Vec::new();
    let mut buf = vec![0u8; piece as usize];
    let mut off = 0;
    while off < total {
        let len = (total - off).min(piece as u64) as usize;
        map.read_packed(&f, off, &mut buf[..len]).unwrap();
        hashes.push(Sha1::digest(&buf[..len]).into());
        off += len as u64;
    }
    Manifest {
        name: name.into(),
        piece_length: piece,
        piece_hashes: hashes,
        fs_type: "dd".into(),
        block_size: 4096,
        map: map.into(),
        disk: None,
        announce: None,
        source: Some(dev.to_string_lossy().into_owned()),
        created_by: Some("blockswarm scale bench".into()),
        creation_date: None,
    }
}

/// Used runs: `runs` runs of equal length spread evenly over a device of `dev_size` bytes.
fn spread(dev_size: u64, used: u64, runs: u64) -> ExtentMap {
    let run_len = used / runs / 4096 * 4096;
    let stride = dev_size / runs / 4096 * 4096;
    assert!(run_len > 0 && stride > run_len, "bad geometry");
    let ext = (0..runs)
        .map(|i| Extent::new(i * stride, run_len))
        .collect();
    ExtentMap::new(dev_size, ext).unwrap()
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A file of `len` zero bytes, every block written and flushed.
fn written_file(path: &Path, len: u64) {
    use std::io::Write;
    let buf = vec![0u8; 4 << 20];
    let mut f = std::fs::File::create(path).unwrap();
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

/// The baseline: copies the used runs of `dev` to `target` through the map, piece by piece,
/// then flushes. Returns seconds.
fn local_copy(dev: &Path, target: &Path, m: &Manifest) -> f64 {
    let src = std::fs::File::open(dev).unwrap();
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .open(target)
        .unwrap();
    let total = m.total_length();
    let mut buf = vec![0u8; m.piece_length as usize];
    let start = Instant::now();
    let mut off = 0;
    while off < total {
        let len = (total - off).min(m.piece_length as u64) as usize;
        m.map.read_packed(&src, off, &mut buf[..len]).unwrap();
        m.map.write_packed(&dst, off, &buf[..len]).unwrap();
        off += len as u64;
    }
    dst.sync_data().unwrap();
    start.elapsed().as_secs_f64()
}

fn deploy(dir: &Path, m: &Manifest, tag: &str, target: &Path) -> (f64, u64) {
    let mpath = dir.join(format!("{tag}.torrent"));
    std::fs::write(&mpath, m.encode().unwrap()).unwrap();
    let mut seeder = Proc::spawn(
        &format!("{tag}-seeder"),
        Command::new(release_bin("seeder")).arg(&mpath).args([
            "--listen",
            "127.0.90.1:6881",
            "--http",
            "127.0.90.1:6880",
            "--token",
            blockswarm_e2e::TEST_TOKEN,
            "--expect",
            "1",
            "-q",
        ]),
        dir,
    );
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let mut r = Proc::spawn(
        &format!("{tag}-receiver"),
        Command::new(release_bin("receiver"))
            .args([
                "--manifest",
                &format!(
                    "http://127.0.90.1:6880/t/{}/{}.torrent",
                    blockswarm_e2e::TEST_TOKEN,
                    m.name
                ),
            ])
            .arg("--target")
            .arg(target)
            .args([
                "--listen",
                "127.0.90.2:6881",
                "--no-resume",
                "--seed-after",
                "0",
                if std::env::var_os("SCALE_LOG").is_some() {
                    "-v"
                } else {
                    "-q"
                },
            ]),
        dir,
    );
    let pid = r.child.as_ref().unwrap().id();
    let mut peak = 0;
    let done = loop {
        if let Some(k) = peak_rss_kib(pid) {
            peak = peak.max(k);
        }
        if let Some(st) = r.child.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{tag}: receiver stuck"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = start.elapsed().as_secs_f64();
    r.child = None;
    assert!(
        done.success(),
        "{tag}: receiver failed:\n{}",
        r.stderr_text()
    );
    if std::env::var_os("SCALE_LOG").is_some() {
        eprintln!("--- {tag} receiver log:\n{}", r.stderr_text());
    }
    seeder.kill();
    (secs, peak)
}

fn main() {
    let used = env_u64("SCALE_USED_MIB", 2048) << 20;
    let many = env_u64("SCALE_MANY_RUNS", 500_000);
    let few = env_u64("SCALE_FEW_RUNS", 1000);
    let dev_size = used * 2 + (64 << 20);
    let dir = tempfile::Builder::new()
        .prefix("bsw-scale")
        .tempdir_in(std::env::var("SCALE_DIR").unwrap_or_else(|_| "/var/tmp".into()))
        .unwrap();
    let dev = dir.path().join("device.img");
    eprintln!("writing a {} MiB random device ...", dev_size >> 20);
    random_file(&dev, dev_size, 42);
    let target = dir.path().join("target.img");
    eprintln!("writing a {} MiB target ...", dev_size >> 20);
    written_file(&target, dev_size);
    let mut rows = Vec::new();
    for (tag, runs) in [("few", few), ("many", many)] {
        let map = spread(dev_size, used, runs);
        let m = manifest_for(&dev, map, &format!("scale-{tag}"));
        let manifest_bytes = m.encode().unwrap().len();
        let copy_secs = local_copy(&dev, &target, &m);
        let (secs, rss) = deploy(dir.path(), &m, tag, &target);
        let mib = m.total_length() as f64 / 1048576.0;
        rows.push((
            tag,
            runs,
            m.total_length(),
            manifest_bytes,
            secs,
            mib / secs,
            rss,
            copy_secs,
        ));
    }
    println!(
        "\nscale benchmark: one seeder -> one receiver over loopback, 4 MiB pieces, files in {}",
        dir.path().display()
    );
    println!(
        "{:<6} {:>9} {:>12} {:>14} {:>8} {:>9} {:>14} {:>11} {:>18}",
        "map",
        "runs",
        "used bytes",
        "manifest bytes",
        "seconds",
        "MiB/s",
        "receiver RSS",
        "local copy",
        "ours / local copy"
    );
    for (tag, runs, usedb, mb, secs, rate, rss, copy) in &rows {
        println!(
            "{tag:<6} {runs:>9} {usedb:>12} {mb:>14} {secs:>8.2} {rate:>9.1} {:>10} MiB {copy:>9.2} s {:>18.2}",
            rss / 1024,
            copy / secs
        );
    }
    let ratio = rows[1].5 / rows[0].5;
    let copy_ratio = (rows[1].2 as f64 / rows[1].7) / (rows[0].2 as f64 / rows[0].7);
    println!(
        "throughput many/few = {ratio:.2} (goal >= 0.80); the local copy alone: many/few = {copy_ratio:.2}"
    );
    println!(
        "peak receiver RSS {} MiB (goal < 128 MiB)",
        rows.iter().map(|r| r.6).max().unwrap() / 1024
    );
}
