//! Whole-disk mode against its baseline in the same run: `imager DISK` on a >= 4 GiB GPT disk
//! image (sparse file) with three filesystems, each full of files of random data, against the
//! sum of the same partitions captured one by one (`imager PART` on a read-only loop device
//! with `--offset`/`--sizelimit` over each partition: the same bytes, as `/dev/sda1` would be).
//!
//! * partition 1: ext4 (libext2fs), filled by `mkfs.ext4 -d`;
//! * partition 2: NTFS (libntfs-3g), `mkntfs -Q -F`, filled by `ntfscp`;
//! * partition 3: FAT32 EFI system partition (the Rust FAT parser), filled by `mcopy`.
//!
//! Each is measured with a cold page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`, needs
//! root and loop devices; dropped before the disk run and before each partition run) and warm
//! (best of three after a warm-up run; the sum is of each partition's best). The bench also
//! checks that the disk manifest's extents are exactly the partitions' extents (shifted to
//! their starts) plus the table area before the first partition and each partition's first
//! `imager::disk::PARTITION_HEAD` bytes, so both sides hash the same work up to that
//! difference, which it prints. Disk mode's own loop attach/detach is timed on its own line.
//!
//! Run: `cargo bench -p imager --bench disk`. Environment: `IMAGER_BENCH_DIR` (scratch
//! directory, default $TMPDIR), `IMAGER_BENCH_MIB` (used data to generate over the three
//! filesystems, default 1536).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use blockswarm_manifest::Manifest;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const BUF: usize = 4 << 20;
const MIB: u64 = 1 << 20;
/// First partition start (sgdisk's default alignment): 1 MiB.
const FIRST_SECTOR: u64 = 2048;

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

/// A loop device over `[offset, offset + size)` of a file, detached on drop (also when the
/// bench panics).
struct Loop {
    path: PathBuf,
}

impl Loop {
    fn attach(file: &Path, offset: u64, size: u64, read_only: bool) -> Loop {
        let mut c = Command::new(find_tool("losetup"));
        c.args(["--find", "--show"]);
        if read_only {
            c.arg("--read-only");
        }
        c.arg("--offset")
            .arg(offset.to_string())
            .arg("--sizelimit")
            .arg(size.to_string())
            .arg(file);
        let out = String::from_utf8(run(&mut c)).unwrap();
        Loop {
            path: PathBuf::from(out.trim()),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new(find_tool("losetup"))
            .arg("-d")
            .arg(&self.path)
            .status();
    }
}

/// Writes files of random bytes (1..=48 MiB each) adding up to `total` bytes under `dir`.
fn random_tree(dir: &Path, total: u64, seed: u64) -> Vec<PathBuf> {
    fs::create_dir_all(dir).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; BUF];
    let mut files = Vec::new();
    let mut left = total;
    while left > 0 {
        let len = rng.gen_range(MIB..=48 * MIB).min(left);
        let path = dir.join(format!("r{:04}.bin", files.len()));
        let mut f = File::create(&path).unwrap();
        let mut n = len;
        while n > 0 {
            let k = n.min(BUF as u64) as usize;
            rng.fill_bytes(&mut buf[..k]);
            f.write_all(&buf[..k]).unwrap();
            n -= k as u64;
        }
        files.push(path);
        left -= len;
    }
    files
}

#[derive(Clone, Copy)]
enum Fs {
    Ext4,
    Ntfs,
    Fat32,
}

impl Fs {
    fn name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Ntfs => "ntfs",
            Fs::Fat32 => "fat32",
        }
    }

    /// sgdisk type code and partition name.
    fn gpt(self) -> (&'static str, &'static str) {
        match self {
            Fs::Ext4 => ("8300", "root"),
            Fs::Ntfs => ("0700", "data"),
            Fs::Fat32 => ("EF00", "esp"),
        }
    }

    /// Makes the filesystem on `dev` holding `used` bytes of random files (made in `tree`).
    fn build(self, dev: &Path, tree: &Path, used: u64, seed: u64) {
        let files = random_tree(tree, used, seed);
        match self {
            Fs::Ext4 => {
                run(Command::new(find_tool("mkfs.ext4"))
                    .args(["-q", "-F", "-b", "4096", "-d"])
                    .arg(tree)
                    .arg(dev));
            }
            Fs::Ntfs => {
                run(Command::new(find_tool("mkntfs"))
                    .args(["-Q", "-F", "-q"])
                    .arg(dev));
                for f in &files {
                    let name = format!("/{}", f.file_name().unwrap().to_string_lossy());
                    run(Command::new(find_tool("ntfscp")).arg(dev).arg(f).arg(name));
                }
            }
            Fs::Fat32 => {
                run(Command::new(find_tool("mkfs.fat"))
                    .args(["-F", "32"])
                    .arg(dev));
                run(Command::new(find_tool("mcopy"))
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .arg("-i")
                    .arg(dev)
                    .args(&files)
                    .arg("::/"));
            }
        }
        fs::remove_dir_all(tree).unwrap();
    }
}

/// A partition of the bench disk and what its own capture found.
struct Part {
    fs: Fs,
    start: u64,
    size: u64,
    /// Extents of the per-partition manifest, relative to the partition start.
    runs: Vec<(u64, u64)>,
}

/// Sorted, merged union of `runs`.
fn merge(mut runs: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    runs.retain(|r| r.1 > 0);
    runs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (o, l) in runs {
        match out.last_mut() {
            Some(last) if o <= last.0 + last.1 => last.1 = last.1.max(o + l - last.0),
            _ => out.push((o, l)),
        }
    }
    out
}

fn total(runs: &[(u64, u64)]) -> u64 {
    runs.iter().map(|r| r.1).sum()
}

fn manifest(path: &Path) -> Manifest {
    Manifest::decode(&fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .manifest
}

fn extents(m: &Manifest) -> Vec<(u64, u64)> {
    m.map
        .extents()
        .iter()
        .map(|e| (e.offset, e.length))
        .collect()
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

/// Cold (after dropping the page cache) and warm (best of three after a warm-up) seconds.
fn measure(f: &mut dyn FnMut()) -> (f64, f64) {
    drop_caches();
    let cold = time(f);
    f(); // warm-up
    let warm = (0..3).map(|_| time(f)).fold(f64::MAX, f64::min);
    (cold, warm)
}

#[derive(Clone)]
struct Row {
    name: String,
    used: u64,
    cold: f64,
    warm: f64,
}

impl Row {
    fn new(name: &str, used: u64, cold: f64, warm: f64) -> Row {
        Row {
            name: name.into(),
            used,
            cold,
            warm,
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us too: only build then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("disk: run with `cargo bench -p imager --bench disk`");
        return;
    }
    let imager = PathBuf::from(env!("CARGO_BIN_EXE_imager"));
    let used_mib: u64 = std::env::var("IMAGER_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1536);
    let base = std::env::var_os("IMAGER_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::Builder::new()
        .prefix("imager-disk-bench-")
        .tempdir_in(base)
        .unwrap();
    let dir = scratch.path();

    // The disk: >= 4 GiB sparse, three equal partitions after the 1 MiB table area, each
    // with room for its third of the data and half as much again.
    let t = Instant::now();
    let kinds = [Fs::Ext4, Fs::Ntfs, Fs::Fat32];
    let share = (used_mib / 3).max(1) * MIB;
    let part_size = ((4096 * MIB - 2 * MIB) / 3 / MIB * MIB).max(share + share / 2 + 64 * MIB);
    let disk_size = 3 * part_size + 2 * MIB;
    let disk = dir.join("disk.img");
    File::create(&disk).unwrap().set_len(disk_size).unwrap();
    let mut sg = Command::new(find_tool("sgdisk"));
    let mut parts: Vec<Part> = Vec::new();
    for (i, &fs) in kinds.iter().enumerate() {
        let n = i + 1;
        let start = FIRST_SECTOR * 512 + i as u64 * part_size;
        let (code, name) = fs.gpt();
        sg.arg(format!(
            "-n{n}:{}:{}",
            start / 512,
            (start + part_size) / 512 - 1
        ))
        .arg(format!("-t{n}:{code}"))
        .arg(format!("-c{n}:{name}"));
        parts.push(Part {
            fs,
            start,
            size: part_size,
            runs: Vec::new(),
        });
    }
    run(sg.arg(&disk));
    for (i, p) in parts.iter().enumerate() {
        let lo = Loop::attach(&disk, p.start, p.size, false);
        p.fs.build(&lo.path, &dir.join("tree"), share, 0x0d15_c000 + i as u64);
    }
    let _ = Command::new("sync").status();
    println!(
        "disk: {} MiB GPT (sparse), partitions of {} MiB: ext4, ntfs, fat32 with {} MiB of \
         random files each; {} cores; built in {:.1} s",
        disk_size / MIB,
        part_size / MIB,
        share / MIB,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        t.elapsed().as_secs_f64()
    );
    print!(
        "{}",
        String::from_utf8(run(Command::new(&imager).arg("--list").arg(&disk))).unwrap()
    );

    // The baselines' partitions, the same bytes: read-only loop devices over the disk (as
    // /dev/sda1 is over /dev/sda), and partition image files dd'ed out of it.
    let loops: Vec<Loop> = parts
        .iter()
        .map(|p| Loop::attach(&disk, p.start, p.size, true))
        .collect();
    let images: Vec<PathBuf> = (0..parts.len())
        .map(|i| dir.join(format!("part{}.img", i + 1)))
        .collect();
    for (p, img) in parts.iter().zip(&images) {
        run(Command::new("dd")
            .arg(format!("if={}", disk.display()))
            .arg(format!("of={}", img.display()))
            .args([
                "bs=4M",
                "iflag=skip_bytes,count_bytes",
                "conv=sparse",
                "status=none",
            ])
            .arg(format!("skip={}", p.start))
            .arg(format!("count={}", p.size)));
    }
    // Pieces of the same size on both sides (reads are piece-sized): the partitions get the
    // piece size `auto` chose for the disk (`auto` would choose smaller ones for them).
    let capture = |src: &Path, out: &Path, piece: Option<u32>| {
        let mut c = Command::new(&imager);
        c.arg("-q").arg(src).arg("-o").arg(out);
        if let Some(p) = piece {
            c.arg("--piece-size").arg(p.to_string());
        }
        run(&mut c);
    };
    let disk_manifest = dir.join("disk.torrent");
    let part_manifest = |i: usize| dir.join(format!("part{}.torrent", i + 1));

    if !drop_caches() {
        println!("note: cannot drop the page cache (not root?): cold figures are not cold");
    }
    let mut rows: Vec<Row> = Vec::new();
    let (cold, warm) = measure(&mut || capture(&disk, &disk_manifest, None));
    let dm = manifest(&disk_manifest);
    let piece = dm.piece_length;
    rows.push(Row::new(
        "disk mode (imager DISK)",
        dm.map.packed_len(),
        cold,
        warm,
    ));
    let mut sums = Vec::new();
    for (what, srcs) in [
        (
            "loop devices",
            loops.iter().map(|l| l.path.clone()).collect::<Vec<_>>(),
        ),
        ("image files", images.clone()),
    ] {
        let first = rows.len();
        for (i, (p, src)) in parts.iter_mut().zip(&srcs).enumerate() {
            let (cold, warm) = measure(&mut || capture(src, &part_manifest(i), Some(piece)));
            let m = manifest(&part_manifest(i));
            assert_eq!(m.map.device_size(), p.size, "partition {} size", i + 1);
            let runs = extents(&m);
            assert!(
                p.runs.is_empty() || p.runs == runs,
                "partition {}: the {what} map differs from the loop device's",
                i + 1
            );
            p.runs = runs;
            let name = format!("  partition {} {} ({what})", i + 1, p.fs.name());
            rows.push(Row::new(&name, m.map.packed_len(), cold, warm));
        }
        let part_rows = &rows[first..];
        let sum = Row::new(
            &format!("sum of partitions ({what})"),
            part_rows.iter().map(|r| r.used).sum(),
            part_rows.iter().map(|r| r.cold).sum(),
            part_rows.iter().map(|r| r.warm).sum(),
        );
        sums.push(sum.clone());
        rows.push(sum);
    }
    let parts_used = sums[0].used;
    drop(loops);

    // What disk mode does on top: attach and detach a read-only loop device per partition.
    let mut attach = || {
        let l: Vec<Loop> = parts
            .iter()
            .map(|p| Loop::attach(&disk, p.start, p.size, true))
            .collect();
        drop(l);
    };
    let (a_cold, a_warm) = measure(&mut attach);

    // The same work: the disk map is the partitions' maps, shifted, plus the table area and
    // each partition's head.
    let table = {
        let f = File::open(&disk).unwrap();
        blockswarm_disk::read_table(&f, disk_size, 512)
            .unwrap()
            .expect("a GPT")
    };
    let always = total(&table.always);
    let head = imager::disk::PARTITION_HEAD;
    let mut expect: Vec<(u64, u64)> = table.always.clone();
    let mut heads_extra = 0;
    for (i, p) in parts.iter().enumerate() {
        let own = merge(p.runs.clone());
        let with_head = merge(own.iter().copied().chain([(0, head)]).collect());
        heads_extra += total(&with_head) - total(&own);
        let layout_used = dm.disk.as_ref().expect("a disk layout").partitions[i].used;
        assert_eq!(
            layout_used,
            total(&with_head),
            "partition {}: used bytes in the disk layout vs its own capture plus its head",
            i + 1
        );
        expect.extend(with_head.iter().map(|&(o, l)| (p.start + o, l)));
    }
    let disk_used = dm.map.packed_len();
    assert_eq!(
        extents(&dm),
        merge(expect),
        "the disk map is not the partitions' maps plus the table area and partition heads"
    );
    assert_eq!(disk_used, parts_used + always + heads_extra);

    println!();
    println!(
        "{:<36} {:>9} {:>8} {:>10} {:>8} {:>10}",
        "", "used MiB", "cold s", "cold MiB/s", "warm s", "warm MiB/s"
    );
    for r in &rows {
        println!(
            "{:<36} {:>9.1} {:>8.3} {:>10.1} {:>8.3} {:>10.1}",
            r.name,
            mib(r.used),
            r.cold,
            mib(r.used) / r.cold,
            r.warm,
            mib(r.used) / r.warm
        );
    }
    println!(
        "{:<36} {:>9} {a_cold:>8.3} {:>10} {a_warm:>8.3}",
        "losetup attach+detach x3", "-", ""
    );
    println!();
    let d = &rows[0];
    for s in &sums {
        let what = s.name.trim_start_matches("sum of partitions ");
        println!(
            "disk mode / sum {what:<14} cold {:.3} ({:+.1} %)  warm {:.3} ({:+.1} %)  (goal < 1.05)",
            d.cold / s.cold,
            (d.cold / s.cold - 1.0) * 100.0,
            d.warm / s.warm,
            (d.warm / s.warm - 1.0) * 100.0
        );
    }
    println!(
        "used bytes: disk {disk_used} = partitions {parts_used} + table area {always} \
         (before the first partition) + {heads_extra} of partition heads (first {head} bytes of \
         each, not in its own map); difference {} bytes ({:.3} %)",
        disk_used - parts_used,
        (disk_used - parts_used) as f64 * 100.0 / parts_used as f64
    );
    println!(
        "(cold: page cache dropped before the disk run and before each partition run; warm: \
         best of 3, a sum is of each partition's best; {} KiB pieces everywhere (auto for \
         the disk); the loop devices are attached beforehand, disk mode attaches its own for \
         the filesystem backends and hashes from the disk file)",
        piece >> 10
    );
}
