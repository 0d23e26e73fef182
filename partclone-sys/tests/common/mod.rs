//! Helpers shared by the integration tests: external tools, generated file
//! trees, partclone's ddrescue-style domain mapfiles, and comparisons of
//! byte ranges.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use partclone_sys::UsedBlocks;

/// Finds an executable in PATH or the sbin directories (which a non-root
/// PATH may lack).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Whether the suite requires every tool (`BLOCKSWARM_REQUIRE_FS_TOOLS=1`,
/// as `scripts/test.sh` sets): then a missing tool fails a test.
pub fn require_fs_tools() -> bool {
    std::env::var("BLOCKSWARM_REQUIRE_FS_TOOLS").is_ok_and(|v| v == "1")
}

/// A tool the test cannot do without; prints why the test is skipped when
/// it is missing, or panics (test failure) when the suite requires every
/// tool ([`require_fs_tools`]).
pub fn optional_tool(name: &str, package: &str, test: &str) -> Option<PathBuf> {
    let found = find_tool(name);
    if found.is_none() {
        if require_fs_tools() {
            panic!(
                "{test}: `{name}` not found (BLOCKSWARM_REQUIRE_FS_TOOLS=1): apt-get install \
                 {package} (scripts/install-deps.sh installs it)"
            );
        }
        println!("SKIPPED {test}: `{name}` not found (apt-get install {package})");
        eprintln!("SKIPPED {test}: `{name}` not found (apt-get install {package})");
    }
    found
}

/// A tool that must be installed: panics (test failure) when missing.
pub fn required_tool(name: &str, package: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!("`{name}` is required by this test but not installed: apt-get install {package}")
    })
}

/// Runs a command, panicking with its output unless it exits 0.
pub fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Deterministic pseudo-random bytes (xorshift64*), never all zero, so the
/// tools cannot turn them into holes.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Noise(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// Writes a tree of files of varying sizes (about 26 MiB in all) under
/// `root` and returns their paths relative to it, in creation order.
pub fn populate_tree(root: &Path, seed: u64) -> Vec<String> {
    const SIZES: &[usize] = &[
        0, 1, 100, 1023, 1024, 1025, 4095, 4096, 4097, 10_000, 65_536, 100_000, 300_001, 1_000_000,
        2_500_000, 4_200_000,
    ];
    let mut noise = Noise::new(seed);
    let mut files = Vec::new();
    for (d, dir) in ["alpha", "beta/nested/deeper", "gamma"].iter().enumerate() {
        fs::create_dir_all(root.join(dir)).unwrap();
        for (i, &size) in SIZES.iter().enumerate() {
            // Vary the sizes between directories a little.
            let size = if size > 4096 { size + d * 3001 } else { size };
            let rel = format!("{dir}/file{i:02}.bin");
            fs::write(root.join(&rel), noise.bytes(size)).unwrap();
            files.push(rel);
        }
    }
    // Many small files make directories span several blocks.
    fs::create_dir_all(root.join("many")).unwrap();
    for i in 0..300 {
        let rel = format!("many/small-file-with-a-longish-name-{i:04}.txt");
        let len = (noise.next_u64() % 3000) as usize;
        fs::write(root.join(&rel), noise.bytes(len)).unwrap();
        files.push(rel);
    }
    std::os::unix::fs::symlink("alpha/file05.bin", root.join("link")).unwrap();
    files
}

/// Creates a sparse image file of `size` bytes.
pub fn truncate(path: &Path, size: u64) {
    run(Command::new(required_tool("truncate", "coreutils"))
        .arg("-s")
        .arg(size.to_string())
        .arg(path));
}

/// One line of a ddrescue domain mapfile: `pos size status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub pos: u64,
    pub size: u64,
    pub status: char,
}

/// A parsed ddrescue-style domain mapfile, as written by `partclone.* -D`.
#[derive(Debug)]
pub struct DomainMap {
    /// The `current_pos current_status` line.
    pub current: Option<(u64, char)>,
    pub entries: Vec<MapEntry>,
}

fn parse_hex(s: &str) -> u64 {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or_else(|| panic!("mapfile number without 0x: {s:?}"));
    u64::from_str_radix(digits, 16).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

impl DomainMap {
    pub fn parse(text: &str) -> DomainMap {
        let mut current = None;
        let mut entries = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [pos, status] => {
                    assert!(current.is_none(), "two status lines in mapfile:\n{text}");
                    current = Some((parse_hex(pos), status.chars().next().unwrap()));
                }
                [pos, size, status] => entries.push(MapEntry {
                    pos: parse_hex(pos),
                    size: parse_hex(size),
                    status: status.chars().next().unwrap(),
                }),
                _ => panic!("unexpected mapfile line {line:?}"),
            }
        }
        DomainMap { current, entries }
    }

    /// Ranges marked '+' (finished: partclone's used blocks), merged.
    pub fn used(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for e in self.entries.iter().filter(|e| e.status == '+') {
            match out.last_mut() {
                Some((pos, len)) if *pos + *len == e.pos => *len += e.size,
                _ => out.push((e.pos, e.size)),
            }
        }
        out
    }

    /// End of the last entry.
    pub fn end(&self) -> u64 {
        self.entries.last().map(|e| e.pos + e.size).unwrap_or(0)
    }

    /// Checks that the entries tile 0..end without gaps or overlaps.
    pub fn assert_contiguous(&self) {
        let mut at = 0;
        for e in &self.entries {
            assert_eq!(
                e.pos, at,
                "mapfile entries not contiguous: {:?}",
                self.entries
            );
            assert!(
                e.status == '+' || e.status == '?',
                "unexpected status {:?}",
                e.status
            );
            at = e.pos + e.size;
        }
    }
}

/// Runs `partclone.<fs> -D` on an image and parses the domain mapfile.
pub fn partclone_domain_map(tool: &str, image: &Path, workdir: &Path) -> DomainMap {
    let exe = required_tool(tool, "partclone");
    let map = workdir.join(format!("{tool}.map"));
    let log = workdir.join(format!("{tool}.log"));
    run(Command::new(exe)
        .arg("-D")
        .arg("-s")
        .arg(image)
        .arg("-O")
        .arg(&map)
        .args(["-f", "0", "-q", "-L"])
        .arg(&log));
    let text = fs::read_to_string(&map).unwrap();
    DomainMap::parse(&text)
}

fn total(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|r| r.1).sum()
}

/// Bytes in both sets of sorted, disjoint ranges.
pub fn overlap(a: &[(u64, u64)], b: &[(u64, u64)]) -> u64 {
    let (mut i, mut j, mut sum) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let (a0, a1) = (a[i].0, a[i].0 + a[i].1);
        let (b0, b1) = (b[j].0, b[j].0 + b[j].1);
        let (lo, hi) = (a0.max(b0), a1.min(b1));
        if lo < hi {
            sum += hi - lo;
        }
        if a1 <= b1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    sum
}

/// Result of comparing our runs with partclone's used map.
#[derive(Debug)]
pub struct Comparison {
    pub partclone_used: u64,
    pub ours_used: u64,
    pub missed: u64,
    pub extra: u64,
}

/// Checks the basic invariants of `runs()` against `is_used()` and the
/// accessors.
pub fn assert_runs_consistent(used: &UsedBlocks) {
    let runs: Vec<(u64, u64)> = used.runs().collect();
    let bs = used.block_size();
    let mut prev_end = None;
    let mut blocks = 0;
    for &(off, len) in &runs {
        assert!(len > 0);
        assert_eq!(off % bs, 0, "run offset not block aligned");
        if let Some(end) = prev_end {
            assert!(off > end, "runs not maximal/sorted: {runs:?}");
        }
        prev_end = Some(off + len);
        assert!(off + len <= used.device_size());
        blocks += len.div_ceil(bs);
    }
    assert_eq!(
        blocks,
        used.used_blocks(),
        "runs disagree with used_blocks()"
    );
    let mut from_runs = vec![false; used.total_blocks() as usize];
    for &(off, len) in &runs {
        for b in off / bs..(off + len).div_ceil(bs) {
            from_runs[b as usize] = true;
        }
    }
    for (b, &expect) in from_runs.iter().enumerate() {
        assert_eq!(
            used.is_used(b as u64),
            expect,
            "is_used({b}) disagrees with runs"
        );
    }
    assert!(!used.is_used(used.total_blocks()));
    assert_eq!(used.used_bytes(), total(&runs));
}

/// Compares our runs with partclone's '+' ranges: every byte partclone
/// marks used must be covered (none missed), and the bytes we add must be
/// at most 1 % of partclone's used bytes.  Prints both totals.
pub fn assert_covers_partclone(label: &str, used: &UsedBlocks, map: &DomainMap) -> Comparison {
    map.assert_contiguous();
    assert_eq!(
        map.end(),
        used.fs_size(),
        "{label}: partclone maps {} bytes, our filesystem spans {}",
        map.end(),
        used.fs_size()
    );
    let ours: Vec<(u64, u64)> = used.runs().collect();
    let theirs = map.used();
    let common = overlap(&ours, &theirs);
    let cmp = Comparison {
        partclone_used: total(&theirs),
        ours_used: total(&ours),
        missed: total(&theirs) - common,
        extra: total(&ours) - common,
    };
    let pct = 100.0 * cmp.extra as f64 / cmp.partclone_used.max(1) as f64;
    println!(
        "{label}: {} blocks of {} bytes; partclone used {} bytes ({} blocks), ours {} bytes \
         ({} blocks); missed {} bytes, extra {} bytes ({pct:.3} % of partclone's used)",
        used.total_blocks(),
        used.block_size(),
        cmp.partclone_used,
        cmp.partclone_used / used.block_size(),
        cmp.ours_used,
        used.used_blocks(),
        cmp.missed,
        cmp.extra,
    );
    assert_eq!(cmp.missed, 0, "{label}: bytes partclone uses that we miss");
    assert!(
        cmp.extra * 100 <= cmp.partclone_used,
        "{label}: {} extra bytes is more than 1 % of partclone's {} used bytes",
        cmp.extra,
        cmp.partclone_used
    );
    cmp
}

/// Writes `text` to a new file.
pub fn write_file(path: &Path, text: &str) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}
