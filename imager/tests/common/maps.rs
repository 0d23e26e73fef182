//! ddrescue mapfiles and comparing used-block maps (ours against partclone's).
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;

use super::*;

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
