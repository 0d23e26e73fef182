// SPDX-License-Identifier: GPL-2.0-or-later
//! FAT12/16/32 maps of real images (mkfs.fat + mtools) against partclone.fat
//! and against the dosfstools / mtools view of the same image.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use blockswarm_fsmap::fat::fat_geometry;
use blockswarm_fsmap::{
    detect, fat_usage, fat_usage_with, parse_mapfile, write_mapfile, FatOptions, FsUsage,
};
use common::*;

const TOOLS: &[(&str, &str)] = &[
    ("mkfs.fat", "dosfstools"),
    ("fsck.fat", "dosfstools"),
    ("mcopy", "mtools"),
    ("partclone.fat", "partclone"),
];

fn mtools(cmd: &str) -> std::process::Command {
    let mut c = tool(cmd);
    c.env("MTOOLS_SKIP_CHECK", "1");
    c
}

struct Fill {
    first: (usize, u64, u64),
    sub: (usize, u64, u64),
    later: (usize, u64, u64),
}

/// Copy files in, make a subdirectory, delete every third file, copy larger
/// files that have to fill the holes (fragmented files), then delete some
/// more to leave holes. Returns the mtools paths of what is left.
fn populate(img: &Path, work: &Path, seed: u64, fill: &Fill) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let name = |p: &PathBuf| p.file_name().unwrap().to_str().unwrap().to_string();
    let del = |path: &str| run(mtools("mdel").arg("-i").arg(img).arg(path));
    let (n, lo, hi) = fill.first;
    let a = make_files(&work.join("a"), "a", n, lo, hi, &mut rng);
    run(mtools("mcopy").arg("-i").arg(img).args(&a).arg("::/"));
    run(mtools("mmd").arg("-i").arg(img).arg("::/sub"));
    let (n, lo, hi) = fill.sub;
    let b = make_files(&work.join("b"), "b", n, lo, hi, &mut rng);
    run(mtools("mcopy").arg("-i").arg(img).args(&b).arg("::/sub/"));
    let mut left = vec!["::/sub".to_string()];
    for (i, f) in a.iter().enumerate() {
        if i % 3 == 1 {
            del(&format!("::/{}", name(f)));
        } else {
            left.push(format!("::/{}", name(f)));
        }
    }
    let (n, lo, hi) = fill.later;
    let c = make_files(&work.join("c"), "c", n, lo, hi, &mut rng);
    run(mtools("mcopy").arg("-i").arg(img).args(&c).arg("::/"));
    for (i, f) in c.iter().enumerate() {
        if i % 4 == 3 {
            del(&format!("::/{}", name(f)));
        } else {
            left.push(format!("::/{}", name(f)));
        }
    }
    for (i, f) in b.iter().enumerate() {
        if i % 2 == 1 {
            del(&format!("::/sub/{}", name(f)));
        } else {
            left.push(format!("::/sub/{}", name(f)));
        }
    }
    left
}

/// Ground truth from dosfstools and mtools: the used cluster count of
/// `fsck.fat -n` equals ours, and every cluster `mshowfat` lists for the
/// files and directories left in the image is in our map.
/// `bad` clusters are marked bad: fsck.fat counts them as used, we (like
/// partclone) do not.
fn check_ground_truth(label: &str, img: &Path, u: &FsUsage, paths: &[String], bad: u64) {
    let bs = fs::read(img).unwrap()[..512].to_vec();
    let g = fat_geometry(&bs).unwrap();
    let (cs, ds) = (g.cluster_size(), g.data_start());
    let data_end = ds + g.cluster_count * cs;
    let data_used: u64 = u
        .runs
        .iter()
        .map(|&(o, l)| (o + l).clamp(ds, data_end) - o.clamp(ds, data_end))
        .sum();
    let out = run(tool("fsck.fat").arg("-n").arg(img));
    // "...: 12 files, 693/2036 clusters"
    let counts = out
        .lines()
        .filter_map(|l| {
            l.rsplit_once(", ")?
                .1
                .strip_suffix(" clusters")?
                .split_once('/')
        })
        .next_back()
        .unwrap_or_else(|| panic!("no cluster count in fsck.fat output: {out}"));
    let fsck_used: u64 = counts.0.parse().unwrap();
    assert_eq!(
        counts.1.parse::<u64>().unwrap(),
        g.cluster_count,
        "{label}: cluster count"
    );
    println!(
        "{label}: fsck.fat used clusters {fsck_used}, ours {}",
        data_used / cs
    );
    assert_eq!(
        data_used / cs + bad,
        fsck_used,
        "{label}: used clusters differ from fsck.fat"
    );
    let mut checked = 0;
    for chunk in paths.chunks(64) {
        let out = run(mtools("mshowfat").arg("-i").arg(img).args(chunk));
        for line in out.lines() {
            for range in line.split('<').skip(1) {
                let range = range.split('>').next().unwrap();
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
                for c in a..=b {
                    let off = ds + (c - 2) * cs;
                    assert_eq!(
                        minus(&[(off, cs)], &u.runs),
                        0,
                        "{label}: cluster {c} of {line}"
                    );
                    checked += 1;
                }
            }
        }
    }
    println!("{label}: all {checked} clusters mshowfat lists for the remaining files are mapped");
}

/// Compare with the dosfstools / mtools ground truth and, unless
/// `vs_partclone` is false, with partclone.fat.
fn check_image(
    label: &str,
    img: &Path,
    work: &Path,
    want: &str,
    paths: &[String],
    vs_partclone: bool,
    bad: u64,
) {
    let (mut f, size) = open(img);
    assert_eq!(detect(&mut f).unwrap(), Some(want), "{label}: detection");
    let ours = fat_usage(&mut f, size).unwrap();
    assert_eq!(ours.fs_type, want);
    check_invariants(&ours);
    check_ground_truth(label, img, &ours, paths, bad);
    let theirs = partclone_map("fat", img, work);
    if vs_partclone {
        assert_matches_partclone(label, &ours, &theirs);
    } else {
        println!(
            "{label}: not held to partclone.fat, whose FAT12 map is wrong: ours used={} \
             partclone used={}, partclone misses {} bytes we (and fsck.fat) find used and maps \
             {} bytes that are free",
            ours.used_bytes(),
            total(&theirs),
            minus(&ours.runs, &theirs),
            minus(&theirs, &ours.runs),
        );
    }
    // Our mapfile reads back to the same runs.
    let mut text = Vec::new();
    write_mapfile(&mut text, &ours.runs, ours.device_size).unwrap();
    assert_eq!(
        parse_mapfile(std::str::from_utf8(&text).unwrap()).unwrap(),
        ours.runs
    );
}

fn fat_case(label: &str, size: u64, mkfs_args: &[&str], want: &str, seed: u64, fill: Option<Fill>) {
    if !have_tools(label, TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fat.img");
    sparse_image(&img, size);
    run(tool("mkfs.fat").args(mkfs_args).arg(&img));
    let paths = match fill {
        Some(fill) => populate(&img, tmp.path(), seed, &fill),
        None => Vec::new(),
    };
    // partclone.fat 0.3.23 decodes FAT12 entries as 16-bit values, so its
    // FAT12 maps cannot be the reference.
    check_image(label, &img, tmp.path(), want, &paths, want != "fat12", 0);
}

#[test]
fn fat12_matches_fsck_and_mtools() {
    fat_case(
        "fat12 4MiB",
        4 << 20,
        &["-F", "12"],
        "fat12",
        12,
        Some(Fill {
            first: (30, 1, 50_000),
            sub: (10, 1, 20_000),
            later: (5, 100_000, 300_000),
        }),
    );
}

#[test]
fn fat16_matches_partclone() {
    fat_case(
        "fat16 64MiB",
        64 << 20,
        &["-F", "16"],
        "fat16",
        16,
        Some(Fill {
            first: (60, 1, 800_000),
            sub: (20, 1, 100_000),
            later: (6, 1_000_000, 4_000_000),
        }),
    );
}

#[test]
fn fat32_matches_partclone() {
    fat_case(
        "fat32 300MiB",
        300 << 20,
        &["-F", "32"],
        "fat32",
        32,
        Some(Fill {
            first: (80, 1, 2_000_000),
            sub: (30, 1, 64_000),
            later: (8, 2_000_000, 8_000_000),
        }),
    );
}

#[test]
fn fat12_single_sector_clusters_matches_fsck_and_mtools() {
    fat_case(
        "fat12 2MiB, 1 sector/cluster, 1 FAT",
        2 << 20,
        &["-F", "12", "-s", "1", "-f", "1"],
        "fat12",
        121,
        Some(Fill {
            first: (40, 1, 30_000),
            sub: (5, 1, 5_000),
            later: (3, 50_000, 200_000),
        }),
    );
}

/// `mkfs.fat -F 32` on 64 MiB with 4 KiB clusters: FAT32 layout with fewer
/// than 65525 clusters. Linux and partclone read it as FAT32.
#[test]
fn small_fat32_layout_matches_partclone() {
    fat_case(
        "small fat32 64MiB",
        64 << 20,
        &["-F", "32", "-s", "8"],
        "fat32",
        0,
        None,
    );
}

/// A volume smaller than its device: only the volume is mapped.
#[test]
fn fat_volume_smaller_than_device() {
    let label = "fat16 volume 24000 KiB on 32 MiB";
    if !have_tools(label, TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fat.img");
    sparse_image(&img, 32 << 20);
    run(tool("mkfs.fat").args(["-F", "16"]).arg(&img).arg("24000"));
    let paths = populate(
        &img,
        tmp.path(),
        7,
        &Fill {
            first: (20, 1, 300_000),
            sub: (3, 1, 3000),
            later: (2, 500_000, 900_000),
        },
    );
    check_image(label, &img, tmp.path(), "fat16", &paths, true, 0);
    let (mut f, size) = open(&img);
    let u = fat_usage(&mut f, size).unwrap();
    let end = u.runs.last().map(|r| r.0 + r.1).unwrap();
    assert!(end <= 24000 * 1024, "map reaches {end}, beyond the volume");
    assert_eq!(u.device_size, 32 << 20);
}

/// Clusters marked bad (0xFFF7) are left out, like partclone.fat does; with
/// `bad_clusters_used` they are kept.
#[test]
fn fat16_bad_clusters_like_partclone() {
    let label = "fat16 with bad clusters";
    if !have_tools(label, TOOLS) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fat.img");
    sparse_image(&img, 32 << 20);
    run(tool("mkfs.fat").args(["-F", "16", "-s", "4"]).arg(&img));
    let paths = populate(
        &img,
        tmp.path(),
        99,
        &Fill {
            first: (10, 1, 100_000),
            sub: (2, 1, 1000),
            later: (1, 1, 10_000),
        },
    );
    // Geometry from the boot sector written by mkfs.fat.
    let bs = fs::read(&img).unwrap()[..512].to_vec();
    let bps = u64::from(u16::from_le_bytes([bs[11], bs[12]]));
    let rsvd = u64::from(u16::from_le_bytes([bs[14], bs[15]]));
    let nfats = u64::from(bs[16]);
    let fatsz = u64::from(u16::from_le_bytes([bs[22], bs[23]]));
    let mut f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    // Mark clusters 3000 (free) and 3001 (free) bad in every FAT copy.
    for k in 0..nfats {
        for cl in [3000u64, 3001] {
            f.seek(SeekFrom::Start((rsvd + k * fatsz) * bps + cl * 2))
                .unwrap();
            f.write_all(&0xFFF7u16.to_le_bytes()).unwrap();
        }
    }
    drop(f);
    check_image(label, &img, tmp.path(), "fat16", &paths, true, 2);
    let (mut f, size) = open(&img);
    let default = fat_usage(&mut f, size).unwrap();
    let with_bad = fat_usage_with(
        &mut f,
        size,
        &FatOptions {
            bad_clusters_used: true,
        },
    )
    .unwrap();
    let cs = default.block_size;
    assert_eq!(with_bad.used_bytes(), default.used_bytes() + 2 * cs);
}
