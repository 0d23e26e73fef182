//! Throughput of `imager` against two baselines on the same used bytes of a >= 1 GiB ext4 image
//! full of random data:
//!
//! * `imager`: the release binary writing a manifest (`imager -q IMG -o M.torrent`), all
//!   cores, and once more with `--threads 1`;
//! * `cat`: a Rust loop reading exactly the used runs (from `imager --map`) with 4 MiB
//!   sequential reads, discarding the data;
//! * `sha1 x1`: the same reads, hashed with the sha1 crate on one thread.
//!
//! Each is measured with a cold page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`, needs
//! root) and warm (best of three after a warm-up read).
//!
//! Run: `cargo bench -p imager --bench throughput`. Environment: `IMAGER_BENCH_DIR` (scratch
//! directory, default $TMPDIR), `IMAGER_BENCH_MIB` (used data to generate, default 1024).

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha1::{Digest, Sha1};

const BUF: usize = 4 << 20;

fn find_tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin"].iter().map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Writes files of random bytes (1..=48 MiB each) adding up to `total` bytes under `dir`.
fn random_tree(dir: &Path, total: u64) {
    fs::create_dir_all(dir).unwrap();
    let mut rng = StdRng::seed_from_u64(0x01b5_ea11);
    let mut buf = vec![0u8; BUF];
    let mut left = total;
    let mut i = 0;
    while left > 0 {
        let len = rng.gen_range(1u64 << 20..=48 << 20).min(left);
        let mut f = File::create(dir.join(format!("r{i:04}.bin"))).unwrap();
        let mut n = len;
        while n > 0 {
            let k = n.min(BUF as u64) as usize;
            rng.fill_bytes(&mut buf[..k]);
            f.write_all(&buf[..k]).unwrap();
            n -= k as u64;
        }
        left -= len;
        i += 1;
    }
}

/// Used runs from `imager --map` (lines `0xPOS 0xSIZE +`).
fn used_runs(imager: &Path, img: &Path) -> Vec<(u64, u64)> {
    let text = String::from_utf8(run(Command::new(imager).arg("--map").arg(img))).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == "+").then(|| {
                let n = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
                (n(f[0]), n(f[1]))
            })
        })
        .collect()
}

/// Reads the runs with 4 MiB sequential reads, giving each chunk to `f`.
fn read_runs(img: &Path, runs: &[(u64, u64)], mut f: impl FnMut(&[u8])) {
    let file = File::open(img).unwrap();
    let mut buf = vec![0u8; BUF];
    for &(off, len) in runs {
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(BUF as u64) as usize;
            file.read_exact_at(&mut buf[..n], off + pos).unwrap();
            f(&buf[..n]);
            pos += n as u64;
        }
    }
}

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn time(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us too: only build then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("throughput: run with `cargo bench -p imager --bench throughput`");
        return;
    }
    let imager = PathBuf::from(env!("CARGO_BIN_EXE_imager"));
    let mib: u64 = std::env::var("IMAGER_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let base = std::env::var_os("IMAGER_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::Builder::new()
        .prefix("imager-bench-")
        .tempdir_in(base)
        .unwrap();
    let dir = scratch.path();

    // The image: random files through mkfs.ext4 -d, on a sparse file half as large again.
    let t = Instant::now();
    let tree = dir.join("tree");
    random_tree(&tree, mib << 20);
    let img = dir.join("bench.img");
    let img_size = (mib + mib / 2 + 64) << 20;
    File::create(&img).unwrap().set_len(img_size).unwrap();
    run(Command::new(find_tool("mkfs.ext4"))
        .args(["-q", "-F", "-b", "4096", "-d"])
        .arg(&tree)
        .arg(&img));
    fs::remove_dir_all(&tree).unwrap();
    let runs = used_runs(&imager, &img);
    let used: u64 = runs.iter().map(|r| r.1).sum();
    println!(
        "image: {} MiB ext4 (sparse), {:.1} MiB used in {} runs, {} cores; built in {:.1} s",
        img_size >> 20,
        used as f64 / 1048576.0,
        runs.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        t.elapsed().as_secs_f64()
    );
    assert!(used >= mib << 20, "used data smaller than generated");

    let manifest = dir.join("bench.torrent");
    let imager_run = |threads: Option<&str>| {
        let mut c = Command::new(&imager);
        c.arg("-q").arg(&img).arg("-o").arg(&manifest);
        if let Some(t) = threads {
            c.args(["--threads", t]);
        }
        run(&mut c);
    };
    let cat = || {
        let mut n = 0u64;
        read_runs(&img, &runs, |b| n += b.len() as u64);
        assert_eq!(n, used);
    };
    let sha1_one = || {
        let mut pieces = 0;
        // 4 MiB pieces, as the imager's default, hashed on this one thread.
        read_runs(&img, &runs, |b| {
            let d: [u8; 20] = Sha1::digest(b).into();
            std::hint::black_box(d);
            pieces += 1;
        });
        std::hint::black_box(pieces);
    };

    type Case<'a> = (&'a str, Box<dyn FnMut() + 'a>);
    let mut cases: Vec<Case> = vec![
        ("imager (all cores)", Box::new(|| imager_run(None))),
        ("imager --threads 1", Box::new(|| imager_run(Some("1")))),
        ("cat (4 MiB reads)", Box::new(cat)),
        ("sha1 x1 thread", Box::new(sha1_one)),
    ];

    let can_drop = drop_caches();
    if !can_drop {
        println!("note: cannot drop the page cache (not root?): cold figures are not cold");
    }
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    for (name, f) in cases.iter_mut() {
        drop_caches();
        let cold = time(f.as_mut());
        f(); // warm-up
        let warm = (0..3).map(|_| time(f.as_mut())).fold(f64::MAX, f64::min);
        rows.push((name.to_string(), cold, warm));
    }

    let mibs = used as f64 / 1048576.0;
    println!();
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "", "cold s", "cold MiB/s", "warm s", "warm MiB/s"
    );
    for (name, cold, warm) in &rows {
        println!(
            "{name:<22} {cold:>10.3} {:>10.1} {warm:>10.3} {:>10.1}",
            mibs / cold,
            mibs / warm
        );
    }
    let get = |n: &str| rows.iter().find(|r| r.0.starts_with(n)).unwrap();
    let (im, cat, sha) = (get("imager (all"), get("cat"), get("sha1"));
    println!();
    println!("time ratios (lower is better for the imager):");
    println!(
        "  imager/cat              cold {:.2}  warm {:.2}",
        im.1 / cat.1,
        im.2 / cat.2
    );
    println!(
        "  imager/sha1 x1 thread   cold {:.2}  warm {:.2}",
        im.1 / sha.1,
        im.2 / sha.2
    );
    println!(
        "(imager times include opening the filesystem and reading its bitmap, and writing \
         the manifest; cat and sha1 read runs from a map taken beforehand)"
    );
}
