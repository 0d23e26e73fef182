//! Helpers shared by the imager integration tests: scratch directories, running the real
//! `imager` binary and the real filesystem tools, generated file trees, ddrescue mapfiles,
//! loop/FUSE mounts.
//!
//! Tests that need an external tool call [`need_tools`]: when a tool is missing the test prints
//! `SKIP` and returns, unless `BLOCKSWARM_REQUIRE_FS_TOOLS=1` is set, in which case it fails.
#![allow(dead_code)]

mod maps;
mod mkfs;
mod mount;
#[allow(unused_imports)]
pub use maps::*;
#[allow(unused_imports)]
pub use mkfs::*;
#[allow(unused_imports)]
pub use mount::*;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
