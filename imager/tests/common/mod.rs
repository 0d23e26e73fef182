//! Helpers shared by the imager integration tests: scratch directories, running the real
//! `imager` binary and the real filesystem tools, generated file trees, ddrescue mapfiles,
//! loop/FUSE mounts.
//!
//! Tests that need an external tool call [`need_tools`]: when a tool is missing the test prints
//! `SKIP` and returns, unless `BLOCKSWARM_REQUIRE_FS_TOOLS=1` is set, in which case it fails.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha1::{Digest, Sha1};

/// Directories searched for tools after `PATH` (Debian keeps mkfs.* and partclone in sbin).
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];

/// Full path of `name` if it is an executable on `PATH` or in the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(EXTRA_DIRS.iter().map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// True when missing tools must fail the test instead of skipping it.
pub fn tools_required() -> bool {
    std::env::var("BLOCKSWARM_REQUIRE_FS_TOOLS").is_ok_and(|v| v == "1")
}

/// Returns true when every tool is installed. Otherwise prints `SKIP` and returns false, or
/// panics when `BLOCKSWARM_REQUIRE_FS_TOOLS=1`.
pub fn need_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if tools_required() {
        panic!("{test}: required tools missing (BLOCKSWARM_REQUIRE_FS_TOOLS=1): {missing:?}");
    }
    println!("SKIP {test}: tools missing: {missing:?}");
    false
}

/// A command for `tool`, found on `PATH` or in the sbin directories.
pub fn tool(name: &str) -> Command {
    let path = find_tool(name).unwrap_or_else(|| PathBuf::from(name));
    let mut c = Command::new(path);
    c.stdin(Stdio::null());
    c
}

/// A command running the `imager` binary under test.
pub fn imager() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imager"));
    c.stdin(Stdio::null()).env_remove("RUST_LOG");
    // The environment mirrors of the flags must not leak in from the caller.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("IMAGER_") {
            c.env_remove(k);
        }
    }
    c
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, capturing stdout and stderr.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)))
}

/// Runs `cmd` and panics (showing its output) unless it exits with status 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    if !out.status.success() {
        panic!(
            "{} failed ({}):\nstdout: {}\nstderr: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A scratch directory removed at drop (under $TMPDIR, normally /tmp).
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("imager-test-{tag}-"))
            .tempdir()
            .expect("create scratch dir");
        Scratch { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }
}

/// A generated file: path relative to the tree root, and its length.
#[derive(Debug, Clone)]
pub struct GenFile {
    pub rel: String,
    pub len: u64,
}

/// Writes `count` files of pseudo-random bytes (deterministic from `seed`) under `root`, of
/// varying sizes up to `max_len` (including empty and one-byte files), a few of them in
/// sub-directories. Returns the files in creation order.
pub fn gen_tree(root: &Path, seed: u64, count: usize, max_len: u64) -> Vec<GenFile> {
    let mut rng = StdRng::seed_from_u64(seed);
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    let mut files = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..count {
        let len = match i % 7 {
            0 => 0,
            1 => 1,
            2 => rng.gen_range(2..5000),
            3 => rng.gen_range(5000..200_000),
            _ => rng.gen_range(max_len / 8..=max_len),
        };
        let rel = match i % 5 {
            3 => format!("sub/f{i:03}"),
            4 if i % 10 == 9 => format!("sub/deeper/f{i:03}"),
            _ => format!("f{i:03}"),
        };
        let mut f = File::create(root.join(&rel)).unwrap();
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            f.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        files.push(GenFile { rel, len });
    }
    files
}

/// Every `step`-th file (starting at `first`) of `files`: the ones a test deletes.
pub fn pick(files: &[GenFile], first: usize, step: usize) -> Vec<GenFile> {
    files.iter().skip(first).step_by(step).cloned().collect()
}

/// The files of `files` not in `gone`.
pub fn remaining(files: &[GenFile], gone: &[GenFile]) -> Vec<GenFile> {
    files
        .iter()
        .filter(|f| !gone.iter().any(|g| g.rel == f.rel))
        .cloned()
        .collect()
}

/// Creates a sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// Writes `size` pseudo-random bytes (from `seed`) to `path`.
pub fn random_file(path: &Path, size: u64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut f = File::create(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

/// Copies the first `len` bytes of `src` to `dst`.
pub fn truncated_copy(src: &Path, dst: &Path, len: u64) {
    let mut input = File::open(src).unwrap().take(len);
    let mut out = File::create(dst).unwrap();
    std::io::copy(&mut input, &mut out).unwrap();
}

/// SHA-1 of a whole file.
pub fn sha1_file(path: &Path) -> [u8; 20] {
    let mut f = File::open(path).unwrap();
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

pub fn file_size(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// A parsed ddrescue domain mapfile: every block line `(pos, size, status)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapfile {
    pub blocks: Vec<(u64, u64, char)>,
}

impl Mapfile {
    /// Parses the mapfile text (comment lines `#`, one status line, then `0xPOS 0xSIZE S`).
    pub fn parse(text: &str) -> Mapfile {
        let mut blocks = Vec::new();
        let mut seen_status = false;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 2 && !seen_status {
                seen_status = true;
                continue;
            }
            assert_eq!(f.len(), 3, "bad mapfile line {line:?}");
            let num = |s: &str| {
                u64::from_str_radix(s.strip_prefix("0x").expect("0x prefix"), 16)
                    .unwrap_or_else(|_| panic!("bad number {s:?} in {line:?}"))
            };
            let st = f[2].chars().next().unwrap();
            blocks.push((num(f[0]), num(f[1]), st));
        }
        assert!(seen_status, "mapfile without status line:\n{text}");
        Mapfile { blocks }
    }

    /// The used (`+`) runs, merged when adjacent.
    pub fn used(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &(pos, size, st) in &self.blocks {
            if st != '+' || size == 0 {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.0 + last.1 == pos => last.1 += size,
                _ => out.push((pos, size)),
            }
        }
        out
    }

    /// Checks that the block lines tile `[0, size)` in order without gaps or overlaps.
    pub fn assert_tiles(&self, size: u64) {
        let mut pos = 0;
        for &(p, s, st) in &self.blocks {
            assert_eq!(p, pos, "mapfile block at {p:#x} does not follow {pos:#x}");
            assert!(st == '+' || st == '?', "status {st:?}");
            pos = p + s;
        }
        assert_eq!(pos, size, "mapfile covers {pos} bytes, device has {size}");
    }
}

pub fn total(runs: &[(u64, u64)]) -> u64 {
    runs.iter().map(|r| r.1).sum()
}

/// How one used map covers another.
#[derive(Debug, Clone, Copy)]
pub struct Cover {
    /// Bytes in our map.
    pub ours: u64,
    /// Bytes in the reference map.
    pub theirs: u64,
    /// Reference bytes our map lacks.
    pub missed: u64,
    /// Our bytes the reference lacks.
    pub extra: u64,
}

/// Compares two sorted, non-overlapping run lists.
pub fn cover(ours: &[(u64, u64)], theirs: &[(u64, u64)]) -> Cover {
    let (mut i, mut j, mut inter) = (0, 0, 0u64);
    while i < ours.len() && j < theirs.len() {
        let (a0, a1) = (ours[i].0, ours[i].0 + ours[i].1);
        let (b0, b1) = (theirs[j].0, theirs[j].0 + theirs[j].1);
        let (s, e) = (a0.max(b0), a1.min(b1));
        if e > s {
            inter += e - s;
        }
        if a1 < b1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    let (o, t) = (total(ours), total(theirs));
    Cover {
        ours: o,
        theirs: t,
        missed: t - inter,
        extra: o - inter,
    }
}

/// True when the byte range `[off, off + len)` lies inside the union of `runs`.
pub fn inside(runs: &[(u64, u64)], off: u64, len: u64) -> bool {
    let mut pos = off;
    let end = off + len;
    for &(o, l) in runs {
        if pos >= end {
            break;
        }
        if o <= pos && pos < o + l {
            pos = o + l;
        }
    }
    pos >= end
}

/// `imager --map IMG` (with `--fs FS` when given): the parsed mapfile.
pub fn imager_map(img: &Path, fs: Option<&str>) -> Mapfile {
    let mut c = imager();
    c.arg("--map");
    if let Some(fs) = fs {
        c.args(["--fs", fs]);
    }
    let out = run_ok(c.arg(img));
    Mapfile::parse(&String::from_utf8(out.stdout).expect("utf-8 mapfile"))
}

/// `partclone.<module> -D -s IMG -O MAP -f 0 -q -L LOG`: the parsed domain mapfile.
pub fn partclone_map(module: &str, img: &Path, work: &Path) -> Mapfile {
    let map = work.join(format!("partclone-{module}.map"));
    let log = work.join(format!("partclone-{module}.log"));
    let mut c = tool(&format!("partclone.{module}"));
    c.arg("-D")
        .arg("-s")
        .arg(img)
        .arg("-O")
        .arg(&map)
        .args(["-f", "0", "-q", "-L"])
        .arg(&log);
    run_ok(&mut c);
    Mapfile::parse(&fs::read_to_string(&map).unwrap())
}

/// Runs `imager --map` and `partclone.<module> -D` on `img`, prints both totals and asserts
/// that ours covers every byte partclone marks used and adds at most 1% of them.
pub fn assert_covers_partclone(what: &str, img: &Path, fs: Option<&str>, module: &str) -> Cover {
    let work = img.parent().unwrap();
    let ours = imager_map(img, fs);
    ours.assert_tiles(file_size(img));
    let theirs = partclone_map(module, img, work);
    let c = cover(&ours.used(), &theirs.used());
    println!(
        "{what}: imager {} bytes in {} runs, partclone.{module} {} bytes in {} runs, \
         missed {}, extra {} ({:.3}%)",
        c.ours,
        ours.used().len(),
        c.theirs,
        theirs.used().len(),
        c.missed,
        c.extra,
        c.extra as f64 * 100.0 / c.theirs.max(1) as f64
    );
    assert!(c.theirs > 0, "{what}: partclone maps nothing");
    assert_eq!(
        c.missed, 0,
        "{what}: imager misses bytes partclone marks used"
    );
    assert!(
        c.extra * 100 <= c.theirs,
        "{what}: imager maps {} extra bytes, more than 1% of {}",
        c.extra,
        c.theirs
    );
    c
}

/// Reads the given runs of `img` and concatenates them (the packed stream).
pub fn read_runs(img: &Path, runs: &[(u64, u64)]) -> Vec<u8> {
    let f = File::open(img).unwrap();
    let mut out = vec![0u8; total(runs) as usize];
    let mut at = 0usize;
    for &(off, len) in runs {
        f.read_exact_at(&mut out[at..at + len as usize], off)
            .unwrap();
        at += len as usize;
    }
    out
}

/// Reads `len` bytes at `off` of `path`.
pub fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact(&mut b).unwrap();
    b
}

/// Overwrites bytes at `off` of `path`.
pub fn patch(path: &Path, off: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

/// Asserts the one-line `imager: error:` contract and the exit code; returns the line.
pub fn assert_error(out: &Output, code: i32, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit status {} (want {code}); stderr: {stderr}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: stderr must be exactly one line, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("imager: error:"),
        "{what}: stderr does not start with `imager: error:`: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{what}: stdout not empty");
    println!("{what}: exit {code}: {}", lines[0]);
    lines[0].to_string()
}

/// A mounted image (kernel loop mount or FUSE daemon), unmounted at drop.
pub struct Mounted {
    pub dir: PathBuf,
    loopdev: Option<String>,
    daemon: Option<Child>,
}

impl Mounted {
    /// Sets up a loop device for `img` (read-only with `ro`).
    fn losetup(img: &Path, ro: bool) -> Option<String> {
        let mut c = tool("losetup");
        c.args(["-f", "--show"]);
        if ro {
            c.arg("-r");
        }
        let out = run(c.arg(img));
        if !out.status.success() {
            eprintln!(
                "losetup {} failed: {}",
                img.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }

    fn detach(dev: &str) {
        let _ = run(tool("losetup").args(["-d", dev]));
    }

    /// Kernel mount of `img` on `dir` through a loop device (`opts` e.g. "ro,nouuid").
    pub fn kernel(img: &Path, dir: &Path, fstype: &str, opts: &str) -> Option<Mounted> {
        fs::create_dir_all(dir).unwrap();
        let ro = opts.split(',').any(|o| o == "ro");
        let dev = Self::losetup(img, ro)?;
        let mut c = tool("mount");
        c.args(["-t", fstype]);
        if !opts.is_empty() {
            c.args(["-o", opts]);
        }
        let out = run(c.arg(&dev).arg(dir));
        if !out.status.success() {
            eprintln!(
                "mount -t {fstype} {} failed: {}",
                img.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Self::detach(&dev);
            return None;
        }
        Some(Mounted {
            dir: dir.to_path_buf(),
            loopdev: Some(dev),
            daemon: None,
        })
    }

    /// FUSE mount: runs `program [args..] SOURCE DIR` in the foreground (the daemon is waited
    /// for at drop, so every write has reached the image). With `use_loop`, SOURCE is a loop
    /// device for `img` (exfat-fuse requires a block device), else `img` itself.
    pub fn fuse(
        img: &Path,
        dir: &Path,
        program: &str,
        args: &[&str],
        use_loop: bool,
    ) -> Option<Mounted> {
        fs::create_dir_all(dir).unwrap();
        let loopdev = if use_loop {
            Some(Self::losetup(img, false)?)
        } else {
            None
        };
        let source: &OsStr = match &loopdev {
            Some(d) => OsStr::new(d.as_str()),
            None => img.as_os_str(),
        };
        let child = tool(program)
            .args(args)
            .arg(source)
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cannot start {program}: {e}");
                if let Some(d) = &loopdev {
                    Self::detach(d);
                }
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if is_mountpoint(dir) {
                return Some(Mounted {
                    dir: dir.to_path_buf(),
                    loopdev,
                    daemon: Some(child),
                });
            }
            if let Ok(Some(st)) = child.try_wait() {
                eprintln!("{program} exited before mounting: {st}");
                break;
            }
            if Instant::now() > deadline {
                eprintln!("{program} did not mount within 20 s");
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(d) = &loopdev {
            Self::detach(d);
        }
        None
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Unmounts, waits for a FUSE daemon and detaches the loop device.
    pub fn unmount(mut self) {
        self.do_unmount();
    }

    fn do_unmount(&mut self) {
        if is_mountpoint(&self.dir) {
            let _ = run(tool("sync").arg("-f").arg(&self.dir));
            let mut ok = false;
            for _ in 0..50 {
                if run(tool("umount").arg(&self.dir)).status.success() {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !ok {
                let _ = run(tool("umount").arg("-l").arg(&self.dir));
            }
        }
        if let Some(mut c) = self.daemon.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = self.loopdev.take() {
            Self::detach(&d);
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.do_unmount();
    }
}

/// Whether `dir` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mountpoint(dir: &Path) -> bool {
    let Ok(canon) = fs::canonicalize(dir) else {
        return false;
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Copies the generated files of `src_root` into the mounted filesystem at `dst_root`.
pub fn copy_tree(src_root: &Path, files: &[GenFile], dst_root: &Path) {
    for f in files {
        let dst = dst_root.join(&f.rel);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(src_root.join(&f.rel), &dst)
            .unwrap_or_else(|e| panic!("copy {} into the image: {e}", f.rel));
    }
}

/// Asserts that every file of `files` under `got_root` equals the one under `want_root`.
pub fn assert_same_files(what: &str, want_root: &Path, got_root: &Path, files: &[GenFile]) {
    for f in files {
        let want = fs::read(want_root.join(&f.rel)).unwrap();
        let got = fs::read(got_root.join(&f.rel))
            .unwrap_or_else(|e| panic!("{what}: cannot read {}: {e}", f.rel));
        assert!(want == got, "{what}: {} differs", f.rel);
    }
}

// ---- image builders ----

/// A command for an mtools program on image `img` (geometry checks off).
pub fn mtools(program: &str, img: &Path) -> Command {
    let mut c = tool(program);
    c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(img);
    c
}

/// Top-level entries of the generated tree (what to copy into an image's root).
fn top_entries(tree: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(tree)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// A FAT12/16/32 image of `size_mib` MiB made with `mkfs.fat -F BITS [extra]` and populated
/// with the tree through mtools (`mcopy -s`).
pub fn make_fat(img: &Path, bits: u32, size_mib: u64, extra: &[&str], tree: &Path) {
    sparse_file(img, size_mib << 20);
    run_ok(
        tool("mkfs.fat")
            .args(["-F", &bits.to_string()])
            .args(extra)
            .arg(img),
    );
    run_ok(
        mtools("mcopy", img)
            .arg("-s")
            .args(top_entries(tree))
            .arg("::/"),
    );
}

/// Deletes files from a FAT image with `mdel`.
pub fn fat_delete(img: &Path, gone: &[GenFile]) {
    if gone.is_empty() {
        return;
    }
    run_ok(mtools("mdel", img).args(gone.iter().map(|f| format!("::/{}", f.rel))));
}

/// An exFAT image populated through a FUSE mount (exfat-fuse on a loop device), or a kernel
/// `mount -t exfat`; `gone` deleted afterwards. Returns false (leaving an empty filesystem)
/// when no mount works.
pub fn make_exfat(
    img: &Path,
    size_mib: u64,
    tree: &Path,
    files: &[GenFile],
    gone: &[GenFile],
) -> bool {
    sparse_file(img, size_mib << 20);
    run_ok(tool("mkfs.exfat").arg(img));
    let mnt = img.with_extension("mnt");
    let m = Mounted::fuse(img, &mnt, "mount.exfat-fuse", &["-d"], true)
        .or_else(|| Mounted::kernel(img, &mnt, "exfat", ""));
    let Some(m) = m else {
        // An empty filesystem would test nothing: the caller skips, or the suite fails.
        cannot_mount("exFAT (exfat-fuse, or the kernel's exfat)");
        return false;
    };
    copy_tree(tree, files, &m.dir);
    for f in gone {
        fs::remove_file(m.path(&f.rel)).unwrap();
    }
    m.unmount();
    true
}

/// A filesystem could not be mounted to put files in: fails the test under
/// `BLOCKSWARM_REQUIRE_FS_TOOLS=1` (root, FUSE and loop devices are part of the suite's setup),
/// else prints a SKIP line (the caller then skips what needs the files).
fn cannot_mount(what: &str) {
    if tools_required() {
        panic!("cannot mount {what} (BLOCKSWARM_REQUIRE_FS_TOOLS=1): needs root, /dev/fuse, loop devices");
    }
    println!("SKIP (partly): cannot mount {what}; the files cannot be put in");
}

/// An NTFS image made with `mkfs.ntfs -F -Q`, populated through a foreground ntfs-3g mount;
/// `gone` deleted afterwards. Returns false (leaving an empty filesystem) when the mount fails.
pub fn make_ntfs(
    img: &Path,
    size_mib: u64,
    tree: &Path,
    files: &[GenFile],
    gone: &[GenFile],
) -> bool {
    sparse_file(img, size_mib << 20);
    run_ok(tool("mkfs.ntfs").args(["-F", "-Q", "-q"]).arg(img));
    let mnt = img.with_extension("mnt");
    let Some(m) = Mounted::fuse(img, &mnt, "ntfs-3g", &["-o", "no_detach"], false) else {
        cannot_mount("NTFS (ntfs-3g)");
        return false;
    };
    copy_tree(tree, files, &m.dir);
    for f in gone {
        fs::remove_file(m.path(&f.rel)).unwrap();
    }
    m.unmount();
    true
}

/// mkfs.xfs protofile describing the directory `dir` (recursively).
fn xfs_proto(dir: &Path, out: &mut String) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().into_string().unwrap();
        if e.file_type().unwrap().is_dir() {
            out.push_str(&format!("{name} d--755 0 0\n"));
            xfs_proto(&e.path(), out);
            out.push_str("$\n");
        } else {
            out.push_str(&format!("{name} ---644 0 0 {}\n", e.path().display()));
        }
    }
}

/// An XFS image made with `mkfs.xfs -p PROTOFILE` (populated from the tree), then `gone`
/// deleted through a loop mount. Returns false when the mount (and so the deletion) failed.
pub fn make_xfs(img: &Path, size_mib: u64, tree: &Path, gone: &[GenFile]) -> bool {
    sparse_file(img, size_mib << 20);
    let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
    xfs_proto(tree, &mut proto);
    proto.push_str("$\n$\n");
    let proto_path = img.with_extension("proto");
    fs::write(&proto_path, proto).unwrap();
    run_ok(
        tool("mkfs.xfs")
            .args(["-q", "-f", "-p"])
            .arg(&proto_path)
            .arg(img),
    );
    delete_via_mount(img, "xfs", gone)
}

/// A btrfs image made with `mkfs.btrfs --rootdir TREE`, then `gone` deleted through a loop
/// mount. Returns false when the mount (and so the deletion) failed.
pub fn make_btrfs(img: &Path, size_mib: u64, tree: &Path, gone: &[GenFile]) -> bool {
    sparse_file(img, size_mib << 20);
    run_ok(
        tool("mkfs.btrfs")
            .args(["-q", "-f", "--rootdir"])
            .arg(tree)
            .arg(img),
    );
    delete_via_mount(img, "btrfs", gone)
}

fn delete_via_mount(img: &Path, fstype: &str, gone: &[GenFile]) -> bool {
    if gone.is_empty() {
        return true;
    }
    let mnt = img.with_extension("mnt");
    let Some(m) = Mounted::kernel(img, &mnt, fstype, "") else {
        cannot_mount(&format!("{fstype} (loop device and kernel mount)"));
        return false;
    };
    for f in gone {
        fs::remove_file(m.path(&f.rel)).unwrap();
    }
    m.unmount();
    true
}

/// The ntfs row of `imager --list-fs`: which backend maps NTFS in this build.
pub fn ntfs_backend() -> String {
    let out = run_ok(imager().arg("--list-fs"));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find(|l| l.split_whitespace().next() == Some("ntfs"))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
