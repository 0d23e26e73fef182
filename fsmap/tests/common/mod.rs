// SPDX-License-Identifier: GPL-2.0-or-later
//! Helpers for the integration tests: real filesystem images made with the
//! system's mkfs tools, populated with mtools / loop mounts, and compared
//! with the installed partclone.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use blockswarm_fsmap::{parse_mapfile, FsUsage};

/// Directories searched for tools besides PATH.
const SBIN: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin"];

pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(SBIN.iter().map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// `true` when all `tools` are installed. Otherwise prints a SKIP line and
/// returns `false`, or panics when `BLOCKSWARM_REQUIRE_FS_TOOLS=1` is set
/// (for CI machines that are meant to have them).
pub fn have_tools(test: &str, tools: &[(&str, &str)]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(t, _)| find_tool(t).is_none())
        .map(|(t, pkg)| format!("{t} (Debian package {pkg})"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!("SKIP {test}: missing {}", missing.join(", "));
    if std::env::var("BLOCKSWARM_REQUIRE_FS_TOOLS").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!("{msg}");
    false
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Run a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn tool(name: &str) -> Command {
    Command::new(find_tool(name).unwrap_or_else(|| PathBuf::from(name)))
}

/// Deterministic xorshift64* generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Create `count` files named `{prefix}{i}.bin` in `dir` with random sizes in
/// `min..=max` bytes; returns their paths.
pub fn make_files(
    dir: &Path,
    prefix: &str,
    count: usize,
    min: u64,
    max: u64,
    rng: &mut Rng,
) -> Vec<PathBuf> {
    fs::create_dir_all(dir).unwrap();
    (0..count)
        .map(|i| {
            let size = min + rng.below(max - min + 1);
            let mut data = vec![0u8; size as usize];
            rng.fill(&mut data);
            let p = dir.join(format!("{prefix}{i}.bin"));
            fs::write(&p, &data).unwrap();
            p
        })
        .collect()
}

/// Create a sparse file of `size` bytes.
pub fn sparse_image(path: &Path, size: u64) {
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// Run `partclone.<module> -D` directly and return its used runs.
pub fn partclone_map(module: &str, image: &Path, work: &Path) -> Vec<(u64, u64)> {
    let map = work.join(format!("partclone-{module}.map"));
    let log = work.join(format!("partclone-{module}.log"));
    run(tool(&format!("partclone.{module}"))
        .args(["-D", "-f", "0", "-q", "-L"])
        .arg(&log)
        .arg("-s")
        .arg(image)
        .arg("-O")
        .arg(&map));
    parse_mapfile(&fs::read_to_string(&map).unwrap()).unwrap()
}

pub fn total(runs: &[(u64, u64)]) -> u64 {
    runs.iter().map(|r| r.1).sum()
}

/// Bytes in `a` that are not in `b` (both sorted, merged).
pub fn minus(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let mut out = 0u64;
    let mut j = 0usize;
    for &(off, len) in a {
        let end = off + len;
        let mut pos = off;
        while j < b.len() && b[j].0 + b[j].1 <= pos {
            j += 1;
        }
        let mut k = j;
        while pos < end {
            match b.get(k) {
                Some(&(bo, bl)) if bo < end => {
                    if bo > pos {
                        out += bo - pos;
                    }
                    pos = pos.max(bo + bl);
                    k += 1;
                }
                _ => {
                    out += end - pos;
                    pos = end;
                }
            }
        }
    }
    out
}

/// Check the [`FsUsage`] invariants: sorted, non-overlapping, merged,
/// non-empty runs inside the device.
pub fn check_invariants(u: &FsUsage) {
    let mut prev_end: Option<u64> = None;
    for &(off, len) in &u.runs {
        assert!(len > 0, "zero-length run at {off}");
        let end = off.checked_add(len).expect("run overflows");
        assert!(
            end <= u.device_size,
            "run {off}+{len} beyond device {}",
            u.device_size
        );
        if let Some(p) = prev_end {
            assert!(
                off > p,
                "runs not sorted/merged at {off} (previous end {p})"
            );
        }
        prev_end = Some(end);
    }
}

/// Compare our map with partclone's: nothing partclone maps may be missing,
/// and at most 1 % extra. Prints both totals.
pub fn assert_matches_partclone(label: &str, ours: &FsUsage, theirs: &[(u64, u64)]) {
    check_invariants(ours);
    let used = total(&ours.runs);
    let pc_used = total(theirs);
    let missed = minus(theirs, &ours.runs);
    let extra = minus(&ours.runs, theirs);
    println!(
        "{label}: fs_type={} block_size={} device={} ours_used={used} partclone_used={pc_used} \
         missed={missed} extra={extra} exact={} runs={}",
        ours.fs_type,
        ours.block_size,
        ours.device_size,
        ours.runs == theirs,
        ours.runs.len()
    );
    assert_eq!(
        missed, 0,
        "{label}: {missed} bytes used per partclone are missing"
    );
    assert!(
        extra * 100 <= pc_used,
        "{label}: {extra} extra bytes is more than 1% of partclone's {pc_used}"
    );
}

/// A mount that is undone on drop (also when the test panics).
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    /// `mount -o loop image dir` (xfs, btrfs, ...). `None` when mounting is
    /// not possible here.
    pub fn loop_mount(image: &Path, dir: &Path, fstype: &str) -> Option<Mount> {
        Self::try_mount(
            tool("mount")
                .args(["-t", fstype, "-o", "loop"])
                .arg(image)
                .arg(dir),
            dir,
        )
    }

    /// Mount an exFAT image with exfat-fuse (the kernel here may lack
    /// exFAT). Through a loop device the mount is `fuseblk`, whose unmount
    /// waits until exfat-fuse has written everything back.
    pub fn exfat_fuse(image: &Path, dir: &Path) -> Option<Mount> {
        if find_tool("mount.exfat-fuse").is_none() {
            eprintln!("mount.exfat-fuse not installed (Debian package exfat-fuse)");
            return None;
        }
        Self::loop_mount(image, dir, "exfat-fuse")
    }

    fn try_mount(cmd: &mut Command, dir: &Path) -> Option<Mount> {
        if std::env::var("BLOCKSWARM_FSMAP_NO_MOUNT").as_deref() == Ok("1") || !is_root() {
            return None;
        }
        fs::create_dir_all(dir).unwrap();
        let out = cmd.output().ok()?;
        if !out.status.success() {
            eprintln!(
                "mount {cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Mount {
            dir: dir.to_path_buf(),
        })
    }

    pub fn unmount(self) {
        // Drop does the work.
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("sync").status();
        for _ in 0..50 {
            let ok = tool("umount")
                .arg(&self.dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        eprintln!("could not unmount {}", self.dir.display());
    }
}

/// Copy files into a mounted filesystem.
pub fn copy_into(files: &[PathBuf], dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for f in files {
        fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
    }
}

/// Open an image and return its size.
pub fn open(image: &Path) -> (fs::File, u64) {
    let f = fs::File::open(image).unwrap();
    let size = f.metadata().unwrap().len();
    (f, size)
}
